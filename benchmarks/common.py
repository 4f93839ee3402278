"""What the performance benchmarks share: the model under test, UNet call meters, memory, and tables.

The default model, ``sd15-random``, is Stable Diffusion 1.5's architecture with random (seeded) weights:
the real UNet config (860M parameters), the real VAE and a CLIP ViT-L/14-sized text encoder behind a
byte-level tokenizer, so every UNet call costs what SD 1.5's costs at the same latent size. It runs on a
CPU at reduced resolution (``--resolution 128`` -> 16x16 latents); ``--model ID`` runs the same scripts
on any diffusers SD checkpoint (Hub id or folder), for example on a GPU with real weights.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from sdedrag.bench.formats import list_cases, load_case  # noqa: E402
from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG, NoiseSchedule  # noqa: E402
from sdedrag.models import StableDiffusion, load_model, resolve_device, resolve_dtype  # noqa: E402
from sdedrag.models.tiny import assemble_pipeline, build_tiny_tokenizer  # noqa: E402
from sdedrag.settings import DragParams  # noqa: E402
from sdedrag.tasks.common import model_size  # noqa: E402
from sdedrag.tasks.drag import move_count, to_latent_points  # noqa: E402

RANDOM_SD15 = "sd15-random"
PAPER = DragParams()
"""The paper's DragBench settings: 200 steps, t0 = 0.6, 2 latent pixels per move, guidance 3, LoRA."""
DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "dragbench-d-sample"
PROMPT = "a photo of a mountain lake"

SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
"""stable-diffusion-v1-5's unet/config.json."""

SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
"""stable-diffusion-v1-5's vae/config.json."""


def build_sd15_random_pipeline(dtype: torch.dtype = torch.float32, seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.5's UNet and VAE and a ViT-L/14-sized CLIP text encoder with random weights (drawn in float32
    from ``seed``, then cast); the tokenizer is the tiny model's byte-level one, so no files are needed."""
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=768,
                intermediate_size=3072,
                num_attention_heads=12,
                num_hidden_layers=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    return assemble_pipeline(unet, vae, text_encoder, tokenizer, dtype)


