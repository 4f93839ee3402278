"""ShapesBench: drag, inpainting and SDEdit cases with known ground truth, run with SDE and ODE, scored objectively.

A drag case moves one shape of a procedural scene from its centre to a free target; the editable mask
covers the shape and its destination (and no other shape). The ground truth is the same scene with the
shape drawn at the target. The inpainting track regenerates a region of the same scene: the shape's
footprint, or a larger box whose edge halves the shape (so the visible half fixes what the completion must
be). The SDEdit track starts from a corrupted copy of the scene (coarse strokes, jittered colours, or pixel
noise) and scores how real and how faithful to the scene the edit is. The DiffEdit track (text-conditional
models) recolours the case's shape to a palette colour the scene lacks, from the scene's caption to the
edited scene's caption ("a red disc ..." -> "a blue disc ..."); the ground truth is the recoloured scene.

Any pixel-space or Stable Diffusion model runs it at its own resolution. On a latent model the prompt is the
scene's caption, the patch radius is counted in latent pixels, and the drag is run as on SD (per-image LoRA,
guidance ramp): :func:`settings_for` gives each kind of model its defaults.

Results live in a folder any method can fill (see :func:`score_folder`)::

    cases/<case id>/case.json                      seed, index, resolution and grid (the case is rebuilt from them)
    cases/<case id>/input.png, mask.png, truth.png the scene, the drag's editable mask, the drag's ground truth
    cases/<case id>/drag/<label>.png               a drag result, e.g. sde.png, ode.png, dragdiffusion.png
    cases/<case id>/inpaint/<region>/mask.png      the region to regenerate (region: shape or box)
    cases/<case id>/inpaint/<region>/<label>.png   an inpainting of input.png, e.g. sde-10.png
    cases/<case id>/sdedit/<kind>/input.png        the corrupted scene (kind: strokes, jitter or noise)
    cases/<case id>/sdedit/<kind>/<label>.png      an SDEdit of that input, e.g. ode-t0.3.png
    cases/<case id>/diffedit/truth.png             the recoloured scene (case.json names the colour and prompts)
    cases/<case id>/diffedit/<label>.png           a DiffEdit result, e.g. sde.png

A label starting ``sde`` is paired with the label that has ``ode`` in its place for per-case differences.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import binary_dilation
from tqdm.auto import tqdm

from sdedrag.errors import InputError
from sdedrag.lora import LoraCache
from sdedrag.models import load_model
from sdedrag.models.base import DiffusionModel
from sdedrag.models.pixel import PixelUNet
from sdedrag.models.stable_diffusion import StableDiffusion
from sdedrag.session import DragSession
from sdedrag.settings import (
    DRAG_METHODS,
    DiffEditParams,
    DragDiffusionParams,
    DragParams,
    InpaintParams,
    LoraSettings,
    SDEditParams,
)
from sdedrag.shapes.captions import caption
from sdedrag.shapes.data import PALETTE, Scene, fits, sample_scene
from sdedrag.shapes.metrics import (
    SOLIDITY_LIMIT,
    STRAY_LIMIT,
    SUCCESS_DISTANCE,
    bootstrap_ci,
    cases_needed,
    centroid_xy,
    colour_regions,
    completion,
    drag_metrics,
    drag_success,
    find_shape,
    masked_psnr,
    masked_ssim,
    min_shape_area,
    paired_difference,
    reached,
    realism_metrics,
    scene_metrics,
    truth_metrics,
    unchanged_outside,
)
from sdedrag.shapes.settings import (
    SHAPES_DRAG,
    SHAPES_DRAGDIFFUSION,
    SHAPES_SD_DRAG,
    SHAPES_SD_DRAGDIFFUSION,
    SHAPES_SD_DRAGDIFFUSION_LORA,
    SHAPES_SD_GUIDANCE,
    SHAPES_SD_LORA,
)
from sdedrag.tasks.common import require_plain_model
from sdedrag.tasks.diffedit import diffedit
from sdedrag.tasks.drag import DragRequest, DragResult
from sdedrag.tasks.inpaint import inpaint
from sdedrag.tasks.sdedit import sdedit

DRAG_DISTANCE = (0.25, 0.45)
"""A case's drag length as a fraction of the resolution."""
MASK_MARGIN = 2
"""Pixels the editable area extends beyond the shape's footprints at source and target."""
TRACKS = ("drag", "inpaint", "sdedit", "diffedit")
PIXEL_TRACKS = TRACKS[:3]
"""The tracks a model without text conditioning runs (DiffEdit edits by prompt)."""
METHODS = ("sde", "ode")
INPAINT_REGIONS = ("shape", "box")
BOX_FRACTION = 0.5
"""The box region's side as a fraction of the resolution; one of its edges runs through the shape's centre."""
CORRUPTIONS = ("strokes", "jitter", "noise")
STROKE_BLOCK = 4
"""The strokes corruption paints the scene in flat STROKE_BLOCK x STROKE_BLOCK blocks of their mean colour."""
JITTER = 40.0
"""The jitter corruption shifts the background's and each shape's colour by up to this much per channel."""
NOISE_STD = 40.0
"""The noise corruption adds Gaussian pixel noise of this standard deviation (0-255 units)."""
EDIT_MARGIN = 2
"""Pixels around the recoloured shape that count as its edit region when measuring changes outside it."""


