"""Mismatched priors at t0: laws of an edited x_t0, each with its closed-form density and the edit producing it.

Every prior is defined relative to the true marginal p_t0 (mean m, standard deviation s), so one
family applies at every t0. ``edit`` maps exact samples of p_t0 (the end of a recorded forward path)
to exact samples of the prior, which is how Cycle-SDE sees an edit: x_t0 changes, its path does not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sdedrag.models.gaussian_mixture import GaussianMixture
from sdedrag.theory.mixture import components, log_density, moments, standard_normal_quantile

NARROW_FACTOR = 0.5
"""The narrowed prior's standard deviation, in units of p_t0's."""
WIDEN_FACTOR = 2.0
"""The widened prior's standard deviation, in units of p_t0's."""
EDIT_FRACTION = 0.3
"""The edited marginal moves this fraction of the mass ..."""
EDIT_SHIFT = 2.0
"""... by this many standard deviations of p_t0."""


class Prior(ABC):
    """A law for x_t0 that replaces the true marginal p_t0."""

    name: str

    def __init__(self, model: GaussianMixture, alpha: float):
        self.model, self.alpha = model, alpha

    @abstractmethod
    def log_density(self, x: np.ndarray) -> np.ndarray:
        """log p~_t0(x) in closed form."""

    @abstractmethod
    def edit(self, x_t0: Tensor, rng: np.random.Generator) -> Tensor:
        """Map exact samples of p_t0 (shape [N, 1]) to exact samples of this prior."""

    @abstractmethod
    def pieces(self) -> list[tuple[float, float]]:
        """(center, std) of the Gaussian pieces of the density: where its mass lies."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The parameters that define this prior, for theory.json."""


class TruePrior(Prior):
    """No edit: x_t0 ~ p_t0 itself."""

    name = "true"

    def log_density(self, x: np.ndarray) -> np.ndarray:
        return log_density(self.model, x, self.alpha)

    def edit(self, x_t0: Tensor, rng: np.random.Generator) -> Tensor:
        return x_t0.clone()

    def pieces(self) -> list[tuple[float, float]]:
        _, m, s = components(self.model, self.alpha)
        return list(zip(m.tolist(), s.tolist()))

    def params(self) -> dict[str, Any]:
        return {"kind": "true marginal p_t0"}


class GaussianPrior(Prior):
    """N(mean, std^2); the edit is the monotone transport x -> mean + std Phi^-1(F_t0(x))."""

    def __init__(self, name: str, model: GaussianMixture, alpha: float, mean: float, std: float):
        super().__init__(model, alpha)
        self.name, self.mean, self.std = name, mean, std

    def log_density(self, x: np.ndarray) -> np.ndarray:
        return -0.5 * ((x - self.mean) / self.std) ** 2 - np.log(self.std * np.sqrt(2 * np.pi))

    def edit(self, x_t0: Tensor, rng: np.random.Generator) -> Tensor:
        z = standard_normal_quantile(self.model, x_t0.numpy(), self.alpha)
        return torch.as_tensor(self.mean + self.std * z, dtype=x_t0.dtype)

    def pieces(self) -> list[tuple[float, float]]:
        return [(self.mean, self.std)]

    def params(self) -> dict[str, Any]:
        return {"kind": "gaussian", "mean": self.mean, "std": self.std}


class MovedMassPrior(Prior):
    """(1 - f) p_t0(x) + f p_t0(x - shift): an edit that moves a random fraction f of x_t0 by ``shift``."""

    name = "edited"

    def __init__(self, model: GaussianMixture, alpha: float, fraction: float, shift: float):
        super().__init__(model, alpha)
        self.fraction, self.shift = fraction, shift

    def log_density(self, x: np.ndarray) -> np.ndarray:
        return np.logaddexp(
            np.log1p(-self.fraction) + log_density(self.model, x, self.alpha),
            np.log(self.fraction) + log_density(self.model, x - self.shift, self.alpha),
        )

    def edit(self, x_t0: Tensor, rng: np.random.Generator) -> Tensor:
        moved = torch.as_tensor(rng.random(x_t0.shape) < self.fraction, dtype=x_t0.dtype)
        return x_t0 + self.shift * moved

    def pieces(self) -> list[tuple[float, float]]:
        _, m, s = components(self.model, self.alpha)
        return [(c + d, w) for c, w in zip(m.tolist(), s.tolist()) for d in (0.0, self.shift)]

    def params(self) -> dict[str, Any]:
        return {"kind": "moved mass", "fraction": self.fraction, "shift": self.shift}


def example_prior(model: GaussianMixture, alpha: float, mean: float, std: float) -> GaussianPrior:
    """The example's prior N(m + mean s, (std s)^2), with (m, s) the mean and std of p_t0."""
    m, s = moments(model, alpha)
    return GaussianPrior("example", model, alpha, m + mean * s, std * s)


def prior_family(model: GaussianMixture, alpha: float, example_mean: float, example_std: float) -> list[Prior]:
    """The priors studied at one t0: the example, narrowed, widened, edited, and the true p_t0."""
    m, s = moments(model, alpha)
    return [
        example_prior(model, alpha, example_mean, example_std),
        GaussianPrior("narrowed", model, alpha, m, NARROW_FACTOR * s),
        GaussianPrior("widened", model, alpha, m, WIDEN_FACTOR * s),
        MovedMassPrior(model, alpha, EDIT_FRACTION, EDIT_SHIFT * s),
        TruePrior(model, alpha),
    ]