def load_benchmark_model(model_id: str, device: str | torch.device, dtype: str | torch.dtype) -> StableDiffusion:
    """``sd15-random`` (built in memory) or anything :func:`sdedrag.models.load_model` reads."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    if model_id == RANDOM_SD15:
        return StableDiffusion(build_sd15_random_pipeline(resolve_dtype(dtype)).to(device), name=RANDOM_SD15)
    model = load_model(model_id, device, dtype)
    if not isinstance(model, StableDiffusion):
        raise SystemExit(f"{model_id!r} is not a Stable Diffusion pipeline")
    return model


def add_common_arguments(parser: argparse.ArgumentParser, resolution: int = 128) -> None:
    parser.add_argument("--model", default=RANDOM_SD15, help="sd15-random (default), a Hub id or a diffusers folder")
    parser.add_argument("--resolution", type=int, default=resolution, help="image side, pixels (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; tables show medians (default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads, 0 = torch's default (default: %(default)s, stable numbers on a shared CPU)",
    )


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``, resolve ``--device`` and print the environment line."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(environment_line(device))
    return device


def environment_line(device: torch.device) -> str:
    """Date, machine, versions and thread count, for the top of a table."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    return (
        f"# {datetime.date.today()} | {where} | torch {torch.__version__} | diffusers {diffusers.__version__} | "
        f"python {platform.python_version()} | threads {torch.get_num_threads()}"
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class UNetMeter:
    """Counts and (optionally) times every UNet forward: calls, batch sizes, seconds inside the forward.

    With ``timed``, the device is synchronised before and after each call, so the seconds are the UNet's
    own (on CUDA this adds two host syncs per call, so take wall times from an untimed run there).
    """

    device: torch.device
    timed: bool = True
    calls: int = 0
    batches: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    _start: float = 0.0

    def _before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.calls += 1
        self.batches[int(sample.shape[0])] += 1
        if self.timed:
            synchronize(self.device)
            self._start = time.perf_counter()

    def _after(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.timed:
            synchronize(self.device)
            self.seconds += time.perf_counter() - self._start

    @contextmanager
    def attach(self, unet: torch.nn.Module) -> Iterator[UNetMeter]:
        handles = [
            unet.register_forward_pre_hook(self._before, with_kwargs=True),
            unet.register_forward_hook(self._after, with_kwargs=True),
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def batch_summary(self) -> str:
        return " ".join(f"{count}x{batch}" for batch, count in sorted(self.batches.items()))


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` (device synchronised at both ends) and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's peak statistics, or (Linux) the process's high-water RSS that ru_maxrss reads."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def _proc_status_mb(key: str) -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status[key].split()[0]) / 1024


def current_memory_mb(device: torch.device) -> float:
    """CUDA's allocated bytes, or the process's resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _proc_status_mb("VmRSS")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last :func:`reset_peak_memory`: CUDA's max allocated bytes, or on CPU the process's
    high-water resident set size (VmHWM: the counter behind ``resource.getrusage``'s ru_maxrss, which however
    also keeps the peaks of exited threads, so it cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mb("VmHWM")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def test_image(resolution: int, seed: int = 0) -> Image.Image:
    """A deterministic square RGB image with structure at several scales (gradients plus blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    channels = []
    for c in range(3):
        base = 0.5 + 0.3 * np.sin(6 * xx + c) * np.cos(4 * yy - c)
        for _ in range(3):
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
            base += 0.3 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)
        channels.append(base)
    return Image.fromarray((np.clip(np.stack(channels, -1), 0, 1) * 255).astype(np.uint8))


def paper_steps_per_move(steps: int = PAPER.steps, t0: float = PAPER.t0) -> int:
    """Decoding steps (UNet calls for SDE-Drag) per move: round(t0 * steps)."""
    return NoiseSchedule(SD_SCHEDULER_CONFIG).grid(steps, t0).num_steps


def dragbench_moves(dataset: Path, step_size: float = PAPER.step_size, latent_scale: int = 8) -> dict[str, int]:
    """Moves per case of a DragBench folder (any format ``sdedrag bench`` reads), from its point layouts at
    full size, as ``iter_drag`` counts them."""
    moves = {}
    for ref in list_cases(dataset):
        case = load_case(ref)
        width, height = model_size(*case.image.size, latent_scale)
        latent_hw = (height // latent_scale, width // latent_scale)
        sources = to_latent_points(np.asarray(case.sources, np.float64), case.image.size, latent_hw)
        targets = to_latent_points(np.asarray(case.targets, np.float64), case.image.size, latent_hw)
        moves[ref.id] = move_count(sources, targets, step_size)
    return moves


def mean_paper_calls(dataset: Path = DEFAULT_DATASET) -> float:
    """Mean SDE-Drag UNet calls per case of ``dataset`` at the paper's settings (470 per the issue if absent)."""
    if not dataset.is_dir():
        return 470.0
    return float(np.mean(list(dragbench_moves(dataset).values()))) * paper_steps_per_move()


def drag_inputs(resolution: int, moves: int, latent_scale: int) -> dict[str, Any]:
    """A test image with one handle dragged ``moves`` moves to the right and an editable central region."""
    source = (0.3 * resolution, 0.5 * resolution)
    target = (source[0] + moves * PAPER.step_size * latent_scale, source[1])
    mask = np.zeros((resolution, resolution), bool)
    mask[resolution // 5 : 4 * resolution // 5, resolution // 10 : 9 * resolution // 10] = True
    return {"image": test_image(resolution), "sources": [source], "targets": [target], "mask": mask, "prompt": PROMPT}


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """A plain-text table (right-aligned; floats as given by their ``format`` in the caller)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