@dataclass(frozen=True)
class DragCase:
    """Move ``scene.shapes[shape_index]`` from its centre to ``target``; ``editable`` is the mask."""

    case_id: str
    scene: Scene
    shape_index: int
    target: tuple[float, float]
    editable: np.ndarray
    seed: int
    index: int
    grid: int = 1
    """The drag vector is a whole number of ``grid`` pixels in x and y (a latent model's latent pixel)."""

    @property
    def shape(self):
        return self.scene.shapes[self.shape_index]

    @property
    def source(self) -> tuple[float, float]:
        return self.shape.centre

    @property
    def resolution(self) -> int:
        return self.scene.image.shape[0]

    def ground_truth(self) -> Scene:
        return self.scene.moved(self.shape_index, self.target)

    def radius(self, latent_scale: int = 1) -> int:
        """The patch radius (in latent pixels of ``latent_scale`` image pixels) that covers the shape: its
        circumscribed circle, plus a latent pixel."""
        return math.ceil(self.shape.radius / latent_scale) + 1

    def edit_colour(self) -> str:
        """The DiffEdit track's new colour for the shape: a palette colour the scene lacks, drawn from the seed."""
        free = sorted(set(PALETTE) - {s.colour for s in self.scene.shapes})
        return str(np.random.default_rng([self.seed, self.index, 3]).choice(free))

    def edited(self) -> Scene:
        """The DiffEdit track's ground truth: the scene with the shape recoloured."""
        shapes = list(self.scene.shapes)
        shapes[self.shape_index] = replace(self.shape, colour=self.edit_colour())
        return self.scene.with_shapes(shapes)


@dataclass(frozen=True)
class BenchSettings:
    """What a ShapesBench run does for every case (the settings of all three tracks)."""

    tracks: tuple[str, ...] = PIXEL_TRACKS
    drag: DragParams = SHAPES_DRAG
    dragdiffusion: DragDiffusionParams = SHAPES_DRAGDIFFUSION
    drag_methods: tuple[str, ...] = METHODS
    """The drag track's methods (of DRAG_METHODS); the other tracks compare ``methods``."""
    lora: LoraSettings | None = None
    """Per-image LoRA for SDE-Drag and ODE-Drag (latent models); None for none."""
    dragdiffusion_lora: LoraSettings | None = None
    guidance: float = 1.0
    """Classifier-free guidance of the inpainting, SDEdit and DiffEdit tracks (the prompt is the scene's caption)."""
    inpaint_regions: tuple[str, ...] = INPAINT_REGIONS
    inpaint_steps: tuple[int, ...] = (5, 10, 25, 50)
    known_regions: tuple[str | None, ...] = (None,)
    """Known-region rules for inpainting; None is the inpaint task's default rule."""
    corruptions: tuple[str, ...] = CORRUPTIONS
    sdedit_t0: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5)
    sdedit_steps: int = 50
    diffedit: DiffEditParams = DiffEditParams()
    """DiffEdit's settings but for ``guidance`` and ``seed``, which come from this run's."""
    seed: int = 0
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        unknown = (set(self.tracks) - set(TRACKS)) | (set(self.inpaint_regions) - set(INPAINT_REGIONS)) | (
            set(self.corruptions) - set(CORRUPTIONS)) | (set(self.drag_methods) - set(DRAG_METHODS))
        if unknown:
            raise InputError(f"unknown ShapesBench track, region or corruption: {', '.join(sorted(unknown))}")


