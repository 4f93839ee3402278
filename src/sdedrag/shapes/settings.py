"""The shapes model's training settings and ShapesBench's drag settings, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdedrag.settings import (
    DRAGBENCH_LORA_RANK,
    DRAGBENCH_PASTE_BACK,
    DRAGDIFFUSION_LORA,
    DragDiffusionParams,
    DragParams,
    LoraSettings,
)

SHAPES_DRAG = DragParams(steps=100, t0=0.3, paste_back=False, guidance=1.0)
"""Drag settings for the pixel-space shapes model: the paper's step size and patch scaling, and t0 = 0.3,
where this model's linear schedule keeps alpha-bar 0.39 (the paper's t0 = 0.6 is on SD's scaled-linear
schedule, alpha-bar 0.16; here 0.6 would leave 0.03 and wash the pasted patch out). The mask rule alone
keeps every pixel outside the mask exact in pixel space, so there is nothing to paste back."""

SHAPES_DRAGDIFFUSION = DragDiffusionParams(t0=0.48, paste_back=False)
"""DragDiffusion on the shapes model: the authors' DragBench settings but for the inversion strength, 0.48 of 50
DDIM steps, where this model's linear schedule has alpha-bar 0.096, the level the authors' 0.7 reaches on SD
(t = 681, alpha-bar 0.095; here 0.7 would leave 0.007), and without paste-back, as SHAPES_DRAG. Its mask term
holds the latent, not the pixels, so pixels outside the mask may change. The model has 4 self-attention layers,
so mutual self-attention from the authors' layer 10 is off."""

SHAPES_SD_GUIDANCE = 3.0
"""Classifier-free guidance on a text-conditional shapes model (``shapes-sd``), with the scene's caption as the
prompt: the paper's drag guidance, which also drew the named colours and kinds more often than 5 or 7.5."""
SHAPES_SD_DRAG = DragParams(paste_back=DRAGBENCH_PASTE_BACK)
"""Drag settings on a latent shapes model: the paper's DragBench evaluation unchanged (200 steps, t0 = 0.6 on
SD's own scaled-linear schedule, guidance 3 ramped to 1, the LoRA scale ramp, no paste-back)."""
SHAPES_SD_LORA = LoraSettings(rank=DRAGBENCH_LORA_RANK)
"""The per-image LoRA of the paper's DragBench evaluation (rank 4, 100 steps at lr 2e-4)."""
SHAPES_SD_DRAGDIFFUSION = DragDiffusionParams(paste_back=False, start_layer=5)
"""DragDiffusion on shapes-sd: the authors' settings (SD's schedule, so t0 = 0.7 means what it means there)
without paste-back, as SHAPES_SD_DRAG, and its LoRA (DRAGDIFFUSION_LORA). Mutual self-attention starts where
the authors' does in the UNet's layout: their layer 10 of SD 1.5's 16 self-attention layers opens its two
highest-resolution attention up blocks; shapes-sd has 7 (down 2, mid 1, up 2 + 2), and 5 opens its highest one."""
SHAPES_SD_DRAGDIFFUSION_LORA = DRAGDIFFUSION_LORA

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "prediction_type": "v_prediction",
}
"""DDPM's linear VP schedule (alpha-bar at T is 4e-5, so x_T is pure noise at 32x32), trailing spacing
so a sampling grid starts at t = T, and v-prediction: near T an epsilon model's x0 estimate divides its
error by sqrt(alpha-bar) ~ 0.006, and after a short CPU training run unclipped samples saturate."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored as training_config.json)."""

    steps: int = 2100
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    resolution: int = 32
    max_shapes: int = 3
    seed: int = 0
    threads: int = 1
    ema_decay: float = 0.9995
    checkpoint_every: int = 250
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    save_dtype: str = "float16"
    sample_steps: int = 100
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SCHEDULER_CONFIG))
