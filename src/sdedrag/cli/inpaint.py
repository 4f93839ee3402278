"""Regenerate the masked region of an image with the fresh-noise SDE (DDPM / SDE-DPM-Solver++(2M/3M)) or the
ODE (DDIM / DPM-Solver++(2M/3M)), everything else equal.

An SD inpainting checkpoint (9-channel UNet, the default) sees the mask and the masked image; with any other
model the unmasked latent follows a known-region trajectory at every step: the input's recorded noise-adding
path, or (--known-region fixed-noise) the input noised with one fixed noise sample, diffusers' rule for
4-channel models. Mask: white / non-zero = regenerate. Writes DIR/result.png (the input's size) and DIR/run.json.
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
    require,
    run_task,
    settings_from,
)
from sdedrag.settings import DEFAULT_INPAINT_MODEL, KNOWN_REGIONS, SPACINGS, InpaintParams

PATH_ARGS = ("image", "mask")
DEFAULTS = InpaintParams()
METHOD_HELP = "sde: the fresh-noise SDE (DDPM), ode: DDIM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="input image (required)")
    parser.add_argument("--mask", help="mask of the input's size, white / non-zero = regenerate (required)")
    parser.add_argument("--prompt", default="", help="text describing the result")
    add_solver_options(parser, DEFAULTS, METHOD_HELP,
                       "start time as a fraction of T; 1 starts from pure noise in the mask")
    parser.add_argument(
        "--known-region", choices=KNOWN_REGIONS, default=DEFAULTS.known_region,
        help="what the latent outside the mask follows with a 4-channel model: the input's recorded noise-adding "
             "path, or the input noised with one fixed noise sample (diffusers) (default: %(default)s)",
    )
    parser.add_argument(
        "--spacing", choices=SPACINGS, default=DEFAULTS.spacing,
        help="timesteps of DDIMScheduler or of DPMSolverMultistepScheduler (default: %(default)s)",
    )
    add_paste_back_options(parser, DEFAULTS)
    add_image_options(parser)
    add_model_options(parser, default_model=DEFAULT_INPAINT_MODEL)
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    from sdedrag.io import load_image, load_mask
    from sdedrag.tasks.inpaint import check_mask, inpaint

    require(args, "image", "mask", "out")
    params = settings_from(args, InpaintParams)
    image = load_image(args.image, max_pixels=args.max_pixels)
    mask = load_mask(args.mask, image.size, args.max_pixels)
    check_mask(mask, image.size)

    def task(model: Any, folder: Path) -> dict[str, Any]:
        result = inpaint(model, image, mask, prompt=args.prompt, params=params, progress=True)
        result.image.save(folder / "result.png")
        return {
            "process": params.process,
            "seconds": result.seconds,
            "inpainting_unet": bool(getattr(model, "is_inpainting", False)),
            "mask_fraction": float(mask.mean()),
            "size": list(image.size),
        }

    results = run_task(args, task)
    print(f"inpainted {100 * mask.mean():.1f}% of the image ({params.process}, order {params.order}, "
          f"{results['seconds']:.1f}s); wrote {args.out}/result.png and run.json")
    return 0
