"""Train the ``shapes`` model: a small pixel-space UNet2DModel with the DDPM loss on procedural scenes.

Training is deterministic and resumable: the batch, timesteps and noise of step ``s`` depend only on
(seed, s), and ``DIR/checkpoint.pt`` (weights, EMA, optimiser, loss log, elapsed time) is written every
``checkpoint_every`` steps, so a killed run continues exactly where its last checkpoint left off.
A resumed run may change ``steps`` (to shorten or extend it); the learning-rate schedule then follows the
new length from that step on, and ``lengths`` records every [from_step, total_steps] in the results.
The output folder is a DDPMPipeline-compatible diffusers folder (EMA weights) that ``load_model`` reads.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from sdedrag.engine import Trajectory  # noqa: E402
from sdedrag.engine import decode  # noqa: E402
from sdedrag.errors import InputError  # noqa: E402
from sdedrag.io import tensor_to_image  # noqa: E402
from sdedrag.models.base import DiffusionModel  # noqa: E402
from sdedrag.models.pixel import PixelUNet  # noqa: E402
from sdedrag.shapes.data import ShapesDataset  # noqa: E402
from sdedrag.shapes.settings import TrainConfig  # noqa: E402

def build_unet(config: TrainConfig) -> UNet2DModel:
    """The UNet: plain ResNet blocks at the top resolutions, self-attention at the lowest one."""
    levels = len(config.block_out_channels)
    return UNet2DModel(
        sample_size=config.resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=16,
        attention_head_dim=16,
    )


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def sample(model: DiffusionModel, count: int, resolution: int, steps: int = 100, process: str = "sde",
           seed: int = 0) -> torch.Tensor:
    """``count`` images [count, 3, H, W] in [-1, 1] from pure noise, decoded by the engine (t0 = 1)."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    grid = model.schedule.grid(steps, t0=1.0)
    shape = (count, *model.latent_shape(resolution, resolution))
    x_t = torch.randn(shape, generator=generator, device=model.device, dtype=model.latent_dtype)
    x0 = decode(model, x_t, Trajectory(process, grid, [x_t]), process, generator=generator)
    return model.decode_latent(x0)


def image_grid(images: torch.Tensor, columns: int, scale: int = 4) -> Image.Image:
    """Tile [N, 3, H, W] images in [-1, 1] into one picture, enlarged ``scale`` times (nearest neighbour)."""
    tiles = [np.asarray(tensor_to_image(image)) for image in images]
    height, width = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / columns)
    canvas = np.full(((height + 1) * rows + 1, (width + 1) * columns + 1, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        canvas[1 + r * (height + 1) : (r + 1) * (height + 1), 1 + c * (width + 1) : (c + 1) * (width + 1)] = tile
    picture = Image.fromarray(canvas)
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def _as_model(unet: UNet2DModel, config: TrainConfig) -> PixelUNet:
    return PixelUNet(unet.eval(), config.scheduler, name="shapes")


def _ema_unet(unet: UNet2DModel, ema: EMAModel) -> UNet2DModel:
    """A copy of ``unet`` holding the EMA weights."""
    copy = UNet2DModel.from_config(unet.config)
    copy.load_state_dict(unet.state_dict())
    ema.copy_to(copy.parameters())
    return copy


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def loss_curve(losses: list[float], path: Path, window: int = 100) -> None:
    """Per-step loss (faint) and its running mean over ``window`` steps, log scale."""
    values = np.asarray(losses)
    smooth = np.convolve(values, np.ones(window) / window, mode="valid") if len(values) >= window else values
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(np.arange(1, len(values) + 1), values, color="tab:blue", alpha=0.25, linewidth=0.5, label="per step")
    ax.plot(np.arange(len(values) - len(smooth) + 1, len(values) + 1), smooth, color="tab:blue",
            label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="MSE", yscale="log", title="shapes model training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train(config: TrainConfig, out: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Train (or resume from ``out/checkpoint.pt``) and write the model folder; returns the run's results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    unet = build_unet(config)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    noise_scheduler = DDIMScheduler.from_config(config.scheduler)
    dataset = ShapesDataset(config.steps * config.batch_size, config.resolution, config.seed, config.max_shapes)
    checkpoint_path = out / "checkpoint.pt"
    start, losses, elapsed, lengths = 0, [], 0.0, [[0, config.steps]]
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        if {**state["config"], "steps": config.steps} != asdict(config):
            raise InputError(f"{checkpoint_path} was written with another training config (only the number of "
                             "training steps may change when resuming); train into another folder")
        if state["step"] > config.steps:
            raise InputError(f"{checkpoint_path} is at step {state['step']}, beyond the {config.steps} training steps")
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        start, losses, elapsed = state["step"], state["losses"], state["elapsed"]
        lengths = state.get("lengths", [[0, state["config"]["steps"]]])
        if lengths[-1][1] != config.steps:
            lengths.append([start, config.steps])

    unet.train()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train-shapes", disable=not progress)
    tick = time.perf_counter()
    for step in bar:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        x0 = torch.stack([dataset[step * config.batch_size + j] for j in range(config.batch_size)])
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.batch_size,),
                                  generator=generator)
        target = noise if config.scheduler["prediction_type"] == "epsilon" else noise_scheduler.get_velocity(
            x0, noise, timesteps)
        loss = torch.nn.functional.mse_loss(unet(noise_scheduler.add_noise(x0, noise, timesteps), timesteps).sample,
                                            target)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.step(unet.parameters())
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}", refresh=False)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            elapsed += time.perf_counter() - tick
            tick = time.perf_counter()
            _save_checkpoint(checkpoint_path, {
                "config": asdict(config), "step": done, "losses": losses, "elapsed": elapsed, "lengths": lengths,
                "unet": unet.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict(),
            })
            loss_curve(losses, out / "loss.png")
            preview = _as_model(_ema_unet(unet, ema), config)
            previews = sample(preview, 16, config.resolution, min(25, config.sample_steps), seed=config.seed)
            image_grid(previews, columns=8).save(out / "progress_samples.png")
            unet.train()
            print(f"step {done}/{config.steps}: loss(last 100) {np.mean(losses[-100:]):.4f}, "
                  f"{elapsed / 60:.1f} min", flush=True)
    bar.close()
    return finish(config, out, _ema_unet(unet, ema), losses, elapsed, lengths)