def model_resolution(model: DiffusionModel) -> int:
    """The image size a pixel-space or Stable Diffusion model was trained at (ShapesBench scenes are square)."""
    if isinstance(model, PixelUNet):
        return int(model.unet.config.sample_size)
    if isinstance(model, StableDiffusion):
        return int(model.pipe.unet.config.sample_size) * model.latent_scale
    raise InputError(f"ShapesBench needs a pixel-space or Stable Diffusion model such as 'shapes' or 'shapes-sd'; "
                     f"{model.name!r} is neither")


def is_text_model(model: DiffusionModel) -> bool:
    """Whether ``model`` takes a prompt (then cases are prompted with their scene's caption)."""
    return isinstance(model, StableDiffusion)


def settings_for(model: DiffusionModel, **changes) -> BenchSettings:
    """ShapesBench's defaults for ``model`` with ``changes``: on a pixel-space model the shapes settings and three
    tracks; on a latent model the paper's DragBench drag (with LoRA), caption guidance, and the DiffEdit track."""
    model_resolution(model)
    require_plain_model(model, "ShapesBench")
    if is_text_model(model):
        base = BenchSettings(tracks=TRACKS, drag=SHAPES_SD_DRAG, dragdiffusion=SHAPES_SD_DRAGDIFFUSION,
                             lora=SHAPES_SD_LORA, dragdiffusion_lora=SHAPES_SD_DRAGDIFFUSION_LORA,
                             guidance=SHAPES_SD_GUIDANCE)
    else:
        base = BenchSettings()
    settings = replace(base, **changes)
    if "diffedit" in settings.tracks and not is_text_model(model):
        raise InputError(f"the DiffEdit track edits by prompt; {model.name!r} takes none")
    return settings


def scene_prompt(model: DiffusionModel, scene: Scene) -> str:
    """The scene's caption for a text-conditional model, else the empty prompt."""
    return caption(scene) if is_text_model(model) else ""


def make_drag_case(seed: int, index: int, resolution: int = 32, grid: int = 1, tries: int = 200) -> DragCase:
    """Case ``index`` of the benchmark seeded by ``seed`` (deterministic). With ``grid`` > 1 the drag vector is
    rounded to whole multiples of ``grid`` pixels: a latent-space method moves content by whole latent pixels,
    so on a latent model (grid = its latent scale) the true result is then one it can reach exactly."""
    rng = np.random.default_rng([seed, index])
    for _ in range(tries):
        scene = sample_scene(rng, resolution)
        k = int(rng.integers(len(scene.shapes)))
        shape, others = scene.shapes[k], [s for i, s in enumerate(scene.shapes) if i != k]
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(*DRAG_DISTANCE) * resolution
        vector = np.array([length * np.cos(angle), length * np.sin(angle)])
        if grid > 1:
            vector = grid * np.round(vector / grid)
        target = (shape.centre[0] + vector[0], shape.centre[1] + vector[1])
        if not fits(shape.moved(target), others, resolution, gap=MASK_MARGIN + 2):
            continue
        footprint = scene.masks[k] | shape.moved(target).mask(resolution, resolution)
        editable = binary_dilation(footprint, iterations=MASK_MARGIN)
        for i, mask in enumerate(scene.masks):
            if i != k:
                editable &= ~binary_dilation(mask, iterations=1)
        return DragCase(f"{seed}-{index:04d}", scene, k, (float(target[0]), float(target[1])), editable, seed, index,
                        grid)
    raise RuntimeError(f"no drag case found for seed {seed}, index {index} in {tries} tries")


