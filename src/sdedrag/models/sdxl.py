"""Stable Diffusion XL (base or 9-channel inpainting, epsilon or v-prediction) as a DiffusionModel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
from torch import Tensor

from sdedrag.errors import ModelLoadError
from sdedrag.models.base import eps_from_output
from sdedrag.models.stable_diffusion import StableDiffusion


@dataclass
class XLCondition:
    """SDXL's conditioning of a prompt and of the negative, batch 1 or B: both CLIP encoders' penultimate
    states concatenated (``cond``, ``uncond``) and the second encoder's pooled embedding (``pooled``,
    ``pooled_uncond``); ``extra`` holds the inpainting UNet's extra input channels, if any."""

    cond: Tensor
    uncond: Tensor
    pooled: Tensor
    pooled_uncond: Tensor
    extra: Tensor | None = None
    _guided: tuple[Tensor, Tensor, Tensor | None] | None = field(default=None, init=False, repr=False, compare=False)

    def guided(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """States, pooled embeddings and extra channels for a guidance batch [uncond; cond] (built once)."""
        if self._guided is None:
            extra = None if self.extra is None else torch.cat([self.extra, self.extra])
            self._guided = (
                torch.cat([self.uncond, self.cond]), torch.cat([self.pooled_uncond, self.pooled]), extra
            )
        return self._guided

    def expand(self, batch: int) -> XLCondition:
        """This conditioning for a batch of ``batch`` latents."""
        if self.cond.shape[0] == batch:
            return self
        parts = (self.cond, self.uncond, self.pooled, self.pooled_uncond, self.extra)
        return XLCondition(*(None if p is None else p.expand(batch, *p.shape[1:]) for p in parts))


class StableDiffusionXL(StableDiffusion):
    """A diffusers SDXL pipeline's VAE, two CLIP text encoders and UNet behind the engine protocol.

    The UNet's added time ids (original size, crop (0, 0), target size) are those of the image being edited,
    read from the latent's size at every call. The negative is what the pipeline uses for an empty negative
    prompt: zeros if its ``force_zeros_for_empty_prompt`` is set (as for SDXL base), else the encoded "".
    In float16 the VAE runs in float32 when its config says ``force_upcast`` (SDXL's VAE overflows in
    float16); a fixed VAE whose config clears the flag stays in float16.
    """

    def __init__(self, pipe: StableDiffusionXLPipeline | StableDiffusionXLInpaintPipeline, name: str):
        unet, pooled_dim = pipe.unet.config, pipe.text_encoder_2.config.projection_dim
        if unet.projection_class_embeddings_input_dim != 6 * unet.addition_time_embed_dim + pooled_dim:
            raise ModelLoadError(f"the UNet of {name!r} does not take SDXL's six time ids (an SDXL refiner?)")
        if pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
            torch.nn.Module.to(pipe.vae, torch.float32)  # a plain cast: ModelMixin.to warns about any dtype change
        super().__init__(pipe, name)
        self._time_ids: dict[tuple[int, int], Tensor] = {}

    @torch.no_grad()
    def condition(self, prompt: str | None) -> XLCondition:
        """Embeddings of ``prompt`` and of the negative (computed once per prompt and kept)."""
        prompt = prompt or ""
        if prompt not in self._conditions:
            cond, uncond, pooled, pooled_uncond = self.pipe.encode_prompt(
                prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True
            )
            self._conditions[prompt] = XLCondition(cond, uncond, pooled, pooled_uncond)
        return self._conditions[prompt]

    def stack_conditions(self, parts: Sequence[tuple[XLCondition, int]]) -> XLCondition:
        expanded = [(cond or self.condition("")).expand(batch) for cond, batch in parts]
        extras = [c.extra for c in expanded]
        return XLCondition(
            torch.cat([c.cond for c in expanded]),
            torch.cat([c.uncond for c in expanded]),
            torch.cat([c.pooled for c in expanded]),
            torch.cat([c.pooled_uncond for c in expanded]),
            None if any(e is None for e in extras) else torch.cat(extras),
        )

    def time_ids(self, height: int, width: int) -> Tensor:
        """SDXL's micro-conditioning [original size, crop top-left, target size] for an image of this size."""
        if (height, width) not in self._time_ids:
            ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.pipe.text_encoder_2.dtype)
            self._time_ids[height, width] = ids.to(self.device)
        return self._time_ids[height, width]

    def added_cond_kwargs(self, pooled: Tensor, latent_hw: Sequence[int]) -> dict[str, Tensor]:
        """The UNet's ``added_cond_kwargs`` for a batch with these pooled embeddings and latent size."""
        time_ids = self.time_ids(latent_hw[0] * self.latent_scale, latent_hw[1] * self.latent_scale)
        return {"text_embeds": pooled, "time_ids": time_ids.expand(pooled.shape[0], -1)}

    @torch.no_grad()
    def predict_eps(
        self, x: Tensor, t: int, cond: XLCondition | None = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        return self.predict_eps_with_grad(x, t, cond, guidance, lora_scale)

    def predict_eps_with_grad(
        self, x: Tensor, t: int, cond: XLCondition | None = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        """eps_theta(x_t, t) with guidance eps_u + w (eps_c - eps_u); the UNet also sees pooled text and time ids."""
        cond = (cond or self.condition("")).expand(x.shape[0])
        guided = guidance != 1.0
        latents = torch.cat([x, x]) if guided else x
        embeddings, pooled, extra = cond.guided() if guided else (cond.cond, cond.pooled, cond.extra)
        unet_input = latents if extra is None else torch.cat([latents, extra.to(latents.dtype)], dim=1)
        if self.has_lora:
            self._set_lora_scale(lora_scale)
        else:
            self._lora = None
        output = self.unet(
            unet_input.to(self.dtype),
            self._timesteps[t],
            encoder_hidden_states=embeddings,
            added_cond_kwargs=self.added_cond_kwargs(pooled, x.shape[-2:]),
        ).sample
        eps = eps_from_output(output.to(x.dtype), latents, self.schedule.alphas_cumprod[t], self.prediction_type)
        if not guided:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance * (eps_cond - eps_uncond)
