"""Regenerate the masked region of an image with the SDE (DDPM / SDE-DPM-Solver++(2M)) or the ODE (DDIM /
DPM-Solver++(2M)), everything else equal.

An SD inpainting checkpoint (9-channel UNet, the default) sees the mask and the masked image; with any other
model the unmasked latent follows the input's recorded noise-adding path at every step (the paper's mask
rule). Mask: white / non-zero = regenerate. Writes DIR/result.png (the input's size) and DIR/run.json.
"""

from __future__ import annotations

import argparse

from sdedrag.cli.common import (
    add_edit_options,
    add_model_options,
    add_paste_back_options,
    add_run_options,
    recorded_args,
    require,
)
from sdedrag.io import atomic_output_dir, file_sha256, load_image, load_mask, run_record, write_json
from sdedrag.models import load_model
from sdedrag.tasks.inpaint import DEFAULT_INPAINT_MODEL, check_mask, inpaint

NAME = "inpaint"
HELP = "regenerate a masked region (SDE / ODE inpainting)"
PATH_ARGS = ("image", "mask")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="input image (required)")
    parser.add_argument("--mask", help="mask of the input's size, white / non-zero = regenerate (required)")
    parser.add_argument("--prompt", default="", help="text describing the result")
    add_edit_options(parser, t0=1.0, t0_help="start time as a fraction of T; 1 starts from pure noise in the mask")
    add_paste_back_options(parser)
    add_model_options(parser, default_model=DEFAULT_INPAINT_MODEL)
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    require(args, "image", "mask", "out")
    image = load_image(args.image)
    mask = load_mask(args.mask, image.size)
    check_mask(mask, image.size)
    model = load_model(args.model, args.device, args.dtype)
    with atomic_output_dir(args.out) as staging:
        result = inpaint(
            model, image, mask, args.prompt, args.method, args.steps, args.t0, args.order, args.guidance, args.seed,
            args.paste_back, args.feather, progress=True,
        )
        result.image.save(staging / "result.png")
        results = {
            "seconds": result.seconds,
            "inpainting_unet": bool(getattr(model, "is_inpainting", False)),
            "mask_fraction": float(mask.mean()),
            "image_sha256": file_sha256(args.image),
            "mask_sha256": file_sha256(args.mask),
            "size": list(image.size),
        }
        write_json(staging / "run.json", run_record(NAME, recorded_args(args), results))
    print(f"inpainted {100 * mask.mean():.1f}% of the image ({args.method}, order {args.order}, "
          f"{result.seconds:.1f}s); wrote {args.out}/result.png and run.json")
    return 0
