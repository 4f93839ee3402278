"""Solver efficiency under prior mismatch: KL(final || p_0) against the number of model evaluations.

DDIM and DPM-Solver++(2M) are deterministic maps, measured exactly by change of variables through
engine.decode (while the map is increasing: DPM-Solver++(2M) can fold with few steps); DDPM by exact
density evolution. SDE-DPM-Solver++(2M) is a multistep SDE whose state is not Markov in x alone, so
it is measured from particles only; DPM-Solver++(2M) and DDPM are measured from particles too, the same
way, which checks the particle estimator against their exact values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sdedrag.engine.paths import Process, decode
from sdedrag.engine.schedule import Grid
from sdedrag.models.gaussian_mixture import GaussianMixture
from sdedrag.theory.densities import adapted_points, evolve_density, solver_map
from sdedrag.theory.estimators import Estimate, kl_change_of_variables, kl_on_grid, particle_kl, trapezoid_weights
from sdedrag.theory.mixture import log_density
from sdedrag.theory.observe import unrecorded_path
from sdedrag.theory.priors import Prior

SOLVERS: dict[str, tuple[Process, int]] = {
    "DDIM": ("ode", 1),
    "DPM-Solver++(2M)": ("ode", 2),
    "DDPM": ("sde", 1),
    "SDE-DPM-Solver++(2M)": ("sde", 2),
}
"""Each solver as the engine runs it: (process, order)."""
EXACT_SOLVERS = ("DDIM", "DPM-Solver++(2M)", "DDPM")
"""Solvers with an exact method (DPM-Solver++(2M): while its map does not fold)."""
PARTICLE_SOLVERS = ("DPM-Solver++(2M)", "DDPM", "SDE-DPM-Solver++(2M)")
"""Solvers also measured from particles: the one without an exact method, and two with, to check the estimator
(DPM-Solver++(2M) also where its map folds)."""


def solver_grid(model: GaussianMixture, nfe: int, t0: float) -> Grid:
    """The grid with about ``nfe`` steps from t0 (one model evaluation per step)."""
    return model.schedule.grid(max(1, round(nfe / t0)), t0)


def exact_final_kl(
    model: GaussianMixture, grid: Grid, solver: str, prior: Prior, start: np.ndarray, x: np.ndarray
) -> float | None:
    """KL(p~_0 || p_0) of ``solver`` from ``prior``, exactly; None where no exact method applies.

    ODE solvers: change of variables from the points ``start`` (see adapted_points); None if the map
    folds (is not increasing). DDPM: density evolution on the uniform grid ``x``. None for
    SDE-DPM-Solver++(2M).
    """
    process, order = SOLVERS[solver]
    alpha = float(grid.alpha_bars[-1])
    if process == "ode":
        final, slope = solver_map(model, grid, start, order)
        if np.any(slope <= 0):
            return None
        log_p0 = prior.log_density(start)
        return float(
            kl_change_of_variables(
                np.exp(log_p0), log_p0, np.log(slope), log_density(model, final, alpha), trapezoid_weights(start)
            )
        )
    if order == 1:
        *_, (final_density, _) = evolve_density(model, grid, x, np.exp(prior.log_density(x))[None], eta=1.0)
        return float(kl_on_grid(final_density, log_density(model, x, alpha), float(x[1] - x[0]))[0])
    return None


def particle_final_kl(model: GaussianMixture, grid: Grid, solver: str, prior: Prior, n: int, seed: int) -> Estimate:
    """KL(p~_0 || p_0) of n particles from ``prior`` decoded by ``solver``, with its bootstrap error."""
    process, order = SOLVERS[solver]
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_t0 = prior.edit(model.sample(n, alpha=float(grid.alpha_bars[0]), generator=generator), rng)
    final = decode(model, x_t0, unrecorded_path(grid, x_t0, process), process, order=order, generator=generator)
    return particle_kl(model, final[:, 0].numpy(), float(grid.alpha_bars[-1]), rng)


@dataclass
class SolverCurves:
    """KL(final || p_0) per solver and NFE, exact (None where unavailable) and from particles.

    Both also from the true prior, as a reference (particles only for the solver without an exact method).
    """

    nfe: list[int]
    exact: dict[str, list[float | None]]
    exact_true_prior: dict[str, list[float | None]]
    particles: dict[str, list[Estimate]]
    particles_true_prior: dict[str, list[Estimate]]


def solver_study(
    model: GaussianMixture,
    t0: float,
    nfes: Sequence[int],
    priors_at: Callable[[float], tuple[Prior, Prior]],
    lo: float,
    hi: float,
    m: int,
    n: int,
    seed: int,
) -> SolverCurves:
    """Every solver at every NFE from the example prior (and the true prior, as a reference) at t0.

    ``priors_at(alpha)`` returns (example prior, true prior) at alpha-bar ``alpha``.
    """
    curves = SolverCurves(nfe=[], exact={s: [] for s in SOLVERS}, exact_true_prior={s: [] for s in SOLVERS},
                          particles={s: [] for s in PARTICLE_SOLVERS},
                          particles_true_prior={s: [] for s in SOLVERS if s not in EXACT_SOLVERS})
    for k, nfe in enumerate(nfes):
        grid = solver_grid(model, nfe, t0)
        example, true = priors_at(float(grid.alpha_bars[0]))
        start, x = adapted_points(model, grid, lo, hi, m), np.linspace(lo, hi, m)
        curves.nfe.append(grid.num_steps)
        for solver in SOLVERS:
            curves.exact[solver].append(exact_final_kl(model, grid, solver, example, start, x))
            curves.exact_true_prior[solver].append(exact_final_kl(model, grid, solver, true, start, x))
        for j, solver in enumerate(PARTICLE_SOLVERS):
            curves.particles[solver].append(particle_final_kl(model, grid, solver, example, n, seed + 100 * k + j))
        for solver, estimates in curves.particles_true_prior.items():
            estimates.append(particle_final_kl(model, grid, solver, true, n, seed + 100 * k + 50))
    return curves
