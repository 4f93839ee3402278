"""The three figures of ``sdedrag theory``: KL along time, the two-mode example, solver efficiency (Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from sdedrag.theory.experiment import ExampleFigure  # noqa: E402

COLORS = {"ode": "#1f5fbf", "sde": "#c8312b", "cycle_sde": "#2a9d3a", "contrast": "#888888",
          "DDIM": "#1f5fbf", "DPM-Solver++(2M)": "#7b3fb5", "DDPM": "#c8312b", "SDE-DPM-Solver++(2M)": "#e07b16"}
PATH_COLORS = ("#1a1a1a", "#f0a202", "#b01fd0", "#2ca02c", "#8c564b", "#17becf")
"""Sample paths by the mode they end in, lowest mode first (cycled for more modes)."""
FLOOR = 1e-5
"""KL values below this are drawn at it (log axes; particle estimates can be slightly negative)."""


def t0_label(t0: float) -> str:
    """t0 as a fraction of T: "T" for 1, "0.6T" otherwise."""
    return "T" if t0 == 1.0 else f"{t0:g}T"


def _prior_label(name: str, results: dict[str, Any]) -> str:
    spec = results["priors"][name]
    if "law" in spec:
        return f"{name}: " + ("$p_{t_0}$ (no edit)" if name == "true" else "part of the mass moved")
    return f"{name}: N({spec['mean']}, ({spec['std']})²)"


def _floor(values: Any) -> np.ndarray:
    """Values as floats (None -> NaN, a gap in the line), raised to FLOOR."""
    return np.maximum(np.array([np.nan if v is None else v for v in values], dtype=float), FLOOR)


def estimator_floors(study: dict[str, Any]) -> tuple[float, np.ndarray]:
    """What the unedited (true-prior) run of one t0 measures: the particle estimator's floor (the largest
    Cycle-SDE estimate + 2 se, whose true value is 0) and the DDPM chain's own KL along t."""
    true = study["priors"]["true"]["cycle_sde"]
    particle_floor = float(np.max(np.asarray(true["value"]) + 2 * np.asarray(true["se"])))
    return particle_floor, _floor(study["priors"]["true"]["sde"])


def _kl_panel(ax: Any, study: dict[str, Any], name: str, marker_every: int) -> None:
    """One KL-along-time panel: exact ODE and SDE, continuous-time checks, Cycle-SDE particles and the floors."""
    entry = study["priors"][name]
    t = np.asarray(study["timesteps"], dtype=float)
    cycle_t, cont_t = t[study["cycle_levels"]], t[study["continuous_levels"]]
    particle_floor, chain_error = estimator_floors(study)
    ax.axhspan(FLOOR, particle_floor, color="0.88", zorder=0, lw=0)
    ax.plot(t, chain_error, color="0.45", lw=1.0, ls=":", zorder=1)
    ax.plot(t, _floor(entry["sde"]), color=COLORS["sde"], lw=2.2, zorder=3)
    ax.plot(t, _floor(entry["continuous_sde_prediction"]), color="black", lw=0.8, ls="--", zorder=4)
    ax.plot(t, _floor(entry["ode"]), color=COLORS["ode"], lw=2.2, zorder=3)
    ax.plot(cont_t[::marker_every], _floor(entry["continuous_ode"])[::marker_every], ls="none", marker="o", ms=4,
            mfc="white", mec="black", mew=0.8, zorder=5)
    value, se = np.asarray(entry["cycle_sde"]["value"]), np.asarray(entry["cycle_sde"]["se"])
    above = value - 2 * se > particle_floor  # resolved by the particles; the rest is drawn as a floor hit
    ax.errorbar(cycle_t[above], value[above], yerr=2 * se[above], ls="none", marker="o", ms=3,
                color=COLORS["cycle_sde"], elinewidth=0.8, zorder=6)
    ax.plot(cycle_t[~above], np.full(int((~above).sum()), particle_floor), ls="none", marker="v", ms=3.5,
            mfc="white", color=COLORS["cycle_sde"], zorder=6)
    if "cycle_sde_ode_record" in entry:
        ax.plot(cycle_t, _floor(entry["cycle_sde_ode_record"]["value"]), ls="none", marker="x", ms=3,
                color=COLORS["contrast"], zorder=5)
    ax.set_yscale("log")
    ax.set_xlim(t[0], 0)
    ax.set_ylim(FLOOR, 5.0)
    ax.grid(True, which="major", alpha=0.3)


