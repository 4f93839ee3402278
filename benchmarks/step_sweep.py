"""Quality against cost on ShapesBench: SDE-Drag and ODE-Drag over solver steps, orders and deep-feature reuse.

A setting is ``METHOD:ORDER:STEPS[:INTERVAL]`` (INTERVAL: deep features recomputed every INTERVAL-th UNet call
of each encode or decode run, see ``sdedrag.models.feature_reuse``; 1 = off). The first setting is the
reference, ShapesBench's default drag (SDE-Drag, first order, 100 steps at t0 = 0.3). Every setting drags the
same ``--cases`` cases. ``--out`` is a ShapesBench results folder (``cases/<id>/drag/<label>.png``, scored by
``sdedrag.shapes.bench.score_folder``, so ``sdedrag shapes-bench --score DIR`` reads it too) plus runs.jsonl
(each drag's moves and UNet calls), so an interrupted sweep resumes and scoring never re-runs a drag. Cost is in
UNet-call equivalents per move: full calls + reuse calls x the measured time fraction of a reuse call (printed, with its
FLOP fraction). A setting *holds* a measure when its mean is not beyond the reference's 95% interval on the
worse side; it holds quality when it holds every measure.

    python benchmarks/step_sweep.py --cases 40 --out benchmarks/results/step_sweep   # the grid below
    python benchmarks/step_sweep.py --cases 40 --out DIR --score-only                 # tables and plot only
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from common import environment_line, median, print_table

from sdedrag.models import load_model
from sdedrag.models.feature_reuse import call_equivalents, feature_reuse
from sdedrag.shapes.bench import DRAG_SUMMARY, make_drag_case, model_resolution, run_drag, score_folder, write_case
from sdedrag.shapes.metrics import bootstrap_ci
from sdedrag.shapes.settings import SHAPES_DRAG

GRID = (
    "sde:1:100", "sde:2:8", "sde:2:10", "sde:2:15", "sde:2:20", "sde:2:30", "sde:2:50", "sde:3:30", "sde:1:50",
    "sde:1:50:2", "sde:1:100:5", "sde:1:100:10", "ode:1:50",
)
"""The settings run by default: the reference first, then order 2 down to 8 steps, order 3 and 1 where order 2
leaves the reference's interval, deep-feature reuse on top of 50 and 100 first-order steps, ODE-Drag at 50."""
BETTER = {
    "success": +1, "reached": +1, "distance": -1, "truth_psnr": +1, "truth_ssim": +1, "vacated_error": -1,
    "vacated_clean_fraction": +1, "stray_fraction": -1, "area_ratio": 0, "colour_error": -1, "solidity": +1,
    "duplication": -1, "outside_max_diff": -1,
}
"""Which way each ShapesBench drag measure is better: +1 higher, -1 lower, 0 closer to 1."""
MEASURES = {key: BETTER[key] for key in DRAG_SUMMARY}


@dataclass(frozen=True)
class Setting:
    method: str
    order: int
    steps: int
    interval: int = 1

    @classmethod
    def parse(cls, text: str) -> Setting:
        method, *numbers = text.split(":")
        return cls(method, *(int(n) for n in numbers))

    def __str__(self) -> str:
        return f"{self.method}:{self.order}:{self.steps}" + (f":{self.interval}" if self.interval > 1 else "")

    @property
    def label(self) -> str:
        """The result's file name in a case folder (``sde-...`` pairs with ``ode-...`` in ShapesBench)."""
        return f"{self.method}-o{self.order}-s{self.steps}" + (f"-r{self.interval}" if self.interval > 1 else "")


