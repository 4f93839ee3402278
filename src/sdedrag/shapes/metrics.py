"""ShapesBench measurements: drag success, ground-truth fidelity and realism, bootstrap intervals, case counts.

Images are uint8 [H, W, 3] arrays (``np.asarray(pil_image)``); masks are bool [H, W]; points are
(x, y) in pixels as in :mod:`sdedrag.shapes.data`. A shape is found in a result by its colour: the
pixels within ``tolerance`` (Euclidean, 0-255 RGB) of its palette colour, split into connected regions
by scikit-image. Colour distances are Euclidean in 0-255 RGB units throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion
from scipy.stats import bootstrap, norm
from skimage.measure import label, regionprops
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sdedrag.shapes.data import PALETTE, SIZE_RANGE, Scene, Shape

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
SUCCESS_DISTANCE = 2.0
"""A dragged shape is at the target when its centroid is within this many pixels of it."""
BACKGROUND_TOLERANCE = 30.0
"""A vacated pixel is clean when its colour is within this distance of the ground truth (the background there):
about 17 levels per channel, a faint but visible tint."""
CLEAN_FRACTION = 0.9
"""The vacated area is clean when at least this fraction of its pixels are."""
STRAY_TOLERANCE = 40.0
"""A pixel is stray when it is farther than this from the ground truth and from every mix of the ground-truth
background with the moved shape's colour (what the shape's anti-aliased edge can produce anywhere)."""


def min_shape_area(resolution: int) -> float:
    """MIN_FRACTION of the smallest shape the data can hold (a disc of the smallest size)."""
    return MIN_FRACTION * np.pi * (SIZE_RANGE[0] * resolution) ** 2


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


def reached(metrics: DragMetrics) -> bool:
    """The shape is found within SUCCESS_DISTANCE of the target and not duplicated (the first success measure)."""
    return bool(metrics.found and metrics.distance <= SUCCESS_DISTANCE and not metrics.duplicated)


def masked_psnr(truth: np.ndarray, result: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, data range 255) of ``result`` against ``truth`` over the ``mask`` pixels, capped at PSNR_CAP."""
    if not mask.any() or np.array_equal(truth[mask], result[mask]):
        return PSNR_CAP
    return min(PSNR_CAP, float(peak_signal_noise_ratio(truth[mask], result[mask], data_range=255)))


