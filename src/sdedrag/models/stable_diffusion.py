"""Stable Diffusion (1.x / 2.x, epsilon or v-prediction, plain or 9-channel inpainting) as a DiffusionModel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
from peft.tuners.lora import LoraLayer
from torch import Tensor

from sdedrag.engine.schedule import NoiseSchedule
from sdedrag.models.base import DiffusionModel, check_prediction_type, eps_from_output


@dataclass
class TextCondition:
    """CLIP embeddings of a prompt and of the empty prompt, batch 1 or B; ``extra`` holds the
    inpainting UNet's extra input channels (mask and masked-image latent), if any."""

    cond: Tensor
    uncond: Tensor
    extra: Tensor | None = None
    _guided: tuple[Tensor, Tensor | None] | None = field(default=None, init=False, repr=False, compare=False)

    def guided(self) -> tuple[Tensor, Tensor | None]:
        """Embeddings and extra channels for a classifier-free-guidance batch [uncond; cond] (built once)."""
        if self._guided is None:
            extra = None if self.extra is None else torch.cat([self.extra, self.extra])
            self._guided = (torch.cat([self.uncond, self.cond]), extra)
        return self._guided

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
        self.prediction_type = check_prediction_type(pipe.scheduler.config.get("prediction_type", "epsilon"))
        self.device, self.dtype = self.unet.device, self.unet.dtype
        self.latent_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.is_inpainting = self.unet.config.in_channels == 2 * self.vae.config.latent_channels + 1
        self._conditions: dict[str, TextCondition] = {}
        # Every training timestep on the device, so a call passes a view instead of copying an int over.
        self._timesteps = torch.arange(self.schedule.num_train_timesteps, device=self.device)
        self._lora: tuple[dict, tuple[str, ...], list[LoraLayer], float | None] | None = None

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

    def _set_lora_scale(self, scale: float) -> None:
        """Scale the loaded LoRA adapter by ``scale`` (0 is the base model, 1 the adapter as trained).

        The LoRA layers are found once per loaded adapter and their scale is set only when it changes:
        diffusers' ``cross_attention_kwargs={"scale": s}`` instead walks all of the UNet's modules twice per
        call (scale, then unscale), a host cost of several milliseconds per UNet call.
        """
        config = self.unet.peft_config
        if self._lora is None or self._lora[0] is not config or self._lora[1] != tuple(config):
            layers = [module for module in self.unet.modules() if isinstance(module, LoraLayer)]
            self._lora = (config, tuple(config), layers, None)
        config, adapters, layers, current = self._lora
        if scale != current:
            for layer in layers:
                for adapter in layer.active_adapters:
                    layer.set_scale(adapter, scale)
            self._lora = (config, adapters, layers, scale)

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
        return self.predict_eps_with_grad(x, t, cond, guidance, lora_scale)

    def predict_eps_with_grad(
        self, x: Tensor, t: int, cond: TextCondition | None = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        cond = (cond or self.condition("")).expand(x.shape[0])
        if guidance == 1.0:
            latents, embeddings, extra = x, cond.cond, cond.extra
        else:
            latents = torch.cat([x, x])
            embeddings, extra = cond.guided()
        unet_input = latents if extra is None else torch.cat([latents, extra.to(latents.dtype)], dim=1)
        if self.has_lora:
            self._set_lora_scale(lora_scale)
        else:
            self._lora = None  # the adapter was removed: drop the references to its layers
        output = self.unet(unet_input.to(self.dtype), self._timesteps[t], encoder_hidden_states=embeddings).sample
        output = output.to(x.dtype)
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
