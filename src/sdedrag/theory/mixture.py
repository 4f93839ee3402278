"""1-D Gaussian mixtures on SD's VP schedule: the closed-form marginals p_t every experiment is measured against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import norm

from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG
from sdedrag.models.gaussian_mixture import GaussianMixture

THEORY_SCHEDULER_CONFIG: dict[str, Any] = {**SD_SCHEDULER_CONFIG, "timestep_spacing": "trailing"}
"""SD's VP schedule (scaled-linear betas 0.00085..0.012, 1000 steps) with trailing spacing.

SD's own "leading" spacing with offset 1 starts below T for most step counts and cannot make 1000
steps; trailing spacing starts every grid at T = 999, and 1000 steps visit every training timestep.
"""


def build_mixture(weights: Sequence[float], means: Sequence[float], stds: Sequence[float]) -> GaussianMixture:
    """The analytic 1-D model p_0 = sum_k w_k N(mu_k, s_k^2) on THEORY_SCHEDULER_CONFIG, in float64."""
    return GaussianMixture(
        weights, [[m] for m in means], list(stds), scheduler_config=THEORY_SCHEDULER_CONFIG, dtype=torch.float64
    )


def components(model: GaussianMixture, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w_k, sqrt(a) mu_k, sqrt(a s_k^2 + 1 - a)) of the marginal p_t at alpha-bar a, as numpy arrays."""
    weights, means, stds = model.marginal(alpha)
    return weights.numpy(), means[:, 0].numpy(), stds[:, 0].numpy()


def log_density(model: GaussianMixture, x: np.ndarray, alpha: float) -> np.ndarray:
    """log p_t(x) in closed form (the model's own log_prob) at points x."""
    return model.log_prob(torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1), alpha).numpy().reshape(np.shape(x))


def cdf(model: GaussianMixture, x: np.ndarray, alpha: float) -> np.ndarray:
    """F_t(x) = sum_k w_k Phi((x - m_k) / s_k)."""
    w, m, s = components(model, alpha)
    return norm.cdf((np.asarray(x)[..., None] - m) / s) @ w


def standard_normal_quantile(model: GaussianMixture, x: np.ndarray, alpha: float) -> np.ndarray:
    """Phi^-1(F_t(x)): the monotone map sending p_t to N(0, 1), accurate in both tails."""
    w, m, s = components(model, alpha)
    z = (np.asarray(x)[..., None] - m) / s
    lower, upper = norm.cdf(z) @ w, norm.sf(z) @ w
    return np.where(lower < 0.5, ndtri(lower), -ndtri(upper))


def moments(model: GaussianMixture, alpha: float) -> tuple[float, float]:
    """Mean and standard deviation of p_t."""
    w, m, s = components(model, alpha)
    mean = float(w @ m)
    return mean, float(np.sqrt(w @ (s**2 + m**2) - mean**2))


def responsibilities(model: GaussianMixture, x: np.ndarray, alpha: float) -> np.ndarray:
    """r_k(x) = w_k N_k(x) / p_t(x), shape [len(x), K]: the soft assignment of x to mode k."""
    w, m, s = components(model, alpha)
    log_joint = norm.logpdf((np.asarray(x)[:, None] - m) / s) - np.log(s) + np.log(w)
    return np.exp(log_joint - np.logaddexp.reduce(log_joint, axis=1, keepdims=True))
