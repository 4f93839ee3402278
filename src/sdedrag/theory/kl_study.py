"""KL(p~_t || p_t) along time from a mismatched prior at t0 for the ODE, the SDE and Cycle-SDE (Theorems 3.1-3.3).

ODE and SDE curves are exact (change of variables; grid convolution); Cycle-SDE needs each particle's
recorded path, so its curve is a particle estimate with bootstrap error bars.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from sdedrag.engine.paths import Trajectory, encode
from sdedrag.engine.schedule import Grid
from sdedrag.models.gaussian_mixture import GaussianMixture
from sdedrag.theory.densities import adapted_points, characteristics, evolve_density
from sdedrag.theory.estimators import (
    Estimate,
    fisher_divergence,
    kl_change_of_variables,
    kl_on_grid,
    mode_masses,
    particle_kl,
    trapezoid_weights,
)
from sdedrag.theory.mixture import log_density, responsibilities
from sdedrag.theory.observe import RecordedEpsCache, decode_observed
from sdedrag.theory.priors import Prior


def prior_densities(priors: Sequence[Prior], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p~_t0, log p~_t0) of every prior on the grid x, each [P, M]."""
    log_p = np.stack([prior.log_density(x) for prior in priors])
    return np.exp(log_p), log_p


@dataclass
class OdeCurves:
    """Exact ODE (DDIM) results: KL per prior and level [P, L], final mode masses [P, K], the characteristics."""

    kl: np.ndarray
    final_masses: np.ndarray
    start: np.ndarray
    positions: np.ndarray
    log_slope: np.ndarray


def ode_curves(model: GaussianMixture, grid: Grid, x: np.ndarray, priors: Sequence[Prior]) -> OdeCurves:
    """KL along the ODE (DDIM) for every prior: exact change of variables from len(x) points adapted to the map."""
    start = adapted_points(model, grid, float(x[0]), float(x[-1]), len(x))
    weights = trapezoid_weights(start)
    positions, log_slope = characteristics(model, grid, start)
    p0, log_p0 = prior_densities(priors, start)
    alphas = grid.alpha_bars.numpy()
    kl = np.stack(
        [
            kl_change_of_variables(
                p0, log_p0, log_slope[level], log_density(model, positions[level], alphas[level]), weights
            )
            for level in range(len(alphas))
        ],
        axis=1,
    )
    masses = mode_masses(p0 * weights, responsibilities(model, positions[-1], alphas[-1]))
    return OdeCurves(kl=kl, final_masses=masses, start=start, positions=positions, log_slope=log_slope)


@dataclass
class SdeCurves:
    """Exact SDE (DDPM) results per prior and level (KL, relative Fisher information, mass); final masses, snapshots."""

    kl: np.ndarray
    fisher: np.ndarray
    mass: np.ndarray
    final_masses: np.ndarray
    final_density: np.ndarray
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)


def sde_curves(
    model: GaussianMixture, grid: Grid, x: np.ndarray, priors: Sequence[Prior], keep: Collection[int] = ()
) -> SdeCurves:
    """KL along the SDE (eta = 1 steps, Eq. 6) for every prior, by exact density evolution on the grid x.

    ``keep``: levels whose densities are kept as snapshots (for figures).
    """
    dx = float(x[1] - x[0])
    alphas = grid.alpha_bars.numpy()
    kl, fisher, mass, snapshots = [], [], [], {}
    p0, _ = prior_densities(priors, x)
    for level, (p, score) in enumerate(evolve_density(model, grid, x, p0, eta=1.0)):
        kl.append(kl_on_grid(p, log_density(model, x, alphas[level]), dx))
        fisher.append(fisher_divergence(p, score, dx))
        mass.append(p.sum(-1) * dx)
        if level in keep:
            snapshots[level] = p
    masses = mode_masses(p * dx, responsibilities(model, x, alphas[-1]))
    return SdeCurves(
        kl=np.stack(kl, axis=1), fisher=np.stack(fisher, axis=1), mass=np.stack(mass, axis=1),
        final_masses=masses, final_density=p, snapshots=snapshots,
    )


@dataclass
class CycleCurves:
    """Cycle-SDE particle estimates: per prior, an Estimate at each of ``levels``; final mode masses [P, K].

    ``record_gap``: per prior, max |x~_0 - x_0| against the recorded path's end (0 up to round-off for
    the true prior: Cycle-SDE reconstructs an unedited path exactly).
    """

    levels: list[int]
    kl: list[list[Estimate]]
    final_masses: np.ndarray
    record_gap: list[float]


Record = Literal["forward", "ode"]


def recorded_path(model: GaussianMixture, grid: Grid, n: int, record: Record, generator: torch.Generator) -> Trajectory:
    """A path from n exact samples of p at the grid's last level: the forward process (Eq. 7) or DDIM inversion."""
    x0 = model.sample(n, alpha=float(grid.alpha_bars[-1]), generator=generator)
    return encode(model, x0, grid, "cycle-sde" if record == "forward" else "ode", generator=generator)


def cycle_curves(
    model: GaussianMixture,
    grid: Grid,
    priors: Sequence[Prior],
    n: int,
    levels: Collection[int],
    seed: int,
    record: Record = "forward",
) -> CycleCurves:
    """KL along Cycle-SDE: a recorded path's x_t0 is edited to each prior, then decoded with the path's Eq. 8 noise.

    ``record`` is "forward" (the true forward process, the setting of the paper's Cycle-SDE result) or
    "ode" (a DDIM-inverted path, for contrast). The KL is estimated at ``levels`` by :func:`particle_kl`.
    """
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    path = recorded_path(model, grid, n, record, generator)
    alphas = grid.alpha_bars.numpy()
    wanted = set(levels)
    shared = RecordedEpsCache(model, n)
    curves, masses, gaps = [], [], []
    for prior in priors:
        estimates: list[Estimate] = []
        level = 0

        def observe(latent: Tensor) -> None:
            nonlocal level
            if level in wanted:
                estimates.append(particle_kl(model, latent[:n, 0].numpy(), alphas[level], rng))
            level += 1

        final = decode_observed(shared, prior.edit(path.x_t0, rng), path, "cycle-sde", observe)
        curves.append(estimates)
        masses.append(mode_masses(np.full(n, 1.0 / n), responsibilities(model, final[:, 0].numpy(), alphas[-1])))
        gaps.append(float((final - path.x0).abs().max()))
    return CycleCurves(levels=sorted(wanted), kl=curves, final_masses=np.stack(masses), record_gap=gaps)
