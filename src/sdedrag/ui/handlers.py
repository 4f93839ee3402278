"""The drag UI's logic as plain functions of the widgets' values, free of gradio, so they are unit-testable.

Errors are :class:`sdedrag.errors.InputError`; ``app.py`` shows them in the page.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from sdedrag.errors import InputError
from sdedrag.runs import request_args, session_args, settings_args, settings_from_args, write_drag_run
from sdedrag.session import DragSession
from sdedrag.settings import DragParams, LoraSettings
from sdedrag.tasks.drag import DragRequest
from sdedrag.ui import DEFAULT_MAX_PIXELS
from sdedrag.visualize import draw_drag_arrows

VIEW_LONG_SIDE = 640  # small images are enlarged to this for clicking (browsers never enlarge them)
Points = list[list[int]]  # clicked points in image pixels, alternating source, target, source, ...

# The drag options the page sets, with their types (sliders send floats); the rest are `sdedrag drag`'s defaults.
OPTION_TYPES: dict[str, type] = {
    "prompt": str, "method": str, "steps": int, "t0": float, "step_size": float, "radius": int, "alpha": float,
    "beta": float, "guidance": float, "lora_scale_min": float, "order": int, "paste_back": bool, "lora": bool,
    "lora_steps": int, "lora_rank": int, "lora_lr": float, "seed": int,
}


def open_upload(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an uploaded image file as RGB, upright (EXIF orientation applied) with transparency over white,
    refusing images over ``max_pixels`` before decoding them."""
    try:
        with Image.open(path) as image:
            check_size(image.size, max_pixels)
            rgba = ImageOps.exif_transpose(image).convert("RGBA")
    except InputError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"the uploaded file is not an image this server can read ({type(err).__name__})") from err
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")


def editor_value(image: Image.Image) -> dict[str, Any]:
    """The brush editor's value for a freshly uploaded image: the image as background, nothing painted."""
    return {"background": image, "layers": [], "composite": image}


def editor_mask(value: Mapping[str, Any] | None, size: tuple[int, int]) -> np.ndarray | None:
    """The editable mask from the brush editor's value (True where any layer is painted), at the image's
    ``size``; None if nothing is painted."""
    mask = np.zeros((size[1], size[0]), dtype=bool)
    for layer in (value or {}).get("layers") or []:
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        mask |= np.asarray(alpha) > 0
    return mask if mask.any() else None


