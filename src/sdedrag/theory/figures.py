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


def kl_vs_time(results: dict[str, Any], path: Path) -> None:
    """KL(p~_t || p_t) against t for every t0 (rows) and prior (columns): ODE, SDE, Cycle-SDE, continuous time."""
    studies = results["kl_vs_time"]
    names = list(studies[0]["priors"])
    fig, axes = plt.subplots(len(studies), len(names), figsize=(3.3 * len(names), 2.9 * len(studies) + 0.9),
                             sharey=True, squeeze=False)
    for row, study in enumerate(studies):
        t = np.asarray(study["timesteps"], dtype=float)
        cycle_t, cont_t = t[study["cycle_levels"]], t[study["continuous_levels"]]
        for col, name in enumerate(names):
            ax, entry = axes[row, col], study["priors"][name]
            ax.plot(t, _floor(entry["ode"]), color=COLORS["ode"], lw=2.0)
            ax.plot(cont_t, _floor(entry["continuous_ode"]), ls="none", marker="o", ms=2.2, color="black")
            ax.plot(t, _floor(entry["sde"]), color=COLORS["sde"], lw=2.0)
            ax.plot(t, _floor(entry["continuous_sde_prediction"]), color="black", lw=0.8, ls="--")
            value, se = np.asarray(entry["cycle_sde"]["value"]), np.asarray(entry["cycle_sde"]["se"])
            ax.fill_between(cycle_t, _floor(value - 2 * se), _floor(value + 2 * se), color=COLORS["cycle_sde"],
                            alpha=0.25, lw=0)
            ax.plot(cycle_t, _floor(value), ls="none", marker="o", ms=2.5, color=COLORS["cycle_sde"])
            if "cycle_sde_ode_record" in entry:
                ax.plot(cycle_t, _floor(entry["cycle_sde_ode_record"]["value"]), ls="none", marker="x", ms=3,
                        color=COLORS["contrast"])
            ax.set_yscale("log")
            ax.set_xlim(t[0], 0)
            ax.grid(True, which="major", alpha=0.3)
            ratios = results["contraction"][row]["ratios"].get(name)
            if ratios is not None:
                note = (f"end / start:\nODE {ratios['ode']:.3f}\nSDE {ratios['sde']:.2g}\n"
                        f"Cycle {ratios['cycle_sde']['value']:.2g} ± {2 * ratios['cycle_sde']['se']:.1g}")
            else:
                gap = entry["cycle_sde_record_gap"]
                note = f"Cycle-SDE returns\nthe record exactly\n(max |x̃₀ − x₀| = {gap:.0e})"
            ax.text(0.03, 0.04, note, transform=ax.transAxes, ha="left", va="bottom", fontsize=7,
                    bbox={"fc": "white", "ec": "none", "alpha": 0.85})
            if row == 0:
                ax.set_title(_prior_label(name, results), fontsize=9)
            if row == len(studies) - 1:
                ax.set_xlabel("timestep t  (reverse time →)")
            if col == 0:
                ax.set_ylabel(f"$t_0$ = {t0_label(study['t0'])}\nKL($\\tilde p_t$ ‖ $p_t$) [nats]")
    axes[0, 0].set_ylim(FLOOR, None)
    handles = [
        Line2D([], [], color=COLORS["ode"], lw=2, label="ODE (DDIM), exact"),
        Line2D([], [], color="black", ls="none", marker="o", ms=3, label="continuous-time ODE"),
        Line2D([], [], color=COLORS["sde"], lw=2, label="SDE (DDPM), exact"),
        Line2D([], [], color="black", lw=0.8, ls="--", label="continuous-time SDE: KL$(t_0)$ − ½∫F dlog ᾱ"),
        Line2D([], [], color=COLORS["cycle_sde"], ls="none", marker="o", ms=4,
               label="Cycle-SDE, particles ± 2 se (floor ~1e-3 from particle noise)"),
        Line2D([], [], color=COLORS["contrast"], ls="none", marker="x", ms=4,
               label="Cycle-SDE, DDIM-inverted record"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle("Prior gap along time: the SDE contracts it, the ODE keeps it (exact scores, SD's VP schedule)",
                 fontsize=12)
    fig.subplots_adjust(left=0.065, right=0.99, bottom=0.1, top=0.91, wspace=0.06, hspace=0.3)
    fig.savefig(path, dpi=130)
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
