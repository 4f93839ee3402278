"""ShapesBench measurements: objective drag success and realism from ground truth, and bootstrap intervals.

Images are uint8 [H, W, 3] arrays (``np.asarray(pil_image)``); masks are bool [H, W]; points are
(x, y) in pixels as in :mod:`sdedrag.shapes.data`. A shape is found in a result by its colour: the
pixels within ``tolerance`` (Euclidean, 0-255 RGB) of its palette colour, split into connected regions
by scikit-image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion
from scipy.stats import bootstrap
from skimage.measure import label, regionprops

from sdedrag.shapes.data import PALETTE, Shape

if TYPE_CHECKING:
    from skimage.measure._regionprops import RegionProperties

TOLERANCE = 60.0
"""Colour distance within which a pixel counts as a shape's colour (palette colours are >= 150 apart)."""
MIN_FRACTION = 0.25
"""Colour regions smaller than this fraction of the source shape's area are specks, not candidate shapes."""
DUPLICATION_THRESHOLD = 0.5
"""The shape counts as duplicated when more than this fraction of its vacated source pixels keep its colour."""
PSNR_CAP = 100.0
"""PSNR (dB) reported for identical pixels, so results stay finite and JSON-serialisable."""


def colour_mask(image: np.ndarray, rgb: Sequence[int], tolerance: float = TOLERANCE) -> np.ndarray:
    """Pixels within ``tolerance`` of the colour ``rgb``, bool [H, W]."""
    distance = np.linalg.norm(image.astype(np.float64) - np.asarray(rgb, dtype=np.float64), axis=-1)
    return distance <= tolerance


def colour_regions(image: np.ndarray, rgb: Sequence[int], tolerance: float = TOLERANCE,
                   min_area: float = 1.0) -> list[RegionProperties]:
    """The 8-connected regions of colour ``rgb`` with at least ``min_area`` pixels, largest first."""
    regions = regionprops(label(colour_mask(image, rgb, tolerance), connectivity=2))
    return sorted((r for r in regions if r.area >= min_area), key=lambda r: -r.area)


def centroid_xy(region: RegionProperties) -> tuple[float, float]:
    """A region's centroid as (x, y) in the data module's pixel-centre convention."""
    row, col = region.centroid
    return col + 0.5, row + 0.5


def find_shape(image: np.ndarray, shape: Shape, near: tuple[float, float], tolerance: float = TOLERANCE,
               min_fraction: float = MIN_FRACTION) -> RegionProperties | None:
    """The region of ``shape``'s colour closest to ``near`` among those of at least ``min_fraction`` of its
    area (the largest region if all are smaller; None if the colour is absent)."""
    regions = colour_regions(image, shape.rgb, tolerance)
    if not regions:
        return None
    candidates = [r for r in regions if r.area >= min_fraction * shape.area] or regions[:1]
    return min(candidates, key=lambda r: math.dist(centroid_xy(r), near))


def colour_error(image: np.ndarray, region: RegionProperties, rgb: Sequence[int]) -> float:
    """Distance (0-255 RGB) between ``rgb`` and the region's mean colour away from its anti-aliased edge."""
    inside = np.zeros(image.shape[:2], dtype=bool)
    inside[tuple(region.coords.T)] = True
    interior = binary_erosion(inside)
    pixels = image[interior if interior.any() else inside].astype(np.float64)
    return float(np.linalg.norm(pixels.mean(axis=0) - np.asarray(rgb, dtype=np.float64)))


def unchanged_outside(source: np.ndarray, result: np.ndarray, editable: np.ndarray) -> tuple[int, float]:
    """(max abs pixel difference, PSNR in dB capped at PSNR_CAP) over the pixels outside ``editable``."""
    outside = ~editable
    if not outside.any():
        return 0, PSNR_CAP
    diff = source[outside].astype(np.float64) - result[outside].astype(np.float64)
    mse = float(np.mean(diff**2))
    psnr = PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))
    return int(np.abs(diff).max()), psnr


