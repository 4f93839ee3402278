"""An unconditional pixel-space diffusers UNet2DModel as a DiffusionModel (the image is the latent)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DModel
from torch import Tensor

from sdedrag.engine.schedule import NoiseSchedule
from sdedrag.models.base import DiffusionModel, check_prediction_type, eps_from_output


class PixelUNet(DiffusionModel):
    """Pixel-space model: ``encode_image`` and ``decode_latent`` are the identity on [-1, 1] images."""

    latent_scale = 1

    def __init__(self, unet: UNet2DModel, scheduler_config: dict[str, Any], name: str):
        self.unet = unet
        self.name = name
        self.schedule = NoiseSchedule(scheduler_config)
        self.prediction_type = check_prediction_type(scheduler_config.get("prediction_type", "epsilon"))
        self.device, self.dtype = unet.device, unet.dtype
        self._timesteps = torch.arange(self.schedule.num_train_timesteps, device=self.device)  # see StableDiffusion

    @torch.no_grad()
    def predict_eps(self, x: Tensor, t: int, cond: Any = None, guidance: float = 1.0, lora_scale: float = 1.0) -> Tensor:
        """eps_theta(x_t, t); unconditional and without LoRA, so ``guidance`` and ``lora_scale`` have no effect."""
        return self.predict_eps_with_grad(x, t, cond, guidance, lora_scale)

    def predict_eps_with_grad(
        self, x: Tensor, t: int, cond: Any = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        output = self.unet(x.to(self.dtype), self._timesteps[t]).sample.to(x.dtype)
        return eps_from_output(output, x, self.schedule.alphas_cumprod[t], self.prediction_type)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (self.unet.config.in_channels, height, width)
