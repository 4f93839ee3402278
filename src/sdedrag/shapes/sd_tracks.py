"""ShapesBench on a latent Stable Diffusion shapes model (``shapes-sd``): the drag track as on SD, and a DiffEdit track.

Drag: ShapesBench's drag cases (same scenes, masks, targets and scoring as the pixel model), run as on SD:
the scene's caption as the prompt, the per-image LoRA, the guidance ramp and paste-back of the paper's
DragBench setting; the patch radius covers the shape in latent pixels. Results are written in ShapesBench's
folder layout (``cases/<id>/drag/<method>.png``), so ``sdedrag.shapes.bench.score_folder`` scores them.

DiffEdit: a case recolours one shape of a scene to a palette colour the scene lacks; the source prompt is the
scene's caption and the target prompt the edited scene's caption ("a red disc ..." -> "a blue disc ...").
The ground truth is the edited scene. Results: ``diffedit/<id>/{input,truth,sde,ode}.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation

from sdedrag.models.stable_diffusion import StableDiffusion
from sdedrag.session import DragSession
from sdedrag.settings import DiffEditParams, DragParams, LoraSettings
from sdedrag.shapes.bench import METHODS, DragCase, make_drag_case, write_case
from sdedrag.shapes.captions import caption
from sdedrag.shapes.data import PALETTE, Scene, sample_scene
from sdedrag.shapes.metrics import (
    SUCCESS_DISTANCE,
    bootstrap_ci,
    centroid_xy,
    colour_regions,
    find_shape,
    masked_psnr,
    paired_difference,
    unchanged_outside,
)
from sdedrag.shapes.sd_checks import GUIDANCE, min_shape_area
from sdedrag.tasks.diffedit import diffedit
from sdedrag.tasks.drag import DragRequest, DragResult

SD_DRAG = DragParams()
"""The paper's DragBench setting (t0 = 0.6, guidance 3 ramped to 1, LoRA scale ramp, paste-back)."""
SD_DIFFEDIT = DiffEditParams(guidance=GUIDANCE)
"""DiffEdit at its defaults (t0 = 0.8, 50 steps, diffusers' mask), at the guidance shapes-sd samples with."""
EDIT_MARGIN = 2
"""Pixels around the recoloured shape that count as its edit region when measuring changes outside it."""


def latent_radius(case: DragCase, latent_scale: int) -> int:
    """The patch radius (latent pixels) that covers the shape: its circumscribed circle, plus a latent pixel."""
    return math.ceil(case.shape.radius / latent_scale) + 1


def run_sd_drag(session: DragSession, case: DragCase, method: str, params: DragParams = SD_DRAG,
                lora: LoraSettings | None = LoraSettings()) -> DragResult:
    """Drag the case's shape on a latent model with the scene's caption as the prompt."""
    model = session.model
    if not isinstance(model, StableDiffusion):
        raise TypeError(f"{model.name!r} is not a Stable Diffusion model")
    params = replace(params, method=method, radius=latent_radius(case, model.latent_scale))
    request = DragRequest(case.scene.pil(), [case.source], [case.target], case.editable, caption(case.scene), params)
    return session.drag(request, lora)


def run_sd_drag_cases(session: DragSession, indices: Iterable[int], folder: Path, seed: int = 0,
                      resolution: int = 128, params: DragParams = SD_DRAG, lora: LoraSettings | None = LoraSettings(),
                      methods: Sequence[str] = METHODS) -> None:
    """Write cases ``indices`` of seed ``seed`` and each method's drag into ``folder``/cases (results already
    there are kept, so an interrupted run resumes)."""
    for index in indices:
        case = make_drag_case(seed, index, resolution)
        case_folder = Path(folder) / "cases" / case.case_id
        write_case(case, case_folder)
        (case_folder / "drag").mkdir(exist_ok=True)
        for method in methods:
            path = case_folder / "drag" / f"{method}.png"
            if not path.exists():
                run_sd_drag(session, case, method, params, lora).image.save(path)


@dataclass(frozen=True)
class EditCase:
    """Recolour ``scene.shapes[shape_index]`` to ``colour``."""

    case_id: str
    scene: Scene
    shape_index: int
    colour: str

    @property
    def edited(self) -> Scene:
        shapes = list(self.scene.shapes)
        shapes[self.shape_index] = replace(shapes[self.shape_index], colour=self.colour)
        return self.scene.with_shapes(shapes)

    @property
    def prompts(self) -> tuple[str, str]:
        return caption(self.scene), caption(self.edited)

    def region(self) -> np.ndarray:
        """The recoloured shape's footprint, dilated by EDIT_MARGIN."""
        return binary_dilation(self.scene.masks[self.shape_index], iterations=EDIT_MARGIN)


