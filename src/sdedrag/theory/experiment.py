"""All of ``sdedrag theory``: every experiment of a TheoryConfig and theory.json's content.

The model is a 1-D Gaussian mixture with exact eps on SD's VP schedule. At each t0 a family of
mismatched priors replaces the true marginal p_t0, and KL(p~_t || p_t) is followed to t = 0 (the
grid's last level, training timestep 0) for the ODE, the SDE and Cycle-SDE; the example's final
mode masses and a solver-efficiency sweep complete the picture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sdedrag.engine.schedule import Grid
from sdedrag.models.gaussian_mixture import GaussianMixture
from sdedrag.theory import priors as prior_module
from sdedrag.theory.checks import checks, stated_tolerances
from sdedrag.theory.config import TheoryConfig
from sdedrag.theory.continuous import ODE_TOLERANCE, dissipation_prediction, probability_flow_kl
from sdedrag.theory.estimators import BOOTSTRAP_RESAMPLES, X_BIN_FRACTION, Z_BIN_WIDTH, Estimate, mass_ratio
from sdedrag.theory.kl_study import (
    CycleCurves,
    OdeCurves,
    SdeCurves,
    cycle_curves,
    ode_curves,
    prior_densities,
    sde_curves,
)
from sdedrag.theory.mixture import THEORY_SCHEDULER_CONFIG, build_mixture, components, log_density, responsibilities
from sdedrag.theory.observe import decode_trajectory, unrecorded_path
from sdedrag.theory.priors import Prior, TruePrior, example_prior, prior_family
from sdedrag.theory.solver_study import PARTICLE_SOLVERS, SOLVERS, SolverCurves, solver_study

DOMAIN_STDS = 8.0
"""The density grid covers this many standard deviations around every Gaussian piece in play."""
CYCLE_LEVELS = 60
"""Cycle-SDE curves are estimated at about this many levels per t0."""
CONTINUOUS_LEVELS = 41
"""The continuous-time ODE's KL is evaluated at about this many levels per t0."""
SNAPSHOTS = 150
"""Density snapshots kept for the example's figure."""
TRAJECTORIES = 48
"""Sample paths drawn per process in prior_mismatch.png."""


