"""SDE-Drag versus ODE-Drag on the built-in, trained shapes model: fully offline, about a minute on a CPU.

Generates a shapes scene, drags one shape to a free spot with both methods, and writes
DIR/comparison.png (input and drag, SDE-Drag, ODE-Drag, ground truth), DIR/sde.gif and DIR/ode.gif
(the moves), DIR/metrics.json and DIR/run.json; the metrics are printed as a table.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from PIL import Image

from sdedrag.cli.common import add_model_options, add_run_options, positive_int, recorded_args, require
from sdedrag.io import atomic_output_dir, run_record, write_json
from sdedrag.models import load_model
from sdedrag.shapes.bench import SHAPES_DRAG, comparison, drag_record, make_drag_case, model_resolution, run_drag
from sdedrag.visualize import save_gif

NAME = "demo"
HELP = "offline SDE-Drag vs ODE-Drag demo on the built-in shapes model"
METHODS = ("sde", "ode")
COLUMNS = ("distance", "area_ratio", "colour_error", "solidity", "duplicated", "outside_max_diff", "seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", type=int, default=0, help="which generated scene (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=SHAPES_DRAG.steps, help="solver steps (default: %(default)s)")
    add_model_options(parser, default_model="shapes")
    add_run_options(parser)


def enlarge(image: Image.Image, scale: int = 8) -> Image.Image:
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def run(args: argparse.Namespace) -> int:
    require(args, "out")
    model = load_model(args.model, args.device, args.dtype)
    case = make_drag_case(args.seed, args.case, model_resolution(model))
    params = replace(SHAPES_DRAG, steps=args.steps, seed=args.seed)
    with atomic_output_dir(args.out) as staging:
        rows, images = [], {}
        for method in METHODS:
            result = run_drag(model, case, method, params)
            rows.append(drag_record(case, method, result))
            images[f"{method.upper()}-Drag"] = result.image
            save_gif([enlarge(frame) for frame in (case.scene.pil(), *result.frames)], staging / f"{method}.gif")
        comparison(case, images).save(staging / "comparison.png")
        case.scene.pil().save(staging / "input.png")
        write_json(staging / "metrics.json", {"case": case.case_id, "target": case.target, "rows": rows})
        write_json(staging / "run.json", run_record(NAME, recorded_args(args), {"rows": rows}))
    print(f"case {case.case_id}: move the {case.shape.colour} {case.shape.kind} from "
          f"({case.source[0]:.1f}, {case.source[1]:.1f}) to ({case.target[0]:.1f}, {case.target[1]:.1f})")
    print(f"{'method':<10}" + "".join(f"{c:>18}" for c in COLUMNS))
    for row in rows:
        cells = "".join(f"{row[c]:>18.3g}" if isinstance(row[c], float) else f"{row[c]!s:>18}" for c in COLUMNS)
        print(f"{row['method'].upper() + '-Drag':<10}{cells}")
    print(f"wrote {args.out}/comparison.png, sde.gif, ode.gif, metrics.json, run.json")
    return 0
