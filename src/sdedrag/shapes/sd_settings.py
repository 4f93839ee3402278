"""The ``shapes-sd`` training settings, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
}
"""SD's scheduler config (``engine.schedule.SD_SCHEDULER_CONFIG``: scaled-linear betas, leading spacing) with
SD 2.x's v-prediction target: after a short CPU run an epsilon model's x0 estimate near T divides its error
by sqrt(alpha-bar_T) = 0.07 and samples saturate."""
KL_WEIGHT = 1e-6
"""SD's VAE KL weight, relative to a per-pixel reconstruction loss summed over the image."""
LOGVAR_INIT = -10.0
"""Initial posterior log-variance of the VAE (std 0.007)."""


@dataclass
class SDTrainConfig:
    """Everything that determines a ``shapes-sd`` training run (stored as training_config.json)."""

    resolution: int = 128
    max_shapes: int = 3
    pool: int = 2048
    seed: int = 0
    threads: int = 1
    vae_steps: int = 500
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 1e-3
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)
    unet_steps: int = 1500
    decoder_steps: int = 0
    """Steps of phase 3, which fine-tunes the VAE decoder alone on the pool's fixed latents (0: none)."""
    decoder_lr: float = 5e-4
    decoder_batch: int = 16
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    unet_channels: tuple[int, ...] = (32, 64, 128)
    attention_heads: int = 4
    text_dim: int = 64
    text_layers: int = 2
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    checkpoint_every: int = 100
    save_dtype: str = "float16"
    """Of the VAE and UNet; the text encoder (0.1 M parameters) is always stored in float32."""
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SCHEDULER_CONFIG))
