"""SDEdit with the fresh-noise SDE (DDPM / SDE-DPM-Solver++(2M)) or its ODE baseline (DDIM / DPM-Solver++(2M)):
noise the input to t0 and solve back under a target prompt, from the same noisy start.

Writes DIR/result.png (the input's size) and DIR/run.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sdedrag.cli.common import (
    add_image_options,
    add_model_options,
    add_run_options,
    add_solver_options,
    require,
    run_task,
    settings_from,
)
from sdedrag.settings import SDEditParams

PATH_ARGS = ("image",)
METHOD_HELP = "sde: the fresh-noise SDE (DDPM), ode: DDIM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="input image (required)")
    parser.add_argument("--prompt", default="", help="target prompt: text describing the result")
    add_solver_options(parser, SDEditParams(), METHOD_HELP, "noise level the input is taken to, as a fraction of T")
    add_image_options(parser)
    add_model_options(parser)
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    from sdedrag.io import load_image
    from sdedrag.tasks.sdedit import sdedit

    require(args, "image", "out")
    params = settings_from(args, SDEditParams)
    image = load_image(args.image, max_pixels=args.max_pixels)

    def task(model: Any, folder: Path) -> dict[str, Any]:
        result = sdedit(model, image, prompt=args.prompt, params=params, progress=True)
        result.image.save(folder / "result.png")
        return {"process": params.process, "seconds": result.seconds, "size": list(image.size)}

    results = run_task(args, task)
    print(f"SDEdit ({params.process}, order {params.order}, {results['seconds']:.1f}s); "
          f"wrote {args.out}/result.png and run.json")
    return 0