def check_size(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse images of ``size`` with more than ``max_pixels`` pixels, saying how to fix it."""
    width, height = size
    if width * height > max_pixels:
        raise InputError(
            f"the image is {width}x{height} ({width * height / 1e6:.2f} megapixels), more than the limit of "
            f"{max_pixels / 1e6:.2f} megapixels (sdedrag ui --max-pixels); downscale it and upload it again"
        )


def split_points(points: Sequence[Sequence[float]]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Alternating clicks -> (sources, targets); a last unpaired source stays in ``sources``."""
    pairs = [(float(x), float(y)) for x, y in points]
    return pairs[0::2], pairs[1::2]


def view_scale(size: tuple[int, int]) -> float:
    """How much the points view enlarges an image of ``size`` (1 for images at least VIEW_LONG_SIDE long)."""
    return max(1.0, VIEW_LONG_SIDE / max(size))


def add_point(points: Points, index: Sequence[int] | None, size: tuple[int, int] | None) -> Points:
    """Append the image pixel (x, y) under a click at ``index`` in the points view of an image of ``size``;
    clicks outside the image, or before one is uploaded, are ignored."""
    if index is None or size is None:
        return list(points)
    scale = view_scale(size)
    x, y = math.floor(index[0] / scale), math.floor(index[1] / scale)  # int() would round -0.5 up to pixel 0
    if not (0 <= x < size[0] and 0 <= y < size[1]):
        return list(points)
    return [*points, [x, y]]


def undo_point(points: Points) -> Points:
    """Drop the last click."""
    return list(points[:-1])


def points_view(image: Image.Image | None, points: Points, mask: np.ndarray | None) -> Image.Image | None:
    """The input (enlarged by :func:`view_scale`) with the mask shaded, an arrow per source/target pair, and a
    dot for an unpaired source; arrows point at pixel centres."""
    if image is None:
        return None
    scale = view_scale(image.size)
    if scale > 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    sources, targets = ([((x + 0.5) * scale, (y + 0.5) * scale) for x, y in group] for group in split_points(points))
    return draw_drag_arrows(image, sources, targets, mask)


def points_status(points: Points) -> str:
    """A one-line hint saying what the next click does."""
    pairs, dangling = divmod(len(points), 2)
    if dangling:
        return f"{pairs} pair(s) and a source: click its target"
    return f"{pairs} pair(s): click a source point (red), then its target (blue)"


def drag_settings(options: Mapping[str, Any]) -> tuple[str, DragParams, LoraSettings | None]:
    """The prompt, drag settings and LoRA settings (None when off) the page's options set; options the page
    does not show keep their defaults."""
    values = {}
    for name, value in options.items():
        if value is None:
            raise InputError(f"{name.replace('_', ' ')} is empty")
        values[name] = OPTION_TYPES[name](value)
    params, lora = settings_from_args({**settings_args(DragParams(), LoraSettings()), **values})
    return values.get("prompt", ""), params, lora


@dataclass
class RunUpdate:
    """What the page shows while a drag runs: the latest image, progress (``moves`` is 0 until known), a status
    line, and at the end the files to download and any warnings."""

    image: Image.Image
    move: int
    moves: int
    message: str
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def run_drag(
    session: DragSession,
    runs_dir: Path,
    image: Image.Image | None,
    editor: Mapping[str, Any] | None,
    points: Points,
    options: Mapping[str, Any],
) -> Iterator[RunUpdate]:
    """Check the inputs (the uploaded ``image``, the brush ``editor``'s value, the clicked points and the
    page's options), then drag on ``session``, yielding the input and then each move's frame; the last
    update lists result.png, trajectory.gif, run.json, input.png (and mask.png) in a fresh folder under
    ``runs_dir``, named by the app, never by the user."""
    if image is None:
        raise InputError("upload an image first")
    mask = editor_mask(editor, image.size)
    sources, targets = split_points(points)
    if not sources:
        raise InputError("click a source point and then its target on the image first")
    if len(sources) != len(targets):
        raise InputError(f"the last source point has no target: click its target (or undo it); got "
                         f"{len(sources)} sources and {len(targets)} targets")
    prompt, params, lora = drag_settings(options)
    request = DragRequest(image, sources, targets, mask, prompt, params)

    start = "LoRA (trained once per image, then cached) and encoding..." if lora else "Encoding..."
    yield RunUpdate(image, 0, 0, start)
    for result in session.stream(request, lora):
        if len(result.frames) < result.moves:
            yield RunUpdate(result.image, len(result.frames), result.moves,
                            f"Move {len(result.frames)} of {result.moves} done.")
    runs_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=runs_dir))
    image.save(folder / "input.png")
    mask_file = None
    if mask is not None:
        mask_file = folder / "mask.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_file)
    args = {
        **request_args(request, "input.png", "mask.png" if mask_file else None),
        **settings_args(params, lora),
        **session_args(session),
    }
    write_drag_run(folder, request, result, args, folder / "input.png", mask_file)
    files = [folder / name for name in ("result.png", "trajectory.gif", "run.json", "input.png")]
    files += [mask_file] if mask_file else []
    timings = ", ".join(f"{name.removesuffix('_seconds')} {seconds:.1f} s" for name, seconds in result.timings.items())
    message = f"Done: {result.moves} move(s) on {image.width}x{image.height} ({timings})."
    yield RunUpdate(result.image, result.moves, result.moves, message, files, list(result.warnings))
