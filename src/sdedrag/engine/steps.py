"""The paper's equations, one short pure function each.

Notation follows the paper (arXiv 2311.01410, Sec. 3): ``a_t`` is alpha-bar at the noisier time t,
``a_s`` at the cleaner time s < t. Every stochastic step is ``x_s = mean + std * w``; Cycle-SDE
recovers ``w`` from a recorded pair (x_t, x_s), so the same step lands exactly on the record.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def predict_x0(x_t: Tensor, eps: Tensor, a_t: float) -> Tensor:
    """Data prediction x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (first term of Eq. 6)."""
    return (x_t - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)


def eta_sigma(a_t: float, a_s: float, eta: float) -> float:
    """Eq. 6 noise scale: sigma = eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s)."""
    return eta * math.sqrt((1.0 - a_s) / (1.0 - a_t)) * math.sqrt(max(0.0, 1.0 - a_t / a_s))


def eta_step_mean(x_t: Tensor, eps: Tensor, a_t: float, a_s: float, eta: float) -> tuple[Tensor, float]:
    """Eq. 6 without its noise: (sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps, sigma)."""
    sigma = eta_sigma(a_t, a_s, eta)
    mean = math.sqrt(a_s) * predict_x0(x_t, eps, a_t) + math.sqrt(max(0.0, 1.0 - a_s - sigma**2)) * eps
    return mean, sigma


def eta_step(x_t: Tensor, eps: Tensor, a_t: float, a_s: float, eta: float, noise: Tensor | None = None) -> Tensor:
    """Eq. 6: x_s = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps + sigma w (eta 0: DDIM/ODE, eta 1: DDPM/SDE)."""
    mean, sigma = eta_step_mean(x_t, eps, a_t, a_s, eta)
    return mean if sigma == 0.0 or noise is None else mean + sigma * noise


def forward_step(x_s: Tensor, a_s: float, a_t: float, noise: Tensor) -> Tensor:
    """Eq. 7: one noise-adding step x_t = sqrt(a_t / a_s) x_s + sqrt(1 - a_t / a_s) z, z ~ N(0, I)."""
    return math.sqrt(a_t / a_s) * x_s + math.sqrt(max(0.0, 1.0 - a_t / a_s)) * noise


def ddim_inversion_step(x_s: Tensor, eps: Tensor, a_s: float, a_t: float) -> Tensor:
    """DDIM inversion (ODE encoding): x_t = sqrt(a_t) x0_hat(x_s) + sqrt(1 - a_t) eps(x_s)."""
    return math.sqrt(a_t) * predict_x0(x_s, eps, a_s) + math.sqrt(1.0 - a_t) * eps


def recover_noise(x_s: Tensor, mean: Tensor, std: float) -> Tensor:
    """Eq. 8 in general form: the w with mean + std * w == x_s (zero where the step is deterministic)."""
    return torch.zeros_like(x_s) if std == 0.0 else (x_s - mean) / std


def cycle_noise(x_t: Tensor, x_s: Tensor, eps: Tensor, a_t: float, a_s: float, eta: float = 1.0) -> Tensor:
    """Eq. 8: the Cycle-SDE noise w that makes the eta-step from recorded x_t land exactly on recorded x_s."""
    mean, sigma = eta_step_mean(x_t, eps, a_t, a_s, eta)
    return recover_noise(x_s, mean, sigma)


def half_log_snr(a: float) -> float:
    """DPM-Solver's lambda = log(alpha / sigma) = 0.5 log(a / (1 - a))."""
    return 0.5 * math.log(a / (1.0 - a))


def dpmpp_2m_mean(
    x_t: Tensor,
    x0: Tensor,
    x0_prev: Tensor | None,
    a_t: float,
    a_s: float,
    a_prev: float | None,
    stochastic: bool,
) -> tuple[Tensor, float]:
    """DPM-Solver++(2M) (ODE) or SDE-DPM-Solver++(2M) step without noise: (mean, std).

    ``x0_prev`` and ``a_prev`` are the data prediction and alpha-bar of the previous grid point; with
    ``x0_prev=None`` this is the first-order step (DDIM for the ODE, a DDPM-like step for the SDE).
    """
    lam_t, lam_s = half_log_snr(a_t), half_log_snr(a_s)
    h = lam_s - lam_t
    derivative = torch.zeros_like(x0)
    if x0_prev is not None and a_prev is not None:
        r0 = (lam_t - half_log_snr(a_prev)) / h
        derivative = (x0 - x0_prev) / r0
    alpha_s, sigma_s, sigma_t = math.sqrt(a_s), math.sqrt(1.0 - a_s), math.sqrt(1.0 - a_t)
    if not stochastic:
        return (sigma_s / sigma_t) * x_t - alpha_s * math.expm1(-h) * (x0 + 0.5 * derivative), 0.0
    decay = -math.expm1(-2.0 * h)
    mean = (sigma_s / sigma_t) * math.exp(-h) * x_t + alpha_s * decay * (x0 + 0.5 * derivative)
    return mean, sigma_s * math.sqrt(decay)
