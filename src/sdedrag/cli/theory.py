"""Run the paper's theory with exact scores: the SDE contracts the prior gap, the ODE keeps it (Theorems 3.1-3.3).

A 1-D Gaussian mixture on SD's VP schedule starts from mismatched priors at t0; KL(p~_t || p_t) is
followed exactly for the ODE and the SDE, from particles for Cycle-SDE, and solvers are compared under
the mismatch. Writes DIR/kl_vs_time.png, DIR/prior_mismatch.png, DIR/solvers.png, DIR/theory.json (every
curve and number, with the arguments: rerun with --config DIR/theory.json) and DIR/run.json (the summary).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from sdedrag.cli.common import add_run_options, finite, positive, positive_int, recorded_args, require, unit_fraction
from sdedrag.theory import TheoryConfig

DEFAULTS = TheoryConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=positive, nargs="+", default=list(DEFAULTS.weights), metavar="W",
                        help="mixture weights, normalized to sum to 1 (default: %(default)s)")
    parser.add_argument("--means", type=finite, nargs="+", default=list(DEFAULTS.means), metavar="MU",
                        help="mixture means (default: %(default)s)")
    parser.add_argument("--stds", type=positive, nargs="+", default=list(DEFAULTS.stds), metavar="S",
                        help="mixture standard deviations (default: %(default)s)")
    parser.add_argument("--prior-mean", type=finite, default=DEFAULTS.prior_mean,
                        help="the example prior's mean, as m + PRIOR_MEAN s for the true marginal p_t0's mean m and "
                             "std s (at t0 = 1, p_T is about N(0, 1)) (default: %(default)s)")
    parser.add_argument("--prior-std", type=positive, default=DEFAULTS.prior_std,
                        help="the example prior's std, in units of s (default: %(default)s)")
    parser.add_argument("--t0", type=unit_fraction, nargs="+", default=list(DEFAULTS.t0), metavar="T0",
                        help="start times as fractions of T; the first is the example's (figure, mode masses, "
                             "solvers) (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=DEFAULTS.steps,
                        help="solver steps over [0, T] for the KL curves, at most 1000 (default: %(default)s)")
    parser.add_argument("--nfe", type=positive_int, nargs="+", default=list(DEFAULTS.nfe), metavar="N",
                        help="model evaluations for the solver comparison (default: %(default)s)")
    parser.add_argument("--particles", type=positive_int, default=DEFAULTS.particles,
                        help="Cycle-SDE particles per prior (default: %(default)s)")
    parser.add_argument("--solver-particles", type=positive_int, default=DEFAULTS.solver_particles,
                        help="particles per solver run in the solver comparison (default: %(default)s)")
    parser.add_argument("--grid-points", type=positive_int, default=DEFAULTS.grid_points,
                        help="points of the density grid (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed (default: %(default)s)")
    add_run_options(parser)


def config_from(args: argparse.Namespace) -> TheoryConfig:
    """The TheoryConfig of parsed arguments, validated (one-line InputError otherwise)."""
    config = TheoryConfig(
        weights=tuple(args.weights), means=tuple(args.means), stds=tuple(args.stds),
        prior_mean=args.prior_mean, prior_std=args.prior_std, t0=tuple(args.t0), steps=args.steps,
        nfe=tuple(args.nfe), particles=args.particles, solver_particles=args.solver_particles,
        grid_points=args.grid_points, seed=args.seed,
    )
    config.validate()
    return config


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers: final mode-mass ratios, contraction ratios per t0, check outcomes, runtime."""
    from sdedrag.theory.figures import t0_label

    return {
        "mode_mass_ratio": results["example"]["mode_mass_ratio"],
        "contraction": {
            t0_label(entry["t0"]): {name: {"ode": r["ode"], "sde": r["sde"], "cycle_sde": r["cycle_sde"]["value"]}
                                    for name, r in entry["ratios"].items()}
            for entry in results["contraction"]
        },
        "checks": {name: check["passed"] for name, check in results["checks"].items() if name != "all_passed"},
        "all_checks_passed": results["checks"]["all_passed"],
        "seconds": results["seconds"],
    }


def run(args: argparse.Namespace) -> int:
    from sdedrag.io import atomic_output_dir, run_record, write_json
    from sdedrag.theory import run_theory
    from sdedrag.theory.figures import t0_label, write_figures

    require(args, "out")
    config = config_from(args)
    started, cpu_started = time.perf_counter(), time.process_time()
    outcome = run_theory(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    results = outcome.results
    with atomic_output_dir(args.out) as staging:
        clock = time.perf_counter()
        write_figures(results, outcome.figure, staging)
        results["seconds"]["figures"] = time.perf_counter() - clock
        results["seconds"]["command"] = time.perf_counter() - started
        results["seconds"]["command_cpu"] = time.process_time() - cpu_started
        write_json(staging / "theory.json", run_record(args.command, recorded_args(args), results))
        write_json(staging / "run.json", run_record(args.command, recorded_args(args), summary(results)))
    ratios = results["example"]["mode_mass_ratio"]
    print(f"final mode mass ratio (t0 = {t0_label(config.t0[0])}): ODE {ratios['ode']:.2f} : 1, "
          f"SDE {ratios['sde']:.2f} : 1, Cycle-SDE {ratios['cycle_sde']:.2f} : 1 (true {ratios['true']:.2f} : 1)")
    for entry in results["contraction"]:
        parts = ", ".join(f"{name} {r['sde']:.2g}" for name, r in entry["ratios"].items())
        print(f"SDE KL end / start at t0 = {t0_label(entry['t0'])}: {parts}")
    outcome = {name: check["passed"] for name, check in results["checks"].items() if name != "all_passed"}
    failed = [name for name, passed in outcome.items() if passed is False]
    unevaluated = [name for name, passed in outcome.items() if passed is None]
    print("all checks passed" if not failed else f"checks FAILED: {', '.join(failed)}")
    if unevaluated:
        print(f"not evaluated (no t0 = 1): {', '.join(unevaluated)}")
    print(f"{results['seconds']['command']:.0f} s; wrote {args.out}/kl_vs_time.png, prior_mismatch.png, solvers.png, "
          "theory.json and run.json")
    return 0