def _ratio_note(ratios: dict[str, Any]) -> str:
    cycle = ratios["cycle_sde"]
    return (f"KL at t = 0 / KL at $t_0$:\nODE {ratios['ode']:.3f}\nSDE {ratios['sde']:.2g}\n"
            f"Cycle-SDE {cycle['value']:.2g} ± {2 * cycle['se']:.1g}")


def _legend_handles() -> list[Any]:
    return [
        Line2D([], [], color=COLORS["ode"], lw=2, label="ODE (DDIM), exact"),
        Line2D([], [], ls="none", marker="o", ms=4, mfc="white", mec="black", label="continuous-time ODE (check)"),
        Line2D([], [], color=COLORS["sde"], lw=2, label="SDE (DDPM), exact"),
        Line2D([], [], color="black", lw=0.8, ls="--", label="continuous-time SDE: KL$(t_0)$ − ½∫F dlog ᾱ (check)"),
        Line2D([], [], color=COLORS["cycle_sde"], ls="none", marker="o", ms=4, label="Cycle-SDE, particles ± 2 se"),
        Line2D([], [], color=COLORS["cycle_sde"], ls="none", marker="v", ms=4, mfc="white",
               label="Cycle-SDE estimate inside the floor"),
        Line2D([], [], color=COLORS["contrast"], ls="none", marker="x", ms=4, label="Cycle-SDE, DDIM-inverted record"),
        Patch(color="0.88", label="particle-estimator floor (an unedited run measures up to here)"),
        Line2D([], [], color="0.45", lw=1.0, ls=":", label="DDPM chain's own error with no edit (the rise near t = 0)"),
    ]


