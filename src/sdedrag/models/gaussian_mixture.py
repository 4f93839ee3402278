"""A Gaussian mixture with its exact noise prediction: the data model whose every marginal is known."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG, NoiseSchedule
from sdedrag.models.base import DiffusionModel


class GaussianMixture(DiffusionModel):
    """p_0 = sum_k w_k N(mu_k, diag(s_k^2)) in d dimensions.

    Under the VP forward process its marginal at alpha-bar a is the mixture
    sum_k w_k N(sqrt(a) mu_k, diag(a s_k^2 + 1 - a)), so the score and eps = -sqrt(1 - a) score
    are exact. Latents are points of shape [N, d].
    """

    def __init__(
        self,
        weights: Sequence[float] | Tensor,
        means: Sequence[Sequence[float]] | Tensor,
        stds: Sequence[Sequence[float]] | Sequence[float] | Tensor,
        scheduler_config: Mapping[str, Any] = SD_SCHEDULER_CONFIG,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ):
        self.name = "gaussian-mixture"
        self.device, self.dtype = torch.device(device), dtype
        self.schedule = NoiseSchedule(scheduler_config)
        self.weights = torch.as_tensor(weights, dtype=dtype, device=self.device)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=dtype, device=self.device).reshape(len(self.weights), -1)
        stds = torch.as_tensor(stds, dtype=dtype, device=self.device)
        self.stds = (stds.reshape(-1, 1) if stds.dim() == 1 else stds).expand_as(self.means).clone()
        if (self.weights < 0).any() or (self.stds <= 0).any():
            raise ValueError("mixture weights must be non-negative and standard deviations positive")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def marginal(self, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
        """(weights, means, stds) of the forward marginal p_t at alpha-bar ``alpha``."""
        return self.weights, math.sqrt(alpha) * self.means, (alpha * self.stds**2 + 1.0 - alpha).sqrt()

    def _component_log_probs(self, x: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
        weights, means, stds = self.marginal(alpha)
        z = (x[:, None, :] - means[None]) / stds[None]
        log_norm = -0.5 * z.pow(2).sum(-1) - stds.log().sum(-1)[None] - 0.5 * self.dim * math.log(2 * math.pi)
        return log_norm + weights.log()[None], z, stds

    def log_prob(self, x: Tensor, alpha: float = 1.0) -> Tensor:
        """log p_t(x) at alpha-bar ``alpha`` (alpha = 1 is the data distribution)."""
        log_joint, _, _ = self._component_log_probs(x, alpha)
        return torch.logsumexp(log_joint, dim=1)

    def score(self, x: Tensor, alpha: float) -> Tensor:
        """grad_x log p_t(x) in closed form: sum_k r_k(x) (-(x - m_k) / v_k)."""
        log_joint, z, stds = self._component_log_probs(x, alpha)
        responsibilities = torch.softmax(log_joint, dim=1)
        return -(responsibilities[..., None] * z / stds[None]).sum(1)

    def eps_at(self, x: Tensor, alpha: float) -> Tensor:
        """The exact noise prediction eps*(x, a) = -sqrt(1 - a) grad log p_t(x)."""
        return -math.sqrt(1.0 - alpha) * self.score(x, alpha)

    def predict_eps(self, x: Tensor, t: int, cond: Any = None, guidance: float = 1.0, lora_scale: float = 1.0) -> Tensor:
        return self.eps_at(x.to(self.dtype), float(self.schedule.alphas_cumprod[t])).to(x.dtype)

    def sample(self, n: int, alpha: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples from p_t at alpha-bar ``alpha``."""
        weights, means, stds = self.marginal(alpha)
        component = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.device)
        return means[component] + stds[component] * noise

    def encode_image(self, image: Tensor) -> Tensor:
        return image.to(self.device, self.dtype)

    def decode_latent(self, latent: Tensor) -> Tensor:
        return latent

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (self.dim,)
