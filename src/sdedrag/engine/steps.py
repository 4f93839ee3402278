"""The paper's equations and the multistep solvers, one short pure function each.

Notation follows the paper (arXiv 2311.01410, Sec. 3): ``a_t`` is alpha-bar at the noisier time t,
``a_s`` at the cleaner time s < t. Every step is ``x_s = mean + std * w``; the SDE draws ``w`` fresh,
Cycle-SDE recovers it from a recorded pair (Eq. 8), so the same step lands exactly on the record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def predict_x0(x_t: Tensor, eps: Tensor, a_t: float) -> Tensor:
    """Data prediction x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (first term of Eq. 6)."""
    return (x_t - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)


def eta_sigma(a_t: float, a_s: float, eta: float) -> float:
    """Eq. 6 noise scale: sigma = eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s)."""
    return eta * math.sqrt((1.0 - a_s) / (1.0 - a_t)) * math.sqrt(max(0.0, 1.0 - a_t / a_s))


def eta_step(x_t: Tensor, eps: Tensor, a_t: float, a_s: float, eta: float) -> tuple[Tensor, float]:
    """Eq. 6 as (mean, sigma): x_s = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps + sigma w (eta 0: DDIM, 1: DDPM)."""
    sigma = eta_sigma(a_t, a_s, eta)
    mean = math.sqrt(a_s) * predict_x0(x_t, eps, a_t) + math.sqrt(max(0.0, 1.0 - a_s - sigma**2)) * eps
    return mean, sigma


def forward_step(x_s: Tensor, a_s: float, a_t: float, noise: Tensor) -> Tensor:
    """Eq. 7: one noise-adding step x_t = sqrt(a_t / a_s) x_s + sqrt(1 - a_t / a_s) z, z ~ N(0, I)."""
    return math.sqrt(a_t / a_s) * x_s + math.sqrt(max(0.0, 1.0 - a_t / a_s)) * noise


def ddim_inversion_step(x_s: Tensor, eps: Tensor, a_s: float, a_t: float) -> Tensor:
    """DDIM inversion (ODE encoding): x_t = sqrt(a_t) x0_hat(x_s) + sqrt(1 - a_t) eps(x_s)."""
    return math.sqrt(a_t) * predict_x0(x_s, eps, a_s) + math.sqrt(1.0 - a_t) * eps


def cycle_noise(x_s: Tensor, mean: Tensor, std: float) -> Tensor:
    """Eq. 8: the noise w with mean + std w = x_s, the recorded next point (zero where the step is deterministic)."""
    return torch.zeros_like(x_s) if std == 0.0 else (x_s - mean) / std


def half_log_snr(a: float) -> float:
    """DPM-Solver's lambda = log(alpha / sigma) = 0.5 log(a / (1 - a))."""
    return 0.5 * math.log(a / (1.0 - a))


def dpmpp_step(
    x_t: Tensor, history: Sequence[tuple[Tensor, float]], a_s: float, stochastic: bool
) -> tuple[Tensor, float]:
    """DPM-Solver++(kM), or SDE-DPM-Solver++(kM) if ``stochastic``, as (mean, std), k = len(history) in 1..3.

    ``history`` holds (x0_hat, alpha-bar) at the current grid point and the k - 1 before it, newest first.
    With h the step in lambda, H = h (ODE) or 2h (SDE), phi_1 = 1 - e^-H, phi_2 = 1 - phi_1 / H,
    phi_3 = phi_2 / H - 1/2 and D0, D1, D2 the x0_hat differences in lambda (Lu et al. 2022, Alg. 2/3):
    mean = (sigma_s / sigma_t) e^(h - H) x_t + alpha_s (phi_1 D0 + c1 D1 - c2 D2), std = sigma_s sqrt(1 - e^-2h)
    for the SDE. 2M: c1 = phi_1 / 2 (midpoint); 3M: c1 = phi_2, c2 = phi_3, for the ODE and the SDE alike (as
    k-diffusion's dpmpp_3m_sde; diffusers' SDE-3M takes c2 = phi_3 + 1, which does not vanish as h -> 0).
    A last point at alpha-bar 1 (sigma 0) needs k = 1: the step then returns x0_hat.
    """
    (x0, a_t), *older = history
    lam_t, lam_s = half_log_snr(a_t), half_log_snr(a_s)
    h = lam_s - lam_t
    big_h = 2.0 * h if stochastic else h
    alpha_s, sigma_s, sigma_t = math.sqrt(a_s), math.sqrt(1.0 - a_s), math.sqrt(1.0 - a_t)
    phi_1 = -math.expm1(-big_h)
    mean = (sigma_s / sigma_t) * math.exp(h - big_h) * x_t + (alpha_s * phi_1) * x0
    if len(older) == 1:
        (x0_1, a_1), = older
        r0 = (lam_t - half_log_snr(a_1)) / h
        mean = mean + (0.5 * alpha_s * phi_1 / r0) * (x0 - x0_1)
    elif len(older) == 2:
        (x0_1, a_1), (x0_2, a_2) = older
        lam_1 = half_log_snr(a_1)
        r0, r1 = (lam_t - lam_1) / h, (lam_1 - half_log_snr(a_2)) / h
        d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
        d1, d2 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)
        phi_2 = 1.0 - phi_1 / big_h
        phi_3 = phi_2 / big_h - 0.5
        mean = mean + (alpha_s * phi_2) * d1 - (alpha_s * phi_3) * d2
    return mean, sigma_s * math.sqrt(-math.expm1(-2.0 * h)) if stochastic else 0.0
