"""DiffEdit with the SDE (Cycle-SDE, recorded noise under the source prompt) or its ODE baseline (DDIM
inversion under the source prompt, then sampling under the target prompt), with the same DiffEdit mask.

Writes DIR/result.png (the input's size), DIR/mask.png (white = edited) and DIR/run.json.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from sdedrag.cli.common import (
    add_edit_options,
    add_model_options,
    add_paste_back_options,
    add_run_options,
    positive_int,
    recorded_args,
    require,
    unit_fraction,
)
from sdedrag.io import atomic_output_dir, file_sha256, load_image, run_record, write_json
from sdedrag.models import load_model
from sdedrag.tasks.diffedit import MaskParams, check_prompts, diffedit

NAME = "diffedit"
HELP = "text-guided editing inside an automatic mask by DiffEdit (SDE / ODE)"
PATH_ARGS = ("image",)
MASK_DEFAULTS = MaskParams()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="input image (required)")
    parser.add_argument("--source-prompt", help="text describing the input (required)")
    parser.add_argument("--target-prompt", help="text describing the result (required)")
    add_edit_options(parser, t0=0.8, t0_help="encoding ratio: how far the input is taken toward T")
    parser.add_argument(
        "--mask-threshold", type=float, default=MASK_DEFAULTS.threshold,
        help="edit where the normalised noise difference exceeds this (default: %(default)s)",
    )
    parser.add_argument(
        "--mask-strength", type=unit_fraction, default=MASK_DEFAULTS.strength,
        help="noise level of the mask's noise draws, as a fraction of T (default: %(default)s)",
    )
    parser.add_argument(
        "--mask-maps", type=positive_int, default=MASK_DEFAULTS.maps, help="noise draws averaged (default: %(default)s)"
    )
    add_paste_back_options(parser)
    add_model_options(parser)
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    require(args, "image", "source_prompt", "target_prompt", "out")
    check_prompts(args.source_prompt, args.target_prompt)
    mask_params = MaskParams(strength=args.mask_strength, maps=args.mask_maps, threshold=args.mask_threshold)
    image = load_image(args.image)
    model = load_model(args.model, args.device, args.dtype)
    with atomic_output_dir(args.out) as staging:
        result = diffedit(
            model, image, args.source_prompt, args.target_prompt, args.method, args.steps, args.t0, args.order,
            args.guidance, args.seed, mask_params, args.paste_back, args.feather, progress=True,
        )
        result.image.save(staging / "result.png")
        Image.fromarray(result.mask.astype(np.uint8) * 255).save(staging / "mask.png")
        results = {
            "seconds": result.seconds,
            "mask_fraction": float(result.mask.mean()),
            "image_sha256": file_sha256(args.image),
            "size": list(image.size),
        }
        write_json(staging / "run.json", run_record(NAME, recorded_args(args), results))
    print(f"DiffEdit ({args.method}, order {args.order}, mask {100 * result.mask.mean():.1f}% of the image, "
          f"{result.seconds:.1f}s); wrote {args.out}/result.png, mask.png and run.json")
    return 0
