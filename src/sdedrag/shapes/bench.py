"""ShapesBench: drag and inpainting cases with known ground truth, run with SDE and ODE, measured objectively.

A drag case moves one shape of a procedural scene from its centre to a free target; the editable mask
covers the shape and its destination (and no other shape). The ground truth is the same scene with the
shape drawn at the target. An inpainting case regenerates the (slightly dilated) footprint of one shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation

from sdedrag.errors import InputError
from sdedrag.models.base import DiffusionModel
from sdedrag.models.pixel import PixelUNet
from sdedrag.shapes.data import Scene, fits, sample_scene
from sdedrag.shapes.metrics import bootstrap_ci, drag_metrics, realism_metrics
from sdedrag.tasks.drag import DragParams, DragResult, drag
from sdedrag.tasks.inpaint import inpaint
from sdedrag.visualize import draw_drag_arrows, side_by_side

DRAG_DISTANCE = (0.25, 0.45)
"""A case's drag length as a fraction of the resolution."""
MASK_MARGIN = 2
"""Pixels the editable area extends beyond the shape's footprints at source and target."""
SUCCESS_DISTANCE = 2.0
"""A drag succeeds when the shape is found within this many pixels of the target and is not duplicated."""
SHAPES_DRAG = DragParams(steps=100, t0=0.3, paste_back=False, guidance=1.0)
"""Drag settings for the pixel-space shapes model: the paper's step size and patch scaling, and t0 = 0.3,
where this model's linear schedule keeps alpha-bar 0.39 (the paper's t0 = 0.6 is on SD's scaled-linear
schedule, alpha-bar 0.16; here 0.6 would leave 0.03 and wash the pasted patch out). The mask rule alone
keeps every pixel outside the mask exact in pixel space, so there is nothing to paste back."""


@dataclass(frozen=True)
class DragCase:
    """Move ``scene.shapes[shape_index]`` from its centre to ``target``; ``editable`` is the mask."""

    case_id: str
    scene: Scene
    shape_index: int
    target: tuple[float, float]
    editable: np.ndarray

    @property
    def shape(self):
        return self.scene.shapes[self.shape_index]

    @property
    def source(self) -> tuple[float, float]:
        return self.shape.centre

    def ground_truth(self) -> Scene:
        return self.scene.moved(self.shape_index, self.target)

    def radius(self) -> int:
        """The patch radius that covers the shape (its circumscribed circle, plus a pixel)."""
        return math.ceil(self.shape.radius) + 1


def model_resolution(model: DiffusionModel) -> int:
    """The image size a pixel-space shapes model was trained at (ShapesBench needs such a model)."""
    if not isinstance(model, PixelUNet):
        raise InputError(f"ShapesBench needs a pixel-space model such as 'shapes'; {model.name!r} is not one")
    return int(model.unet.config.sample_size)


def make_drag_case(seed: int, index: int, resolution: int = 32, tries: int = 200) -> DragCase:
    """Case ``index`` of the benchmark seeded by ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    for _ in range(tries):
        scene = sample_scene(rng, resolution)
        k = int(rng.integers(len(scene.shapes)))
        shape, others = scene.shapes[k], [s for i, s in enumerate(scene.shapes) if i != k]
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(*DRAG_DISTANCE) * resolution
        target = (shape.centre[0] + length * np.cos(angle), shape.centre[1] + length * np.sin(angle))
        if not fits(shape.moved(target), others, resolution, gap=MASK_MARGIN + 2):
            continue
        footprint = scene.masks[k] | shape.moved(target).mask(resolution, resolution)
        editable = binary_dilation(footprint, iterations=MASK_MARGIN)
        for i, mask in enumerate(scene.masks):
            if i != k:
                editable &= ~binary_dilation(mask, iterations=1)
        return DragCase(f"{seed}-{index:04d}", scene, k, (float(target[0]), float(target[1])), editable)
    raise RuntimeError(f"no drag case found for seed {seed}, index {index} in {tries} tries")


def run_drag(model: DiffusionModel, case: DragCase, method: str, params: DragParams = SHAPES_DRAG) -> DragResult:
    """Drag the case's shape with SDE-Drag or ODE-Drag (the patch radius fitted to the shape)."""
    params = replace(params, method=method, radius=case.radius())
    return drag(model, case.scene.pil(), [case.source], [case.target], case.editable, "", params)


def drag_record(case: DragCase, method: str, result: DragResult) -> dict:
    """One row of the drag track: the case, the method, and every drag metric."""
    metrics = drag_metrics(case.scene.image, np.asarray(result.image), case.shape, case.target, case.editable)
    row = {"case": case.case_id, "track": "drag", "method": method, **metrics.to_dict()}
    row["success"] = bool(metrics.found and metrics.distance <= SUCCESS_DISTANCE and not metrics.duplicated)
    row["seconds"] = result.timings["drag_seconds"]
    return row


def inpaint_region(case: DragCase) -> np.ndarray:
    """The inpainting track's mask: the dragged shape's footprint, dilated by the mask margin."""
    return binary_dilation(case.scene.masks[case.shape_index], iterations=MASK_MARGIN)


def run_inpaint(model: DiffusionModel, case: DragCase, method: str, steps: int, seed: int) -> tuple[Image.Image, dict]:
    """Regenerate one shape's region of the case's scene; returns the image and its realism row."""
    region = inpaint_region(case)
    result = inpaint(model, case.scene.pil(), region, "", method, steps, 1.0, 1, 1.0, seed, paste_back=False)
    metrics = realism_metrics(case.scene.image, np.asarray(result.image), region, case.scene.background)
    row = {"case": case.case_id, "track": "inpaint", "method": method, "steps": steps, **metrics.to_dict()}
    row["clean"] = bool(metrics.shapes <= 1 and metrics.stray_fraction <= 0.1 and not metrics.solidity < 0.85)
    row["seconds"] = result.seconds
    return result.image, row


DRAG_SUMMARY = ("success", "distance", "area_ratio", "colour_error", "solidity", "duplication", "outside_max_diff")
INPAINT_SUMMARY = ("clean", "stray_fraction", "solidity", "colour_error", "shapes", "outside_max_diff")


def summarize(rows: Iterable[dict]) -> dict:
    """Per track, method (and step count): mean and bootstrap 95% interval of each metric."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        name = row["method"] if row["track"] == "drag" else f"{row['method']}-{row['steps']}"
        groups.setdefault(f"{row['track']}/{name}", []).append(row)
    summary = {}
    for name, group in sorted(groups.items()):
        keys: Sequence[str] = DRAG_SUMMARY if name.startswith("drag/") else INPAINT_SUMMARY
        summary[name] = {key: bootstrap_ci([float(r[key]) for r in group]) for key in keys}
    return summary


def comparison(case: DragCase, results: dict[str, Image.Image], scale: int = 8) -> Image.Image:
    """The input with its mask and drag arrow, each result and the ground truth, enlarged side by side."""

    def enlarge(image: Image.Image) -> Image.Image:
        return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)

    mask = np.repeat(np.repeat(case.editable, scale, axis=0), scale, axis=1)
    arrows = draw_drag_arrows(
        enlarge(case.scene.pil()), [tuple(scale * v for v in case.source)], [tuple(scale * v for v in case.target)], mask
    )
    tiles = [arrows, *(enlarge(image) for image in results.values()), enlarge(case.ground_truth().pil())]
    return side_by_side(tiles, ["input and drag", *results, "ground truth"])
