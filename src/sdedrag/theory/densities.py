"""Exact 1-D density evolution of the discrete chains: grid convolution for the eta-step, change of variables for ODEs.

With the exact eps, one eta-step (paper Eq. 6) is the Gaussian kernel x_s ~ N(mean(x_t), sigma^2),
so p~_s(y) = integral p~_t(x) N(y; mean(x), sigma^2) dx. mean(x) is strictly increasing (it is a
positive combination of x_t and the posterior mean E[x_0 | x_t]), so the integral is a monotone change
of variables followed by a Gaussian blur, both computed to high accuracy on a uniform grid. An ODE
solver is a deterministic monotone map of x_t0; following points through it with the derivative of
the map gives p~_t exactly in the starting coordinates. Derivatives are exact (autograd through the
engine's own step functions and decode loop); rows of a batch are independent, so the gradient of
the sum is the pointwise derivative.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.fft import irfft, next_fast_len, rfft, rfftfreq
from scipy.interpolate import CubicSpline
from torch import Tensor

from sdedrag.engine.paths import decode
from sdedrag.engine.schedule import Grid
from sdedrag.engine.steps import eta_step
from sdedrag.models.base import DiffusionModel
from sdedrag.theory.observe import unrecorded_path


@dataclass(frozen=True)
class Transition:
    """One Eq. 6 step as a Gaussian kernel at points x: mean(x), d mean / dx, sigma, and eps(x) at the start."""

    mean: np.ndarray
    slope: np.ndarray
    sigma: float
    eps: np.ndarray


def transition_map(model: DiffusionModel, x: Tensor, t: int, a_t: float, a_s: float, eta: float) -> Transition:
    """The Eq. 6 kernel from timestep t (alpha-bar a_t) to a_s at points x [M, 1]."""
    x = x.detach().requires_grad_(True)
    eps = model.predict_eps(x, t)
    mean, sigma = eta_step(x, eps, a_t, a_s, eta)
    (slope,) = torch.autograd.grad(mean.sum(), x)
    return Transition(mean.detach()[:, 0].numpy(), slope[:, 0].numpy(), sigma, eps.detach()[:, 0].numpy())


def push_forward(p: np.ndarray, x: np.ndarray, image: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Density of f(X) for X ~ p on grid x, f increasing: p(x) / f'(x) placed at f(x), cubic-interpolated onto x."""
    _check_increasing(slope)
    return np.nan_to_num(CubicSpline(image, p / slope, axis=-1, extrapolate=False)(x), nan=0.0)


def gaussian_blur(p: np.ndarray, dx: float, sigma: float) -> np.ndarray:
    """p * N(0, sigma^2) along the last axis, exactly in Fourier space (zero-padded, so nothing wraps around)."""
    if sigma == 0.0:
        return p
    size = next_fast_len(2 * p.shape[-1])
    k = 2 * np.pi * rfftfreq(size, dx)
    return irfft(rfft(p, size, axis=-1) * np.exp(-0.5 * (sigma * k) ** 2), size, axis=-1)[..., : p.shape[-1]]


def evolve_density(
    model: DiffusionModel, grid: Grid, x: np.ndarray, densities: np.ndarray, eta: float = 1.0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(p~, score of the true p) on uniform x at every level of ``grid``, t0 first; ``densities`` is [P, M].

    The score comes free with each step's eps (score = -eps / sqrt(1 - alpha-bar)).
    """
    dx = float(x[1] - x[0])
    points = torch.as_tensor(x, dtype=torch.float64)[:, None]
    alphas = grid.alpha_bars.numpy()
    p = np.asarray(densities, dtype=np.float64)
    for i in range(grid.num_steps):
        t, a_t, a_s = grid.interval(i)
        step = transition_map(model, points, t, a_t, a_s, eta)
        yield p, -step.eps / np.sqrt(1.0 - alphas[i])
        p = np.clip(gaussian_blur(push_forward(p, x, step.mean, step.slope), dx, step.sigma), 0.0, None)
    eps = model.predict_eps(points, int(grid.timesteps[-1]))[:, 0].numpy()
    yield p, -eps / np.sqrt(1.0 - alphas[-1])


def characteristics(model: DiffusionModel, grid: Grid, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DDIM (eta = 0 in Eq. 6) from every point x: X_t(x) and log dX_t/dx at every level, each [levels, M].

    p~_t(X_t(x)) = p~_t0(x) / X_t'(x) exactly; the steps are the engine's eta-step, as in decode.
    """
    points = torch.as_tensor(x, dtype=torch.float64)[:, None]
    positions, log_slopes = [np.asarray(x, dtype=np.float64)], [np.zeros(len(x))]
    for i in range(grid.num_steps):
        t, a_t, a_s = grid.interval(i)
        step = transition_map(model, points, t, a_t, a_s, 0.0)
        _check_increasing(step.slope)
        positions.append(step.mean)
        log_slopes.append(log_slopes[-1] + np.log(step.slope))
        points = torch.as_tensor(step.mean)[:, None]
    return np.stack(positions), np.stack(log_slopes)


def solver_map(model: DiffusionModel, grid: Grid, x: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """The engine's ODE decode (DDIM for order 1, DPM-Solver++(2M) for 2) of every point x: X_0(x) and X_0'(x).

    DDIM's map is always increasing; a multistep solver's need not be (with few steps it can fold).
    """
    start = torch.as_tensor(x, dtype=torch.float64)[:, None].requires_grad_(True)
    final = decode(model, start, unrecorded_path(grid, start, "ode"), "ode", order=order)
    (slope,) = torch.autograd.grad(final.sum(), start)
    return final.detach()[:, 0].numpy(), slope[:, 0].numpy()


def adapted_points(model: DiffusionModel, grid: Grid, lo: float, hi: float, m: int) -> np.ndarray:
    """m starting points on [lo, hi], uniform in x + X_0(x) (DDIM): dense where the map stretches.

    Between separated modes the ODE map stretches a tiny interval of x_t0 over the gap, so points
    uniform in x alone miss it; uniform in x + X_0(x), they resolve both the start and the image.
    """
    coarse = np.linspace(lo, hi, max(64, m // 4))
    arc = coarse + solver_map(model, grid, coarse, order=1)[0]
    return np.interp(np.linspace(arc[0], arc[-1], m), arc, coarse)


def _check_increasing(slope: np.ndarray | torch.Tensor) -> None:
    if (slope <= 0).any():
        raise RuntimeError("a map that must be increasing is not; the change of variables does not apply")
