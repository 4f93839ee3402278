"""Drag points of an image with SDE-Drag (or its ODE-Drag baseline).

Writes DIR/result.png (the input's size), DIR/trajectory.gif and DIR/frames/NNN.png (one image per
move), DIR/input_with_points.png (arrows over the input, mask shaded) and DIR/run.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from sdedrag.cli.common import (
    add_model_options,
    add_run_options,
    positive_int,
    recorded_args,
    require,
    unit_fraction,
)
from sdedrag.io import atomic_output_dir, file_sha256, load_image, load_mask, run_record, write_json
from sdedrag.lora import LoraCache, LoraSettings
from sdedrag.session import DragSession
from sdedrag.tasks.drag import METHODS, DragParams, DragResult, validate_points
from sdedrag.visualize import draw_drag_arrows, save_gif

NAME = "drag"
HELP = "drag points of an image (SDE-Drag / ODE-Drag)"
PATH_ARGS = ("image", "mask", "lora_cache")
DEFAULTS = DragParams()
FAST_PRESET = {"order": 2, "steps": 50}
"""``--fast``: (SDE-)DPM-Solver++(2M) at 50 steps, 4x fewer UNet calls than the paper's 200 first-order steps."""


class FastPreset(argparse.Action):
    """``--fast`` sets each of ``FAST_PRESET``'s options that is still at its default when the flag is read;
    options given after it override it as usual. run.json records the resolved --steps and --order."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)
        for key, value in FAST_PRESET.items():
            if getattr(namespace, key) == parser.get_default(key):
                setattr(namespace, key, value)


def point(text: str) -> list[float]:
    """'X,Y' in image pixels."""
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (two numbers), got {text!r}") from None
    return [x, y]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="input image (required)")
    parser.add_argument("--source", type=point, action="append", help="X,Y of a handle point (repeat per point)")
    parser.add_argument("--target", type=point, action="append", help="X,Y of its target (same order as --source)")
    parser.add_argument("--mask", help="editable-area mask image of the input's size (non-zero = editable)")
    parser.add_argument("--prompt", default="", help="text describing the image")
    add_drag_options(parser)
    add_model_options(parser)
    add_run_options(parser)


def add_drag_options(parser: argparse.ArgumentParser) -> None:
    """The drag parameters (method, solver, patch copy, LoRA), shared with ``sdedrag bench run``."""
    parser.add_argument("--method", choices=METHODS, default=DEFAULTS.method, help="default: %(default)s")
    parser.add_argument("--steps", type=positive_int, default=DEFAULTS.steps, help="solver steps over [0, T] (default: %(default)s)")
    parser.add_argument("--t0", type=unit_fraction, default=DEFAULTS.t0, help="edit time as a fraction of T (default: %(default)s)")
    parser.add_argument("--step-size", type=float, default=DEFAULTS.step_size, help="latent pixels per move (default: %(default)s)")
    parser.add_argument("--radius", type=positive_int, default=DEFAULTS.radius, help="patch radius in latent pixels (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=DEFAULTS.alpha, help="target patch amplification (default: %(default)s)")
    parser.add_argument("--beta", type=float, default=DEFAULTS.beta, help="source patch signal kept (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=DEFAULTS.guidance, help="CFG scale at t0, 1 at t = 0 (default: %(default)s)")
    parser.add_argument("--lora-scale-min", type=float, default=DEFAULTS.lora_scale_min, help="LoRA scale at t0, 1 at t = 0 (default: %(default)s)")
    parser.add_argument("--order", type=int, choices=(1, 2), default=DEFAULTS.order, help="1: DDIM/DDPM, 2: (SDE-)DPM-Solver++(2M)")
    parser.add_argument(
        "--fast", action=FastPreset,
        help="4x fewer UNet calls: --order 2 --steps 50, unless --order/--steps say otherwise (benchmarks/README.md)",
    )
    parser.add_argument("--no-paste-back", dest="paste_back", action="store_false", help="do not keep the input's pixels outside the mask")
    parser.add_argument("--no-lora", dest="lora", action="store_false", help="skip per-image LoRA fine-tuning")
    defaults = LoraSettings()
    parser.add_argument("--lora-steps", type=positive_int, default=defaults.steps, help="LoRA training steps (default: %(default)s)")
    parser.add_argument("--lora-rank", type=positive_int, default=defaults.rank, help="LoRA rank (default: %(default)s)")
    parser.add_argument("--lora-lr", type=float, default=defaults.learning_rate, help="LoRA learning rate (default: %(default)s)")
    parser.add_argument("--lora-cache", help="LoRA cache folder (default: $SDEDRAG_CACHE/lora or ~/.cache/sdedrag/lora)")


def drag_params(args: argparse.Namespace) -> DragParams:
    return DragParams(
        method=args.method, steps=args.steps, t0=args.t0, step_size=args.step_size, radius=args.radius,
        alpha=args.alpha, beta=args.beta, guidance=args.guidance, lora_scale_min=args.lora_scale_min,
        order=args.order, seed=args.seed, paste_back=args.paste_back,
    )


def lora_settings(args: argparse.Namespace) -> LoraSettings | None:
    """The LoRA fine-tuning settings, or None with --no-lora."""
    return LoraSettings(steps=args.lora_steps, rank=args.lora_rank, learning_rate=args.lora_lr) if args.lora else None


def write_outputs(
    folder: Path,
    args: argparse.Namespace,
    image: Image.Image,
    mask: np.ndarray | None,
    result: DragResult,
    image_file: Path,
    mask_file: Path | None,
) -> None:
    """Write a finished drag's result.png, frames/, trajectory.gif, input_with_points.png and run.json (the
    arguments ``args`` with the results; ``image_file`` and ``mask_file`` are hashed) into ``folder``."""
    result.image.save(folder / "result.png")
    (folder / "frames").mkdir()
    for index, frame in enumerate(result.frames):
        frame.save(folder / "frames" / f"{index:03d}.png")
    save_gif([image, *result.frames], folder / "trajectory.gif")
    sources, targets = [tuple(p) for p in args.source], [tuple(p) for p in args.target]
    draw_drag_arrows(image, sources, targets, mask).save(folder / "input_with_points.png")
    results = {
        "moves": result.moves,
        "timings": result.timings,
        "warnings": result.warnings,
        "image_sha256": file_sha256(image_file),
        "mask_sha256": file_sha256(mask_file) if mask_file else None,
        "size": list(image.size),
    }
    write_json(folder / "run.json", run_record(NAME, recorded_args(args), results))


def run(args: argparse.Namespace) -> int:
    require(args, "image", "source", "target", "out")
    image = load_image(args.image)
    mask = load_mask(args.mask, image.size) if args.mask else None
    sources, targets = [tuple(p) for p in args.source], [tuple(p) for p in args.target]
    validate_points(sources, targets, image.size)
    params = drag_params(args)
    cache = LoraCache(Path(args.lora_cache)) if args.lora_cache else None
    session = DragSession(args.model, args.device, args.dtype, lora_cache=cache)

    with atomic_output_dir(args.out) as staging:
        result = session.drag(image, sources, targets, mask, args.prompt, params, lora_settings(args), progress=True)
        write_outputs(staging, args, image, mask, result, Path(args.image), Path(args.mask) if args.mask else None)
    for warning in result.warnings:
        print(f"warning: {warning}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"{result.moves} moves ({timings}); wrote {args.out}/result.png, trajectory.gif, frames/, run.json")
    return 0
