"""Stable Diffusion (1.x / 2.x, epsilon or v-prediction, plain or 9-channel inpainting) as a DiffusionModel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
from torch import Tensor

from sdedrag.engine.schedule import NoiseSchedule
from sdedrag.models.base import DiffusionModel, eps_from_output


@dataclass
class TextCondition:
    """CLIP embeddings of a prompt and of the empty prompt, batch 1 or B; ``extra`` holds the
    inpainting UNet's extra input channels (mask and masked-image latent), if any."""

    cond: Tensor
    uncond: Tensor
    extra: Tensor | None = None

    def expand(self, batch: int) -> TextCondition:
        """This conditioning for a batch of ``batch`` latents."""
        if self.cond.shape[0] == batch:
            return self
        extra = None if self.extra is None else self.extra.expand(batch, *self.extra.shape[1:])
        return TextCondition(
            self.cond.expand(batch, *self.cond.shape[1:]), self.uncond.expand(batch, *self.uncond.shape[1:]), extra
        )


class StableDiffusion(DiffusionModel):
    """A diffusers Stable Diffusion pipeline's VAE, CLIP text encoder and UNet behind the engine protocol."""

    def __init__(self, pipe: StableDiffusionPipeline | StableDiffusionInpaintPipeline, name: str):
        self.pipe = pipe
        self.name = name
        self.unet, self.vae = pipe.unet, pipe.vae
        self.schedule = NoiseSchedule(pipe.scheduler.config)
        self.prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        self.device, self.dtype = self.unet.device, self.unet.dtype
        self.latent_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.is_inpainting = self.unet.config.in_channels == 2 * self.vae.config.latent_channels + 1
        self._conditions: dict[str, TextCondition] = {}

    @property
    def has_lora(self) -> bool:
        return bool(getattr(self.unet, "peft_config", None))

    @torch.no_grad()
    def condition(self, prompt: str | None) -> TextCondition:
        """Embeddings of ``prompt`` and of "" (computed once per prompt and kept)."""
        prompt = prompt or ""
        if prompt not in self._conditions:
            cond, uncond = self.pipe.encode_prompt(
                prompt, self.device, num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=""
            )
            self._conditions[prompt] = TextCondition(cond, uncond)
        return self._conditions[prompt]

    def stack_conditions(self, parts: Sequence[tuple[TextCondition, int]]) -> TextCondition:
        expanded = [(cond or self.condition("")).expand(batch) for cond, batch in parts]
        extras = [c.extra for c in expanded]
        return TextCondition(
            torch.cat([c.cond for c in expanded]),
            torch.cat([c.uncond for c in expanded]),
            None if any(e is None for e in extras) else torch.cat(extras),
        )

    @torch.no_grad()
    def predict_eps(
        self, x: Tensor, t: int, cond: TextCondition | None = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        cond = (cond or self.condition("")).expand(x.shape[0])
        if guidance == 1.0:
            latents, embeddings, extra = x, cond.cond, cond.extra
        else:
            latents, embeddings = torch.cat([x, x]), torch.cat([cond.uncond, cond.cond])
            extra = None if cond.extra is None else torch.cat([cond.extra, cond.extra])
        unet_input = latents if extra is None else torch.cat([latents, extra.to(latents.dtype)], dim=1)
        output = self.unet(
            unet_input.to(self.dtype),
            t,
            encoder_hidden_states=embeddings,
            cross_attention_kwargs={"scale": lora_scale} if self.has_lora else None,
        ).sample.to(x.dtype)
        eps = eps_from_output(output, latents, self.schedule.alphas_cumprod[t], self.prediction_type)
        if guidance == 1.0:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance * (eps_cond - eps_uncond)

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor:
        """VAE posterior mean times the scaling factor (deterministic)."""
        posterior = self.vae.encode(image.to(self.device, self.vae.dtype)).latent_dist
        return (posterior.mean * self.vae.config.scaling_factor).to(self.latent_dtype)

    @torch.no_grad()
    def decode_latent(self, latent: Tensor) -> Tensor:
        image = self.vae.decode((latent / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return image.to(self.latent_dtype).clamp(-1, 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (self.vae.config.latent_channels, height // self.latent_scale, width // self.latent_scale)
