"""Pictures for people: drag arrows over an image, shaded masks, and trajectory GIFs."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]
SOURCE_COLOR = (230, 40, 40)
TARGET_COLOR = (40, 90, 240)
ARROW_COLOR = (255, 255, 255)


def shade_mask(image: Image.Image, mask: np.ndarray | None, strength: float = 0.35) -> Image.Image:
    """Darken the area outside the editable ``mask`` so the editable region stands out."""
    if mask is None or mask.all() or not mask.any():
        return image.copy()
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    array[~mask] *= 1.0 - strength
    return Image.fromarray(array.round().astype(np.uint8))


def draw_drag_arrows(
    image: Image.Image, sources: Sequence[Point], targets: Sequence[Point], mask: np.ndarray | None = None
) -> Image.Image:
    """The input with its mask shaded and an arrow from each source (red) to its target (blue); sources
    beyond the last target (a pair still being clicked) are drawn as dots."""
    canvas = shade_mask(image, mask)
    draw = ImageDraw.Draw(canvas)
    size = max(3.0, min(canvas.size) / 80)
    for (sx, sy), (tx, ty) in zip(sources, targets):
        draw.line([(sx, sy), (tx, ty)], fill=ARROW_COLOR, width=max(1, round(size / 2)))
        angle = math.atan2(ty - sy, tx - sx)
        if (sx, sy) != (tx, ty):
            head = [
                (tx, ty),
                (tx - 2.5 * size * math.cos(angle - 0.45), ty - 2.5 * size * math.sin(angle - 0.45)),
                (tx - 2.5 * size * math.cos(angle + 0.45), ty - 2.5 * size * math.sin(angle + 0.45)),
            ]
            draw.polygon(head, fill=ARROW_COLOR)
        for (x, y), color in (((sx, sy), SOURCE_COLOR), ((tx, ty), TARGET_COLOR)):
            draw.ellipse([x - size, y - size, x + size, y + size], fill=color, outline=(0, 0, 0))
    for x, y in sources[len(targets):]:
        draw.ellipse([x - size, y - size, x + size, y + size], fill=SOURCE_COLOR, outline=(0, 0, 0))
    return canvas


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, frame_ms: int = 400) -> None:
    """An animated GIF of ``frames`` that holds the last frame a little longer."""
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 3]
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=durations, loop=0)


def side_by_side(images: Sequence[Image.Image], labels: Sequence[str]) -> Image.Image:
    """Images in a row on white, each with its label above it."""
    label_height, gap = 18, 6
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(image.height for image in images) + label_height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for image, label in zip(images, labels):
        canvas.paste(image.convert("RGB"), (x, label_height))
        draw.text((x + 2, 3), label, fill=(0, 0, 0))
        x += image.width + gap
    return canvas
