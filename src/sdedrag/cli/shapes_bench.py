"""ShapesBench: drag one shape per generated scene with SDE-Drag and ODE-Drag (and regenerate a shape
with SDE and ODE inpainting), measured against the known ground truth.

Writes DIR/cases/<id>/*.png, DIR/metrics.csv (one row per case, track and method), DIR/summary.json
(means with bootstrap 95% intervals), DIR/overview.png and DIR/run.json.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import replace

from PIL import Image

from sdedrag.cli.common import add_model_options, add_run_options, positive_int, recorded_args, require, unit_fraction
from sdedrag.io import atomic_output_dir, run_record, write_json
from sdedrag.models import load_model
from sdedrag.shapes.bench import (
    SHAPES_DRAG,
    comparison,
    drag_record,
    make_drag_case,
    model_resolution,
    run_drag,
    run_inpaint,
    summarize,
)

NAME = "shapes-bench"
HELP = "drag and inpainting benchmark with ground truth on the shapes model"
TRACKS = ("drag", "inpaint")
METHODS = ("sde", "ode")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=positive_int, default=20, help="number of cases (default: %(default)s)")
    parser.add_argument("--tracks", nargs="+", choices=TRACKS, default=list(TRACKS), help="default: both")
    parser.add_argument("--steps", type=positive_int, default=SHAPES_DRAG.steps, help="drag solver steps (default: %(default)s)")
    parser.add_argument("--t0", type=unit_fraction, default=SHAPES_DRAG.t0, help="drag t0 (default: %(default)s)")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1, help="drag solver order (default: %(default)s)")
    parser.add_argument(
        "--inpaint-steps", type=positive_int, nargs="+", default=[25, 50, 100], help="inpainting step counts (default: 25 50 100)"
    )
    add_model_options(parser, default_model="shapes")
    add_run_options(parser)


def print_summary(summary: dict) -> None:
    for group, metrics in summary.items():
        cells = [f"{key} {value['mean']:.3g} [{value['low']:.3g}, {value['high']:.3g}]" for key, value in metrics.items()]
        print(f"{group:<16} n={next(iter(metrics.values()))['n']:<4} " + "; ".join(cells))


def run(args: argparse.Namespace) -> int:
    require(args, "out")
    model = load_model(args.model, args.device, args.dtype)
    resolution = model_resolution(model)
    params = replace(SHAPES_DRAG, steps=args.steps, t0=args.t0, order=args.order, seed=args.seed)
    rows, overview = [], []
    start = time.perf_counter()
    with atomic_output_dir(args.out) as staging:
        for index in range(args.cases):
            case = make_drag_case(args.seed, index, resolution)
            folder = staging / "cases" / case.case_id
            folder.mkdir(parents=True)
            case.scene.pil().save(folder / "input.png")
            Image.fromarray(case.editable).save(folder / "mask.png")
            case.ground_truth().pil().save(folder / "truth.png")
            results = {}
            if "drag" in args.tracks:
                for method in METHODS:
                    result = run_drag(model, case, method, params)
                    result.image.save(folder / f"drag-{method}.png")
                    rows.append(drag_record(case, method, result))
                    results[method] = result.image
            if "inpaint" in args.tracks:
                for steps in args.inpaint_steps:
                    for method in METHODS:
                        image, row = run_inpaint(model, case, method, steps, args.seed)
                        image.save(folder / f"inpaint-{method}-{steps}.png")
                        rows.append(row)
            if results and len(overview) < 8:
                overview.append(comparison(case, {f"{m.upper()}-Drag": results[m] for m in METHODS}))
            print(f"case {index + 1}/{args.cases} done ({time.perf_counter() - start:.0f}s)")
        fields = sorted({key for row in rows for key in row}, key=lambda k: (k not in ("case", "track", "method", "steps"), k))
        with open(staging / "metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        summary = summarize(rows)
        write_json(staging / "summary.json", {"settings": recorded_args(args), "summary": summary})
        if overview:
            sheet = Image.new("RGB", (overview[0].width, sum(o.height for o in overview)), (255, 255, 255))
            for i, row_image in enumerate(overview):
                sheet.paste(row_image, (0, i * overview[0].height))
            sheet.save(staging / "overview.png")
        write_json(staging / "run.json", run_record(NAME, recorded_args(args), {"seconds": time.perf_counter() - start}))
    print_summary(summary)
    print(f"wrote {args.out}/summary.json, metrics.csv, overview.png, cases/")
    return 0
