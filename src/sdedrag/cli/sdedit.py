"""SDEdit with the SDE (DDPM / SDE-DPM-Solver++(2M)) or its ODE baseline (DDIM / DPM-Solver++(2M)): noise the
input to t0 and solve back under a target prompt, from the same noisy start.

Writes DIR/result.png (the input's size) and DIR/run.json.
"""

from __future__ import annotations

import argparse

from sdedrag.cli.common import add_edit_options, add_model_options, add_run_options, recorded_args, require
from sdedrag.io import atomic_output_dir, file_sha256, load_image, run_record, write_json
from sdedrag.models import load_model
from sdedrag.tasks.sdedit import sdedit

NAME = "sdedit"
HELP = "image-to-image translation by SDEdit (SDE / ODE)"
PATH_ARGS = ("image",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="input image (required)")
    parser.add_argument("--prompt", default="", help="target prompt: text describing the result")
    add_edit_options(parser, t0=0.5, t0_help="noise level the input is taken to, as a fraction of T")
    add_model_options(parser)
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    require(args, "image", "out")
    image = load_image(args.image)
    model = load_model(args.model, args.device, args.dtype)
    with atomic_output_dir(args.out) as staging:
        result = sdedit(
            model, image, args.prompt, args.method, args.steps, args.t0, args.order, args.guidance, args.seed,
            progress=True,
        )
        result.image.save(staging / "result.png")
        results = {"seconds": result.seconds, "image_sha256": file_sha256(args.image), "size": list(image.size)}
        write_json(staging / "run.json", run_record(NAME, recorded_args(args), results))
    print(f"SDEdit ({args.method}, order {args.order}, {result.seconds:.1f}s); "
          f"wrote {args.out}/result.png and run.json")
    return 0
