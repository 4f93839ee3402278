"""The drag UI's logic as plain functions of the widgets' values, free of gradio, so they are unit-testable.

Errors are :class:`sdedrag.errors.InputError`; ``app.py`` shows them in the page.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from sdedrag.errors import InputError
from sdedrag.io import load_mask
from sdedrag.lora import supports_lora
from sdedrag.models import DiffusionModel, PixelUNet, StableDiffusion
from sdedrag.runs import method_defaults, request_args, session_args, settings_args, settings_from_args, write_drag_run
from sdedrag.session import DragSession
from sdedrag.settings import DragDiffusionParams, DragParams, LoraSettings
from sdedrag.shapes.bench import DragCase, make_drag_case, model_resolution, score_drag
from sdedrag.shapes.settings import SHAPES_DRAG, SHAPES_SD_DRAG, SHAPES_SD_LORA
from sdedrag.tasks.common import model_size
from sdedrag.tasks.drag import DragRequest, DragResult, move_count, to_latent_points
from sdedrag.ui import DEFAULT_MAX_PIXELS
from sdedrag.visualize import draw_drag_arrows

VIEW_LONG_SIDE = 640  # small images are enlarged to this for clicking (browsers never enlarge them)
Points = list[list[int]]  # clicked points in image pixels, alternating source, target, source, ...
RANDOM_WEIGHT_MODELS = ("tiny", "tiny-inpaint", "tiny-xl")
"""Built-in models with random weights (for tests): their results are noise by design."""
BRUSH_RGBA = (255, 90, 31, 140)  # the brush's colour (#ff5a1f at 0.55 opacity), for masks shown as painted
SCENE_SEED = 0  # ShapesBench's seed for the page's scenes; the scene index is drawn at random
SCENE_INDICES = 10_000

# The drag options the page sets, with their types (sliders send floats); the rest are `sdedrag drag`'s defaults.
OPTION_TYPES: dict[str, type] = {
    "prompt": str, "method": str, "steps": int, "t0": float, "step_size": float, "radius": int, "alpha": float,
    "beta": float, "guidance": float, "lora_scale_min": float, "order": int, "reuse": int, "paste_back": bool,
    "lora": bool, "lora_steps": int, "lora_rank": int, "lora_lr": float, "seed": int,
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


def editor_value(image: Image.Image, mask: np.ndarray | None = None) -> dict[str, Any]:
    """The brush editor's value for a fresh image: the image as background, nothing painted; a given ``mask``
    (a scene's or an uploaded one) is tinted into the background in the brush's colour, and brushing adds to it."""
    if mask is not None:
        tint = Image.new("RGBA", image.size, (0, 0, 0, 0))
        tint.paste(BRUSH_RGBA, mask=Image.fromarray(mask.astype(np.uint8) * 255))
        image = Image.alpha_composite(image.convert("RGBA"), tint).convert("RGB")
    return {"background": image, "layers": [], "composite": image}


def page_mask(editor: Mapping[str, Any] | None, size: tuple[int, int], preset: np.ndarray | None) -> np.ndarray | None:
    """The editable mask of a run: the brushed area (see :func:`editor_mask`) joined with a ``preset`` mask."""
    brushed = editor_mask(editor, size)
    if preset is None or brushed is None:
        return brushed if preset is None else preset
    return brushed | preset


def open_mask(path: str | Path, image: Image.Image | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An uploaded mask file (non-zero = editable) for ``image``, which it must match in size."""
    if image is None:
        raise InputError("upload an image first, then its mask")
    try:
        return load_mask(path, image.size, max_pixels)
    except InputError as err:
        message = str(err).replace(f"mask {path}", "the uploaded mask").replace(str(path), "the uploaded mask")
        raise InputError(message) from None


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


def model_notice(model: DiffusionModel) -> str:
    """The page's line naming the loaded model and what to expect from it."""
    name = f"**Model: `{model.name}`** on {model.device}."
    if model.name in RANDOM_WEIGHT_MODELS:
        return (f"{name} Its weights are random (it exists to test the page), so every result is noise by design. "
                "For real edits offline start `sdedrag ui --model shapes`; for photos, a Stable Diffusion model "
                "(`sdedrag ui --model stable-diffusion-v1-5/stable-diffusion-v1-5`).")
    if is_shapes_model(model):
        size = model_resolution(model)
        if isinstance(model, StableDiffusion):
            return (f"{name} A small Stable Diffusion (VAE, CLIP text encoder, cross-attention UNet) of captioned "
                    f"coloured shapes ({size}x{size}), trained by `sdedrag train-shapes-sd`. Press **New scene** for a "
                    "ShapesBench scene whose true result is known (its caption becomes the prompt), drag its shape "
                    "with the per-image LoRA, and compare SDE-Drag with ODE-Drag.")
        return (f"{name} A small pixel-space diffusion model of coloured shapes on plain backgrounds ({size}x{size}), "
                "trained by `sdedrag train-shapes`; it takes no prompt. Press **New scene** for a ShapesBench scene "
                "whose true result is known, drag its shape, and compare SDE-Drag with ODE-Drag.")
    return name


def is_shapes_model(model: DiffusionModel) -> bool:
    """Whether ShapesBench scenes and settings are made for ``model``: a pixel-space model, or a Stable Diffusion
    folder written by ``sdedrag train-shapes-sd`` (which holds its training_config.json)."""
    if isinstance(model, PixelUNet):
        return True
    folder = model.pipe.name_or_path if isinstance(model, StableDiffusion) else None
    return bool(folder) and (Path(folder) / "training_config.json").is_file()


def page_defaults(model: DiffusionModel) -> tuple[DragParams, LoraSettings, bool]:
    """The page's initial drag settings, LoRA settings and LoRA switch for ``model``: ShapesBench's drag and
    LoRA settings for a shapes model, else the paper's (with LoRA on where the model supports it)."""
    if not is_shapes_model(model):
        return DragParams(), LoraSettings(), supports_lora(model)
    if isinstance(model, StableDiffusion):
        return SHAPES_SD_DRAG, SHAPES_SD_LORA, supports_lora(model)
    return SHAPES_DRAG, LoraSettings(), False


def method_settings(model: DiffusionModel, method: str) -> tuple[int, float, int, float]:
    """The steps, t0, LoRA steps and LoRA learning rate the page switches to when ``method`` is chosen: the
    authors' for DragDiffusion, the page's defaults for SDE-Drag and ODE-Drag."""
    params, lora = method_defaults(method) if method == "dragdiffusion" else page_defaults(model)[:2]
    return params.steps, params.t0, lora.steps, lora.learning_rate


def limit_decoding(max_pixels: int) -> None:
    """Make PIL refuse, in this process, to decode any image over twice ``max_pixels``: gradio decodes the
    brush layers of the editor before any handler can check their size (uploads are checked exactly)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


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


def points_view(image: Image.Image | None, points: Points, mask: np.ndarray | None,
                marker: tuple[float, float] | None = None) -> Image.Image | None:
    """The input (enlarged by :func:`view_scale`) with the mask shaded, an arrow per source/target pair, a
    dot for an unpaired source and a cross at ``marker`` (a scene's target, in image coordinates); arrows point
    at pixel centres."""
    if image is None:
        return None
    scale = view_scale(image.size)
    if scale > 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    sources, targets = ([((x + 0.5) * scale, (y + 0.5) * scale) for x, y in group] for group in split_points(points))
    view = draw_drag_arrows(image, sources, targets, mask)
    if marker is not None:
        x, y, arm = marker[0] * scale, marker[1] * scale, max(6.0, scale)
        draw = ImageDraw.Draw(view)
        for width, colour in ((5, (255, 255, 255)), (2, (0, 0, 0))):
            draw.line([x - arm, y, x + arm, y], fill=colour, width=width)
            draw.line([x, y - arm, x, y + arm], fill=colour, width=width)
    return view


def points_status(points: Points) -> str:
    """A one-line hint saying what the next click does."""
    pairs, dangling = divmod(len(points), 2)
    if dangling:
        return f"{pairs} pair(s) and a source: click its target"
    return f"{pairs} pair(s): click a source point (red), then its target (blue)"


def drag_settings(options: Mapping[str, Any]) -> tuple[str, DragParams | DragDiffusionParams, LoraSettings | None]:
    """The prompt, drag settings and LoRA settings (None when off) the page's options set; options the page
    does not show keep their defaults."""
    values = {}
    for name, value in options.items():
        if value is None:
            raise InputError(f"{name.replace('_', ' ')} is empty")
        values[name] = OPTION_TYPES[name](value)
    params, lora = settings_from_args({**settings_args(*method_defaults(values.get("method", "sde"))), **values})
    return values.get("prompt", ""), params, lora


def count_moves(model: DiffusionModel, size: tuple[int, int], sources: Sequence[Sequence[float]],
                targets: Sequence[Sequence[float]], step_size: float) -> int:
    """How many moves a drag of ``model`` on an image of ``size`` takes (the drag's own rule, on latent pixels)."""
    scale = model.latent_scale
    width, height = model_size(*size, scale)
    latent_hw = (height // scale, width // scale)
    return move_count(to_latent_points(np.array(sources, dtype=float), size, latent_hw),
                      to_latent_points(np.array(targets, dtype=float), size, latent_hw), step_size)


def run_cost(model: DiffusionModel, size: tuple[int, int] | None, points: Points, options: Mapping[str, Any]) -> str:
    """What a run with the page's ``options`` costs: moves x steps UNet calls (an ODE-Drag move also inverts
    over as many steps), plus the LoRA training steps when the image is new."""
    try:
        _, params, lora = drag_settings(options)
    except InputError as err:
        return f"**Cost:** cannot tell yet: {err}."
    steps = model.schedule.grid(params.steps, params.t0).num_steps
    lora_note = f", plus {lora.steps} LoRA training steps the first time an image is dragged" if (
        lora and supports_lora(model)) else ""
    if isinstance(params, DragDiffusionParams):
        return (f"**Cost of a run:** {steps} DDIM inversion steps, up to {params.iterations} latent-optimisation steps "
                f"(a UNet call and its backward pass each), {steps} decoding steps{lora_note}.")
    per_move = f"{steps} steps" if params.method == "sde" else f"2 x {steps} steps (DDIM inversion, then decoding)"
    calls = steps if params.method == "sde" else 2 * steps
    sources, targets = split_points(points)
    pairs = len(targets)
    if size is None or not pairs:
        head = f"{calls} UNet calls per move ({per_move}); click a point pair to see the number of moves"
    else:
        moves = count_moves(model, size, sources[:pairs], targets, params.step_size)
        head = f"{moves} move(s) x {per_move} = **{moves * calls} UNet calls**"
    runs = 1 if params.method == "sde" else 2
    reuse_note = "" if params.reuse <= 1 else (
        f" With deep-feature reuse every {params.reuse} calls, {runs * math.ceil(steps / params.reuse)} of each move's "
        f"{calls} calls run the whole UNet and the rest only its outer blocks.")
    return (f"**Cost of a run:** {head}{lora_note}. (The last {steps} of {params.steps} steps over [0, T] lie below "
            f"t0 = {params.t0:g}.){reuse_note}")


def new_scene(model: DiffusionModel, index: int | None = None) -> DragCase:
    """ShapesBench drag case ``index`` (random when None) at the shapes ``model``'s resolution."""
    if index is None:
        index = int(np.random.default_rng().integers(SCENE_INDICES))
    return make_drag_case(SCENE_SEED, index, model_resolution(model), model.latent_scale)


def scene_task(case: DragCase) -> str:
    """What the page asks for a scene: which shape to move where."""
    (sx, sy), (tx, ty) = case.source, case.target
    return (f"Scene {case.case_id}: move the {case.shape.colour} {case.shape.kind} at ({sx:.0f}, {sy:.0f}) to the "
            f"cross at ({tx:.0f}, {ty:.0f}): click the shape's centre, then the cross. The editable area is painted.")


def scene_truth(case: DragCase, sources: Sequence[Sequence[float]], targets: Sequence[Sequence[float]],
                mask: np.ndarray | None) -> DragCase | None:
    """The drag case the clicks ask for on ``case``'s scene: the shape under the single source, moved by the
    clicked displacement, scored in the run's ``mask``; None if there is not exactly one pair on a shape."""
    if len(sources) != 1 or len(targets) != 1:
        return None
    (sx, sy), (tx, ty) = sources[0], targets[0]
    under = [k for k, shape_mask in enumerate(case.scene.masks) if shape_mask[int(sy), int(sx)]]
    if not under:
        return None
    shape = case.scene.shapes[under[0]]
    target = (shape.centre[0] + tx - sx, shape.centre[1] + ty - sy)
    editable = np.ones_like(case.editable) if mask is None else mask
    return replace(case, shape_index=under[0], target=target, editable=editable)


MEASURES = (  # (key, header with unit and which way is better, format)
    ("distance", "to target (px, <= 2 ok)", "{:.1f}"),
    ("vacated_clean_fraction", "vacated area clean (higher better)", "{:.0%}"),
    ("stray_fraction", "stray pixels (lower better)", "{:.0%}"),
    ("duplicated", "duplicated", "{}"),
    ("truth_psnr", "PSNR dB (higher better)", "{:.1f}"),
    ("truth_ssim", "SSIM (higher better)", "{:.2f}"),
)


def measures_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of the ground-truth measures of each named result, with a verdict column."""
    header = "| | " + " | ".join(title for _, title, _ in MEASURES) + " | verdict |"
    lines = [header, "|---" * (len(MEASURES) + 2) + "|"]
    for name, row in rows.items():
        cells = [fmt.format(row[key]) if row["found"] or key != "distance" else "not found" for key, _, fmt in MEASURES]
        lines.append(f"| **{name}** | " + " | ".join(cells) + f" | {'success' if row['success'] else 'fail'} |")
    return ("Measured against the ground truth (success: within 2 px of the target, not duplicated, at least 90% "
            "of the vacated area clean):\n\n" + "\n".join(lines))


@dataclass
class RunUpdate:
    """What the page shows while a drag runs: the latest image, progress (``moves`` is 0 until known), a status
    line, and at the end the files to download, any warnings, the images to compare (captioned: the input with
    the drag, each result, a scene's ground truth) and the ground-truth measures (Markdown)."""

    image: Image.Image
    move: int
    moves: int
    message: str
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    gallery: list[tuple[Image.Image, str]] = field(default_factory=list)
    measures: str = ""


def drag_request(image: Image.Image | None, editor: Mapping[str, Any] | None, points: Points,
                 options: Mapping[str, Any], preset: np.ndarray | None = None) -> tuple[DragRequest, LoraSettings | None]:
    """Check the page's inputs (the uploaded ``image``, the brush ``editor``'s value and a ``preset`` mask, the
    clicked points and the options) and make the drag request and LoRA settings of a run."""
    if image is None:
        raise InputError("upload an image first")
    mask = page_mask(editor, image.size, preset)
    sources, targets = split_points(points)
    if not sources:
        raise InputError("click a source point and then its target on the image first")
    if len(sources) != len(targets):
        raise InputError(f"the last source point has no target: click its target (or undo it); got "
                         f"{len(sources)} sources and {len(targets)} targets")
    prompt, params, lora = drag_settings(options)
    return DragRequest(image, sources, targets, mask, prompt, params), lora


def method_name(method: str) -> str:
    return {"sde": "SDE-Drag", "ode": "ODE-Drag", "dragdiffusion": "DragDiffusion"}[method]


def compared(request: DragRequest, results: Mapping[str, Image.Image], case: DragCase | None
             ) -> tuple[list[tuple[Image.Image, str]], str]:
    """The gallery (input with the drag, each named result, a scene's ground truth) and the measures table."""
    clicks = [list(point) for pair in zip(request.sources, request.targets) for point in pair]
    arrows = points_view(request.image, clicks, request.mask)
    gallery = [(arrows, "input and drag"), *((image, name) for name, image in results.items())]
    truth = scene_truth(case, request.sources, request.targets, request.mask) if case is not None else None
    if truth is None:
        note = "" if case is None else "No ground truth: drag one shape with one point pair to measure the result."
        return gallery, note
    gallery.append((truth.ground_truth().pil(), "ground truth"))
    rows = {name: score_drag(truth, np.asarray(image.convert("RGB"))) for name, image in results.items()}
    return gallery, measures_table(rows)


def streamed(session: DragSession, request: DragRequest, lora: LoraSettings | None, label: str = "",
             done: int = 0, total: int = 0) -> Iterator[RunUpdate | DragResult]:
    """Run ``request`` on ``session``, yielding a RunUpdate per move but the last (counted after ``done`` of
    ``total`` moves, default the run's own) and then the final result."""
    for result in session.stream(request, lora):
        if len(result.frames) < result.moves:
            yield RunUpdate(result.image, done + len(result.frames), total or result.moves,
                            f"{label}Move {len(result.frames)} of {result.moves} done.")
    yield result


def run_drag(
    session: DragSession,
    runs_dir: Path,
    image: Image.Image | None,
    editor: Mapping[str, Any] | None,
    points: Points,
    options: Mapping[str, Any],
    case: DragCase | None = None,
    preset: np.ndarray | None = None,
) -> Iterator[RunUpdate]:
    """Check the inputs (see :func:`drag_request`), then drag on ``session``, yielding the input and then each
    move's frame; the last update lists result.png, trajectory.gif, run.json, input.png (and mask.png) in a
    fresh folder under ``runs_dir``, named by the app, never by the user, and, on a ShapesBench scene ``case``,
    the ground truth and the measures against it."""
    request, lora = drag_request(image, editor, points, options, preset)
    params, mask = request.params, request.mask

    start = "LoRA (trained once per image, then cached) and encoding..." if lora else "Encoding..."
    yield RunUpdate(image, 0, 0, start)
    for update in streamed(session, request, lora):
        if isinstance(update, RunUpdate):
            yield update
    result = update
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
    gallery, measures = compared(request, {method_name(params.method): result.image}, case)
    yield RunUpdate(result.image, result.moves, result.moves, message, files, list(result.warnings), gallery, measures)


def compare_drags(
    session: DragSession,
    image: Image.Image | None,
    editor: Mapping[str, Any] | None,
    points: Points,
    options: Mapping[str, Any],
    case: DragCase | None = None,
    preset: np.ndarray | None = None,
) -> Iterator[RunUpdate]:
    """SDE-Drag and then ODE-Drag on the same points and settings, streamed move by move; the last update
    holds both results side by side (with a scene's ground truth and the measures against it)."""
    request, lora = drag_request(image, editor, points, options, preset)
    if isinstance(request.params, DragDiffusionParams):
        raise InputError("the comparison runs SDE-Drag and ODE-Drag: choose one of them as the method first")
    moves = count_moves(session.model, image.size, request.sources, request.targets, request.params.step_size)
    results, warnings = {}, []
    for number, method in enumerate(("sde", "ode")):
        label = f"{method_name(method)}: "
        yield RunUpdate(image, number * moves, 2 * moves, f"{label}encoding...")
        run = replace(request, params=replace(request.params, method=method))
        for update in streamed(session, run, lora, label, number * moves, 2 * moves):
            if isinstance(update, RunUpdate):
                yield update
        results[method_name(method)] = update.image
        warnings += [w for w in update.warnings if w not in warnings]
    gallery, measures = compared(request, results, case)
    message = f"Done: SDE-Drag and ODE-Drag, {moves} move(s) each, side by side below."
    yield RunUpdate(update.image, 2 * moves, 2 * moves, message, [], warnings, gallery, measures)
