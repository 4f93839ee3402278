"""ShapesBench: SDE against ODE on generated scenes whose true result is known. Drag: move one shape per scene
(SDE-Drag, ODE-Drag). Inpainting: regenerate the shape's footprint or a larger box that halves it. SDEdit: restore
a corrupted scene (coarse strokes, jittered colours, pixel noise) at several t0. DiffEdit (text-conditional
models): recolour the shape by editing the scene's caption. A Stable Diffusion model (e.g. shapes-sd) gets the
caption as its prompt, the paper's DragBench drag with per-image LoRA, and all four tracks.

Writes DIR/cases/<id>/ (inputs and every result; the layout is in sdedrag.shapes.bench), DIR/metrics.csv (one
row per case and result), DIR/summary.json (every measure's mean with a bootstrap 95% interval, SDE - ODE
per-case differences and the cases needed to detect them, and the thresholds), DIR/overview.png and
DIR/run.json. With --score, scores an existing folder laid out the same way (any method's results) instead.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from sdedrag.cli.common import (
    add_model_options,
    add_run_options,
    guidance_scale,
    load_model_arg,
    positive_int,
    recorded_args,
    require,
    unit_fraction,
)
from sdedrag.settings import DRAG_METHODS, KNOWN_REGIONS, ORDERS
from sdedrag.shapes.settings import SHAPES_DRAG, SHAPES_SD_DRAG, SHAPES_SD_GUIDANCE

PATH_ARGS = ("score", "lora_cache")
TRACKS = ("drag", "inpaint", "sdedit", "diffedit")
REGIONS = ("shape", "box")
CORRUPTIONS = ("strokes", "jitter", "noise")
NAMES = {"sde": "SDE-Drag", "ode": "ODE-Drag", "dragdiffusion": "DragDiffusion"}
SHOWN = {"drag": ("success", "reached", "distance", "vacated_clean_fraction", "stray_fraction", "truth_psnr"),
         "inpaint": ("success", "stray_fraction", "completed", "truth_psnr"),
         "sdedit": ("success", "recovered", "extra_shapes", "stray_fraction", "truth_psnr"),
         "diffedit": ("success", "recoloured", "old_colour_gone", "region_psnr", "outside_psnr")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=positive_int, default=40, help="number of cases (default: %(default)s)")
    parser.add_argument("--tracks", nargs="+", choices=TRACKS,
                        help="default: all four on a text-conditional model, else drag, inpaint and sdedit")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="processes, each with the model loaded once and one thread (default: %(default)s)")
    parser.add_argument("--score", metavar="DIR", help="score the results in DIR (laid out as this command writes "
                        "them) instead of running; writes metrics.csv, summary.json and overview.png to --out")
    parser.add_argument("--guidance", type=guidance_scale, help="classifier-free guidance of the inpainting, SDEdit "
                        f"and DiffEdit tracks (default: {SHAPES_SD_GUIDANCE:g} on a text-conditional model, else 1)")
    drag = parser.add_argument_group("drag track (defaults: ShapesBench's on a pixel model, the paper's DragBench "
                                     "setting on a latent one)")
    drag.add_argument("--steps", type=positive_int,
                      help=f"solver steps (default: {SHAPES_DRAG.steps}; {SHAPES_SD_DRAG.steps} on a latent model)")
    drag.add_argument("--t0", type=unit_fraction, help=f"default: {SHAPES_DRAG.t0}; {SHAPES_SD_DRAG.t0} on a latent model")
    drag.add_argument("--order", type=int, choices=ORDERS, help=f"solver order (default: {SHAPES_DRAG.order})")
    drag.add_argument("--drag-methods", nargs="+", choices=DRAG_METHODS, default=["sde", "ode"],
                      help="drag methods; dragdiffusion runs at the authors' settings (default: sde ode)")
    drag.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True,
                      help="per-image LoRA on a latent model, as in the paper's DragBench runs (default: on)")
    drag.add_argument("--lora-cache", metavar="DIR", help="where per-image LoRA weights are kept (default: "
                      "$SDEDRAG_CACHE/lora or ~/.cache/sdedrag/lora)")
    inpaint = parser.add_argument_group("inpainting track")
    inpaint.add_argument("--inpaint-regions", nargs="+", choices=REGIONS, default=list(REGIONS), help="default: both")
    inpaint.add_argument("--inpaint-steps", type=positive_int, nargs="+", default=[5, 10, 25, 50],
                         help="step counts (default: 5 10 25 50)")
    inpaint.add_argument("--known-regions", nargs="+", choices=KNOWN_REGIONS,
                         help="known-region rules, each named in the result labels (default: the inpaint task's, unnamed)")
    sdedit = parser.add_argument_group("SDEdit track")
    sdedit.add_argument("--corruptions", nargs="+", choices=CORRUPTIONS, default=list(CORRUPTIONS), help="default: all")
    sdedit.add_argument("--sdedit-t0", type=unit_fraction, nargs="+", default=[0.2, 0.3, 0.4, 0.5],
                        help="noise levels (default: 0.2 0.3 0.4 0.5)")
    sdedit.add_argument("--sdedit-steps", type=positive_int, default=50, help="solver steps over [0, T] (default: %(default)s)")
    add_model_options(parser, default_model="shapes")
    add_run_options(parser)


def cell(value: dict) -> str:
    return f"{value['mean']:.3g} [{value['low']:.3g}, {value['high']:.3g}]"


def print_summary(summary: dict) -> None:
    """Each group's headline measures (mean [95% interval]), then the SDE - ODE differences in success."""
    for name, measures in summary["measures"].items():
        keys = SHOWN[name.split("/")[0]]
        print(f"{name:<28} n={measures['success']['n']:<4}" + "; ".join(f"{k} {cell(measures[k])}" for k in keys))
    for name, measures in summary["sde_minus_ode"].items():
        success = measures["success"]
        print(f"{name:<36} success SDE - ODE {cell(success)}, cases needed {success['cases_needed']:.0f}")