def make_edit_case(seed: int, index: int, resolution: int = 128) -> EditCase:
    """Case ``index`` of the DiffEdit track seeded by ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index, 1])
    scene = sample_scene(rng, resolution)
    k = int(rng.integers(len(scene.shapes)))
    free = sorted(set(PALETTE) - {s.colour for s in scene.shapes})
    return EditCase(f"{seed}-{index:04d}", scene, k, str(rng.choice(free)))


@dataclass(frozen=True)
class EditScores:
    """How well one DiffEdit result recoloured the shape (colours in 0-255 RGB units, distances in pixels)."""

    recoloured: bool  # a shape-sized region of the new colour within SUCCESS_DISTANCE of the shape's centre
    old_colour_gone: bool  # no shape-sized region of the old colour left
    success: bool  # both
    truth_psnr: float  # against the edited scene, whole image
    region_psnr: float  # against the edited scene, inside the edit region
    outside_max_diff: int
    outside_psnr: float


def score_edit(case: EditCase, result: np.ndarray) -> EditScores:
    """Score a uint8 [H, W, 3] DiffEdit result against the edited scene."""
    shape = case.scene.shapes[case.shape_index]
    new = replace(shape, colour=case.colour)
    found = find_shape(result, new, shape.centre)
    recoloured = found is not None and found.area >= 0.5 * shape.area and math.dist(
        centroid_xy(found), shape.centre) <= SUCCESS_DISTANCE
    old_gone = not colour_regions(result, shape.rgb, min_area=min_shape_area(result.shape[0]))
    truth = case.edited.image
    region = case.region()
    outside_max, outside_psnr = unchanged_outside(case.scene.image, result, region)
    return EditScores(recoloured, old_gone, recoloured and old_gone,
                      masked_psnr(truth, result, np.ones(region.shape, dtype=bool)), masked_psnr(truth, result, region),
                      outside_max, outside_psnr)


def run_diffedit_cases(model: StableDiffusion, indices: Iterable[int], folder: Path, seed: int = 0,
                       resolution: int = 128, params: DiffEditParams = SD_DIFFEDIT,
                       methods: Sequence[str] = METHODS) -> list[dict]:
    """Run and score the DiffEdit track's cases ``indices`` (results already in ``folder`` are kept); one row
    per case and method."""
    rows = []
    for index in indices:
        case = make_edit_case(seed, index, resolution)
        case_folder = Path(folder) / "diffedit" / case.case_id
        case_folder.mkdir(parents=True, exist_ok=True)
        case.scene.pil().save(case_folder / "input.png")
        case.edited.pil().save(case_folder / "truth.png")
        source, target = case.prompts
        (case_folder / "case.json").write_text(json.dumps({"case": case.case_id, "source_prompt": source,
                                                           "target_prompt": target}, indent=2) + "\n")
        for method in methods:
            path = case_folder / f"{method}.png"
            if not path.exists():
                diffedit(model, case.scene.pil(), source, target, replace(params, method=method)).image.save(path)
            scores = score_edit(case, np.asarray(Image.open(path).convert("RGB")))
            rows.append({"case": case.case_id, "method": method, **asdict(scores)})
    return rows


def summarize_edits(rows: Sequence[dict], measures: Sequence[str] = ("success", "region_psnr", "truth_psnr",
                                                                      "outside_psnr")) -> dict:
    """Per method, mean and bootstrap 95% interval of each measure; and the per-case SDE - ODE difference."""
    by_method = {m: sorted((r for r in rows if r["method"] == m), key=lambda r: r["case"]) for m in METHODS}
    summary = {m: {k: bootstrap_ci([float(r[k]) for r in rs]) for k in measures} for m, rs in by_method.items()}
    summary["sde-ode"] = {k: paired_difference([float(r[k]) for r in by_method["sde"]],
                                               [float(r[k]) for r in by_method["ode"]]) for k in measures}
    return summary


def evaluate(folder: str | Path, cases: int = 40, seed: int = 0, model: str = "shapes-sd",
             lora_cache: str | Path | None = None) -> dict:
    """Both tracks on ``cases`` cases of ``model`` (resumable), scored and summarised into ``folder``/summary.json."""
    from sdedrag.io import write_json
    from sdedrag.lora import LoraCache
    from sdedrag.models import load_model
    from sdedrag.shapes.bench import score_folder, summarize

    folder = Path(folder)
    session = DragSession(load_model(model, device="cpu"), lora_cache=LoraCache(lora_cache))
    resolution = session.model.pipe.unet.config.sample_size * session.model.latent_scale
    edits = run_diffedit_cases(session.model, range(cases), folder, seed, resolution)
    run_sd_drag_cases(session, range(cases), folder, seed, resolution)
    summary = {"model": model, "cases": cases, "seed": seed, "drag": summarize(score_folder(folder)),
               "diffedit": summarize_edits(edits)}
    write_json(folder / "summary.json", summary)
    return summary
