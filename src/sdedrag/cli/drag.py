"""Drag points of an image with SDE-Drag (or its ODE-Drag baseline).

Writes DIR/result.png (the input's size), DIR/trajectory.gif and DIR/frames/NNN.png (one image per
move), DIR/input_with_points.png (arrows over the input, mask shaded) and DIR/run.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
from sdedrag.tasks.drag import METHODS, DragParams, validate_points
from sdedrag.visualize import draw_drag_arrows, save_gif

NAME = "drag"
HELP = "drag points of an image (SDE-Drag / ODE-Drag)"
PATH_ARGS = ("image", "mask", "lora_cache")
DEFAULTS = DragParams()


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
    parser.add_argument("--no-paste-back", dest="paste_back", action="store_false", help="do not keep the input's pixels outside the mask")
    parser.add_argument("--no-lora", dest="lora", action="store_false", help="skip per-image LoRA fine-tuning")
    defaults = LoraSettings()
    parser.add_argument("--lora-steps", type=positive_int, default=defaults.steps, help="LoRA training steps (default: %(default)s)")
    parser.add_argument("--lora-rank", type=positive_int, default=defaults.rank, help="LoRA rank (default: %(default)s)")
    parser.add_argument("--lora-lr", type=float, default=defaults.learning_rate, help="LoRA learning rate (default: %(default)s)")
    parser.add_argument("--lora-cache", help="LoRA cache folder (default: $SDEDRAG_CACHE/lora or ~/.cache/sdedrag/lora)")
    add_model_options(parser)
    add_run_options(parser)


def drag_params(args: argparse.Namespace) -> DragParams:
    return DragParams(
        method=args.method, steps=args.steps, t0=args.t0, step_size=args.step_size, radius=args.radius,
        alpha=args.alpha, beta=args.beta, guidance=args.guidance, lora_scale_min=args.lora_scale_min,
        order=args.order, seed=args.seed, paste_back=args.paste_back,
    )


def run(args: argparse.Namespace) -> int:
    require(args, "image", "source", "target", "out")
    image = load_image(args.image)
    mask = load_mask(args.mask, image.size) if args.mask else None
    sources, targets = [tuple(p) for p in args.source], [tuple(p) for p in args.target]
    validate_points(sources, targets, image.size)
    params = drag_params(args)
    lora = LoraSettings(steps=args.lora_steps, rank=args.lora_rank, learning_rate=args.lora_lr) if args.lora else None
    cache = LoraCache(Path(args.lora_cache)) if args.lora_cache else None
    session = DragSession(args.model, args.device, args.dtype, lora_cache=cache)

    with atomic_output_dir(args.out) as staging:
        result = session.drag(image, sources, targets, mask, args.prompt, params, lora, progress=True)
        result.image.save(staging / "result.png")
        (staging / "frames").mkdir()
        for index, frame in enumerate(result.frames):
            frame.save(staging / "frames" / f"{index:03d}.png")
        save_gif([image, *result.frames], staging / "trajectory.gif")
        draw_drag_arrows(image, sources, targets, mask).save(staging / "input_with_points.png")
        results = {
            "moves": result.moves,
            "timings": result.timings,
            "warnings": result.warnings,
            "image_sha256": file_sha256(args.image),
            "mask_sha256": file_sha256(args.mask) if args.mask else None,
            "size": list(image.size),
        }
        write_json(staging / "run.json", run_record(NAME, recorded_args(args), results))
    for warning in result.warnings:
        print(f"warning: {warning}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"{result.moves} moves ({timings}); wrote {args.out}/result.png, trajectory.gif, frames/, run.json")
    return 0

