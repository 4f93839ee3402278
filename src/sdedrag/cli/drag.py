"""Drag points of an image with SDE-Drag, its ODE-Drag baseline, or DragDiffusion.

Writes DIR/result.png (the input's size), DIR/trajectory.gif and its frames, DIR/frames/000_input.png
(the input) and DIR/frames/NNN.png (the result after move NNN), DIR/input_with_points.png (arrows over the input, mask shaded) and DIR/run.json.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from sdedrag.cli.common import (
    add_image_options,
    add_model_options,
    add_order_option,
    add_run_options,
    guidance_scale,
    non_negative,
    number,
    positive,
    positive_int,
    require,
    run_task,
    unit_fraction,
    unit_interval,
)
from sdedrag.settings import (
    DRAG_METHODS,
    DRAGDIFFUSION_LORA,
    FAST_PRESET,
    MAX_ALPHA,
    MAX_GUIDANCE,
    DragDiffusionParams,
    DragParams,
    LoraSettings,
)

PATH_ARGS = ("image", "mask", "lora_cache")
DEFAULTS = DragParams()
DD_DEFAULTS = DragDiffusionParams()


class FastPreset(argparse.Action):
    """``--fast`` sets each of ``FAST_PRESET``'s options that is still at its default when the flag is read;
    options given after it override it as usual. run.json records the resolved --steps, --order and --reuse."""

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
    if not (math.isfinite(x) and math.isfinite(y)):
        raise argparse.ArgumentTypeError(f"expected X,Y (two finite numbers), got {text!r}")
    return [x, y]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="input image (required)")
    parser.add_argument("--source", type=point, action="append", help="X,Y of a handle point (repeat per point)")
    parser.add_argument("--target", type=point, action="append", help="X,Y of its target (same order as --source)")
    parser.add_argument("--mask", help="editable-area mask image of the input's size (non-zero = editable)")
    parser.add_argument("--prompt", default="", help="text describing the image")
    add_drag_options(parser)
    add_image_options(parser)
    add_model_options(parser)
    add_run_options(parser)


def guidance_or_ramp(text: str) -> float | str:
    """A guidance scale of at least 1, or 'ramp': the decoding's guidance ramp."""
    if text == "ramp":
        return text
    try:
        return guidance_scale(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a number in [1, {MAX_GUIDANCE:g}] or 'ramp', got {text}") from None


def add_drag_options(parser: argparse.ArgumentParser, lora_rank: int = LoraSettings.rank, paste_back: bool = True
                     ) -> None:
    """The drag settings (method, solver, patch copy or latent optimisation, LoRA), shared with ``sdedrag bench
    run``, whose SDE-/ODE-Drag ``lora_rank`` and ``paste_back`` defaults differ. Options whose default depends on
    the method default to None here and are resolved by the method."""
    parser.add_argument("--method", choices=DRAG_METHODS, default=DEFAULTS.method,
                        help="sde: SDE-Drag (Cycle-SDE, recorded noise), ode: ODE-Drag (DDIM inversion), "
                             "dragdiffusion: DragDiffusion (latent optimisation, DDIM) (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int,
                        help=f"solver steps over [0, T] (default: {DEFAULTS.steps}; dragdiffusion {DD_DEFAULTS.steps})")
    parser.add_argument("--t0", type=unit_fraction,
                        help=f"edit time as a fraction of T, DragDiffusion's inversion strength "
                             f"(default: {DEFAULTS.t0}; dragdiffusion {DD_DEFAULTS.t0})")
    parser.add_argument("--step-size", type=positive, default=DEFAULTS.step_size,
                        help="latent pixels per move (default: %(default)s)")
    parser.add_argument("--radius", type=positive_int, default=DEFAULTS.radius,
                        help="patch radius in latent pixels (default: %(default)s)")
    parser.add_argument("--alpha", type=number(0.0, MAX_ALPHA, low_open=True), default=DEFAULTS.alpha,
                        help="the paper's patch gain: target patch = alpha x source patch (default: %(default)s)")
    parser.add_argument("--beta", type=unit_interval, default=DEFAULTS.beta,
                        help="source patch signal kept (default: %(default)s)")
    parser.add_argument("--guidance", type=guidance_scale, default=DEFAULTS.guidance,
                        help="CFG scale at t0, 1 at t = 0 (default: %(default)s)")
    parser.add_argument("--inversion-guidance", type=guidance_or_ramp, default=DEFAULTS.inversion_guidance,
                        help="ODE-Drag: CFG scale of the DDIM inversion, or 'ramp' for the decoding's "
                             "(default: %(default)s)")
    parser.add_argument("--lora-scale-min", type=unit_interval, default=DEFAULTS.lora_scale_min,
                        help="LoRA scale at t0, 1 at t = 0 (default: %(default)s)")
    add_order_option(parser, DEFAULTS.order)
    parser.add_argument("--reuse", type=positive_int, default=DEFAULTS.reuse,
                        help="recompute the UNet's deep features every N-th call and reuse them in between "
                             "(DeepCache; 1: every call) (default: %(default)s)")
    parser.add_argument(
        "--fast", action=FastPreset,
        help="about 12x cheaper moves: --order 1 --steps 25 --reuse 2, unless --order/--steps/--reuse say otherwise "
             "(benchmarks/README.md)",
    )
    if paste_back:
        parser.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                            help="do not keep the input's pixels outside the mask")
    else:
        parser.add_argument("--paste-back", dest="paste_back", action="store_true",
                            help="keep the input's pixels exactly outside the mask (default: off)")
    parser.add_argument("--no-lora", dest="lora", action="store_false", help="skip per-image LoRA fine-tuning")
    defaults, dd_lora = LoraSettings(), DRAGDIFFUSION_LORA
    parser.add_argument("--lora-steps", type=positive_int,
                        help=f"LoRA training steps (default: {defaults.steps}; dragdiffusion {dd_lora.steps})")
    parser.add_argument("--lora-rank", type=positive_int,
                        help=f"LoRA rank (default: {lora_rank}; dragdiffusion {dd_lora.rank})")
    parser.add_argument("--lora-lr", type=positive,
                        help=f"LoRA learning rate (default: {defaults.learning_rate}; "
                             f"dragdiffusion {dd_lora.learning_rate})")
    parser.add_argument("--lora-batch-size", type=positive_int,
                        help=f"LoRA batch size (default: {defaults.batch_size}; dragdiffusion {dd_lora.batch_size})")
    parser.add_argument("--lora-cache",
                        help="LoRA cache folder (default: $SDEDRAG_CACHE/lora or ~/.cache/sdedrag/lora)")
    add_dragdiffusion_options(parser)


