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
    print_table,
    setup,
    timed,
)

from sdedrag.bench.formats import list_cases, load_case
from sdedrag.tasks.common import model_size


def share_groups(dataset: Path, latent_scale: int = 8) -> dict[tuple[int, int], list[int]]:
    """Move counts of the cases, grouped by latent size (only cases of one size can share a UNet call)."""
    moves = dragbench_moves(dataset)
    groups: dict[tuple[int, int], list[int]] = {}
    for ref in list_cases(dataset):
        width, height = model_size(*load_case(ref).image.size, latent_scale)
        groups.setdefault((width // latent_scale, height // latent_scale), []).append(moves[ref.id])
    return groups


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
        alone = sum(sum(moves) for moves in groups.values()) * per_call[1]
        exact = Counter((size, m) for size, moves in groups.items() for m in moves)  # same size and move count
        same_moves = sum(batched_seconds(count, per_call) * m for (_, m), count in exact.items())
        # Same size, any move count: move j is shared by the cases that have more than j moves.
        overlap = sum(
            batched_seconds(sum(m > j for m in moves), per_call) for moves in groups.values() for j in range(max(moves))
        )
        cases = sum(len(moves) for moves in groups.values())
        print(f"\n{args.dataset.name}: {cases} cases, {len(groups)} latent sizes, {len(exact)} (size, moves) groups "
              f"(sizes {sorted(exact.values(), reverse=True)}). UNet time with the batch sizes above against one case "
              f"at a time, without LoRA: {same_moves / alone:.2f}x when a group shares every call (same size and "
              f"moves), {overlap / alone:.2f}x when cases of one size share the moves they have in common. With "
              "per-image LoRA (the paper's setting) no call can be shared: 1.00x.")


if __name__ == "__main__":
    main()