def write_outputs(rows: list[dict], folder: Path, args: argparse.Namespace) -> dict:
    """metrics.csv, summary.json and overview.png (the first cases' drag results) in ``folder``."""
    from sdedrag.io import write_json
    from sdedrag.shapes import metrics
    from sdedrag.shapes.bench import summarize

    fields = sorted({key for row in rows for key in row},
                    key=lambda k: (k not in ("case", "track", "group", "label"), k))
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    thresholds = {name: getattr(metrics, name) for name in (
        "SUCCESS_DISTANCE", "DUPLICATION_THRESHOLD", "BACKGROUND_TOLERANCE", "CLEAN_FRACTION", "STRAY_TOLERANCE",
        "STRAY_LIMIT", "SOLIDITY_LIMIT", "AREA_TOLERANCE", "TOLERANCE")}
    write_json(folder / "summary.json", {"settings": recorded_args(args), "thresholds": thresholds, "summary": summary})
    return summary


def overview(source: Path, rows: list[dict], path: Path, count: int = 4) -> None:
    """The comparison grid of the first ``count`` cases that have drag results."""
    import numpy as np
    from PIL import Image

    from sdedrag.shapes.bench import comparison, read_case

    folders = sorted(p for p in (source / "cases").glob("*") if (p / "drag").is_dir())[:count]
    labels = sorted(set.intersection(*({p.stem for p in f.glob("drag/*.png")} for f in folders)) if folders else set(),
                    key=lambda label: (label not in NAMES, label != "sde", label))
    if not labels:
        return
    entries = []
    for folder in folders:
        case = read_case(folder)
        scored = {r["label"]: r for r in rows if r["case"] == case.case_id and r["track"] == "drag"}
        images = {NAMES.get(k, k): np.asarray(Image.open(folder / "drag" / f"{k}.png").convert("RGB")) for k in labels}
        entries.append((case, images, {NAMES.get(k, k): scored[k] for k in labels}))
    comparison(entries, path)


def run(args: argparse.Namespace) -> int:
    import time
    from dataclasses import asdict, replace

    from sdedrag.io import atomic_output_dir, run_record, write_json
    from sdedrag.lora import LoraCache
    from sdedrag.shapes.bench import run_cases, score_folder, settings_for

    require(args, "out")
    start = time.perf_counter()
    if args.score:
        rows = score_folder(Path(args.score), progress=True)
        with atomic_output_dir(args.out) as staging:
            summary = write_outputs(rows, staging, args)
            overview(Path(args.score), rows, staging / "overview.png")
            write_json(staging / "run.json", run_record(args.command, recorded_args(args), {"rows": len(rows)}))
        print_summary(summary)
        print(f"scored {args.score}; wrote {args.out}/summary.json, metrics.csv, overview.png")
        return 0
    model = load_model_arg(args)
    defaults = settings_for(model)
    drag = {k: v for k, v in (("steps", args.steps), ("t0", args.t0), ("order", args.order)) if v is not None}
    changes = {"tracks": tuple(args.tracks)} if args.tracks else {}
    if args.guidance is not None:
        changes["guidance"] = args.guidance
    if not args.lora:
        changes.update(lora=None, dragdiffusion_lora=None)
    settings = settings_for(
        model,
        **changes,
        drag=replace(defaults.drag, **drag),
        drag_methods=tuple(args.drag_methods),
        inpaint_regions=tuple(args.inpaint_regions),
        inpaint_steps=tuple(args.inpaint_steps),
        known_regions=tuple(args.known_regions) if args.known_regions else (None,),
        corruptions=tuple(args.corruptions),
        sdedit_t0=tuple(args.sdedit_t0),
        sdedit_steps=args.sdedit_steps,
        seed=args.seed,
    )
    with atomic_output_dir(args.out) as staging:
        cache = LoraCache(Path(args.lora_cache)) if args.lora_cache else None
        run_cases(model, args.cases, settings, staging, args.workers, (args.model, args.device, args.dtype), cache)
        rows = score_folder(staging)
        summary = write_outputs(rows, staging, args)
        overview(staging, rows, staging / "overview.png")
        results = {"seconds": time.perf_counter() - start, "settings": asdict(settings)}
        write_json(staging / "run.json", run_record(args.command, recorded_args(args), results))
    print_summary(summary)
    print(f"wrote {args.out}/summary.json, metrics.csv, overview.png, cases/")
    return 0
