"""(d) Cross-case batching for ``bench run``: what k cases sharing every UNet call could gain.

An SDE-Drag step is one UNet call of batch 4 (edited + recorded latent, x conditional + unconditional).
k cases dragged together would make it one call of batch 4k. This measures the UNet's time per case at
batch 4k against batch 4 (interleaved, medians), then applies it to a DragBench-D folder: only cases with
the same latent size and the same number of moves can share every call, and only without per-image LoRA
(the paper's setting trains one adapter per image, so no two cases run the same UNet).

    python benchmarks/batching.py                                  # CPU: sd15-random at 128 px
    python benchmarks/batching.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 --resolution 512 \\
        --device cuda --dtype float16 --cases 1 2 4 8
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch

from common import (
    DEFAULT_DATASET,
    PROMPT,
    add_common_arguments,
    dragbench_moves,
    load_benchmark_model,
    median,
    paper_steps_per_move,
    print_table,
    setup,
    timed,
)
from sdedrag.bench.formats import list_cases, load_case
from sdedrag.tasks.common import model_size


def share_groups(dataset: Path, latent_scale: int = 8) -> list[int]:
    """Sizes of the groups of cases that could share every UNet call: same latent size and number of moves."""
    moves = dragbench_moves(dataset)
    keys = Counter()
    for ref in list_cases(dataset):
        width, height = model_size(*load_case(ref).image.size, latent_scale)
        keys[(width // latent_scale, height // latent_scale, moves[ref.id])] += 1
    return sorted(keys.values(), reverse=True)


def batched_seconds(group: int, per_call: dict[int, float]) -> float:
    """Time of one step for ``group`` cases, split greedily into the largest measured batch sizes."""
    seconds, left = 0.0, group
    for k in sorted(per_call, reverse=True):
        calls, left = divmod(left, k)
        seconds += calls * per_call[k]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cases", type=int, nargs="+", default=[1, 2, 4], help="k values (default: %(default)s)")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    args = parser.parse_args()
    device = setup(args)
    model = load_benchmark_model(args.model, device, args.dtype)
    side = args.resolution // model.latent_scale
    cond = model.condition(PROMPT)
    cases = sorted(set(args.cases) | {1})
    latents = {k: torch.randn(2 * k, 4, side, side, device=device, dtype=model.latent_dtype) for k in cases}
    joint = {k: model.stack_conditions([(cond, 2 * k)]) for k in cases}
    for k in cases:  # warm-up
        model.predict_eps(latents[k], 500, joint[k], guidance=3.0)
    times: dict[int, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for k in cases:
            times[k].append(timed(lambda: model.predict_eps(latents[k], 500, joint[k], guidance=3.0), device)[0])
    per_call = {k: median(times[k]) for k in cases}
    rows = [
        [k, 4 * k, f"{per_call[k] * 1e3:.0f}", f"{per_call[k] / k * 1e3:.0f}", f"{per_call[1] * k / per_call[k]:.2f}x"]
        for k in cases
    ]
    print_table(["cases k", "UNet batch", "ms per call", "ms per case-step", "throughput vs k=1"], rows,
                f"(d) {args.model} ({args.dtype}) at {args.resolution}x{args.resolution} ({side}x{side} latents), "
                f"medians of {args.repeats}")

    if args.dataset.is_dir():
        groups = share_groups(args.dataset)
        alone = sum(groups) * per_call[1]
        together = sum(batched_seconds(g, per_call) for g in groups)
        shared = sum(g for g in groups if g > 1)
        print(f"\n{args.dataset.name}: {sum(groups)} cases in {len(groups)} groups of equal latent size and move count "
              f"(sizes {groups}); {shared} cases have a partner. With the batch sizes above, --no-lora runs would "
              f"spend {together / alone:.2f}x the UNet time of one case at a time ({alone / together:.2f}x faster); "
              f"with per-image LoRA (the paper's setting) no call can be shared. "
              f"({paper_steps_per_move()} calls per move at the paper's settings.)")


if __name__ == "__main__":
    main()