def contrast_particles(particles: int) -> int:
    """Particles of the Cycle-SDE contrast run (DDIM-inverted record): a quarter, enough for a qualitative contrast."""
    return max(100, particles // 4)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one thread: these small per-step tensors run much slower with threads contending for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def density_domain(model: GaussianMixture, families: Sequence[Sequence[Prior]], alpha_end: float, m: int) -> np.ndarray:
    """Uniform grid covering DOMAIN_STDS standard deviations around every prior piece and the final marginal."""
    _, means, stds = components(model, alpha_end)
    pieces = [piece for family in families for prior in family for piece in prior.pieces()]
    pieces += list(zip(means.tolist(), stds.tolist()))
    lo = min(c - DOMAIN_STDS * s for c, s in pieces)
    hi = max(c + DOMAIN_STDS * s for c, s in pieces)
    return np.linspace(lo, hi, m)


def levels_between(levels: int, count: int) -> np.ndarray:
    """About ``count`` evenly spaced level indices out of ``levels``, always with the first and the last."""
    return np.unique(np.linspace(0, levels - 1, count).round().astype(int))


def _plain(values: Any) -> Any:
    """numpy values and Estimates as plain Python values (recursively), for JSON."""
    if isinstance(values, dict):
        return {k: _plain(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [_plain(v) for v in values]
    if isinstance(values, np.ndarray):
        return values.tolist()
    if isinstance(values, Estimate):
        return values.as_dict()
    if isinstance(values, (np.floating, np.integer, np.bool_)):
        return values.item()
    return values


def _estimates(estimates: Sequence[Estimate]) -> dict[str, list[float]]:
    return {"value": [e.value for e in estimates], "se": [e.se for e in estimates]}


@dataclass
class ExampleFigure:
    """Arrays behind prior_mismatch.png: trajectories and density heatmaps of the example, per process."""

    timesteps: np.ndarray
    display: np.ndarray
    snapshot_timesteps: np.ndarray
    prior_density: np.ndarray
    true_t0_density: np.ndarray
    true_final_density: np.ndarray
    trajectories: dict[str, np.ndarray] = field(default_factory=dict)
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    final_densities: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TheoryRun:
    """theory.json's content (``results``) and the example figure's arrays."""

    results: dict[str, Any]
    figure: ExampleFigure


def run_theory(config: TheoryConfig, log: Callable[[str], None] = lambda _: None) -> TheoryRun:
    """Run every experiment of ``config``; ``log`` receives one line per finished stage."""
    config.validate()
    with single_threaded():
        return _run(config, log)


def _run(config: TheoryConfig, log: Callable[[str], None]) -> TheoryRun:
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    model = build_mixture(config.weights, config.means, config.stds)
    grids = [model.schedule.grid(config.steps, t0) for t0 in config.t0]
    families = [prior_family(model, float(g.alpha_bars[0]), config.prior_mean, config.prior_std) for g in grids]
    alpha_end = float(grids[0].alpha_bars[-1])
    x = density_domain(model, families, alpha_end, config.grid_points)

    studies, contraction = [], []
    for index, (grid, family) in enumerate(zip(grids, families)):
        clock = time.perf_counter()
        ode = ode_curves(model, grid, x, family)
        sde = sde_curves(model, grid, x, family, keep=set(levels_between(len(grid.alpha_bars), SNAPSHOTS).tolist()))
        seed = config.seed + 10 * index
        levels = levels_between(len(grid.alpha_bars), CYCLE_LEVELS).tolist()
        cycle = cycle_curves(model, grid, family, config.particles, levels, seed)
        contrast = None
        if index == 0:
            contrast = cycle_curves(model, grid, family[:1], contrast_particles(config.particles), levels, seed + 5,
                                    record="ode")
            example_masses = {"ode": ode.final_masses[0], "sde": sde.final_masses[0],
                              "cycle_sde": cycle.final_masses[0]}
            figure = _example_figure(model, grid, family[0], x, ode, sde, config.seed)
        study, ratios = _study_entry(model, config.t0[index], grid, family, ode, sde, cycle, contrast)
        studies.append(study)
        contraction.append(ratios)
        name = f"kl_study_t0_{config.t0[index]:g}"
        seconds[name] = time.perf_counter() - clock
        log(f"t0 = {config.t0[index]:g}: example KL {sde.kl[0, 0]:.4f} -> ODE {ode.kl[0, -1]:.4f}, "
            f"SDE {sde.kl[0, -1]:.5f}, Cycle-SDE {cycle.kl[0][-1].value:.5f} +- {cycle.kl[0][-1].se:.5f} "
            f"({seconds[name]:.1f} s)")

    clock = time.perf_counter()

    def priors_at(alpha: float) -> tuple[Prior, Prior]:
        return example_prior(model, alpha, config.prior_mean, config.prior_std), TruePrior(model, alpha)

    solvers = solver_study(model, config.t0[0], config.nfe, priors_at, float(x[0]), float(x[-1]), config.grid_points,
                           config.solver_particles, config.seed + 1000)
    seconds["solvers"] = time.perf_counter() - clock
    log(f"solvers at {solvers.nfe[-1]} NFE: "
        + ", ".join(f"{s} {solvers.particles[s][-1].value:.4f}" for s in PARTICLE_SOLVERS)
        + f" ({seconds['solvers']:.1f} s)")

    true_masses = components(model, alpha_end)[0]
    example = {
        "t0": config.t0[0],
        "prior": {"name": families[0][0].name, **families[0][0].params()},
        "mode_masses": {"true": true_masses, **example_masses},
        "mode_mass_ratio": {"true": mass_ratio(true_masses), **{k: mass_ratio(v) for k, v in example_masses.items()}},
        "final_densities": {"x": figure.display, **figure.final_densities, "true": figure.true_final_density},
        "final_mode_of_trajectories": {
            process: responsibilities(model, paths[-1], alpha_end).argmax(1)
            for process, paths in figure.trajectories.items()
        },
    }
    results = {
        "model": _model_entry(config, alpha_end),
        "priors": _priors_entry(config),
        "methods": _methods_entry(),
        "tolerances": stated_tolerances(),
        "example": example,
        "kl_vs_time": studies,
        "contraction": contraction,
        "solvers": _solver_entry(solvers, config.t0[0]),
    }
    results = _plain(results)
    results["checks"] = checks(results["kl_vs_time"])
    seconds["experiments"] = time.perf_counter() - started
    results["seconds"] = seconds
    return TheoryRun(results=results, figure=figure)


def _model_entry(config: TheoryConfig, alpha_end: float) -> dict[str, Any]:
    schedule_keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "timestep_spacing")
    return {
        "weights": list(config.weights), "means": list(config.means), "stds": list(config.stds),
        "schedule": {k: THEORY_SCHEDULER_CONFIG[k] for k in schedule_keys},
        "final_level": {"timestep": 0, "alpha_bar": alpha_end,
                        "note": "t = 0 is the grid's last level, alpha-bar = alphas_cumprod[0]; final distributions "
                                "are compared with the mixture's marginal there"},
    }


def _priors_entry(config: TheoryConfig) -> dict[str, Any]:
    return {
        "units": "each prior is defined from the true marginal p_t0 (mean m, std s) at its t0",
        "example": {"mean": f"m + {config.prior_mean:g} s", "std": f"{config.prior_std:g} s"},
        "narrowed": {"mean": "m", "std": f"{prior_module.NARROW_FACTOR:g} s"},
        "widened": {"mean": "m", "std": f"{prior_module.WIDEN_FACTOR:g} s"},
        "edited": {"law": f"(1 - f) p_t0(x) + f p_t0(x - d), f = {prior_module.EDIT_FRACTION:g}, "
                          f"d = {prior_module.EDIT_SHIFT:g} s (a random fraction f of x_t0 moved by d)"},
        "true": {"law": "p_t0 (no edit)"},
    }


def _methods_entry() -> dict[str, str]:
    return {
        "ode": "DDIM (eta = 0 in Eq. 6), exact change of variables from points adapted to the map",
        "sde": "DDPM (eta = 1 in Eq. 6), exact density evolution: monotone change of variables of the step mean "
               "(cubic interpolation) and a Fourier-space Gaussian blur on a uniform grid",
        "cycle_sde": "particles: a forward (Eq. 7) path from exact samples of p_0, x_t0 edited to the prior (monotone "
                     "transport for Gaussians, random moves for the edited marginal), engine.decode('cycle-sde')",
        "particle_kl": "KL(p~ || p) = KL(law of F_p(x~) || uniform), binned on the union of n^0.4 equal-mass bins of "
                       f"p, bins of width {Z_BIN_WIDTH:g} in Phi^-1(F_p(x)) and bins of width {X_BIN_FRACTION:g} x "
                       "the narrowest component's std in x, each with its exact p-mass; plug-in with the "
                       f"Miller-Madow correction; standard errors from {BOOTSTRAP_RESAMPLES} Poisson bootstrap "
                       "resamples of the counts; binning can only lower a KL (solvers.estimator_check compares the "
                       "estimator with exact values)",
        "cycle_sde_ode_record": "contrast, for the example prior at the first t0: the same with a quarter of the "
                                "particles and the recorded path from DDIM inversion instead of the forward process",
        "continuous_ode": f"probability-flow ODE in u = log alpha-bar, DOP853 at tolerance {ODE_TOLERANCE:g}",
        "continuous_sde": "dKL/du = -(1/2) F(p~ || p) (relative Fisher information) integrated along the SDE's "
                          "exact densities",
    }


def _study_entry(
    model: GaussianMixture, t0: float, grid: Grid, family: Sequence[Prior], ode: OdeCurves, sde: SdeCurves,
    cycle: CycleCurves, contrast: CycleCurves | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One t0's curves (theory.json "kl_vs_time") and contraction ratios (theory.json "contraction")."""
    alphas = grid.alpha_bars.numpy()
    continuous_levels = levels_between(len(alphas), CONTINUOUS_LEVELS)
    continuous, evaluations = probability_flow_kl(
        model, ode.start, prior_densities(family, ode.start)[1], alphas[continuous_levels]
    )
    predicted = dissipation_prediction(sde.kl[:, 0], sde.fisher, alphas)
    priors: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for i, prior in enumerate(family):
        start = float(sde.kl[i, 0])
        entry: dict[str, Any] = {
            "params": prior.params(),
            "kl_t0": start,
            "ode": ode.kl[i],
            "sde": sde.kl[i],
            "cycle_sde": _estimates(cycle.kl[i]),
            "continuous_ode": continuous[i],
            "continuous_sde_prediction": predicted[i],
            "sde_mass_error": float(np.max(np.abs(sde.mass[i] - 1.0))),
            "final_mode_masses": {"ode": ode.final_masses[i], "sde": sde.final_masses[i],
                                  "cycle_sde": cycle.final_masses[i]},
        }
        priors[prior.name] = entry
        if prior.name == "true":
            entry["cycle_sde_record_gap"] = cycle.record_gap[i]
            continue
        end = cycle.kl[i][-1]
        ratios[prior.name] = {
            "ode": float(ode.kl[i, -1]) / start,
            "sde": float(sde.kl[i, -1]) / start,
            "cycle_sde": {"value": end.value / start, "se": end.se / start},
        }
        if i == 0 and contrast is not None:
            entry["cycle_sde_ode_record"] = _estimates(contrast.kl[0])
            last = contrast.kl[0][-1]
            ratios[prior.name]["cycle_sde_ode_record"] = {"value": last.value / start, "se": last.se / start}
    study = {
        "t0": t0,
        "timesteps": grid.timesteps.numpy(),
        "alphas": alphas,
        "cycle_levels": cycle.levels,
        "continuous_levels": continuous_levels,
        "continuous_ode_evaluations": evaluations,
        "priors": priors,
    }
    return study, {"t0": t0, "ratios": ratios}


def _solver_entry(solvers: SolverCurves, t0: float) -> dict[str, Any]:
    """theory.json "solvers": KL(final || p_0) per solver and NFE, and the particle estimator against exact values."""
    check = [
        {"solver": s, "nfe": n, "exact": e, "particles": p.value, "se": p.se, "z": (p.value - e) / p.se}
        for s in PARTICLE_SOLVERS
        for n, e, p in zip(solvers.nfe, solvers.exact[s], solvers.particles[s])
        if e is not None
    ]
    return {
        "t0": t0,
        "prior": "example",
        "distance": "KL(p~_0 || p_0) at the final level",
        "nfe": solvers.nfe,
        "solvers": {s: {"process": p, "order": o} for s, (p, o) in SOLVERS.items()},
        "exact": {s: v for s, v in solvers.exact.items() if any(e is not None for e in v)},
        "exact_true_prior": {s: v for s, v in solvers.exact_true_prior.items() if any(e is not None for e in v)},
        "exact_missing": "null: no exact value (SDE-DPM-Solver++(2M) is not Markov in x; an ODE solver whose map "
                         "folds is not a change of variables)",
        "particles": {s: _estimates(solvers.particles[s]) for s in PARTICLE_SOLVERS},
        "particles_true_prior": {s: _estimates(v) for s, v in solvers.particles_true_prior.items()},
        "estimator_check": check,
    }


def _example_figure(
    model: GaussianMixture, grid: Grid, prior: Prior, x: np.ndarray, ode: OdeCurves, sde: SdeCurves, seed: int
) -> ExampleFigure:
    """Trajectories, density heatmaps and final densities of the example (the first prior) at its t0."""
    alphas = grid.alpha_bars.numpy()
    alpha_t0, alpha_end = float(alphas[0]), float(alphas[-1])
    centers = [c for c, _ in prior.pieces()] + components(model, alpha_end)[1].tolist()
    spread = max(s for _, s in prior.pieces() + TruePrior(model, alpha_t0).pieces())
    display = np.linspace(min(centers) - 3.5 * spread, max(centers) + 3.5 * spread, 400)
    levels = sorted(sde.snapshots)
    p0 = np.exp(prior.log_density(ode.start))

    def ode_density(level: int) -> np.ndarray:
        return np.interp(display, ode.positions[level], p0 / np.exp(ode.log_slope[level]), left=0.0, right=0.0)

    figure = ExampleFigure(
        timesteps=grid.timesteps.numpy(),
        display=display,
        snapshot_timesteps=grid.timesteps.numpy()[levels],
        prior_density=np.exp(prior.log_density(display)),
        true_t0_density=np.exp(log_density(model, display, alpha_t0)),
        true_final_density=np.exp(log_density(model, display, alpha_end)),
    )
    figure.heatmaps["ode"] = np.stack([ode_density(level) for level in levels])
    figure.heatmaps["sde"] = np.stack([np.interp(display, x, sde.snapshots[level][0]) for level in levels])
    figure.final_densities["ode"] = ode_density(len(alphas) - 1)
    figure.final_densities["sde"] = np.interp(display, x, sde.final_density[0])
    generator = torch.Generator().manual_seed(seed + 7)
    x_t0 = prior.edit(model.sample(TRAJECTORIES, alpha=alpha_t0, generator=generator), np.random.default_rng(seed))
    for process in ("ode", "sde"):
        paths = decode_trajectory(model, x_t0, unrecorded_path(grid, x_t0, process), process, generator=generator)
        figure.trajectories[process] = paths[..., 0].numpy()
    return figure
