"""Encode an image to t0 and decode it unedited; Cycle-SDE reconstructs exactly, SDE and ODE do not.

Writes DIR/result.png and DIR/run.json, whose results include latent_rel_error = ||x0_rec - x0|| / ||x0||.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sdedrag.cli.common import (
    add_image_options,
    add_model_options,
    add_order_option,
    add_run_options,
    guidance_scale,
    positive_int,
    require,
    run_task,
    settings_from,
    unit_fraction,
)
from sdedrag.settings import PROCESSES, ReconstructParams

PATH_ARGS = ("image",)
DEFAULTS = ReconstructParams()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="input image (required)")
    parser.add_argument(
        "--process", choices=PROCESSES, default=DEFAULTS.process,
        help="cycle-sde: SDE with the recorded noise; sde: fresh noise; ode: DDIM inversion (default: %(default)s)",
    )
    parser.add_argument("--steps", type=positive_int, default=DEFAULTS.steps,
                        help="solver steps over [0, T] (default: %(default)s)")
    parser.add_argument("--t0", type=unit_fraction, default=DEFAULTS.t0,
                        help="start time as a fraction of T (default: %(default)s)")
    add_order_option(parser, DEFAULTS.order)
    parser.add_argument("--prompt", default="", help="text prompt for conditional models")
    parser.add_argument("--guidance", type=guidance_scale, default=DEFAULTS.guidance,
                        help="classifier-free guidance scale (default: %(default)s)")
    add_image_options(parser)
    add_model_options(parser)
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    from sdedrag.io import load_image
    from sdedrag.tasks.reconstruct import reconstruct

    require(args, "image", "out")
    params = settings_from(args, ReconstructParams)
    image = load_image(args.image, max_pixels=args.max_pixels)

    def task(model: Any, folder: Path) -> dict[str, Any]:
        start = time.perf_counter()
        result = reconstruct(model, image, prompt=args.prompt, params=params, progress=True)
        result.image.save(folder / "result.png")
        return {"latent_rel_error": result.latent_rel_error, "seconds": time.perf_counter() - start,
                "size": list(image.size)}

    results = run_task(args, task)
    print(f"latent_rel_error {results['latent_rel_error']:.3e}; wrote {args.out}/result.png and run.json")
    return 0