def run_drag(model: DiffusionModel, case: DragCase, method: str,
             params: DragParams | DragDiffusionParams = SHAPES_DRAG, progress: str | None = None,
             lora: LoraSettings | None = None, lora_cache: LoraCache | None = None) -> DragResult:
    """Drag the case's shape with SDE-Drag or ODE-Drag (the patch radius fitted to the shape), or with
    DragDiffusion when ``params`` are DragDiffusionParams, prompted with the scene's caption on a text model and
    with per-image ``lora`` if given; ``progress`` names a per-move progress bar on stderr."""
    if not isinstance(params, DragDiffusionParams):
        params = replace(params, method=method, radius=case.radius(model.latent_scale))
    request = DragRequest(case.scene.pil(), [case.source], [case.target], case.editable,
                          scene_prompt(model, case.scene), params)
    session = DragSession(model, lora_cache=lora_cache)
    with tqdm(desc=progress, unit="move", disable=progress is None, file=sys.stderr) as bar:
        for result in session.stream(request, lora):
            bar.total = result.moves
            bar.update()
    return result


def score_drag(case: DragCase, result: np.ndarray) -> dict:
    """Every drag measure of ``result`` (uint8 [H, W, 3]): the colour-based ones, the ground-truth ones,
    ``reached`` (the first success measure) and ``success`` (reached and the vacated area clean)."""
    metrics = drag_metrics(case.scene.image, result, case.shape, case.target, case.editable)
    truth = truth_metrics(result, case.ground_truth().image, case.scene.background, case.shape, case.target,
                          case.editable)
    return {**metrics.to_dict(), **truth.to_dict(), "reached": reached(metrics), "success": drag_success(metrics, truth)}


def drag_record(case: DragCase, method: str, result: DragResult) -> dict:
    """One row of the drag track: the case, the method, every drag measure and the drag's seconds."""
    row = {"case": case.case_id, "track": "drag", "group": "drag", "label": method, "method": method,
           **score_drag(case, np.asarray(result.image))}
    row["seconds"] = result.timings["drag_seconds"]
    return row


def inpaint_region(case: DragCase, kind: str = "shape") -> np.ndarray:
    """The region to regenerate: ``shape``, the shape's footprint dilated by MASK_MARGIN; ``box``, a square of
    BOX_FRACTION of the image whose edge runs through the shape's centre, on a side drawn from the case's seed."""
    if kind == "shape":
        return binary_dilation(case.scene.masks[case.shape_index], iterations=MASK_MARGIN)
    if kind != "box":
        raise InputError(f"inpainting region must be one of {', '.join(INPAINT_REGIONS)}, got {kind!r}")
    side = BOX_FRACTION * case.resolution
    x, y = case.source
    dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1)][int(np.random.default_rng([case.seed, case.index, 1]).integers(4))]
    left = x - side / 2 + dx * side / 2
    top = y - side / 2 + dy * side / 2
    rows, cols = np.mgrid[0:case.resolution, 0:case.resolution] + 0.5
    return (cols >= left) & (cols <= left + side) & (rows >= top) & (rows <= top + side)


def inpaint_label(method: str, steps: int, known: str | None = None) -> str:
    return f"{method}-{steps}" if known is None else f"{method}-{steps}-{known}"


def run_inpaint(model: DiffusionModel, case: DragCase, region: np.ndarray, method: str, steps: int, seed: int,
                known: str | None = None, guidance: float = 1.0) -> Image.Image:
    """Regenerate ``region`` of the case's scene from pure noise (t0 = 1) with ``steps`` solver steps."""
    params = InpaintParams(method=method, steps=steps, t0=1.0, order=1, guidance=guidance, seed=seed, paste_back=False)
    if known is not None:
        params = replace(params, known_region=known)
    return inpaint(model, case.scene.pil(), region, scene_prompt(model, case.scene), params=params).image


def score_inpaint(case: DragCase, region: np.ndarray, result: np.ndarray) -> dict:
    """Realism of a regenerated ``region`` (old ``clean`` kept), fidelity to the scene inside it, and ``success``:
    stray pixels at most STRAY_LIMIT, every shape at least SOLIDITY_LIMIT solid, every cut shape completed."""
    metrics = realism_metrics(case.scene.image, result, region, case.scene.background)
    completed = completion(result, case.scene, region)
    solid = not metrics.solidity < SOLIDITY_LIMIT  # NaN (no shape) is solid
    return {
        **metrics.to_dict(),
        "clean": bool(metrics.shapes <= 1 and metrics.stray_fraction <= 0.1 and solid),
        "truth_psnr": masked_psnr(case.scene.image, result, region),
        "truth_ssim": masked_ssim(case.scene.image, result, region),
        "completed": completed,
        "success": bool(metrics.stray_fraction <= STRAY_LIMIT and solid and completed == 1.0),
    }


