"""Benchmarks: drag a whole dataset (DragBench-S, DragBench-D or Drag100) and score the results.

``bench run`` writes OUT/<case id>/{result.png, input.png, mask.png, run.json} and OUT/summary.json; it
resumes where a killed run stopped and splits the cases between processes under ``torchrun`` or
``accelerate launch``. Its SDE-Drag and ODE-Drag defaults are ``sdedrag drag``'s but for the paper's
DragBench evaluation's LoRA rank 4 and no pixel paste-back (``--paste-back`` turns it on). ``bench eval`` writes OUT/metrics.csv (one row per case) and OUT/summary.json.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from sdedrag.bench.settings import DAI_GAMMAS, DEFAULT_DIFT_MODEL, DIFT_ENSEMBLE, FORMATS
from sdedrag.cli.common import (
    Parser,
    add_image_options,
    add_model_options,
    load_model_arg,
    positive_int,
    recorded_args,
    require,
)
from sdedrag.cli.common import check_out as common_check_out
from sdedrag.cli.drag import add_drag_options
from sdedrag.settings import DRAGBENCH_LORA_RANK, DRAGBENCH_PASTE_BACK, DTYPE_NAMES, METHODS

PATH_ARGS = ("dataset", "results", "out", "lora_cache")
# Generous: processes wait for each other at the end of a run, which can take hours on uneven shares.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=48)


def result_file(text: str) -> str:
    """An argparse type: a relative path that stays inside each case's folder."""
    path = Path(text)
    if not text or path.is_absolute() or ".." in path.parts:
        raise argparse.ArgumentTypeError(f"must be a relative path inside the case folder, got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", parser_class=Parser, required=True)
    run_parser = commands.add_parser("run", help="drag every case of a dataset into OUT (resumable)", description=run_dataset.__doc__)
    add_dataset_options(run_parser)
    run_parser.add_argument("--out", type=Path, help="results folder (required); rerun the same command to resume")
    run_parser.add_argument("--limit", type=positive_int, help="only the first N cases (in sorted id order)")
    run_parser.add_argument("--max-size", type=positive_int, help="downscale images whose longer side exceeds N pixels")
    add_image_options(run_parser)
    add_drag_options(run_parser, lora_rank=DRAGBENCH_LORA_RANK, paste_back=DRAGBENCH_PASTE_BACK)
    add_model_options(run_parser)

    eval_parser = commands.add_parser("eval", help="score a results folder: metrics.csv and summary.json", description=evaluate_results.__doc__)
    add_dataset_options(eval_parser)
    eval_parser.add_argument("--results", help="results folder with <case id>/result.png (required)")
    eval_parser.add_argument("--out", type=Path, help="output folder (required)")
    eval_parser.add_argument("--result-file", type=result_file, default="result.png",
                             help="the result's file name in each case's results folder, e.g. drag/sde.png for "
                             "shapes-bench's DIR/cases (default: %(default)s)")
    eval_parser.add_argument("--dift-model", default=DEFAULT_DIFT_MODEL, help="SD 2.1 Hub id or local diffusers folder for DIFT features, 'shapes-sd' (offline, for ShapesBench "
                             "scenes) or 'tiny' (default: %(default)s)")
    eval_parser.add_argument("--dift-ensemble", type=positive_int, default=DIFT_ENSEMBLE, help="noise samples averaged per DIFT feature map (default: %(default)s)")
    eval_parser.add_argument("--no-mean-distance", dest="mean_distance", action="store_false", help="skip Mean Distance (needs the DIFT weights)")
    eval_parser.add_argument("--no-lpips", dest="lpips", action="store_false", help="skip Image Fidelity (needs the lpips package and AlexNet weights)")
    eval_parser.add_argument("--dai-gammas", type=positive_int, nargs="+", default=list(DAI_GAMMAS), help="DAI patch radii in pixels (default: %(default)s)")
    eval_parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    eval_parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="DIFT weights' dtype (default: %(default)s)")


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="dataset folder (required)")
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="dataset layout (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Drag every case of a dataset (``bench run``) or score a results folder (``bench eval``)."""
    return run_dataset(args) if args.bench_command == "run" else evaluate_results(args)


