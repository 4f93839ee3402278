"""The base of every model adapter: it implements the engine's EpsModel and maps images to latents and back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sdedrag.engine.schedule import NoiseSchedule
from sdedrag.errors import InputError, ModelLoadError


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> str:
    """A scheduler's network target, refused when the model loads unless :func:`eps_from_output` converts it."""
    if prediction_type not in PREDICTION_TYPES:
        raise ModelLoadError(
            f"unsupported prediction_type {prediction_type!r}; sdedrag converts {', '.join(PREDICTION_TYPES)}"
        )
    return prediction_type


def eps_from_output(output: Tensor, x: Tensor, alpha_bar: float | Tensor, prediction_type: str) -> Tensor:
    """Convert a network output (epsilon, v_prediction or sample) at x_t with ``alpha_bar`` to eps.

    ``alpha_bar`` stays on the host (a 0-d CPU tensor is a scalar operand on any device), so the conversion never
    copies to the device, which on CUDA would block the host until the device's queue has drained.
    """
    if prediction_type == "epsilon":
        return output
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x.dtype)
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * x
    return (x - alpha_bar.sqrt() * output) / (1 - alpha_bar).sqrt()


class DiffusionModel(ABC):
    """A diffusion model: the engine's :class:`sdedrag.engine.EpsModel` plus images, prompts and a schedule.

    ``latent_dtype`` is the dtype the engine computes in (float32 even for half-precision weights);
    ``latent_scale`` is how many image pixels one latent pixel spans (8 for SD's VAE, 1 in pixel space).
    """

    name: str
    schedule: NoiseSchedule
    device: torch.device
    dtype: torch.dtype
    latent_scale: int = 1

    @property
    def latent_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    @abstractmethod
    def predict_eps(
        self, x: Tensor, t: int, cond: Any = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        """eps_theta(x_t, t) for a batch x, with classifier-free guidance and the given LoRA scale."""

    def predict_eps_with_grad(
        self, x: Tensor, t: int, cond: Any = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        """:meth:`predict_eps` with autograd through the network (for latent optimisation)."""
        raise InputError(f"{self.name!r} has no differentiable noise prediction")

    def condition(self, prompt: str | None) -> Any:
        """The conditioning for a prompt (None for unconditional models)."""
        return None

    def stack_conditions(self, parts: Sequence[tuple[Any, int]]) -> Any:
        """One conditioning for a batch made of ``(cond, batch_size)`` parts, in order."""
        return None

    def encode_image(self, image: Tensor) -> Tensor:
        """Image in [-1, 1], shape [B, 3, H, W] -> latent x0."""
        return image.to(self.device, self.latent_dtype)

    def decode_latent(self, latent: Tensor) -> Tensor:
        """Latent x0 -> image in [-1, 1]."""
        return latent.clamp(-1, 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of one latent for an image of the given size (a multiple of ``latent_scale``)."""
        return (3, height, width)