def corrupt(case: DragCase, kind: str) -> np.ndarray:
    """The SDEdit track's input: the case's scene as coarse ``strokes``, with jittered colours, or with noise."""
    scene, rng = case.scene, np.random.default_rng([case.seed, case.index, 2])
    image = scene.image.astype(np.float64)
    if kind == "strokes":
        size = case.resolution // STROKE_BLOCK
        blocks = image.reshape(size, STROKE_BLOCK, size, STROKE_BLOCK, 3).mean(axis=(1, 3))
        out = np.repeat(np.repeat(blocks, STROKE_BLOCK, axis=0), STROKE_BLOCK, axis=1)
    elif kind == "jitter":
        out = image + rng.uniform(-JITTER, JITTER, size=3)
        for shape in scene.shapes:
            cover = shape.coverage(case.resolution, case.resolution)[..., None]
            out += cover * rng.uniform(-JITTER, JITTER, size=3)
    elif kind == "noise":
        out = image + rng.normal(0.0, NOISE_STD, size=image.shape)
    else:
        raise InputError(f"corruption must be one of {', '.join(CORRUPTIONS)}, got {kind!r}")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def sdedit_label(method: str, t0: float) -> str:
    return f"{method}-t{t0:g}"


def run_sdedit(model: DiffusionModel, case: DragCase, image: np.ndarray, method: str, t0: float, steps: int,
               seed: int, guidance: float = 1.0) -> Image.Image:
    """SDEdit of ``image`` (a corruption of the case's scene) at ``t0``; SDE and ODE draw the same noisy start
    from ``seed``."""
    params = SDEditParams(method=method, steps=steps, t0=t0, order=1, guidance=guidance, seed=seed)
    return sdedit(model, Image.fromarray(image), scene_prompt(model, case.scene), params=params).image


def score_sdedit(case: DragCase, result: np.ndarray) -> dict:
    """Faithfulness to the case's scene and realism of a whole SDEdit result (see ``scene_metrics``)."""
    return scene_metrics(result, case.scene).to_dict()


def diffedit_prompts(case: DragCase) -> tuple[str, str]:
    """The DiffEdit track's source and target prompts: the captions of the scene and of the recoloured scene."""
    return caption(case.scene), caption(case.edited())


def run_diffedit(model: DiffusionModel, case: DragCase, method: str, params: DiffEditParams) -> Image.Image:
    """DiffEdit of the case's scene from its caption to the recoloured scene's caption."""
    source, target = diffedit_prompts(case)
    return diffedit(model, case.scene.pil(), source, target, replace(params, method=method)).image


def score_diffedit(case: DragCase, result: np.ndarray) -> dict:
    """How well ``result`` (uint8 [H, W, 3]) recoloured the shape: ``recoloured`` (a region of the new colour at
    least half the shape's area within SUCCESS_DISTANCE of its centre), ``old_colour_gone`` (no shape-sized region
    of the old colour left), ``success`` (both); PSNR against the recoloured scene, whole and inside the edit
    region (the shape dilated by EDIT_MARGIN), and the change outside that region."""
    shape = case.shape
    found = find_shape(result, replace(shape, colour=case.edit_colour()), shape.centre)
    recoloured = bool(found is not None and found.area >= 0.5 * shape.area
                      and math.dist(centroid_xy(found), shape.centre) <= SUCCESS_DISTANCE)
    old_gone = not colour_regions(result, shape.rgb, min_area=min_shape_area(case.resolution))
    truth, region = case.edited().image, binary_dilation(case.scene.masks[case.shape_index], iterations=EDIT_MARGIN)
    outside_max, outside_psnr = unchanged_outside(case.scene.image, result, region)
    return {"recoloured": recoloured, "old_colour_gone": old_gone, "success": recoloured and old_gone,
            "truth_psnr": masked_psnr(truth, result, np.ones_like(region)), "region_psnr": masked_psnr(truth, result, region),
            "outside_max_diff": outside_max, "outside_psnr": outside_psnr}


