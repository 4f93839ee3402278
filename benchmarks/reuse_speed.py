"""Deep-feature reuse on Stable Diffusion 1.5's UNet: what a reuse call costs, and seconds per drag move.

A reuse call (``sdedrag.models.feature_reuse``) runs only the UNet's shallowest ``depth`` levels. This measures,
on SD-Drag's real call (edited and recorded latent, each with and without the prompt: batch 4), the seconds of
a full and a reuse call (interleaved, medians) and the FLOP fraction, for depth 1 and 2. It then projects the
seconds per move of each setting ``ORDER:STEPS[:INTERVAL]`` at t0 = 0.6 (UNet calls only: the VAE adds one
decode per move, see drag_speed.py), and checks the projection against one measured move of the last setting
(by default ``--fast``'s: order 1, 25 steps, reuse 2).

    python benchmarks/reuse_speed.py        # sd15-random at 128 px, about 10 min on a busy 2-core CPU
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from common import PAPER, UNetMeter, add_common_arguments, drag_inputs, load_benchmark_model, median, print_table, setup

from sdedrag.models.feature_reuse import call_equivalents, feature_reuse, reuse_calls_in_run
from sdedrag.tasks.drag import DragRequest, drag

SETTINGS = ("1:200", "2:50", "1:50", "1:50:5", "1:25", "1:25:2")


def call_seconds(model, x: torch.Tensor, cond, depth: int, repeats: int) -> tuple[float, float, float]:
    """Median seconds of a full and of a reuse call (alternating, after one warm-up pair) and the FLOP fraction."""
    full, reuse = [], []
    with feature_reuse(model, 2, depth=depth) as schedule:
        for index in range(repeats + 1):
            for times in (full, reuse):
                start = time.perf_counter()
                model.predict_eps(x, 500, cond, guidance=PAPER.guidance)
                if index:
                    times.append(time.perf_counter() - start)
    return median(full), median(reuse), schedule.reuse_cost


def parse(text: str) -> tuple[int, int, int]:
    order, steps, *interval = (int(v) for v in text.split(":"))
    return order, steps, interval[0] if interval else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS),
                        help="ORDER:STEPS[:INTERVAL] (default: %(default)s)")
    args = parser.parse_args()
    device = setup(args)
    model = load_benchmark_model(args.model, device, "float32")
    size = args.resolution
    x = torch.randn(2, *model.latent_shape(size, size), generator=torch.Generator().manual_seed(0)).to(device)
    cond = model.stack_conditions([(model.condition("a photo"), 1)] * 2)

    rows, costs = [], {}
    for depth in (1, 2):
        full, reuse, flops = call_seconds(model, x, cond, depth, args.repeats)
        costs[depth] = (full, reuse)
        rows.append([depth, f"{1000 * full:.0f}", f"{1000 * reuse:.0f}", f"{reuse / full:.3f}", f"{flops:.3f}"])
    print_table(["depth", "full call ms", "reuse call ms", "time fraction", "FLOP fraction"], rows,
                f"{model.name} at {size}x{size}, batch 4 (Cycle-SDE x guidance); medians of {args.repeats}")

    full, reuse = costs[1]
    rows, projected = [], {}
    for text in args.settings:
        order, steps, interval = parse(text)
        calls = model.schedule.grid(steps, PAPER.t0).num_steps
        reused = reuse_calls_in_run(calls, interval) if interval > 1 else 0
        projected[text] = (calls - reused) * full + reused * reuse
        rows.append([text, calls, f"{call_equivalents(calls - reused, reused, reuse / full):.1f}",
                     f"{projected[text]:.1f}"])
    print_table(["order:steps[:interval]", "UNet calls/move", "call equivalents/move", "UNet s/move (projected)"],
                rows, f"depth 1, t0 {PAPER.t0}, seconds from the medians above")

    order, steps, interval = parse(args.settings[-1])
    inputs = drag_inputs(size, moves=1, latent_scale=model.latent_scale)
    params = replace(PAPER, order=order, steps=steps, reuse=interval, paste_back=False)
    meter = UNetMeter(device)
    with meter.attach(model.unet):
        result = drag(model, DragRequest(inputs["image"], inputs["sources"], inputs["targets"], inputs["mask"],
                                         inputs["prompt"], params))
    print(f"\nmeasured: one move at {args.settings[-1]}: {meter.calls} UNet calls ({meter.batch_summary()}), "
          f"{result.call_equivalents:.2f} full-call equivalents by FLOPs (run.json's), UNet {meter.seconds:.1f} s, "
          f"drag {result.timings['drag_seconds']:.1f} s; projected UNet {projected[args.settings[-1]]:.1f} s")


if __name__ == "__main__":
    main()
