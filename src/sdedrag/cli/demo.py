"""SDE-Drag versus ODE-Drag on a built-in, trained shapes model: fully offline, about a minute on a CPU.

Builds ShapesBench cases (generated scenes with a known true result), drags one shape per scene with both
methods and scores each result against its ground truth. Writes DIR/comparison.png (one row per case: input
and drag, SDE-Drag, ODE-Drag, ground truth, the measures under each result), DIR/sde.gif and DIR/ode.gif (the
first case's moves), DIR/cases/<id>/ (laid out as shapes-bench writes it, so `shapes-bench --score` reads it),
DIR/metrics.json and DIR/run.json; the measures and a verdict per case are printed. With --model shapes-sd
(a small Stable Diffusion) the drags run as on SD: the scene's caption as the prompt, per-image LoRA, and the
paper's DragBench settings.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sdedrag.cli import common
from sdedrag.cli.common import add_model_options, add_run_options, load_model_arg, positive_int, recorded_args, require
from sdedrag.shapes.settings import SHAPES_DRAG, SHAPES_SD_DRAG

METHODS = ("sde", "ode")
COLUMNS = (  # (measure, header with unit and better direction, format)
    ("distance", "to target px (<=2)", "{:.1f}"),
    ("duplicated", "duplicated", "{}"),
    ("vacated_clean_fraction", "vacated clean % (more)", "{:.0%}"),
    ("stray_fraction", "stray % (less)", "{:.0%}"),
    ("truth_psnr", "PSNR dB (more)", "{:.1f}"),
    ("truth_ssim", "SSIM (more)", "{:.2f}"),
    ("success", "success", "{}"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, nargs="+", default=[0, 1, 2],
                        help="which generated scenes (default: 0 1 2)")
    parser.add_argument("--steps", type=positive_int, help=f"solver steps (default: {SHAPES_DRAG.steps}; "
                        f"{SHAPES_SD_DRAG.steps} on a latent model such as shapes-sd)")
    add_model_options(parser, default_model="shapes")
    add_run_options(parser)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def reasons(row: dict[str, Any]) -> str:
    """Why a drag failed, in the ground-truth measures' words (empty for a success)."""
    from sdedrag.shapes.metrics import CLEAN_FRACTION, SUCCESS_DISTANCE

    found = [] if row["found"] else ["the shape is gone"]
    far = [f"{row['distance']:.1f} px from the target"] if row["found"] and row["distance"] > SUCCESS_DISTANCE else []
    copy = ["the shape is duplicated"] if row["duplicated"] else []
    dirty = ([f"only {row['vacated_clean_fraction']:.0%} of the vacated area is clean background "
              f"(needs {CLEAN_FRACTION:.0%}): something is left behind"]
             if row["vacated_clean_fraction"] < CLEAN_FRACTION else [])
    return ", ".join(found + far + copy + dirty)


def table(rows: list[dict[str, Any]]) -> str:
    header = f"{'method':<10}" + "".join(f"{title:>{len(title) + 2}}" for _, title, _ in COLUMNS)
    lines = [header]
    for row in rows:
        cells = "".join(f"{fmt.format(row[key]):>{len(title) + 2}}" for key, title, fmt in COLUMNS)
        lines.append(f"{row['method'].upper() + '-Drag':<10}{cells}")
    return "\n".join(lines)


def check_out(args: argparse.Namespace) -> None:
    """Say what the demo will do before anything slow happens (checking --out loads torch), then check --out."""
    params = SHAPES_DRAG if args.model == "shapes" else SHAPES_SD_DRAG if args.model == "shapes-sd" else None
    setting = "" if params is None else f"{args.steps or params.steps} steps at t0 = {params.t0}, "
    say(f"demo: SDE-Drag and ODE-Drag on ShapesBench cases {' '.join(map(str, args.cases))} (seed {args.seed}), "
        f"{setting}model {args.model}; writing {args.out}")
    common.check_out(args)


def run(args: argparse.Namespace) -> int:
    require(args, "out")
    say("loading the model ...")
    from dataclasses import replace

    import numpy as np
    from PIL import Image

    from sdedrag.io import atomic_output_dir, run_record, write_json
    from sdedrag.shapes.bench import (
        comparison,
        drag_record,
        make_drag_case,
        model_resolution,
        run_drag,
        settings_for,
        write_case,
    )
    from sdedrag.visualize import save_gif

    model = load_model_arg(args)
    resolution = model_resolution(model)
    settings = settings_for(model)
    params = replace(settings.drag, steps=args.steps or settings.drag.steps, seed=args.seed)
    rows, entries = [], []
    with atomic_output_dir(args.out) as staging:
        for number, index in enumerate(args.cases):
            case = make_drag_case(args.seed, index, resolution, model.latent_scale)
            folder = staging / "cases" / case.case_id
            write_case(case, folder)
            (folder / "drag").mkdir()
            images, scored = {}, {}
            for method in METHODS:
                result = run_drag(model, case, method, params, progress=f"case {case.case_id} {method.upper()}-Drag",
                                  lora=settings.lora)
                result.image.save(folder / "drag" / f"{method}.png")
                row = drag_record(case, method, result)
                rows.append(row)
                images[f"{method.upper()}-Drag"], scored[f"{method.upper()}-Drag"] = np.asarray(result.image), row
                if number == 0:
                    scale = max(1, 256 // resolution)
                    frames = [f.resize((f.width * scale, f.height * scale), Image.Resampling.NEAREST)
                              for f in (case.scene.pil(), *result.frames)]
                    save_gif(frames, staging / f"{method}.gif")
            entries.append((case, images, scored))
        comparison(entries, staging / "comparison.png")
        write_json(staging / "metrics.json", {"rows": rows})
        write_json(staging / "run.json", run_record(args.command, recorded_args(args), {"rows": rows}))
    for case, _, scored in entries:
        print(f"case {case.case_id}: move the {case.shape.colour} {case.shape.kind} from "
              f"({case.source[0]:.1f}, {case.source[1]:.1f}) to ({case.target[0]:.1f}, {case.target[1]:.1f})")
        print(table(list(scored.values())))
        verdicts = [f"{name} {'succeeds' if row['success'] else 'fails: ' + reasons(row)}" for name, row in scored.items()]
        print("verdict: " + "; ".join(verdicts) + "\n")
    wins = {m: sum(r["success"] for r in rows if r["method"] == m) for m in METHODS}
    print(f"overall: SDE-Drag succeeds on {wins['sde']} of {len(args.cases)} cases, ODE-Drag on {wins['ode']} "
          "(success: within 2 px of the target, not duplicated, vacated area clean)")
    print(f"wrote {args.out}/comparison.png, sde.gif, ode.gif, cases/, metrics.json, run.json")
    return 0