def kl_vs_time(results: dict[str, Any], path: Path) -> None:
    """The headline (KL along t for the example prior at the first t0) above the detailed grid (every t0 and
    edited prior); the unedited run's values are drawn as the estimator's and the chain's floors."""
    studies = results["kl_vs_time"]
    names = [name for name in studies[0]["priors"] if name != "true"]
    fig = plt.figure(figsize=(3.4 * len(names), 5.2 + 2.5 * len(studies)))
    grid = fig.add_gridspec(1 + len(studies), len(names), height_ratios=(2.4, *[1.0] * len(studies)),
                            hspace=0.42, wspace=0.07)
    main = fig.add_subplot(grid[0, :])
    headline = studies[0]
    _kl_panel(main, headline, "example", marker_every=4)
    ratios = results["contraction"][0]["ratios"]["example"]
    main.text(0.015, 0.05, _ratio_note(ratios), transform=main.transAxes, ha="left", va="bottom", fontsize=10,
              bbox={"fc": "white", "ec": "0.7", "alpha": 0.9})
    main.set_ylabel("KL($\\tilde p_t$ ‖ $p_t$) [nats]")
    main.set_xlabel("timestep t  (reverse time →)")
    main.set_title(f"{_prior_label('example', results)}, $t_0$ = {t0_label(headline['t0'])}: the SDE shrinks the "
                   f"gap to {ratios['sde']:.2g} of its start, the ODE keeps {ratios['ode']:.2f} of it", fontsize=11)
    main.set_ylim(FLOOR, 1e3)  # room for the legend above the curves
    main.legend(handles=_legend_handles(), loc="upper right", fontsize=8, ncol=2, framealpha=0.9)
    for row, study in enumerate(studies, start=1):
        for col, name in enumerate(names):
            ax = fig.add_subplot(grid[row, col])
            _kl_panel(ax, study, name, marker_every=8)
            ax.text(0.03, 0.04, _ratio_note(results["contraction"][row - 1]["ratios"][name]), transform=ax.transAxes,
                    ha="left", va="bottom", fontsize=6.5, bbox={"fc": "white", "ec": "none", "alpha": 0.85})
            if row == 1:
                ax.set_title(_prior_label(name, results), fontsize=9)
            if row == len(studies):
                ax.set_xlabel("timestep t")
            if col == 0:
                ax.set_ylabel(f"$t_0$ = {t0_label(study['t0'])}\nKL [nats]")
            else:
                ax.tick_params(labelleft=False)
    fig.suptitle("Prior gap along time: the SDE contracts it, the ODE keeps it (exact scores, SD's VP schedule)",
                 fontsize=13)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.04, top=0.94)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prior_mismatch(results: dict[str, Any], data: ExampleFigure, path: Path) -> None:
    """The paper-style toy figure: prior at t0, sample paths over the density p~_t, final density and mode masses."""
    example = results["example"]
    means = results["model"]["means"]
    path_colors = {int(k): PATH_COLORS[rank % len(PATH_COLORS)] for rank, k in enumerate(np.argsort(means))}
    t0_timestep = float(data.timesteps[0])
    fig = plt.figure(figsize=(12.5, 7.2))
    grid = fig.add_gridspec(2, 3, width_ratios=(1.0, 5.0, 1.6), wspace=0.05, hspace=0.28)
    titles = {"ode": "ODE (DDIM, η = 0)", "sde": "SDE (DDPM, η = 1)"}
    maps = {"ode": "Blues", "sde": "Reds"}
    y = data.display
    for row, process in enumerate(("ode", "sde")):
        left = fig.add_subplot(grid[row, 0])
        main = fig.add_subplot(grid[row, 1], sharey=left)
        right = fig.add_subplot(grid[row, 2], sharey=left)
        left.fill_betweenx(y, data.prior_density, color=COLORS[process], alpha=0.35, lw=0)
        left.plot(data.prior_density, y, color=COLORS[process], lw=1.2)
        left.plot(data.true_t0_density, y, color="black", ls="--", lw=1.0)
        left.invert_xaxis()
        left.set_xticks([])
        left.set_ylabel("x")
        left.set_title("$x_{t_0}$: prior vs $p_{t_0}$", fontsize=9)
        heat = np.maximum(data.heatmaps[process], 0.0)
        main.pcolormesh(data.snapshot_timesteps, y, heat.T, cmap=maps[process], shading="nearest",
                        norm=PowerNorm(0.5, vmin=0.0, vmax=float(np.percentile(heat, 99.5))), rasterized=True)
        for k, mode in enumerate(example["final_mode_of_trajectories"][process]):
            main.plot(data.timesteps, data.trajectories[process][:, k], color=path_colors[mode], lw=0.7, alpha=0.7)
        main.set_xlim(t0_timestep, 0)
        main.tick_params(labelleft=False)
        main.set_title(f"{titles[process]}: sample paths over the density $\\tilde p_t$", fontsize=10)
        if row == 1:
            main.set_xlabel("timestep t  (reverse time →)")
        density = np.asarray(example["final_densities"][process])
        right.fill_betweenx(y, density, color=COLORS[process], alpha=0.35, lw=0)
        right.plot(density, y, color=COLORS[process], lw=1.2)
        right.plot(example["final_densities"]["true"], y, color="black", ls="--", lw=1.0)
        right.set_xticks([])
        right.tick_params(labelleft=False)
        masses = np.asarray(example["mode_masses"][process])
        lines = "\n".join(f"mode at {means[k]:g}: {100 * masses[k]:.1f}%" for k in np.argsort(means)[::-1])
        right.set_title("final $\\tilde p_0$ vs $p_0$", fontsize=9)
        right.text(0.97, 0.98, f"{lines}\nratio {example['mode_mass_ratio'][process]:.2f} : 1",
                   transform=right.transAxes, ha="right", va="top", fontsize=8.5,
                   bbox={"fc": "white", "ec": "0.7", "alpha": 0.9})
    prior = example["prior"]
    fig.legend(handles=[Patch(color="0.6", alpha=0.5, label="law of the edited process $\\tilde p_t$"),
                        Line2D([], [], color="black", ls="--", label="true marginal $p_t$"),
                        *[Line2D([], [], color=path_colors[k], lw=1.2, label=f"path ending in the mode at {means[k]:g}")
                          for k in sorted(path_colors, key=lambda k: means[k])]],
               loc="lower center", ncol=2 + len(means), frameon=False, fontsize=9)
    ratio = example["mode_mass_ratio"]
    modes = {1: "One-mode", 2: "Two-mode", 3: "Three-mode"}.get(len(means), f"{len(means)}-mode")
    fig.suptitle(f"{modes} mixture from a mismatched prior N({prior['mean']:.2f}, {prior['std']:.2f}²) at "
                 f"$t_0$ = {t0_label(example['t0'])}: the ODE ends with modes at {ratio['ode']:.2f} : 1, "
                 f"the SDE at {ratio['sde']:.2f} : 1", fontsize=12)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def solvers(results: dict[str, Any], path: Path) -> None:
    """KL(final || p_0) against NFE for the four solvers, from the mismatched prior and from the true prior."""
    study = results["solvers"]
    nfe = np.asarray(study["nfe"], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for name, values in study["exact"].items():
        ax.plot(nfe, _floor(values), marker="o", color=COLORS[name], lw=2, label=f"{name} (exact)")
    for name, values in study["exact_true_prior"].items():
        ax.plot(nfe, _floor(values), ls=":", marker=".", color=COLORS[name], lw=1.3)
    for name, estimate in study["particles_true_prior"].items():
        ax.plot(nfe, _floor(estimate["value"]), ls=":", marker="s", mfc="white", ms=4, color=COLORS[name], lw=1.3)
    start = results["kl_vs_time"][0]["priors"]["example"]["kl_t0"]
    ax.axhline(start, color="0.4", lw=1, ls="--", label=f"the prior gap: KL at $t_0$ = {start:.3f}")
    for k, (name, estimate) in enumerate(study["particles"].items()):
        value, se = np.asarray(estimate["value"]), np.asarray(estimate["se"])
        low, high = _floor(value - 2 * se), _floor(value + 2 * se)
        exact = name in study["exact"]
        ax.errorbar(nfe * 1.03 ** (k - 1.5), _floor(value), yerr=(_floor(value) - low, high - _floor(value)),
                    color=COLORS[name], marker="D" if exact else "s", ms=4.5 if exact else 5.5, capsize=2.5,
                    ls="none" if exact else "-", lw=2, mfc="white" if exact else COLORS[name],
                    label=f"{name} (particles ± 2 se)")
    ax.plot([], [], ls=":", marker=".", color="0.3", label="same solvers from the true prior")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(nfe)
    ax.set_xticklabels([f"{int(n)}" for n in nfe])
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel("KL($\\tilde p_0$ ‖ $p_0$) [nats]")
    ax.grid(True, which="both", alpha=0.3)
    prior = results["example"]["prior"]
    ax.set_title(f"Solvers from the mismatched prior N({prior['mean']:.2f}, {prior['std']:.2f}²) at "
                 f"$t_0$ = {t0_label(study['t0'])}", fontsize=11)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_figures(results: dict[str, Any], data: ExampleFigure, out: Path) -> None:
    """kl_vs_time.png, prior_mismatch.png and solvers.png in ``out``."""
    kl_vs_time(results, out / "kl_vs_time.png")
    prior_mismatch(results, data, out / "prior_mismatch.png")
    solvers(results, out / "solvers.png")