def finish(config: TrainConfig, out: Path, ema_unet: UNet2DModel, losses: list[float], elapsed: float,
           lengths: list[list[int]]) -> dict[str, Any]:
    """Write the diffusers folder (EMA weights), training_config.json, loss log and curve, samples, model card."""
    stored = ema_unet.half() if config.save_dtype == "float16" else ema_unet  # .half(): no diffusers .to() warning
    DDPMPipeline(unet=stored, scheduler=DDIMScheduler.from_config(config.scheduler)).save_pretrained(
        out, safe_serialization=True)
    ema_unet = ema_unet.float()
    (out / "training_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    np.savetxt(out / "loss_log.csv", np.column_stack([np.arange(1, len(losses) + 1), losses]), delimiter=",",
               fmt=["%d", "%.6f"], header="step,loss", comments="")
    loss_curve(losses, out / "loss.png")
    model = _as_model(ema_unet, config)
    image_grid(sample(model, 64, config.resolution, config.sample_steps, "sde", config.seed), columns=8).save(
        out / "samples.png")
    results = {
        "steps": len(losses),
        "final_loss": float(np.mean(losses[-100:])),
        "train_minutes": elapsed / 60,
        "lengths": lengths,
        "parameters": sum(p.numel() for p in ema_unet.parameters()),
        "weights_bytes": (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size,
    }
    (out / "README.md").write_text(model_card(config, results))
    return results


def model_card(config: TrainConfig, results: dict[str, Any]) -> str:
    """The model folder's README.md."""
    channels = ",".join(str(c) for c in config.block_out_channels)
    length_note = "" if len(results["lengths"]) == 1 else (
        "\n- The run was resumed with another `--train-steps`, and its cosine schedule followed the new total: "
        + ", then ".join(f"from step {a} a {b}-step schedule" for a, b in results["lengths"]) + ".")
    return f"""# sdedrag `shapes` model

An unconditional pixel-space diffusion model (diffusers `UNet2DModel`, {results['parameters'] / 1e6:.2f} M parameters,
EMA weights stored in {config.save_dtype}, {results['weights_bytes'] / 1e6:.1f} MB) of {config.resolution}x{config.resolution} procedural shape scenes:
1-{config.max_shapes} non-overlapping discs or squares in distinct colours (red, green, blue, yellow) on a light plain
or linear-gradient background (`sdedrag.shapes.data`). It lets SDE-Drag run on a real trained model, offline
and on a CPU: `--model shapes`.

## Training

- Command: `sdedrag train-shapes --out DIR --train-steps {config.steps} --batch-size {config.batch_size} --lr {config.lr} --warmup {config.warmup} \
--resolution {config.resolution} --seed {config.seed} --threads {config.threads} --channels {channels} \
--layers-per-block {config.layers_per_block} --prediction-type {config.scheduler['prediction_type']}`
- Data: a fresh scene for every training example (scene `i` of seed {config.seed}),
  {results['steps'] * config.batch_size:,} scenes in all.
- Objective: MSE of the {config.scheduler['prediction_type']} target, timesteps uniform over 1000; linear betas
  1e-4 to 0.02 (`scheduler/`, trailing spacing, `set_alpha_to_one` false).
- Optimiser: AdamW (weight decay {config.weight_decay}), learning rate {config.lr} with {config.warmup} warmup steps and
  cosine decay to {config.min_lr_ratio:g}x, gradient clipping at 1; EMA with warmup up to decay {config.ema_decay}.
- {results['steps']} steps of batch {config.batch_size} in {results['train_minutes']:.0f} minutes of wall time on {config.threads} CPU thread(s) (a CPU shared with
  other work); final loss (mean of the last 100 steps) {results['final_loss']:.4f}.
- Full configuration: `training_config.json`; per-step loss: `loss_log.csv`.{length_note}

![loss curve](loss.png)

## Samples

64 samples of the EMA model, {config.sample_steps}-step SDE (DDPM, eta = 1) through the sdedrag engine, seed {config.seed}:

![samples](samples.png)
"""