def masked_ssim(truth: np.ndarray, result: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the ``mask`` pixels of the SSIM map (7x7 windows, per channel) of ``result`` against ``truth``."""
    _, ssim_map = structural_similarity(truth, result, channel_axis=-1, data_range=255, full=True)
    return float(ssim_map[mask].mean()) if mask.any() else 1.0


def vacated_area(shape: Shape, target: tuple[float, float], height: int, width: int) -> np.ndarray:
    """The source footprint minus the target footprint widened by SUCCESS_DISTANCE (a shape within the success
    distance of the target may cover that band): where the ground truth shows only background."""
    near_target = binary_dilation(shape.moved(target).mask(height, width), iterations=math.ceil(SUCCESS_DISTANCE))
    return shape.mask(height, width) & ~near_target


def stray_mask(result: np.ndarray, truth: np.ndarray, background: np.ndarray, rgb: Sequence[int],
               tolerance: float = STRAY_TOLERANCE) -> np.ndarray:
    """Pixels farther than ``tolerance`` from ``truth`` and from the colour segment between ``background`` and
    ``rgb`` (every mix an anti-aliased edge of that shape can produce), bool [H, W]."""
    pixels, start = result.astype(np.float64), background.astype(np.float64)
    span = np.asarray(rgb, dtype=np.float64) - start
    weight = np.clip(((pixels - start) * span).sum(-1) / np.maximum((span * span).sum(-1), 1e-9), 0.0, 1.0)
    to_segment = np.linalg.norm(pixels - start - weight[..., None] * span, axis=-1)
    to_truth = np.linalg.norm(pixels - truth.astype(np.float64), axis=-1)
    return (to_segment > tolerance) & (to_truth > tolerance)


@dataclass(frozen=True)
class TruthMetrics:
    """A drag result against its ground truth. Higher is better for PSNR (dB), SSIM (at most 1) and the clean
    fraction; lower is better for the vacated error (0-255 RGB units) and the stray fraction."""

    truth_psnr: float  # inside the editable mask
    truth_ssim: float  # inside the editable mask
    vacated_error: float  # mean colour distance to the ground truth (the background) over the vacated area
    vacated_clean_fraction: float  # vacated pixels within BACKGROUND_TOLERANCE of the ground truth
    vacated_clean: bool  # vacated_clean_fraction >= CLEAN_FRACTION
    stray_fraction: float  # editable pixels that are neither background nor the moved shape (see stray_mask)

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def truth_metrics(result: np.ndarray, truth: np.ndarray, background: np.ndarray, shape: Shape,
                  target: tuple[float, float], editable: np.ndarray) -> TruthMetrics:
    """Score a drag of ``shape`` to ``target`` against the ``truth`` image (its scene's ``background`` below)."""
    vacated = vacated_area(shape, target, *editable.shape)
    error = np.linalg.norm(result[vacated].astype(np.float64) - truth[vacated].astype(np.float64), axis=-1)
    clean = float((error <= BACKGROUND_TOLERANCE).mean()) if error.size else 1.0
    stray = stray_mask(result, truth, background, shape.rgb)[editable]
    return TruthMetrics(
        truth_psnr=masked_psnr(truth, result, editable),
        truth_ssim=masked_ssim(truth, result, editable),
        vacated_error=float(error.mean()) if error.size else 0.0,
        vacated_clean_fraction=clean,
        vacated_clean=clean >= CLEAN_FRACTION,
        stray_fraction=float(stray.mean()) if stray.size else 0.0,
    )


def drag_success(metrics: DragMetrics, truth: TruthMetrics) -> bool:
    """At the target within SUCCESS_DISTANCE, not duplicated, and the vacated area clean."""
    return reached(metrics) and truth.vacated_clean


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


AREA_TOLERANCE = 0.25
"""A ground-truth shape counts as recovered when its area is matched within this relative error."""
STRAY_LIMIT = 0.05
"""A generated scene or region is realistic when at most this fraction of its pixels are stray."""


SOLIDITY_LIMIT = 0.85
"""A generated shape is clean when its solidity (area / convex hull area) is at least this."""


def recovered(result: np.ndarray, shape: Shape, mask: np.ndarray) -> bool:
    """Whether ``result`` shows ``shape`` (ground-truth footprint ``mask``): its colour's region nearest its centre
    lies within SUCCESS_DISTANCE of it, with an area within AREA_TOLERANCE of the footprint's."""
    region = find_shape(result, shape, shape.centre)
    return bool(region is not None and math.dist(centroid_xy(region), shape.centre) <= SUCCESS_DISTANCE
                and abs(region.area / max(int(mask.sum()), 1) - 1.0) <= AREA_TOLERANCE)


def completion(result: np.ndarray, scene: Scene, region: np.ndarray) -> float:
    """Share of the shapes that ``region`` cuts (part inside, part visible outside) which ``result`` completes
    as in the ground truth (see :func:`recovered`); 1.0 when the region cuts no shape."""
    cut = [(s, m) for s, m in zip(scene.shapes, scene.masks) if (m & region).any() and (m & ~region).any()]
    return sum(recovered(result, s, m) for s, m in cut) / len(cut) if cut else 1.0


@dataclass(frozen=True)
class SceneMetrics:
    """A whole generated image against its ground-truth scene: faithfulness (PSNR in dB and SSIM against the
    truth, higher is better; the share of its shapes recovered, 1 is best) and realism (extra shapes and the
    realism measures over the whole image, lower is better except solidity)."""

    truth_psnr: float
    truth_ssim: float
    recovered: float  # shapes found within SUCCESS_DISTANCE of their centre with area within AREA_TOLERANCE
    extra_shapes: int  # palette-coloured regions (>= 12 px) that are not a recovered shape
    solidity: float
    colour_error: float
    stray_fraction: float
    success: bool  # every shape recovered, no extra shape, stray_fraction <= STRAY_LIMIT

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def scene_metrics(result: np.ndarray, scene: Scene, min_area: float = 12.0) -> SceneMetrics:
    """Score ``result`` as a rendition of ``scene`` (for example an SDEdit of a corrupted copy of it)."""
    height, width = result.shape[:2]
    matched = sum(recovered(result, shape, mask) for shape, mask in zip(scene.shapes, scene.masks))
    everything = np.ones((height, width), dtype=bool)
    realism = realism_metrics(scene.image, result, everything, scene.background, min_area=min_area)
    share = matched / len(scene.shapes) if scene.shapes else 1.0
    extra = realism.shapes - matched
    return SceneMetrics(
        truth_psnr=masked_psnr(scene.image, result, everything),
        truth_ssim=masked_ssim(scene.image, result, everything),
        recovered=share,
        extra_shapes=extra,
        solidity=realism.solidity,
        colour_error=realism.colour_error,
        stray_fraction=realism.stray_fraction,
        success=share == 1.0 and extra == 0 and realism.stray_fraction <= STRAY_LIMIT,
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


def paired_difference(first: Sequence[float], second: Sequence[float], confidence: float = 0.95) -> dict[str, float | int]:
    """Mean and bootstrap interval of the per-case difference ``first - second`` (cases where both are finite)."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return bootstrap_ci(a - b, confidence)


def cases_needed(differences: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> float:
    """Paired cases for a two-sided level-``alpha`` test to detect the observed mean difference with ``power``:
    n = ((z_{1-alpha/2} + z_{power}) * sd / |mean|)^2 (normal approximation; inf for no difference)."""
    data = np.asarray(differences, dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size < 2 or data.mean() == 0:
        return math.inf
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return float(math.ceil((z * data.std(ddof=1) / abs(data.mean())) ** 2))
