"""SDE-Drag against its compute limit: UNet calls, overhead beyond them, dtypes, peak memory, torch.compile.

(b) UNet calls per DragBench-D case at the paper's settings (200 steps, t0 = 0.6, 2 latent pixels per move),
    computed from the dataset's point layouts: moves x decoding steps, checked against an exact count of
    the UNet calls (a forward hook) in the measured drag.
(a) drag wall time over the time spent inside the UNet's forward (synchronised timers), with the VAE and the
    rest (solver, copy-and-paste, paste-back, conversions) apart; (e) per dtype; (f) peak memory of one drag
    in a fresh process per dtype. On CUDA, wall times come from a run without timers and the host
    synchronisations per drag are counted (torch.cuda.set_sync_debug_mode).
--compile (instead of the above): torch.compile's compile time, its per-call speed against eager, and the
    recompiles a LoRA adapter and changing adapter scales cause; --freezing adds inductor's weight freezing.

    python benchmarks/drag_speed.py                                   # CPU: sd15-random, 128 px, 5 steps
    python benchmarks/drag_speed.py --compile --dtypes float32        # torch.compile only
    python benchmarks/drag_speed.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 --resolution 512 \\
        --steps 200 --moves 4 --lora-steps 100 --device cuda           # GPU, the paper's settings
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    DEFAULT_DATASET,
    PAPER,
    PROMPT,
    UNetMeter,
    add_common_arguments,
    current_memory_mb,
    drag_inputs,
    dragbench_moves,
    load_benchmark_model,
    median,
    paper_steps_per_move,
    peak_memory_mb,
    print_table,
    reset_peak_memory,
    setup,
    timed,
)

from sdedrag.lora import LoraSettings, lora_applied, save_lora, train_lora
from sdedrag.models import StableDiffusion
from sdedrag.settings import DragParams
from sdedrag.tasks.drag import DragRequest, drag


def dragbench_calls(dataset: Path) -> None:
    """(b): moves and UNet calls per case at the paper's settings, from the cases' real point layouts."""
    steps = paper_steps_per_move()
    moves = np.asarray(list(dragbench_moves(dataset).values()))
    rows = [
        ["moves per case", f"{moves.mean():.2f}", f"{np.median(moves):g}", moves.min(), moves.max()],
        ["SDE-Drag calls (batch 4)", f"{moves.mean() * steps:.0f}", f"{np.median(moves) * steps:.0f}",
         moves.min() * steps, moves.max() * steps],
        ["ODE-Drag calls (batch 2)", f"{2 * moves.mean() * steps:.0f}", f"{2 * np.median(moves) * steps:.0f}",
         2 * moves.min() * steps, 2 * moves.max() * steps],
    ]
    print_table(["per DragBench-D case", "mean", "median", "min", "max"], rows,
                f"(b) {len(moves)} cases of {dataset.name}, paper settings: {PAPER.steps} steps, t0 {PAPER.t0} -> "
                f"{steps} decoding steps per move, step size {PAPER.step_size} latent px; SDE: 1 call per step "
                "(edited + recorded latent x CFG), ODE: inversion + decoding (1 latent x CFG)")


@contextmanager
def vae_timer(model: StableDiffusion, device: torch.device) -> Iterator[list[float]]:
    """Seconds spent in the model's VAE encode/decode inside the block (one-element list)."""
    spent = [0.0]

    def wrap(method):
        def inner(*args, **kwargs):
            seconds, result = timed(lambda: method(*args, **kwargs), device)
            spent[0] += seconds
            return result
        return inner

    model.encode_image, model.decode_latent = wrap(model.encode_image), wrap(model.decode_latent)
    try:
        yield spent
    finally:
        del model.encode_image, model.decode_latent  # the class's methods again


@contextmanager
def adapter(model: StableDiffusion, weights: Path | None) -> Iterator[None]:
    if weights is None:
        yield
    else:
        with lora_applied(model, weights):
            yield


def train_adapter(model: StableDiffusion, inputs: dict[str, Any], steps: int, folder: Path) -> Path:
    """A LoRA adapter of the paper's shape (rank 16 on to_q/k/v/out), trained for ``steps`` steps."""
    settings = LoraSettings(steps=steps)
    state = train_lora(model, inputs["image"], inputs["prompt"], settings, progress=False)
    return save_lora(folder, state, settings)


