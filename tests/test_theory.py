"""sdedrag theory: exact-score KL curves (SDE contracts, ODE keeps), their numerics, and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import norm

from sdedrag.cli import main
from sdedrag.engine.steps import eta_step
from sdedrag.errors import InputError
from sdedrag.theory import TheoryConfig, run_theory
from sdedrag.theory.checks import TOLERANCES, checks
from sdedrag.theory.densities import characteristics, evolve_density
from sdedrag.theory.estimators import kl_on_grid, particle_kl
from sdedrag.theory.experiment import single_threaded
from sdedrag.theory import kl_study
from sdedrag.theory.kl_study import cycle_curves
from sdedrag.theory.mixture import build_mixture, log_density, moments
from sdedrag.theory.priors import GaussianPrior, prior_family

REDUCED = TheoryConfig(t0=(1.0, 0.5), nfe=(10, 50), particles=2000, solver_particles=4000, grid_points=1024)
"""The default experiment at lower resolution: all 1000 steps, two t0, fewer particles and grid points."""


@pytest.fixture(scope="module")
def results() -> dict:
    return run_theory(REDUCED).results


def mismatched(results: dict):
    for study in results["kl_vs_time"]:
        for name, entry in study["priors"].items():
            if name != "true":
                yield study["t0"], name, entry


def test_sde_kl_never_increases_beyond_the_chain_error_and_ends_below_10_percent_from_T(results):
    for t0, name, entry in mismatched(results):
        sde = np.asarray(entry["sde"])
        assert sde[0] == pytest.approx(entry["kl_t0"]) and sde[0] > 0.1, (t0, name)
        assert np.max(np.diff(sde)) <= TOLERANCES["sde_step_increase"], (t0, name)
        assert sde[-1] < sde[0], (t0, name)
        if t0 == 1.0:
            assert sde[-1] < 0.1 * sde[0], (t0, name)
            assert results["contraction"][0]["ratios"][name]["sde"] == pytest.approx(sde[-1] / sde[0])


def test_ode_kl_stays_within_2_percent_and_exactly_constant_in_continuous_time(results):
    for t0, name, entry in mismatched(results):
        ode = np.asarray(entry["ode"])
        assert np.max(np.abs(ode / ode[0] - 1)) <= 0.02, (t0, name)
        assert ode[0] == pytest.approx(entry["kl_t0"], rel=1e-3), (t0, name)  # two quadratures of KL(t0)
        continuous = np.asarray(entry["continuous_ode"])
        assert np.max(np.abs(continuous / continuous[0] - 1)) <= 1e-6, (t0, name)


def test_cycle_sde_with_a_forward_record_contracts_like_the_sde(results):
    for t0, name, entry in mismatched(results):
        value, se = entry["cycle_sde"]["value"][-1], entry["cycle_sde"]["se"][-1]
        assert value + 2 * se < entry["kl_t0"], (t0, name)
        if t0 == 1.0:
            assert value + 2 * se < 0.1 * entry["kl_t0"], (t0, name)
        assert abs(value - entry["sde"][-1]) <= 3 * se + 0.1 * entry["sde"][-1], (t0, name)
    ratios = {entry["t0"]: entry["ratios"] for entry in results["contraction"]}
    assert set(ratios) == {1.0, 0.5} and set(ratios[0.5]) == {"example", "narrowed", "widened", "edited"}
    assert ratios[1.0]["example"]["sde"] < ratios[0.5]["example"]["sde"] < 1  # less time to contract from 0.5T


def test_true_prior_ends_near_zero_for_all_three_processes(results):
    for study in results["kl_vs_time"]:
        entry = study["priors"]["true"]
        assert entry["kl_t0"] == pytest.approx(0, abs=1e-12)
        assert -1e-4 <= entry["ode"][-1] <= 1e-3 and 0 <= entry["sde"][-1] <= 1e-3  # -1e-4: quadrature error
        assert entry["cycle_sde_record_gap"] <= 1e-10
        value, se = entry["cycle_sde"]["value"][-1], entry["cycle_sde"]["se"][-1]
        assert abs(value) <= 2 * se and value <= 5e-3
    assert results["checks"]["all_passed"], {k: v["passed"] for k, v in results["checks"].items() if k != "all_passed"}


def test_claims_about_t0_T_are_not_evaluated_without_it(results):
    partial = checks([study for study in results["kl_vs_time"] if study["t0"] != 1.0])
    assert partial["sde_contracts_below_10_percent_from_T"]["passed"] is None
    assert partial["sde_non_increasing"]["passed"] is True and partial["all_passed"] is True


def test_two_mode_example_ode_keeps_the_prior_imbalance_and_sde_rebalances(results):
    ratio = results["example"]["mode_mass_ratio"]
    assert ratio["ode"] == pytest.approx(norm.cdf(1) / norm.cdf(-1), rel=0.02)  # prior one std off: 5.30 : 1
    assert ratio["sde"] < 1.3 and ratio["cycle_sde"] < 1.5 and ratio["true"] == pytest.approx(1)
    assert sum(results["example"]["mode_masses"]["ode"]) == pytest.approx(1, abs=1e-4)


def test_solver_sweep_sde_solvers_improve_with_nfe_and_ode_solvers_keep_the_gap(results):
    solvers = results["solvers"]
    gap = results["kl_vs_time"][0]["priors"]["example"]["kl_t0"]
    assert solvers["nfe"] == [10, 50]
    assert all(0.7 * gap < kl < 1.2 * gap for kl in solvers["exact"]["DDIM"])
    assert solvers["exact"]["DDPM"][1] < 0.3 * solvers["exact"]["DDPM"][0] < 0.3 * gap
    sde_dpm = solvers["particles"]["SDE-DPM-Solver++(2M)"]["value"]
    assert sde_dpm[1] < sde_dpm[0] < 0.5 * gap
    for check in solvers["estimator_check"]:  # particle estimator against exact values
        assert abs(check["particles"] - check["exact"]) <= 3 * check["se"] + 0.05 * check["exact"], check


def test_density_evolution_is_exact_for_gaussian_data():
    """With one Gaussian component every law stays Gaussian: closed-form KL along the chain to compare with."""
    model = build_mixture([1.0], [0.5], [0.8])
    grid = model.schedule.grid(100, 1.0)
    x = np.linspace(-12, 12, 1024)
    mean, var = 1.0, 1.5**2
    with single_threaded():
        densities = evolve_density(model, grid, x, norm.pdf(x, mean, var**0.5)[None])
        positions, log_slope = characteristics(model, grid, np.array([0.0, 1.0]))
        for i, (p, _) in enumerate(densities):
            a = float(grid.alpha_bars[i])
            m_true, s_true = np.sqrt(a) * 0.5, np.sqrt(a * 0.64 + 1 - a)
            gaussian_kl = np.log(s_true / var**0.5) + (var + (mean - m_true) ** 2) / (2 * s_true**2) - 0.5
            assert kl_on_grid(p, log_density(model, x, a), x[1] - x[0])[0] == pytest.approx(gaussian_kl, abs=1e-7)
            if i == grid.num_steps:
                break
            t, a_t, a_s = grid.interval(i)
            points = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
            step, sigma = eta_step(points, model.predict_eps(points, t), a_t, a_s, 1.0)
            slope, offset = float(step[1] - step[0]), float(step[0])
            mean, var = slope * mean + offset, slope**2 * var + sigma**2
    ddim_slope = np.exp(log_slope[-1, 0])
    assert positions[-1, 1] - positions[-1, 0] == pytest.approx(ddim_slope, rel=1e-9)  # DDIM is linear here


def test_particle_kl_estimator_recovers_known_gaps():
    model = build_mixture([0.5, 0.5], [-1.0, 1.0], [0.3, 0.3])
    alpha = float(model.schedule.alphas_cumprod[999])
    rng = np.random.default_rng(0)
    x_t0 = model.sample(20000, alpha=alpha, generator=torch.Generator().manual_seed(0))
    m, s = moments(model, alpha)
    grid = np.linspace(-20, 20, 8001)
    for prior in prior_family(model, alpha, 1.0, 1.0)[:4]:
        log_p = prior.log_density(grid)
        exact = float(np.trapezoid(np.exp(log_p) * (log_p - log_density(model, grid, alpha)), grid))
        estimate = particle_kl(model, prior.edit(x_t0, rng)[:, 0].numpy(), alpha, rng)
        assert abs(estimate.value - exact) <= 3 * estimate.se + 0.03 * exact, (prior.name, exact, estimate)
    edited = GaussianPrior("g", model, alpha, m + 1.0, 0.5).edit(x_t0, rng)[:, 0].numpy()
    assert edited.mean() == pytest.approx(m + 1.0, abs=0.02) and edited.std() == pytest.approx(0.5, abs=0.02)


def test_cycle_sde_eps_cache_changes_nothing(monkeypatch):
    model = build_mixture([0.5, 0.5], [-1.0, 1.0], [0.3, 0.3])
    grid = model.schedule.grid(50, 1.0)
    family = prior_family(model, float(grid.alpha_bars[0]), 1.0, 1.0)
    cached = cycle_curves(model, grid, family, 300, [0, 25, 50], seed=3)
    monkeypatch.setattr(kl_study, "RecordedEpsCache", lambda model, batch: model)
    direct = cycle_curves(model, grid, family, 300, [0, 25, 50], seed=3)
    for a, b in zip(cached.kl, direct.kl):
        assert [e.value for e in a] == pytest.approx([e.value for e in b], rel=1e-12, abs=1e-15)
    assert np.allclose(cached.final_masses, direct.final_masses, rtol=1e-12, atol=0)
    assert cached.record_gap[-1] <= 1e-10  # the true prior: Cycle-SDE returns the recorded x0


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


SMALL = ["--t0", "1.0", "--steps", "50", "--nfe", "10", "--particles", "200", "--solver-particles", "200",
         "--grid-points", "512"]


def test_cli_writes_figures_and_theory_json_and_replays_from_it(tmp_path, capsys):
    out = tmp_path / "theory"
    assert main(["theory", *SMALL, "--prior-mean", "0.5", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "final mode mass ratio" in stdout and "ODE" in stdout and "SDE" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "kl_vs_time.png", "prior_mismatch.png", "run.json", "solvers.png", "theory.json"
    ]
    record = json.loads((out / "theory.json").read_text())
    assert record["command"] == "theory" and record["args"]["prior_mean"] == 0.5 and record["args"]["t0"] == [1.0]
    results = record["results"]
    assert results["example"]["prior"]["mean"] == pytest.approx(0.5, abs=0.01)
    assert len(results["kl_vs_time"][0]["priors"]["example"]["sde"]) == 51
    assert {"tolerances", "checks", "contraction", "solvers", "seconds"} <= set(results)
    assert json.loads((out / "run.json").read_text())["results"]["mode_mass_ratio"] == results["example"]["mode_mass_ratio"]

    replay = tmp_path / "replay"
    assert main(["theory", "--config", str(out / "theory.json"), "--out", str(replay)]) == 0
    again = json.loads((replay / "theory.json").read_text())
    assert again["args"] == record["args"]
    assert again["results"]["kl_vs_time"] == results["kl_vs_time"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--stds", "0.3", "-0.1"], "--stds"),
        (["--weights", "0.5", "0"], "--weights"),
        (["--weights", "1", "1", "1"], "one value per mode"),
        (["--prior-std", "0"], "--prior-std"),
        (["--t0", "1.5"], "--t0"),
        (["--t0", "0"], "--t0"),
        (["--steps", "1001"], "--steps"),
        ([], "--out is required"),
    ],
)
def test_bad_options_are_one_line_errors_and_leave_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["theory", *extra] + ([] if message == "--out is required" else ["--out", str(out)])
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdedrag theory: error:") and message in err[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_config_validation_names_the_option():
    with pytest.raises(InputError, match="--nfe"):
        TheoryConfig(nfe=(0,)).validate()
    with pytest.raises(InputError, match="--grid-points"):
        TheoryConfig(grid_points=10).validate()