def add_dragdiffusion_options(parser: argparse.ArgumentParser) -> None:
    """DragDiffusion's own settings, defaulting to the authors' DragBench evaluation."""
    group = parser.add_argument_group("dragdiffusion", "latent optimisation of --method dragdiffusion")
    group.add_argument("--feature-index", type=int, default=DD_DEFAULTS.feature_index,
                       help="supervised UNet features: 0 the mid block, k decoder block k - 1 (default: %(default)s)")
    group.add_argument("--feature-scale", type=unit_fraction, default=DD_DEFAULTS.feature_scale,
                       help="features resized to this fraction of the image size (default: %(default)s)")
    group.add_argument("--motion-radius", type=int, default=DD_DEFAULTS.motion_radius,
                       help="motion supervision radius r_m, feature pixels (default: %(default)s)")
    group.add_argument("--tracking-radius", type=int, default=DD_DEFAULTS.tracking_radius,
                       help="point tracking radius r_p, feature pixels (default: %(default)s)")
    group.add_argument("--mask-weight", type=non_negative, default=DD_DEFAULTS.mask_weight,
                       help="lambda of the term keeping the outside of the mask (default: %(default)s)")
    group.add_argument("--latent-lr", type=positive, default=DD_DEFAULTS.latent_lr,
                       help="Adam learning rate on the latent (default: %(default)s)")
    group.add_argument("--iterations", type=int, default=DD_DEFAULTS.iterations,
                       help="at most this many Adam steps (default: %(default)s)")
    group.add_argument("--reach", type=positive, default=DD_DEFAULTS.reach,
                       help="stop when every handle is this close to its target, feature pixels (default: %(default)s)")
    group.add_argument("--start-step", type=int, default=DD_DEFAULTS.start_step,
                       help="mutual self-attention from this denoising step on (default: %(default)s)")
    group.add_argument("--start-layer", type=int, default=DD_DEFAULTS.start_layer,
                       help="... and this self-attention layer on (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from sdedrag.io import load_image, load_mask
    from sdedrag.lora import LoraCache
    from sdedrag.runs import drag_results, save_drag_outputs, settings_args, settings_from_args
    from sdedrag.session import DragSession
    from sdedrag.tasks.drag import DragRequest

    require(args, "image", "source", "target", "out")
    params, lora = settings_from_args(vars(args))
    vars(args).update(settings_args(params, lora))  # run.json records the method's resolved settings
    image = load_image(args.image, max_pixels=args.max_pixels)
    mask = load_mask(args.mask, image.size, args.max_pixels) if args.mask else None
    request = DragRequest(image, [tuple(p) for p in args.source], [tuple(p) for p in args.target], mask, args.prompt,
                          params)
    cache = LoraCache(Path(args.lora_cache)) if args.lora_cache else None

    def task(model: Any, folder: Path) -> dict[str, Any]:
        result = DragSession(model, lora_cache=cache).drag(request, lora, progress=True)
        save_drag_outputs(folder, request, result)
        return drag_results(request, result)

    results = run_task(args, task)
    for warning in results["warnings"]:
        print(f"warning: {warning}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in results["timings"].items())
    done = f"{results['iterations']} Adam steps" if "iterations" in results else f"{results['moves']} moves"
    print(f"{done} ({timings}); wrote {args.out}/result.png, trajectory.gif, frames/, run.json")
    return 0