def measure_drag(model: StableDiffusion, inputs: dict[str, Any], params: DragParams, weights: Path | None,
                 device: torch.device) -> dict[str, float]:
    """One drag: wall, UNet and VAE seconds, UNet calls and batch sizes; on CUDA also an untimed run's
    wall time and its host synchronisations."""
    meter = UNetMeter(device)
    with adapter(model, weights), meter.attach(model.unet), vae_timer(model, device) as vae:
        wall, result = timed(lambda: drag(model, DragRequest(**inputs, params=params)), device)
    record = {"wall": wall, "unet": meter.seconds, "vae": vae[0], "calls": meter.calls,
              "batches": meter.batch_summary(), "moves": result.moves, "syncs": float("nan")}
    if device.type == "cuda":
        with adapter(model, weights), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                record["wall"], _ = timed(lambda: drag(model, DragRequest(**inputs, params=params)), device)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        record["syncs"] = sum("synchroniz" in str(w.message) for w in caught)
    return record


def memory_child(args: argparse.Namespace, dtype: str, queue: multiprocessing.Queue) -> None:
    """(f) in a fresh process: memory held once the model is loaded, and the peak during one drag (with LoRA)."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device_resolved)
    model = load_benchmark_model(args.model, device, dtype)
    inputs = drag_inputs(args.resolution, args.moves, model.latent_scale)
    with tempfile.TemporaryDirectory() as folder:
        weights = None if args.no_lora else train_adapter(model, inputs, args.lora_steps, Path(folder))
        gc.collect()
        loaded = current_memory_mb(device)
        reset_peak_memory(device)
        with adapter(model, weights):
            drag(model, DragRequest(**inputs, params=drag_params(args)))
    queue.put((loaded, peak_memory_mb(device)))


def drag_params(args: argparse.Namespace) -> DragParams:
    return DragParams(steps=args.steps, t0=args.t0, guidance=args.guidance, order=args.order)


def measure_compile(model: StableDiffusion, inputs: dict[str, Any], args: argparse.Namespace,
                    device: torch.device, folder: Path) -> None:
    """torch.compile of the UNet: compile time, per-call time against eager, recompiles once LoRA is in."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    latent_hw = args.resolution // model.latent_scale
    x = torch.randn(4, 4, latent_hw, latent_hw, device=device, dtype=model.dtype)
    embeddings = model.condition(PROMPT).cond.expand(4, -1, -1)
    timestep = torch.tensor(500, device=device)
    eager = model.unet
    if args.freezing:
        inductor_config.freezing = True  # weights become constants: prepacked for oneDNN on CPU
    compiled = torch.compile(eager)

    def call(unet: torch.nn.Module) -> float:
        with torch.no_grad():
            return timed(lambda: unet(x, timestep, encoder_hidden_states=embeddings), device)[0]

    first = call(compiled)
    eager_times, compiled_times = [], []
    for _ in range(args.repeats):
        eager_times.append(call(eager))
        compiled_times.append(call(compiled))
    graphs = counters["stats"]["unique_graphs"]
    weights = train_adapter(model, inputs, 1, folder)
    with lora_applied(model, weights):
        lora_first = call(compiled)
        for scale in (0.5, 0.6, 0.7):
            model._set_lora_scale(scale)
            call(compiled)
    rows = [[
        f"{first:.1f}", f"{median(eager_times) * 1e3:.0f}", f"{median(compiled_times) * 1e3:.0f}",
        f"{median(eager_times) / median(compiled_times):.2f}x", f"{lora_first:.1f}",
        counters["stats"]["unique_graphs"] - graphs,
    ]]
    print_table(["compile s", "eager ms/call", "compiled ms/call", "speedup", "first call with LoRA s",
                 "graphs added by LoRA + 3 scales"], rows,
                f"torch.compile (default mode{', freezing' if args.freezing else ''}) of the UNet, batch 4, "
                f"{model.dtype}, medians of {args.repeats}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--steps", type=int, default=5, help="drag steps over [0, T] (default: %(default)s; paper 200)")
    parser.add_argument("--t0", type=float, default=PAPER.t0)
    parser.add_argument("--order", type=int, default=1, choices=(1, 2))
    parser.add_argument("--guidance", type=float, default=PAPER.guidance, help="CFG at t0 (1: no unconditional half)")
    parser.add_argument("--moves", type=int, default=1, help="moves of the measured drag (default: %(default)s)")
    parser.add_argument("--lora-steps", type=int, default=2,
                        help="LoRA training steps (the adapter's cost per call does not depend on them)")
    parser.add_argument("--no-lora", action="store_true", help="drag without a LoRA adapter")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="DragBench-D folder for (b)")
    parser.add_argument("--no-memory", action="store_true", help="skip (f), one extra drag per dtype")
    parser.add_argument("--compile", action="store_true", help="measure torch.compile instead (slow to compile)")
    parser.add_argument("--freezing", action="store_true", help="with --compile: inductor's freezing")
    args = parser.parse_args()
    device = setup(args)
    args.device_resolved = str(device)
    if args.compile:
        model = load_benchmark_model(args.model, device, args.dtypes[0])
        inputs = drag_inputs(args.resolution, args.moves, model.latent_scale)
        with tempfile.TemporaryDirectory() as folder:
            measure_compile(model, inputs, args, device, Path(folder))
        return
    if args.dataset.is_dir():
        dragbench_calls(args.dataset)
    params = drag_params(args)

    dtypes = [d for d in args.dtypes if not (d == "float16" and device.type != "cuda")]
    skipped = [d for d in args.dtypes if d not in dtypes]
    models = {dtype: load_benchmark_model(args.model, device, dtype) for dtype in dtypes}
    inputs = drag_inputs(args.resolution, args.moves, next(iter(models.values())).latent_scale)
    processors = {type(p).__name__ for m in models.values() for p in m.unet.attn_processors.values()}
    print(f"\nattention processors: {', '.join(sorted(processors))} (AttnProcessor2_0 = torch SDPA)")
    runs: dict[str, list[dict[str, float]]] = {dtype: [] for dtype in dtypes}
    with tempfile.TemporaryDirectory(prefix="drag-speed-") as folder:
        weights = {
            dtype: None if args.no_lora else train_adapter(model, inputs, args.lora_steps, Path(folder) / dtype)
            for dtype, model in models.items()
        }
        for dtype, model in models.items():  # warm-up: one-time kernel and allocator set-up is not the drag's cost
            with adapter(model, weights[dtype]):
                drag(model, DragRequest(**inputs, params=DragParams(steps=2, t0=1.0, guidance=args.guidance)))
        for _ in range(args.repeats):
            for dtype, model in models.items():
                runs[dtype].append(measure_drag(model, inputs, params, weights[dtype], device))

    memory = {}
    if not args.no_memory:
        context = multiprocessing.get_context("spawn")
        for dtype in dtypes:
            queue = context.Queue()
            child = context.Process(target=memory_child, args=(args, dtype, queue))
            child.start()
            memory[dtype] = queue.get()
            child.join()

    first = runs[dtypes[0]][0]
    print(f"\n(b) measured drag: {first['moves']} move(s) x {params.steps} steps at t0 {params.t0} = "
          f"{paper_steps_per_move(params.steps, params.t0)} decoding steps per move; "
          f"UNet calls counted: {first['calls']} (calls x batch: {first['batches']})")
    for dtype_runs in runs.values():
        for run in dtype_runs:
            run["other"] = run["wall"] - run["unet"] - run["vae"]
            run["ratio"] = run["wall"] / run["unet"]
    base = median([r["wall"] for r in runs[dtypes[0]]])
    steps = paper_steps_per_move()
    rows, projections = [], []
    for dtype in dtypes:
        med = {key: median([r[key] for r in runs[dtype]]) for key in ("wall", "unet", "vae", "other", "ratio", "syncs")}
        calls, moves = runs[dtype][0]["calls"], runs[dtype][0]["moves"]
        loaded, peak = memory.get(dtype, (float("nan"), float("nan")))
        rows.append([
            dtype, f"{med['wall']:.2f}", f"{med['unet']:.2f}", f"{med['vae']:.2f}", f"{med['other']:.2f}",
            f"{med['ratio']:.3f}", f"{med['unet'] / calls * 1e3:.0f}", f"{med['other'] / calls * 1e3:.1f}",
            f"{med['vae'] / moves * 1e3:.0f}", "n/a" if device.type != "cuda" else f"{med['syncs']:.0f}",
            f"{base / med['wall']:.2f}x", f"{loaded:.0f}", f"{peak:.0f}",
        ])
        per_call, per_move, other_per_call = med["unet"] / calls, med["vae"] / moves, med["other"] / calls
        projections.append(
            f"{dtype}: drag/UNet projected to the paper's {steps} calls per move: "
            f"{1 + (per_move + other_per_call * steps) / (per_call * steps):.4f}"
        )
    rows += [[dtype, "skipped (no CUDA)", *[""] * 11] for dtype in skipped]
    print_table(
        ["dtype", "drag s", "UNet s", "VAE s", "other s", "drag/UNet", "UNet ms/call", "other ms/call",
         "VAE ms/move", "host syncs", "speed vs " + dtypes[0], "model MB", "drag peak MB"],
        rows,
        f"(a, e, f) {args.model} at {args.resolution}x{args.resolution}, LoRA {'off' if args.no_lora else 'on'}, "
        f"guidance {args.guidance}, order {args.order}; medians of {args.repeats}; memory in a fresh process: "
        f"{'allocated' if device.type == 'cuda' else 'resident'} once loaded, and the peak during one drag",
    )
    print("\n".join(projections))


if __name__ == "__main__":
    main()