@dataclass(frozen=True)
class DragMetrics:
    """How well one shape was dragged (distances in pixels, colours in 0-255 RGB units).

    When the shape's colour is absent from the result, ``found`` is False and the shape measurements are NaN.
    """

    found: bool
    distance: float  # centroid of the found shape to the target
    drag_length: float  # source centre to target (the distance of a shape that did not move)
    area_ratio: float  # found area / source area
    colour_error: float
    solidity: float  # area / convex hull area: ~1 for a clean disc or square
    duplication: float  # fraction of the vacated source pixels that keep the shape's colour
    duplicated: bool
    outside_max_diff: int
    outside_psnr: float

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def drag_metrics(source: np.ndarray, result: np.ndarray, shape: Shape, target: tuple[float, float],
                 editable: np.ndarray, tolerance: float = TOLERANCE) -> DragMetrics:
    """Measure a drag of ``shape`` (as drawn in ``source``) to centre ``target`` in ``result``.

    The moved shape is the result's region of the shape's colour nearest the target (see :func:`find_shape`);
    duplication is measured on the source shape's pixels minus the footprint the shape has at the target.
    """
    height, width = source.shape[:2]
    source_mask = colour_mask(source, shape.rgb, tolerance) & shape.mask(height, width)
    source_area = max(int(source_mask.sum()), 1)
    vacated = source_mask & ~shape.moved(target).mask(height, width)
    stays = colour_mask(result, shape.rgb, tolerance)[vacated]
    duplication = float(stays.mean()) if stays.size else 0.0
    max_diff, psnr = unchanged_outside(source, result, editable)
    region = find_shape(result, shape, target, tolerance)
    common = dict(drag_length=math.dist(shape.centre, target), duplication=duplication,
                  duplicated=duplication > DUPLICATION_THRESHOLD, outside_max_diff=max_diff, outside_psnr=psnr)
    if region is None:
        return DragMetrics(found=False, distance=math.nan, area_ratio=math.nan, colour_error=math.nan,
                           solidity=math.nan, **common)
    return DragMetrics(
        found=True,
        distance=math.dist(centroid_xy(region), target),
        area_ratio=float(region.area) / source_area,
        colour_error=colour_error(result, region, shape.rgb),
        solidity=float(region.solidity),
        **common,
    )


@dataclass(frozen=True)
class RealismMetrics:
    """How clean a regenerated region is: the palette-coloured shapes in it and what is neither shape nor background.

    ``solidity`` is the lowest and ``colour_error`` the mean over those shapes (NaN when there are none).
    """

    shapes: int
    solidity: float
    colour_error: float
    stray_fraction: float  # region pixels that are neither part of a shape (or its edge) nor background
    outside_max_diff: int
    outside_psnr: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def realism_metrics(source: np.ndarray, result: np.ndarray, region: np.ndarray, background: np.ndarray,
                    tolerance: float = TOLERANCE, min_area: float = 12.0) -> RealismMetrics:
    """Measure what a model generated inside ``region`` (for example an inpainted shape's mask).

    A palette-coloured region of at least ``min_area`` pixels touching ``region`` counts as a shape (smaller
    ones are specks); a region pixel is stray unless it is within 1 px of such a shape or within ``tolerance``
    of ``background``, the scene without shapes (``Scene.background``).
    """
    solidities, errors = [], []
    shape_pixels = np.zeros(region.shape, dtype=bool)
    for rgb in PALETTE.values():
        for found in colour_regions(result, rgb, tolerance, min_area):
            shape_pixels[tuple(found.coords.T)] = True
            if region[tuple(found.coords.T)].any():
                solidities.append(float(found.solidity))
                errors.append(colour_error(result, found, rgb))
    near_background = np.linalg.norm(result.astype(np.float64) - background.astype(np.float64), axis=-1) <= tolerance
    explained = binary_dilation(shape_pixels) | near_background
    stray = float((region & ~explained).sum()) / max(int(region.sum()), 1)
    max_diff, psnr = unchanged_outside(source, result, region)
    return RealismMetrics(
        shapes=len(solidities),
        solidity=min(solidities) if solidities else math.nan,
        colour_error=float(np.mean(errors)) if errors else math.nan,
        stray_fraction=stray,
        outside_max_diff=max_diff,
        outside_psnr=psnr,
    )


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> dict[str, float | int]:
    """Mean and bootstrap (BCa) ``confidence`` interval of the finite ``values``; ``n`` counts them.

    With fewer than two distinct values the interval collapses to the mean (NaN when there are none).
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean = float(data.mean())
    if np.ptp(data) == 0:
        return {"mean": mean, "low": mean, "high": mean, "n": int(data.size)}
    interval = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=resamples,
                         random_state=np.random.default_rng(seed)).confidence_interval
    return {"mean": mean, "low": float(interval.low), "high": float(interval.high), "n": int(data.size)}