def run_setting(model, setting: Setting, cases: int, seed: int, out: Path, done: set) -> None:
    """Drag every case not yet in ``done`` at ``setting``; append one line per case to runs.jsonl."""
    resolution = model_resolution(model)
    params = replace(SHAPES_DRAG, order=setting.order, steps=setting.steps, seed=seed)
    period = model.schedule.grid(setting.steps, params.t0).num_steps
    for index in range(cases):
        case = make_drag_case(seed, index, resolution)
        if (str(setting), case.case_id) in done:
            continue
        folder = out / "cases" / case.case_id
        if not (folder / "case.json").exists():
            write_case(case, folder)
            (folder / "drag").mkdir()
        start = time.perf_counter()
        with feature_reuse(model, setting.interval, period=period) as reuse:
            result = run_drag(model, case, setting.method, params)
        calls = (1 + (setting.method == "ode")) * period * result.moves  # Cycle-SDE's encoding makes no calls
        if setting.interval > 1 and reuse.calls != calls:
            raise RuntimeError(f"{reuse.calls} UNet calls went through the reuse schedule, expected {calls}")
        full = reuse.full_calls if setting.interval > 1 else calls
        result.image.save(folder / "drag" / f"{setting.label}.png")
        record = {"setting": str(setting), "case": case.case_id, "moves": result.moves, "calls": calls,
                  "full_calls": full, "seconds": time.perf_counter() - start, "flop_fraction": reuse.reuse_cost}
        with open(out / "runs.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"{setting} case {index + 1}/{cases}: {record['seconds']:.1f}s", flush=True)


def reuse_time_fraction(model, batch: int, repeats: int = 30) -> tuple[float, float]:
    """Median seconds of a reuse call over a full call (interleaved), and the FLOP fraction, at ShapesBench's size."""
    resolution = model_resolution(model)
    x = torch.randn(batch, *model.latent_shape(resolution, resolution), generator=torch.Generator().manual_seed(0))
    ratios = []
    with feature_reuse(model, 2) as reuse:
        for _ in range(repeats + 1):
            times = []
            for _ in range(2):  # full, then reuse
                start = time.perf_counter()
                model.predict_eps(x, 500)
                times.append(time.perf_counter() - start)
            ratios.append(times[1] / times[0])
    return median(ratios[1:]), reuse.reuse_cost


def summarize(out: Path, settings: list[Setting], cases: int, seed: int, model, fractions: tuple[float, float]
              ) -> list[dict]:
    """Per setting: cost per move and each measure's mean and interval, scored from the saved images."""
    records = {}
    for line in (out / "runs.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[(record["setting"], record["case"])] = record
    resolution = model_resolution(model)
    case_ids = [make_drag_case(seed, index, resolution).case_id for index in range(cases)]
    scored: dict[str, list[dict]] = {}
    for row in score_folder(out):
        if row["track"] == "drag" and row["case"] in case_ids:
            scored.setdefault(row["label"], []).append(row)
    rows = []
    for setting in settings:
        runs = [records.get((str(setting), case_id)) for case_id in case_ids]
        scores = scored.get(setting.label, [])
        if any(run is None for run in runs) or len(scores) != cases:
            continue
        moves = sum(run["moves"] for run in runs)
        calls = sum(run["calls"] for run in runs)
        full = sum(run["full_calls"] for run in runs)
        rows.append({
            "setting": setting, "calls_per_move": calls / moves,
            "equivalents_per_move": call_equivalents(full, calls - full, fractions[0]) / moves,
            "flop_equivalents_per_move": call_equivalents(full, calls - full, fractions[1]) / moves,
            "measures": {key: bootstrap_ci([float(s[key]) for s in scores]) for key in MEASURES},
        })
    return rows


def holds(value: float, reference: dict, direction: int) -> bool:
    """``value`` is not beyond ``reference``'s interval on the worse side."""
    if direction > 0:
        return value >= reference["low"]
    if direction < 0:
        return value <= reference["high"]
    return abs(value - 1) <= max(abs(reference["low"] - 1), abs(reference["high"] - 1))


def failed_measures(row: dict, reference: dict) -> list[str]:
    """The measures ``row`` does not hold against the reference's intervals."""
    return [key for key, better in MEASURES.items() if not holds(row["measures"][key]["mean"], reference[key], better)]


def cell(value: dict) -> str:
    return f"{value['mean']:.2f} [{value['low']:.2f}, {value['high']:.2f}]"


def report(rows: list[dict], plot: Path) -> None:
    """The sweep table, the cheapest SDE-Drag settings that hold success and every measure, and the plot."""
    reference = rows[0]["measures"]
    shown = ("success", "reached", "distance", "truth_psnr", "truth_ssim", "vacated_error")
    table = []
    for row in rows:
        row["failed"] = failed_measures(row, reference)
        table.append([str(row["setting"]), f"{row['calls_per_move']:.0f}", f"{row['equivalents_per_move']:.1f}",
                      f"{row['flop_equivalents_per_move']:.1f}",
                      *(cell(row["measures"][key]) for key in shown), ", ".join(row["failed"]) or "-"])
    print_table(["setting", "calls/move", "equiv./move", "FLOP equiv.", *shown, "measures not held"], table,
                f"ShapesBench drag track, {reference['success']['n']} cases; mean [95% CI]; "
                f"reference {rows[0]['setting']}")
    sde = [row for row in rows if row["setting"].method == "sde"]
    criteria = (("success", lambda row: "success" not in row["failed"]), ("every measure", lambda row: not row["failed"]))
    for name, keep in criteria:
        cheapest = min(filter(keep, sde), key=lambda row: row["equivalents_per_move"])
        print(f"cheapest SDE-Drag setting holding {name}: {cheapest['setting']} "
              f"({cheapest['equivalents_per_move']:.1f} UNet-call equivalents per move)")
    plot_quality(rows, plot)


def plot_quality(rows: list[dict], path: Path) -> None:
    """Success, vacated-area error and PSNR to the truth against UNet-call equivalents per move (log axis), with
    95% intervals, the reference's interval as a band, and 12 equivalents per move dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    panels = (("success", "success rate (higher is better)"),
              ("vacated_error", "vacated-area error (lower is better)"), ("truth_psnr", "PSNR to the ground truth, dB"))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.6))
    series: dict[str, list[dict]] = {}
    for row in rows:
        s = row["setting"]
        name = f"{s.method.upper()}-Drag, order {s.order}" + (", deep-feature reuse" if s.interval > 1 else "")
        series.setdefault(name, []).append(row)
    for ax, (key, label) in zip(axes, panels):
        reference = rows[0]["measures"][key]
        ax.axhspan(reference["low"], reference["high"], color="0.88", label=f"reference ({rows[0]['setting']}) 95% CI")
        for name, group in series.items():
            group.sort(key=lambda row: row["equivalents_per_move"])
            x = [row["equivalents_per_move"] for row in group]
            values = [row["measures"][key] for row in group]
            low = [v["mean"] - v["low"] for v in values]
            high = [v["high"] - v["mean"] for v in values]
            reuse = "reuse" in name
            ax.errorbar(x, [v["mean"] for v in values], yerr=[low, high], marker="s" if reuse else "o",
                        linestyle="none" if reuse else "-", capsize=3, label=name)
            for row, xi, v in zip(group, x, values):
                s = row["setting"]
                text = f"{s.steps}" + (f"/{s.interval}" if s.interval > 1 else "")
                ax.annotate(text, (xi, v["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axvline(12, color="k", linewidth=0.8, linestyle="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([2, 3, 4, 6, 9, 12, 15, 20, 30, 60])
        ax.set_xlabel("UNet-call equivalents per move")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("ShapesBench drag track: quality against cost (labels: steps / reuse interval; dashed: 12 per move)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(GRID),
                        help="METHOD:ORDER:STEPS[:INTERVAL] ...; the first is the reference (default: the grid)")
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="results folder: cases/ and runs.jsonl (resumes)")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("step_sweep.png"))
    parser.add_argument("--score-only", action="store_true", help="only score the settings already run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("shapes", "cpu", "float32")
    print(environment_line(model.device))
    settings = [Setting.parse(text) for text in args.settings]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.score_only:
        runs = args.out / "runs.jsonl"
        lines = runs.read_text().splitlines() if runs.exists() else []
        done = {(record["setting"], record["case"]) for record in map(json.loads, lines)}
        for setting in settings:
            run_setting(model, setting, args.cases, args.seed, args.out, done)
    fraction, flops = reuse_time_fraction(model, batch=2)
    print(f"reuse call / full call on {model.name}, batch 2: time {fraction:.3f} (median), FLOPs {flops:.3f}")
    report(summarize(args.out, settings, args.cases, args.seed, model, (fraction, flops)), args.plot)


if __name__ == "__main__":
    main()
