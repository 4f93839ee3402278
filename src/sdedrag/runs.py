"""The drag run record, shared by the CLI, the UI and the benchmark runner: drag settings to and from run.json's
``args`` (named as ``sdedrag drag``'s options, so ``sdedrag drag --config run.json`` replays any of them), and
the output folder of a finished drag."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdedrag.io import file_sha256, run_record, write_json
from sdedrag.lora import default_cache_root
from sdedrag.session import DragSession
from sdedrag.settings import DTYPE_NAMES, DragParams, LoraSettings
from sdedrag.tasks.drag import DragRequest, DragResult
from sdedrag.visualize import draw_drag_arrows, save_gif

COMMAND = "drag"
PARAM_ARGS = (
    "method", "steps", "t0", "step_size", "radius", "alpha", "beta", "guidance", "lora_scale_min", "order", "seed",
    "paste_back",
)
"""The DragParams fields a run records (dilate and feather keep their defaults)."""
MODEL_ARGS = ("model", "device", "dtype", "lora_cache")


def settings_args(params: DragParams, lora: LoraSettings | None) -> dict[str, Any]:
    """The drag and LoRA settings as run.json arguments."""
    lora_values = lora or LoraSettings()
    return {
        **{name: getattr(params, name) for name in PARAM_ARGS},
        "lora": lora is not None,
        "lora_steps": lora_values.steps,
        "lora_rank": lora_values.rank,
        "lora_lr": lora_values.learning_rate,
    }


def settings_from_args(args: Mapping[str, Any]) -> tuple[DragParams, LoraSettings | None]:
    """The drag and LoRA settings (None without LoRA) that run.json arguments, or parsed options, describe."""
    params = DragParams(**{name: args[name] for name in PARAM_ARGS})
    lora = LoraSettings(steps=args["lora_steps"], rank=args["lora_rank"], learning_rate=args["lora_lr"])
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
    """What every drag's run.json reports: the decoding process, moves, timings, warnings and image size."""
    return {
        "process": request.params.process,
        "moves": result.moves,
        "timings": result.timings,
        "warnings": result.warnings,
        "size": list(request.image.size),
    }


def save_drag_outputs(folder: Path, request: DragRequest, result: DragResult) -> None:
    """Write result.png, frames/NNN.png (one per move), trajectory.gif and input_with_points.png into ``folder``."""
    result.image.save(folder / "result.png")
    (folder / "frames").mkdir()
    for index, frame in enumerate(result.frames):
        frame.save(folder / "frames" / f"{index:03d}.png")
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
