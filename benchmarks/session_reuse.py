"""(c) A second drag of the same image in one process (model loaded, LoRA cached) against a cold start.

Cold start: a new process (interpreter start and sdedrag's imports, timed in a subprocess), loading the
model from disk (``sd15-random`` is saved to a temporary diffusers folder first, so this is the real
``from_pretrained`` path; the page cache is warm after the first repeat, as on a machine that used the
model recently), training the per-image LoRA into an empty cache, and the drag. Second drag: the same
``DragSession.drag`` call again: the cache lookup (hashing the image and fingerprinting the weights), loading
the adapter into the UNet, the drag, removing the adapter.

    python benchmarks/session_reuse.py                      # CPU: sd15-random, 128 px, 5 steps, 5 LoRA steps
    python benchmarks/session_reuse.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 --device cuda \\
        --resolution 512 --steps 200 --moves 4 --lora-steps 100   # GPU, the paper's settings
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    RANDOM_SD15,
    UNetMeter,
    add_common_arguments,
    build_sd15_random_pipeline,
    drag_inputs,
    mean_paper_calls,
    median,
    print_table,
    setup,
    synchronize,
)

from sdedrag.lora import LoraCache, LoraSettings
from sdedrag.models import load_model
from sdedrag.session import DragSession
from sdedrag.settings import DragParams
from sdedrag.tasks.drag import DragRequest

IMPORTS = "import sdedrag.cli, sdedrag.session"


def import_seconds() -> float:
    """Wall time of a fresh interpreter importing what ``sdedrag drag`` imports."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    return time.perf_counter() - start


def one_round(model_path: str, args: argparse.Namespace, device: torch.device, cache_root: Path) -> dict[str, float]:
    """Load, drag with LoRA training (cold), drag again (warm); seconds of each part."""
    shutil.rmtree(cache_root, ignore_errors=True)
    synchronize(device)
    start = time.perf_counter()
    session = DragSession(load_model(model_path, device, args.dtype), lora_cache=LoraCache(cache_root))
    synchronize(device)
    times = {"load": time.perf_counter() - start}
    inputs = drag_inputs(args.resolution, args.moves, session.model.latent_scale)
    params = DragParams(steps=args.steps)
    lora = LoraSettings(steps=args.lora_steps)
    for name in ("cold", "warm"):
        meter = UNetMeter(device)
        synchronize(device)
        start = time.perf_counter()
        with meter.attach(session.model.unet):
            result = session.drag(DragRequest(**inputs, params=params), lora)
        synchronize(device)
        wall = time.perf_counter() - start
        times[f"{name}_lora"] = result.timings["lora_seconds"]  # training (cold) or cache lookup (warm)
        times[f"{name}_drag"] = result.timings["drag_seconds"]
        times[f"{name}_adapter"] = wall - result.timings["lora_seconds"] - result.timings["drag_seconds"]
        times[f"{name}_unet_per_call"] = meter.seconds / max(1, meter.calls)
    del session
    gc.collect()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=5, help="drag steps (default: %(default)s, paper: 200)")
    parser.add_argument("--moves", type=int, default=1)
    parser.add_argument("--lora-steps", type=int, default=5, help="LoRA steps (default: %(default)s, paper: 100)")
    args = parser.parse_args()
    device = setup(args)
    work = Path(tempfile.mkdtemp(prefix="session-reuse-"))
    try:
        model_path = args.model
        if args.model == RANDOM_SD15:
            model_path = str(work / "model")
            build_sd15_random_pipeline(seed=0).save_pretrained(model_path)  # float32 on disk; --dtype casts on load
        rounds, imports = [], []
        for _ in range(args.repeats):
            imports.append(import_seconds())
            rounds.append(one_round(model_path, args, device, work / "lora"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {key: median([r[key] for r in rounds]) for key in rounds[0]}
    med["imports"] = median(imports)
    cold = med["imports"] + med["load"] + med["cold_lora"] + med["cold_adapter"] + med["cold_drag"]
    warm = med["warm_lora"] + med["warm_adapter"] + med["warm_drag"]
    rows = [
        ["process start + imports", f"{med['imports']:.2f}", "-"],
        ["load model", f"{med['load']:.2f}", "-"],
        ["LoRA: train (cold) / cache lookup (warm)", f"{med['cold_lora']:.2f}", f"{med['warm_lora']:.3f}"],
        ["LoRA adapter into the UNet and out", f"{med['cold_adapter']:.2f}", f"{med['warm_adapter']:.2f}"],
        ["drag", f"{med['cold_drag']:.2f}", f"{med['warm_drag']:.2f}"],
        ["total", f"{cold:.2f}", f"{warm:.2f}"],
    ]
    print_table(["seconds (median of %d)" % args.repeats, "cold start", "second drag"], rows,
                f"(c) {args.model} ({args.dtype}) at {args.resolution}x{args.resolution}: {args.steps} steps, "
                f"{args.moves} move(s), {args.lora_steps} LoRA steps")
    print(f"cold start / second drag: {cold / warm:.2f}x")
    calls = mean_paper_calls()
    per_call, per_step = med["warm_unet_per_call"], med["cold_lora"] / args.lora_steps
    paper_drag = calls * per_call
    paper_cold = med["imports"] + med["load"] + 100 * per_step + med["cold_adapter"] + paper_drag
    paper_warm = med["warm_lora"] + med["warm_adapter"] + paper_drag
    print(f"projected to the paper's settings ({calls:.0f} UNet calls per drag, the DragBench-D mean, at "
          f"{per_call * 1e3:.0f} ms; 100 LoRA steps at {per_step:.2f} s): cold {paper_cold:.0f} s, second drag "
          f"{paper_warm:.0f} s, ratio {paper_cold / paper_warm:.2f}x")


if __name__ == "__main__":
    main()
