"""Encode an image to t0 and decode it unedited; Cycle-SDE reconstructs exactly, SDE and ODE do not.

Writes DIR/result.png and DIR/run.json, whose results include latent_rel_error = ||x0_rec - x0|| / ||x0||.
"""

from __future__ import annotations

import argparse
import time

from sdedrag.cli.common import add_model_options, add_run_options, positive_int, recorded_args, require, unit_fraction
from sdedrag.engine import PROCESSES
from sdedrag.io import atomic_output_dir, file_sha256, load_image, run_record, write_json
from sdedrag.models import load_model
from sdedrag.tasks.reconstruct import reconstruct

NAME = "reconstruct"
HELP = "encode an image to t0 and decode it back (Cycle-SDE / SDE / ODE)"
PATH_ARGS = ("image",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="input image (required)")
    parser.add_argument("--process", choices=PROCESSES, default="cycle-sde", help="default: %(default)s")
    parser.add_argument("--steps", type=positive_int, default=50, help="solver steps over [0, T] (default: %(default)s)")
    parser.add_argument("--t0", type=unit_fraction, default=1.0, help="start time as a fraction of T (default: %(default)s)")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1, help="solver order: 1 DDIM/DDPM, 2 DPM-Solver++(2M)")
    parser.add_argument("--prompt", default="", help="text prompt for conditional models")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default: %(default)s)")
    add_model_options(parser)
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    require(args, "image", "out")
    image = load_image(args.image)
    model = load_model(args.model, args.device, args.dtype)
    with atomic_output_dir(args.out) as staging:
        start = time.perf_counter()
        result = reconstruct(
            model, image, args.process, args.steps, args.t0, args.prompt, args.guidance, args.order, args.seed,
            progress=True,
        )
        result.image.save(staging / "result.png")
        results = {
            "latent_rel_error": result.latent_rel_error,
            "seconds": time.perf_counter() - start,
            "image_sha256": file_sha256(args.image),
            "size": list(image.size),
        }
        write_json(staging / "run.json", run_record(NAME, recorded_args(args), results))
    print(f"latent_rel_error {result.latent_rel_error:.3e}; wrote {args.out}/result.png and run.json")
    return 0
