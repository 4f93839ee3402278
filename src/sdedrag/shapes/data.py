"""Seeded procedural shape scenes with per-shape ground truth (the training data and ShapesBench cases).

A scene is 1-3 non-overlapping shapes (a disc or an axis-aligned square) in distinct, saturated
palette colours on a light, unsaturated plain or linear-gradient background. Edges are anti-aliased
by supersampling; a shape's ground-truth mask is the pixels it covers by at least half. Coordinates
are ``(x, y)`` in pixels, with pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

KINDS: tuple[str, ...] = ("disc", "square")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 195, 20),
}
SUPERSAMPLE = 4
SIZE_RANGE = (0.12, 0.2)
"""Shape size (disc radius, half the square's side) as a fraction of the resolution."""
GAP = 2.0
"""Minimum distance in pixels between the circumscribed circles of two shapes."""


@dataclass(frozen=True)
class Shape:
    """One shape: ``kind`` in KINDS, ``colour`` a PALETTE name, ``centre`` (x, y) and ``size`` in pixels."""

    kind: str
    colour: str
    centre: tuple[float, float]
    size: float

    @property
    def rgb(self) -> tuple[int, int, int]:
        return PALETTE[self.colour]

    @property
    def radius(self) -> float:
        """Radius of the circumscribed circle."""
        return self.size * (np.sqrt(2.0) if self.kind == "square" else 1.0)

    @property
    def area(self) -> float:
        """Exact area in pixels (the ground-truth mask's pixel count is close to it)."""
        return np.pi * self.size**2 if self.kind == "disc" else (2 * self.size) ** 2

    def moved(self, centre: tuple[float, float]) -> Shape:
        """The same shape at another centre."""
        return replace(self, centre=(float(centre[0]), float(centre[1])))

    def coverage(self, height: int, width: int) -> np.ndarray:
        """Fraction of each pixel the shape covers, float [H, W] in [0, 1] (supersampled)."""
        offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
        ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1) - self.centre[1]
        xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1) - self.centre[0]
        if self.kind == "disc":
            inside = ys[:, None] ** 2 + xs[None, :] ** 2 <= self.size**2
        elif self.kind == "square":
            inside = (np.abs(ys)[:, None] <= self.size) & (np.abs(xs)[None, :] <= self.size)
        else:
            raise ValueError(f"unknown shape kind {self.kind!r}")
        return inside.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).mean(axis=(1, 3))

    def mask(self, height: int, width: int) -> np.ndarray:
        """Ground-truth mask: the pixels the shape covers by at least half, bool [H, W]."""
        return self.coverage(height, width) >= 0.5


@dataclass(frozen=True)
class Scene:
    """A rendered scene: ``image`` and ``background`` are uint8 [H, W, 3]; ``masks[k]`` belongs to ``shapes[k]``.

    Shapes never overlap, so every mask is the shape's full footprint.
    """

    image: np.ndarray
    background: np.ndarray
    shapes: tuple[Shape, ...]
    masks: tuple[np.ndarray, ...]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL reports it."""
        return self.image.shape[1], self.image.shape[0]

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)

    def with_shapes(self, shapes: tuple[Shape, ...] | list[Shape]) -> Scene:
        """The same background with other shapes (for example one of them moved, or one removed)."""
        return render(self.background, shapes)

    def moved(self, index: int, target: tuple[float, float]) -> Scene:
        """Ground truth of a drag: shape ``index`` moved to centre ``target``, everything else unchanged."""
        return self.with_shapes([s.moved(target) if k == index else s for k, s in enumerate(self.shapes)])

    def without(self, index: int) -> Scene:
        """The scene with shape ``index`` removed (the background shows through)."""
        return self.with_shapes([s for k, s in enumerate(self.shapes) if k != index])


def render(background: np.ndarray, shapes: tuple[Shape, ...] | list[Shape]) -> Scene:
    """Paint anti-aliased ``shapes`` onto a uint8 [H, W, 3] ``background``."""
    height, width = background.shape[:2]
    canvas = background.astype(np.float64)
    masks = []
    for shape in shapes:
        cover = shape.coverage(height, width)[..., None]
        canvas = canvas * (1.0 - cover) + np.asarray(shape.rgb, dtype=np.float64) * cover
        masks.append(cover[..., 0] >= 0.5)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return Scene(image=image, background=background.copy(), shapes=tuple(shapes), masks=tuple(masks))


def _background_colour(rng: np.random.Generator) -> np.ndarray:
    """A light, unsaturated colour: a grey level in [120, 225] tinted by at most 18 per channel."""
    return rng.uniform(120, 225) + rng.uniform(-18, 18, size=3)


def sample_background(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """Plain (half the time) or a linear gradient in a random direction between two background colours."""
    start = _background_colour(rng)
    if rng.random() < 0.5:
        field = np.broadcast_to(start, (resolution, resolution, 3))
    else:
        end = _background_colour(rng)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = (np.mgrid[0:resolution, 0:resolution] + 0.5) / resolution - 0.5
        ramp = np.clip((xs * np.cos(angle) + ys * np.sin(angle)) / np.sqrt(0.5) + 0.5, 0.0, 1.0)[..., None]
        field = start * (1.0 - ramp) + end * ramp
    return np.clip(np.round(field), 0, 255).astype(np.uint8)


def fits(shape: Shape, others: tuple[Shape, ...] | list[Shape], resolution: int, gap: float = GAP) -> bool:
    """Whether ``shape`` lies inside the image (1 px margin) and at least ``gap`` px from every other shape."""
    x, y = shape.centre
    low, high = shape.size + 1.0, resolution - shape.size - 1.0  # size is the half-extent of both kinds
    if not (low <= x <= high and low <= y <= high):
        return False
    return all(np.hypot(x - o.centre[0], y - o.centre[1]) >= shape.radius + o.radius + gap for o in others)


def sample_shapes(rng: np.random.Generator, resolution: int, count: int, tries: int = 200) -> list[Shape]:
    """Up to ``count`` non-overlapping shapes in distinct colours (fewer only if placement keeps failing)."""
    colours = rng.choice(list(PALETTE), size=count, replace=False)
    shapes: list[Shape] = []
    for colour in colours:
        for _ in range(tries):
            kind = str(rng.choice(KINDS))
            size = rng.uniform(*SIZE_RANGE) * resolution
            candidate = Shape(kind, str(colour), (float(rng.uniform(0, resolution)), float(rng.uniform(0, resolution))),
                              float(size))
            if fits(candidate, shapes, resolution):
                shapes.append(candidate)
                break
    return shapes


def sample_scene(seed: int | np.random.Generator, resolution: int = 32, max_shapes: int = 3) -> Scene:
    """One scene of 1..``max_shapes`` shapes; the same seed always gives the same scene."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    background = sample_background(rng, resolution)
    count = int(rng.integers(1, max_shapes + 1))
    return render(background, sample_shapes(rng, resolution, count))


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1] (the pixel model's latent)."""
    return torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class ShapesDataset(torch.utils.data.Dataset):
    """``length`` scenes as training tensors [3, H, W] in [-1, 1]; item ``i`` is the scene of seed (seed, i)."""

    def __init__(self, length: int, resolution: int = 32, seed: int = 0, max_shapes: int = 3):
        self.length, self.resolution, self.seed, self.max_shapes = length, resolution, seed, max_shapes

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return sample_scene(np.random.default_rng([self.seed, index]), self.resolution, self.max_shapes)

    def __getitem__(self, index: int) -> torch.Tensor:
        return image_tensor(self.scene(index).image)
