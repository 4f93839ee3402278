"""The drag run record, shared by the CLI, the UI and the benchmark runner: drag settings to and from run.json's
``args`` (named as ``sdedrag drag``'s options, so ``sdedrag drag --config run.json`` replays any of them), and
the output folder of a finished drag."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdedrag.errors import InputError
from sdedrag.io import file_sha256, run_record, write_json
from sdedrag.lora import default_cache_root
from sdedrag.session import DragSession
from sdedrag.settings import (
    DRAG_METHODS,
    DRAGDIFFUSION_LORA,
    DTYPE_NAMES,
    DragDiffusionParams,
    DragParams,
    LoraSettings,
)
from sdedrag.tasks.drag import DragRequest, DragResult
from sdedrag.tasks.dragdiffusion import DragDiffusionResult
from sdedrag.visualize import draw_drag_arrows, save_gif

COMMAND = "drag"
PARAM_ARGS = (
    "method", "steps", "t0", "step_size", "radius", "alpha", "beta", "guidance", "inversion_guidance", "lora_scale_min",
    "order", "reuse", "seed", "paste_back",
)
"""The DragParams fields a run records (dilate and feather keep their defaults)."""
DRAGDIFFUSION_ARGS = (
    "method", "steps", "t0", "feature_index", "feature_scale", "motion_radius", "tracking_radius", "mask_weight",
    "latent_lr", "iterations", "reach", "start_step", "start_layer", "paste_back",
)
"""The DragDiffusionParams fields a run records (dilate and feather keep their defaults)."""
LORA_ARGS = {"lora_steps": "steps", "lora_rank": "rank", "lora_lr": "learning_rate", "lora_batch_size": "batch_size"}
"""run.json argument -> LoraSettings field."""
MODEL_ARGS = ("model", "device", "dtype", "lora_cache")


def method_defaults(method: str) -> tuple[DragParams | DragDiffusionParams, LoraSettings]:
    """The drag and LoRA settings a method starts from: the paper's for SDE-Drag and ODE-Drag, the authors'
    for DragDiffusion."""
    if method not in DRAG_METHODS:
        raise InputError(f"method must be one of {', '.join(DRAG_METHODS)}, got {method!r}")
    if method == "dragdiffusion":
        return DragDiffusionParams(), DRAGDIFFUSION_LORA
    return DragParams(method=method), LoraSettings()


def settings_args(params: DragParams | DragDiffusionParams, lora: LoraSettings | None) -> dict[str, Any]:
    """The drag and LoRA settings as run.json arguments."""
    names = DRAGDIFFUSION_ARGS if isinstance(params, DragDiffusionParams) else PARAM_ARGS
    lora_values = lora or method_defaults(params.method)[1]
    return {
        **{name: getattr(params, name) for name in names},
        "lora": lora is not None,
        **{arg: getattr(lora_values, name) for arg, name in LORA_ARGS.items()},
    }


def settings_from_args(args: Mapping[str, Any]) -> tuple[DragParams | DragDiffusionParams, LoraSettings | None]:
    """The drag and LoRA settings (None without LoRA) that run.json arguments, or parsed options, describe;
    arguments that are absent or None take the method's defaults (:func:`method_defaults`)."""
    params, lora = method_defaults(args["method"])
    names = DRAGDIFFUSION_ARGS if isinstance(params, DragDiffusionParams) else PARAM_ARGS
    params = replace(params, **{name: args[name] for name in names if args.get(name) is not None})
    lora = replace(lora, **{name: args[arg] for arg, name in LORA_ARGS.items() if args.get(arg) is not None})
    return params, lora if args["lora"] else None


def request_args(request: DragRequest, image: str, mask: str | None) -> dict[str, Any]:
    """The request's own arguments: its image and mask files (as recorded), points and prompt."""
    return {
        "image": image,
        "source": [[float(x), float(y)] for x, y in request.sources],
        "target": [[float(x), float(y)] for x, y in request.targets],
        "mask": mask,
        "prompt": request.prompt,
    }


def session_args(session: DragSession) -> dict[str, Any]:
    """The model arguments that load ``session``'s model again (no LoRA cache when it is the default one)."""
    model = session.model
    root = session.lora_cache.root
    return {
        "model": model.name,
        "device": str(model.device),
        "dtype": next(name for name in DTYPE_NAMES if str(model.dtype) == f"torch.{name}"),
        "lora_cache": None if root == default_cache_root() else str(root),
    }


def drag_results(request: DragRequest, result: DragResult) -> dict[str, Any]:
    """What every drag's run.json reports: the decoding process, moves, timings, warnings and image size, and
    SDE-/ODE-Drag's UNet calls per move (also in full-call equivalents, see ``DragResult``) or DragDiffusion's
    Adam steps and where point tracking left the handles."""
    results = {
        "process": request.params.process,
        "moves": result.moves,
        "timings": result.timings,
        "warnings": result.warnings,
        "size": list(request.image.size),
    }
    if isinstance(result, DragDiffusionResult):
        results.update(iterations=result.iterations, tracked=[list(point) for point in result.handles])
    elif result.frames:
        results.update(unet_calls_per_move=result.unet_calls / len(result.frames),
                       unet_call_equivalents_per_move=result.call_equivalents / len(result.frames))
    return results


def save_drag_outputs(folder: Path, request: DragRequest, result: DragResult) -> None:
    """Write result.png, trajectory.gif, its frames as frames/000_input.png (the input) and frames/NNN.png (the
    result after move NNN, GIF frame NNN), and input_with_points.png into ``folder``."""
    result.image.save(folder / "result.png")
    (folder / "frames").mkdir()
    request.image.save(folder / "frames" / "000_input.png")
    for move, frame in enumerate(result.frames, start=1):
        frame.save(folder / "frames" / f"{move:03d}.png")
    save_gif([request.image, *result.frames], folder / "trajectory.gif")
    arrows = draw_drag_arrows(request.image, list(request.sources), list(request.targets), request.mask)
    arrows.save(folder / "input_with_points.png")


def write_drag_run(
    folder: Path, request: DragRequest, result: DragResult, args: Mapping[str, Any], image: Path, mask: Path | None
) -> None:
    """Save a finished drag's outputs and its run.json (``args``, with the ``image`` and ``mask`` files hashed)."""
    save_drag_outputs(folder, request, result)
    results = {
        **drag_results(request, result),
        "image_sha256": file_sha256(image),
        "mask_sha256": file_sha256(mask) if mask else None,
    }
    write_json(folder / "run.json", run_record(COMMAND, args, results))