def check_out(args: argparse.Namespace) -> None:
    """``bench run`` resumes into --out (:func:`sdedrag.bench.runner.check_out`); ``bench eval`` writes a new one."""
    if args.bench_command == "run":
        from sdedrag.bench.runner import check_out as check_run_out

        check_run_out(Path(args.out))
    else:
        common_check_out(args)


def run_dataset(args: argparse.Namespace) -> int:
    """Drag every case of --dataset into --out: one folder per case, a summary with per-case timings."""
    import torch
    from accelerate import PartialState

    from sdedrag.bench.runner import BenchPlan, run_benchmark, summary_line
    from sdedrag.lora import LoraCache
    from sdedrag.runs import MODEL_ARGS, settings_args, settings_from_args
    from sdedrag.session import DragSession

    require(args, "dataset", "out")
    if args.lora_rank is None and args.method in METHODS:
        args.lora_rank = DRAGBENCH_LORA_RANK
    params, lora = settings_from_args(vars(args))
    cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu, timeout=PROCESS_GROUP_TIMEOUT)
    device = str(state.device) if args.device == "auto" and state.device.type == "cuda" else args.device
    cache = LoraCache(Path(args.lora_cache)) if args.lora_cache else None
    plan = BenchPlan(Path(args.dataset), Path(args.out), args.format, args.limit, args.max_size, args.max_pixels)

    def make_session() -> DragSession:
        return DragSession(load_model_arg(args, device), lora_cache=cache)

    drag_args = {**settings_args(params, lora), **{name: getattr(args, name) for name in MODEL_ARGS}}
    summary = run_benchmark(plan, make_session, params, lora, drag_args, state)
    if summary is not None:
        print(summary_line(summary))
    return 0


def evaluate_results(args: argparse.Namespace) -> int:
    """Score --results against --dataset: Mean Distance (DIFT, both protocols), Image Fidelity (1 - LPIPS),
    PSNR/SSIM outside the mask and DAI; writes OUT/metrics.csv and OUT/summary.json."""
    from sdedrag.bench.dift import DiftExtractor
    from sdedrag.bench.evaluate import evaluate, summarize, write_metrics_csv
    from sdedrag.bench.metrics import LpipsDistance
    from sdedrag.io import atomic_output_dir, environment, write_json
    from sdedrag.models import resolve_device

    require(args, "dataset", "results", "out")
    device = resolve_device(args.device)
    distance = LpipsDistance(device) if args.lpips else None  # the light dependency first: fail fast
    extractor = (
        DiftExtractor.from_pretrained(args.dift_model, str(device), args.dtype, ensemble_size=args.dift_ensemble)
        if args.mean_distance
        else None
    )
    evaluation = evaluate(args.dataset, args.results, args.format, extractor, distance, args.dai_gammas,
                          progress=True, result_file=args.result_file)
    settings = {
        "mean_distance": {"dift_model": args.dift_model, **extractor.settings} if extractor else None,
        "image_fidelity": {"lpips_net": "alex", "size": 224} if distance else None,
        "dai_gammas": args.dai_gammas,
    }
    summary = {**summarize(evaluation, settings), "args": recorded_args(args), **environment()}
    with atomic_output_dir(args.out) as staging:
        write_metrics_csv(staging / "metrics.csv", evaluation.rows)
        write_json(staging / "summary.json", summary)
    means = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary["metrics"].items())
    skipped = len(evaluation.missing) + len(evaluation.invalid)
    print(f"{summary['cases']} cases ({skipped} skipped): {means}; wrote {args.out}/metrics.csv and summary.json")
    return 0