def write_case(case: DragCase, folder: Path) -> None:
    """The case's inputs: case.json, input.png, mask.png, truth.png, the inpainting masks, SDEdit inputs and the
    DiffEdit ground truth."""
    folder.mkdir(parents=True, exist_ok=True)
    source_prompt, target_prompt = diffedit_prompts(case)
    spec = {"case": case.case_id, "seed": case.seed, "index": case.index, "resolution": case.resolution,
            "grid": case.grid,
            "shape": case.shape.colour + " " + case.shape.kind, "source": list(case.source), "target": list(case.target),
            "prompt": source_prompt, "diffedit": {"colour": case.edit_colour(), "target_prompt": target_prompt}}
    (folder / "case.json").write_text(json.dumps(spec, indent=2) + "\n")
    case.scene.pil().save(folder / "input.png")
    Image.fromarray(case.editable).save(folder / "mask.png")
    case.ground_truth().pil().save(folder / "truth.png")
    for kind in INPAINT_REGIONS:
        (folder / "inpaint" / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(inpaint_region(case, kind)).save(folder / "inpaint" / kind / "mask.png")
    for kind in CORRUPTIONS:
        (folder / "sdedit" / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(corrupt(case, kind)).save(folder / "sdedit" / kind / "input.png")
    (folder / "diffedit").mkdir(exist_ok=True)
    case.edited().pil().save(folder / "diffedit" / "truth.png")


def run_case(model: DiffusionModel, case: DragCase, settings: BenchSettings, folder: Path,
             lora_cache: LoraCache | None = None) -> None:
    """Write the case's inputs and every method's result of every chosen track into ``folder``."""
    write_case(case, folder)
    if "drag" in settings.tracks:
        (folder / "drag").mkdir(exist_ok=True)
        params = replace(settings.drag, seed=settings.seed)
        for method in settings.drag_methods:
            if method == "dragdiffusion":
                result = run_drag(model, case, method, settings.dragdiffusion, lora=settings.dragdiffusion_lora,
                                  lora_cache=lora_cache)
            else:
                result = run_drag(model, case, method, params, lora=settings.lora, lora_cache=lora_cache)
            result.image.save(folder / "drag" / f"{method}.png")
    if "inpaint" in settings.tracks:
        for kind in settings.inpaint_regions:
            region = inpaint_region(case, kind)
            for steps in settings.inpaint_steps:
                for known in settings.known_regions:
                    for method in settings.methods:
                        image = run_inpaint(model, case, region, method, steps, settings.seed, known, settings.guidance)
                        image.save(folder / "inpaint" / kind / f"{inpaint_label(method, steps, known)}.png")
    if "sdedit" in settings.tracks:
        for kind in settings.corruptions:
            corrupted = corrupt(case, kind)
            for t0 in settings.sdedit_t0:
                for method in settings.methods:
                    image = run_sdedit(model, case, corrupted, method, t0, settings.sdedit_steps, settings.seed,
                                       settings.guidance)
                    image.save(folder / "sdedit" / kind / f"{sdedit_label(method, t0)}.png")
    if "diffedit" in settings.tracks:
        params = replace(settings.diffedit, seed=settings.seed, guidance=settings.guidance)
        for method in settings.methods:
            run_diffedit(model, case, method, params).save(folder / "diffedit" / f"{method}.png")


_WORKER_MODEL: DiffusionModel | None = None


def _start_worker(model: str, device: str, dtype: str) -> None:
    """A worker process: one thread, and the model loaded once."""
    global _WORKER_MODEL
    torch.set_num_threads(1)
    _WORKER_MODEL = load_model(model, device, dtype)


def _work(index: int, settings: BenchSettings, resolution: int, folder: Path, lora_cache: LoraCache | None) -> None:
    case = make_drag_case(settings.seed, index, resolution, _WORKER_MODEL.latent_scale)
    run_case(_WORKER_MODEL, case, settings, folder / "cases" / case.case_id, lora_cache)


def run_cases(model: DiffusionModel, cases: int, settings: BenchSettings, folder: Path, workers: int = 1,
              model_spec: tuple[str, str, str] | None = None, lora_cache: LoraCache | None = None) -> None:
    """Run cases 0..``cases``-1 into ``folder``/cases with a progress bar on stderr; with ``workers`` > 1, in
    spawned processes that each load ``model_spec`` (name, device, dtype) once and use one thread. Per-image LoRA
    weights go to ``lora_cache`` (the default cache when None)."""
    resolution = model_resolution(model)
    bar = tqdm(total=cases, desc="shapes-bench", unit="case", file=sys.stderr)
    if workers == 1:
        for index in range(cases):
            case = make_drag_case(settings.seed, index, resolution, model.latent_scale)
            run_case(model, case, settings, folder / "cases" / case.case_id, lora_cache)
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=model_spec) as pool:
            jobs = [pool.submit(_work, i, settings, resolution, folder, lora_cache) for i in range(cases)]
            for future in as_completed(jobs):
                future.result()
                bar.update()
    bar.close()


def load_result(path: Path, resolution: int) -> np.ndarray:
    """A result image as uint8 [H, W, 3]; it must have the case's size."""
    image = Image.open(path).convert("RGB")
    if image.size != (resolution, resolution):
        raise InputError(f"{path} is {image.width}x{image.height}, the case is {resolution}x{resolution}")
    return np.asarray(image)


def read_case(folder: Path) -> DragCase:
    """The case a folder holds, rebuilt from its case.json; its input.png must be that case's scene."""
    try:
        spec = json.loads((folder / "case.json").read_text())
        case = make_drag_case(int(spec["seed"]), int(spec["index"]), int(spec["resolution"]), int(spec.get("grid", 1)))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{folder} is not a ShapesBench case folder: {err}") from err
    if not np.array_equal(load_result(folder / "input.png", case.resolution), case.scene.image):
        raise InputError(f"{folder}/input.png is not the scene of case {case.case_id}")
    return case


def score_case(folder: Path) -> list[dict]:
    """One row per result image in a case folder (layout in the module docstring), scored against the truth."""
    case = read_case(folder)
    rows = []

    def add(track: str, group: str, path: Path, scores: dict) -> None:
        rows.append({"case": case.case_id, "track": track, "group": group, "label": path.stem, **scores})

    for path in sorted((folder / "drag").glob("*.png")):
        add("drag", "drag", path, score_drag(case, load_result(path, case.resolution)))
    for kind in INPAINT_REGIONS:
        region = inpaint_region(case, kind)
        for path in sorted((folder / "inpaint" / kind).glob("*.png")):
            if path.name != "mask.png":
                add("inpaint", f"inpaint/{kind}", path, score_inpaint(case, region, load_result(path, case.resolution)))
    for kind in CORRUPTIONS:
        for path in sorted((folder / "sdedit" / kind).glob("*.png")):
            if path.name != "input.png":
                add("sdedit", f"sdedit/{kind}", path, score_sdedit(case, load_result(path, case.resolution)))
    for path in sorted((folder / "diffedit").glob("*.png")):
        if path.name != "truth.png":
            add("diffedit", "diffedit", path, score_diffedit(case, load_result(path, case.resolution)))
    return rows


def score_folder(folder: Path, progress: bool = False) -> list[dict]:
    """Score every case folder under ``folder``/cases (see the module docstring for the layout)."""
    cases = sorted(p for p in (Path(folder) / "cases").glob("*") if p.is_dir())
    if not cases:
        raise InputError(f"{folder} holds no ShapesBench cases (expected {folder}/cases/<case id>/case.json)")
    return [row for case in tqdm(cases, desc="scoring", unit="case", disable=not progress) for row in score_case(case)]


DRAG_SUMMARY = ("success", "reached", "distance", "truth_psnr", "truth_ssim", "vacated_error", "vacated_clean_fraction",
                "stray_fraction", "area_ratio", "colour_error", "solidity", "duplication", "outside_max_diff")
INPAINT_SUMMARY = ("success", "clean", "stray_fraction", "completed", "truth_psnr", "truth_ssim", "solidity",
                   "colour_error", "shapes", "outside_max_diff")
SDEDIT_SUMMARY = ("success", "recovered", "extra_shapes", "stray_fraction", "truth_psnr", "truth_ssim", "solidity",
                  "colour_error")
DIFFEDIT_SUMMARY = ("success", "recoloured", "old_colour_gone", "truth_psnr", "region_psnr", "outside_psnr",
                    "outside_max_diff")
SUMMARY = {"drag": DRAG_SUMMARY, "inpaint": INPAINT_SUMMARY, "sdedit": SDEDIT_SUMMARY, "diffedit": DIFFEDIT_SUMMARY}


def summarize(rows: Iterable[dict]) -> dict:
    """Per group and label (``drag/sde``, ``inpaint/box/ode-10``, ...): mean and bootstrap 95% interval of each
    measure; and per SDE/ODE label pair, the per-case difference (SDE - ODE) with its interval and the cases a
    level-0.05 paired test needs to detect it with power 0.8 (:func:`cases_needed`)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(f"{row['group']}/{row['label']}", []).append(row)
    measures = {}
    for name, group in sorted(groups.items()):
        keys = SUMMARY[group[0]["track"]]
        measures[name] = {key: bootstrap_ci([float(r[key]) for r in group]) for key in keys}
    differences = {}
    for name, group in sorted(groups.items()):
        head, _, label = name.rpartition("/")
        other = groups.get(f"{head}/ode{label[3:]}") if label.startswith("sde") else None
        if other is None:
            continue
        by_case = {r["case"]: r for r in other}
        pairs = [(r, by_case[r["case"]]) for r in group if r["case"] in by_case]
        comparison = {}
        for key in SUMMARY[group[0]["track"]]:
            delta = [float(a[key]) - float(b[key]) for a, b in pairs]
            comparison[key] = {**paired_difference([float(a[key]) for a, _ in pairs], [float(b[key]) for _, b in pairs]),
                               "cases_needed": cases_needed(delta)}
        differences[f"{head}/{label}-vs-ode{label[3:]}"] = comparison
    return {"measures": measures, "sde_minus_ode": differences}


def describe(row: dict) -> str:
    """The key drag measures of a scored row, with units and which way is better, for figures and tables."""
    at = f"{row['distance']:.1f} px from target" if row["found"] else "shape not found"
    return (f"{at} (<= {SUCCESS_DISTANCE:g} ok)\nvacated area {100 * row['vacated_clean_fraction']:.0f}% clean (higher better)\n"
            f"stray {100 * row['stray_fraction']:.0f}% (lower better)\nPSNR {row['truth_psnr']:.1f} dB, "
            f"SSIM {row['truth_ssim']:.2f} (higher better)\n{'SUCCESS' if row['success'] else 'FAIL'}")


def comparison(entries: Sequence[tuple[DragCase, dict[str, np.ndarray], dict[str, dict]]], path: Path) -> None:
    """A grid, one row per case: the input with the editable mask and the drag arrow, each method's result with
    its key measures underneath, and the ground truth; entries are (case, results by name, scored rows by name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrow, Patch

    names = list(entries[0][1])
    columns = 2 + len(names)
    figure, axes = plt.subplots(len(entries), columns, figsize=(2.6 * columns, 3.9 * len(entries)), squeeze=False)
    for row_axes, (case, results, rows) in zip(axes, entries):
        shaded = case.scene.image.astype(np.float64)
        shaded[~case.editable] *= 0.55
        panels = [("input and drag", shaded.astype(np.uint8), f"case {case.case_id}: move the\n{case.shape.colour} "
                   f"{case.shape.kind} {math.dist(case.source, case.target):.1f} px")]
        panels += [(name, results[name], describe(rows[name])) for name in names]
        panels.append(("ground truth", case.ground_truth().image, "the scene with the shape\nat the target"))
        for axis, (title, image, text) in zip(row_axes, panels):
            axis.imshow(image, interpolation="nearest", extent=(0, case.resolution, case.resolution, 0))
            axis.set_title(title, fontsize=10)
            axis.set_xticks([]), axis.set_yticks([])
            axis.set_xlabel(text, fontsize=7.5, loc="left")
        (sx, sy), (tx, ty) = case.source, case.target
        row_axes[0].add_patch(FancyArrow(sx, sy, tx - sx, ty - sy, width=0.6, head_width=2.2, head_length=2.2,
                                         length_includes_head=True, facecolor="white", edgecolor="black", lw=1))
        for axis in row_axes[1:]:
            axis.plot([tx], [ty], marker="+", color="black", markersize=9, mew=1.5)
    handles = [Patch(facecolor="0.45", label="darkened: outside the editable mask (kept as is)"),
               Patch(facecolor="white", edgecolor="black", label="arrow: drag from the shape's centre to the target (+)")]
    height = figure.get_figheight()
    figure.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.3 / height, 1, 1))  # 0.3 inch for the legend
    figure.savefig(path, dpi=100)
    plt.close(figure)
