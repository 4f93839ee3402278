"""Train ``shapes-sd``: a small Stable Diffusion (SD 1.x pipeline classes) of captioned ShapesBench scenes.

Three phases, each deterministic and resumable from a checkpoint in the output folder:

1. ``vae``: an AutoencoderKL (4 latent channels, 8x downsampling) on random crops of a pool of rendered
   scenes, L1 reconstruction plus SD's KL weight; its scaling factor is then fitted to 1 / std of the
   pool's latents (SD's recipe), and the pool is encoded once (posterior mean and std, ``latents.pt``).
2. ``unet``: a UNet2DConditionModel with cross-attention and a CLIPTextModel trained together on the
   pool's latents (a fresh posterior sample each time) and ground-truth captions, the caption dropped to
   "" with probability ``caption_dropout`` (classifier-free guidance), SD's scaled-linear betas with the
   v-prediction target, constant learning rate after warmup and EMA of both networks. ``unet_steps`` may
   change when resuming (to stop early or extend); ``lengths`` records every [from_step, total_steps].
3. ``decoder`` (``decoder_steps`` > 0): the VAE decoder alone, fine-tuned with L1 on ``vae_crop`` crops of pool
   images decoded from posterior samples of the frozen encoder's cached latents (as SD's ft-MSE decoder was):
   the latent space the UNet learned is unchanged, only the pixels it decodes get sharper. Its steps may change.

The output folder is a stock ``StableDiffusionPipeline`` folder (EMA weights) that ``load_model`` reads.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdedrag.shapes.captions import build_tokenizer, caption
from sdedrag.shapes.data import sample_scene
from sdedrag.shapes.sd_settings import KL_WEIGHT, LOGVAR_INIT, SDTrainConfig
from sdedrag.shapes.train import loss_curve


def build_vae(config: SDTrainConfig) -> AutoencoderKL:
    """SD's AutoencoderKL layout (one block per width, 2^(levels-1) downsampling) without the mid attention.

    Group norms have 4 channels per group at the top level (a group of one channel would normalise away a
    flat region's colour), and the posterior log-variance starts at LOGVAR_INIT: with SD's tiny KL weight a
    short run would otherwise spend its steps shrinking unit posterior noise.
    """
    levels = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=config.vae_channels[0] // 4,
        sample_size=config.resolution,
        mid_block_add_attention=False,
    )
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels :] = LOGVAR_INIT
    return vae


def build_text_encoder(config: SDTrainConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A CLIP text transformer (causal, last hidden state used as SD does) at toy width."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_dim,
        intermediate_size=4 * config.text_dim,
        num_attention_heads=4,
        num_hidden_layers=config.text_layers,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))


def build_unet(config: SDTrainConfig, latent_scale: int) -> UNet2DConditionModel:
    """SD's UNet layout at toy width: plain ResNet blocks at the top level, cross-attention below it."""
    levels = len(config.unet_channels)
    return UNet2DConditionModel(
        sample_size=config.resolution // latent_scale,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(config.unet_channels),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=config.text_dim,
        attention_head_dim=config.attention_heads,
        norm_num_groups=config.unet_channels[0] // 4,
    )


def learning_rate(peak: float, warmup: int, step: int, total: int | None = None) -> float:
    """Linear warmup, then constant (``total`` None) or cosine decay to 0.1 ``peak`` at step ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total is None:
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def render_pool(config: SDTrainConfig, count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Scenes (seed, 0..count-1) as uint8 [count, 3, H, W] and their captions."""
    scenes = [sample_scene(np.random.default_rng([seed, i]), config.resolution, config.max_shapes)
              for i in range(count)]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).contiguous()
    return images, [caption(s) for s in scenes]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def random_crops(images: torch.Tensor, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` crops of randomly chosen pool images, float in [-1, 1]."""
    picks = torch.randint(0, images.shape[0], (count,), generator=generator)
    corners = torch.randint(0, images.shape[-1] - size + 1, (count, 2), generator=generator)
    return torch.stack([to_unit(images[p, :, y : y + size, x : x + size]) for p, (y, x) in zip(picks, corners,
                                                                                                 strict=True)])


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """L1 reconstruction of a posterior sample plus KL_WEIGHT times the KL, both summed per pixel as in SD."""
    posterior = vae.encode(x).latent_dist
    reconstruction = vae.decode(posterior.sample(generator)).sample
    return (reconstruction - x).abs().mean() + KL_WEIGHT * posterior.kl().mean() / x[0].numel()


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> float:
    """One step on ``loss`` at learning rate ``lr``, gradients clipped to norm 1; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
    optimizer.step()
    return loss.item()


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _check_config(state: dict[str, Any], config: SDTrainConfig, path: Path) -> None:
    """Refuse a checkpoint of another configuration; settings it predates (added later) take their current values."""
    resumable = {"unet_steps": config.unet_steps, "decoder_steps": config.decoder_steps}
    if {**asdict(config), **state["config"], **resumable} != asdict(config):
        raise ValueError(f"{path} was written with another training config (only the UNet and decoder steps may "
                         "change when resuming); use another output folder")


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, images: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every pool image (unscaled latents)."""
    means, stds = [], []
    for start in range(0, images.shape[0], batch):
        posterior = vae.encode(to_unit(images[start : start + batch])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def train_vae(config: SDTrainConfig, out: Path, images: torch.Tensor, progress: bool) -> tuple[AutoencoderKL, dict]:
    """Phase 1 (resumable from ``out/vae_checkpoint.pt``): the autoencoder; returns it and its run record."""
    path = out / "vae_checkpoint.pt"
    torch.manual_seed(config.seed)
    vae = build_vae(config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=config.weight_decay)
    start, losses, elapsed = 0, [], 0.0
    if path.exists():
        state = torch.load(path, weights_only=False)
        _check_config(state, config, path)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses, elapsed = state["step"], state["losses"], state["elapsed"]
    vae.train()
    tick = time.perf_counter()
    bar = tqdm(range(start, config.vae_steps), initial=start, total=config.vae_steps, desc="vae",
               disable=not progress)
    for step in bar:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        crops = random_crops(images, min(config.vae_crop, config.resolution), config.vae_batch, generator)
        loss = vae_loss(vae, crops, generator)
        lr = learning_rate(config.vae_lr, config.warmup, step, config.vae_steps)
        losses.append(optimizer_step(optimizer, loss, lr))
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.vae_steps:
            elapsed += time.perf_counter() - tick
            tick = time.perf_counter()
            _save(path, {"config": asdict(config), "step": done, "losses": losses, "elapsed": elapsed,
                         "vae": vae.state_dict(), "optimizer": optimizer.state_dict()})
            print(f"vae step {done}/{config.vae_steps}: L1(last 100) {np.mean(losses[-100:]):.4f}, "
                  f"{elapsed / 60:.1f} min", flush=True)
    bar.close()
    return vae.eval(), {"losses": losses, "elapsed": elapsed}


def fit_latents(config: SDTrainConfig, out: Path, vae: AutoencoderKL, images: torch.Tensor) -> dict[str, Any]:
    """Encode the pool once (cached in ``out/latents.pt``) and set the VAE's scaling factor to 1 / latent std."""
    path = out / "latents.pt"
    if not path.exists():
        tick = time.perf_counter()
        mean, std = encode_pool(vae, images)
        scaling = float(1.0 / (mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(
            config.seed))).std())
        _save(path, {"mean": mean, "std": std, "scaling_factor": scaling, "elapsed": time.perf_counter() - tick})
    state = torch.load(path, weights_only=False)
    vae.register_to_config(scaling_factor=state["scaling_factor"])
    return state


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's length, exactly as StableDiffusionPipeline.encode_prompt pads."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_unet(config: SDTrainConfig, out: Path, vae: AutoencoderKL, latents: dict[str, Any], captions: list[str],
               progress: bool) -> tuple[UNet2DConditionModel, CLIPTextModel, CLIPTokenizer, dict]:
    """Phase 2 (resumable from ``out/unet_checkpoint.pt``): UNet and text encoder; returns their EMA copies."""
    path = out / "unet_checkpoint.pt"
    tokenizer = build_tokenizer()
    torch.manual_seed(config.seed + 1)
    unet = build_unet(config, 2 ** (len(config.vae_channels) - 1))
    text_encoder = build_text_encoder(config, tokenizer)
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    ema = EMAModel(parameters, decay=config.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_lr, weight_decay=config.weight_decay)
    scheduler = DDIMScheduler.from_config(config.scheduler)
    start, losses, elapsed, lengths = 0, [], 0.0, [[0, config.unet_steps]]
    if path.exists():
        state = torch.load(path, weights_only=False)
        _check_config(state, config, path)
        if state["step"] > config.unet_steps:
            raise ValueError(f"{path} is at step {state['step']}, beyond the requested {config.unet_steps} steps")
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        start, losses, elapsed, lengths = state["step"], state["losses"], state["elapsed"], state["lengths"]
        if lengths[-1][1] != config.unet_steps:
            lengths.append([start, config.unet_steps])
    ids, empty = tokenize(tokenizer, captions), tokenize(tokenizer, [""])[0]
    scaling = vae.config.scaling_factor
    unet.train()
    text_encoder.train()
    tick = time.perf_counter()
    bar = tqdm(range(start, config.unet_steps), initial=start, total=config.unet_steps, desc="unet",
               disable=not progress)
    for step in bar:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 500_000 + step)
        picks = torch.randint(0, len(captions), (config.unet_batch,), generator=generator)
        mean, std = latents["mean"][picks], latents["std"][picks]
        x0 = (mean + std * torch.randn(mean.shape, generator=generator)) * scaling
        dropped = torch.rand(config.unet_batch, generator=generator) < config.caption_dropout
        tokens = torch.where(dropped[:, None], empty[None], ids[picks])
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (config.unet_batch,), generator=generator)
        target = noise if config.scheduler["prediction_type"] == "epsilon" else scheduler.get_velocity(
            x0, noise, timesteps)
        output = unet(scheduler.add_noise(x0, noise, timesteps), timesteps,
                      encoder_hidden_states=text_encoder(tokens)[0]).sample
        loss = torch.nn.functional.mse_loss(output, target)
        losses.append(optimizer_step(optimizer, loss, learning_rate(config.unet_lr, config.warmup, step)))
        ema.step(parameters)
        bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}", refresh=False)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.unet_steps:
            elapsed += time.perf_counter() - tick
            tick = time.perf_counter()
            _save(path, {"config": asdict(config), "step": done, "losses": losses, "elapsed": elapsed,
                         "lengths": lengths, "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                         "optimizer": optimizer.state_dict(), "ema": ema.state_dict()})
            loss_curve(losses, out / "loss.png")
            print(f"unet step {done}/{config.unet_steps}: loss(last 100) {np.mean(losses[-100:]):.4f}, "
                  f"{elapsed / 60:.1f} min", flush=True)
    bar.close()
    ema.copy_to(parameters)
    return unet.eval(), text_encoder.eval(), tokenizer, {"losses": losses, "elapsed": elapsed, "lengths": lengths}


def train_decoder(config: SDTrainConfig, out: Path, vae: AutoencoderKL, images: torch.Tensor,
                  latents: dict[str, Any], progress: bool) -> dict:
    """Phase 3 (resumable from ``out/decoder_checkpoint.pt``): fine-tune ``vae``'s decoder in place on the pool's
    cached latents; returns its run record."""
    path = out / "decoder_checkpoint.pt"
    decoder = torch.nn.ModuleList([vae.post_quant_conv, vae.decoder])
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=config.decoder_lr, weight_decay=config.weight_decay)
    start, losses, elapsed = 0, [], 0.0
    if path.exists():
        state = torch.load(path, weights_only=False)
        _check_config(state, config, path)
        if state["step"] > config.decoder_steps:
            raise ValueError(f"{path} is at step {state['step']}, beyond the requested {config.decoder_steps} steps")
        decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses, elapsed = state["step"], state["losses"], state["elapsed"]
    decoder.train()
    scale = 2 ** (len(config.vae_channels) - 1)
    crop = max(1, min(config.vae_crop, config.resolution) // scale)  # latent pixels of a crop
    side = latents["mean"].shape[-1]
    tick = time.perf_counter()
    bar = tqdm(range(start, config.decoder_steps), initial=start, total=config.decoder_steps, desc="decoder",
               disable=not progress)
    for step in bar:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 900_000 + step)
        picks = torch.randint(0, images.shape[0], (config.decoder_batch,), generator=generator)
        y, x = (int(i) for i in torch.randint(0, side - crop + 1, (2,), generator=generator))  # latent pixels
        window = (picks, slice(None), slice(y, y + crop), slice(x, x + crop))
        mean, std = latents["mean"][window], latents["std"][window]
        z = mean + std * torch.randn(mean.shape, generator=generator)
        pixels = to_unit(images[picks, :, y * scale : (y + crop) * scale, x * scale : (x + crop) * scale])
        loss = (vae.decode(z).sample - pixels).abs().mean()
        lr = learning_rate(config.decoder_lr, config.warmup, step, config.decoder_steps)
        losses.append(optimizer_step(optimizer, loss, lr))
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.decoder_steps:
            elapsed += time.perf_counter() - tick
            tick = time.perf_counter()
            _save(path, {"config": asdict(config), "step": done, "losses": losses, "elapsed": elapsed,
                         "decoder": decoder.state_dict(), "optimizer": optimizer.state_dict()})
            print(f"decoder step {done}/{config.decoder_steps}: L1(last 100) {np.mean(losses[-100:]):.4f}, "
                  f"{elapsed / 60:.1f} min", flush=True)
    bar.close()
    vae.eval()
    return {"losses": losses, "elapsed": elapsed}


def pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, unet: UNet2DConditionModel,
             config: SDTrainConfig) -> StableDiffusionPipeline:
    """The trained parts as a stock Stable Diffusion pipeline with the training scheduler config."""
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler.from_config(config.scheduler), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def train(config: SDTrainConfig, out: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the phases and write the diffusers folder, config and loss logs; returns the run's results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    tick = time.perf_counter()
    images, captions = render_pool(config, config.pool, config.seed)
    render_seconds = time.perf_counter() - tick
    vae, vae_run = train_vae(config, out, images, progress)
    latents = fit_latents(config, out, vae, images)
    unet, text_encoder, tokenizer, unet_run = train_unet(config, out, vae, latents, captions, progress)
    decoder_run = train_decoder(config, out, vae, images, latents, progress)
    pipe = pipeline(vae, text_encoder, tokenizer, unet, config)
    if config.save_dtype == "float16":  # diffusers loads these back as float32; transformers would keep float16
        for module in (vae, unet):
            torch.nn.Module.to(module, dtype=torch.float16)  # a plain cast: no diffusers dtype warning
    pipe.save_pretrained(out, safe_serialization=True)
    for module in (vae, unet):
        torch.nn.Module.to(module, dtype=torch.float32)
    (out / "training_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    for name, run in (("vae", vae_run), ("unet", unet_run), ("decoder", decoder_run)):
        if not run["losses"]:
            continue
        np.savetxt(out / f"{name}_loss_log.csv", np.column_stack([np.arange(1, len(run["losses"]) + 1), run["losses"]]),
                   delimiter=",", fmt=["%d", "%.6f"], header="step,loss", comments="")
    loss_curve(unet_run["losses"], out / "loss.png")
    results = {
        "vae_steps": len(vae_run["losses"]),
        "unet_steps": len(unet_run["losses"]),
        "vae_final_l1": float(np.mean(vae_run["losses"][-100:])),
        "unet_final_loss": float(np.mean(unet_run["losses"][-100:])),
        "decoder_steps": len(decoder_run["losses"]),
        "decoder_final_l1": float(np.mean(decoder_run["losses"][-100:])) if decoder_run["losses"] else None,
        "decoder_minutes": decoder_run["elapsed"] / 60,
        "vae_minutes": vae_run["elapsed"] / 60,
        "encode_minutes": latents["elapsed"] / 60,
        "render_minutes": render_seconds / 60,
        "unet_minutes": unet_run["elapsed"] / 60,
        "lengths": unet_run["lengths"],
        "scaling_factor": vae.config.scaling_factor,
        "parameters": {name: sum(p.numel() for p in m.parameters())
                       for name, m in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder))},
        "weights_bytes": sum(f.stat().st_size for f in out.glob("*/*.safetensors")),
    }
    (out / "training_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
