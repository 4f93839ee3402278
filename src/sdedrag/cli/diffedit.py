"""DiffEdit with the SDE (Cycle-SDE, recorded noise under the source prompt) or its ODE baseline (DDIM
inversion under the source prompt, then sampling under the target prompt with the source prompt as negative
prompt, as diffusers' DiffEdit pipeline), with the same DiffEdit mask.

Writes DIR/result.png (the input's size), DIR/mask.png (white = edited) and DIR/run.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sdedrag.cli.common import (
    add_image_options,
    add_model_options,
    add_paste_back_options,
    add_run_options,
    add_solver_options,
    positive_int,
    require,
    run_task,
    settings_from,
    unit_fraction,
    unit_interval,
)
from sdedrag.settings import DiffEditParams, MaskParams

PATH_ARGS = ("image",)
DEFAULTS = DiffEditParams()
METHOD_HELP = ("sde: Cycle-SDE (the noise recorded under the source prompt), ode: DDIM inversion and DDIM with the "
               "source prompt as negative prompt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="input image (required)")
    parser.add_argument("--source-prompt", help="text describing the input (required)")
    parser.add_argument("--target-prompt", help="text describing the result (required)")
    add_solver_options(parser, DEFAULTS, METHOD_HELP, "encoding ratio: how far the input is taken toward T")
    parser.add_argument(
        "--mask-threshold", type=unit_interval, default=DEFAULTS.mask.threshold,
        help="edit where the normalised noise difference exceeds this (default: %(default)s)",
    )
    parser.add_argument(
        "--mask-strength", type=unit_fraction, default=DEFAULTS.mask.strength,
        help="noise level of the mask's noise draws, as a fraction of T (default: %(default)s)",
    )
    parser.add_argument(
        "--mask-maps", type=positive_int, default=DEFAULTS.mask.maps, help="noise draws averaged (default: %(default)s)"
    )
    add_paste_back_options(parser, DEFAULTS)
    add_image_options(parser)
    add_model_options(parser)
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from sdedrag.io import load_image
    from sdedrag.tasks.diffedit import check_prompts, diffedit

    require(args, "image", "source_prompt", "target_prompt", "out")
    check_prompts(args.source_prompt, args.target_prompt)
    mask = MaskParams(strength=args.mask_strength, maps=args.mask_maps, threshold=args.mask_threshold)
    params = settings_from(args, DiffEditParams, mask=mask)
    image = load_image(args.image, max_pixels=args.max_pixels)

    def task(model: Any, folder: Path) -> dict[str, Any]:
        result = diffedit(model, image, args.source_prompt, args.target_prompt, params=params, progress=True)
        result.image.save(folder / "result.png")
        Image.fromarray(result.mask.astype(np.uint8) * 255).save(folder / "mask.png")
        return {"process": params.process, "negative_prompt": args.source_prompt if params.method == "ode" else "",
                "seconds": result.seconds, "mask_fraction": float(result.mask.mean()), "size": list(image.size)}

    results = run_task(args, task)
    print(f"DiffEdit ({params.process}, order {params.order}, mask {100 * results['mask_fraction']:.1f}% of the "
          f"image, {results['seconds']:.1f}s); wrote {args.out}/result.png, mask.png and run.json")
    return 0
