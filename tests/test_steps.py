"""The paper's equations and the multistep solvers against their own identities (whole loops: test_decode_loops.py)."""

from __future__ import annotations

import math

import pytest
import torch

from sdedrag.engine import NoiseSchedule
from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG
from sdedrag.engine.steps import cycle_noise, dpmpp_step, eta_sigma, eta_step, forward_step, predict_x0

SCHEDULE = NoiseSchedule(SD_SCHEDULER_CONFIG)


def fake_eps(step: int, shape=(2, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1000 + step), dtype=torch.float64)


def test_first_order_sde_dpm_solver_is_the_ddpm_step():
    x, eps, noise = fake_eps(0), fake_eps(1), fake_eps(2)
    a_t, a_s = float(SCHEDULE.alpha_bar(801)), float(SCHEDULE.alpha_bar(781))
    mean, std = dpmpp_step(x, [(predict_x0(x, eps, a_t), a_t)], a_s, stochastic=True)
    ddpm_mean, sigma = eta_step(x, eps, a_t, a_s, 1.0)
    assert math.isclose(std, sigma, rel_tol=1e-12)
    assert torch.allclose(mean + std * noise, ddpm_mean + sigma * noise, atol=1e-12)


def test_first_order_dpm_solver_is_the_ddim_step():
    x, eps = fake_eps(0), fake_eps(1)
    a_t, a_s = float(SCHEDULE.alpha_bar(801)), float(SCHEDULE.alpha_bar(781))
    mean, std = dpmpp_step(x, [(predict_x0(x, eps, a_t), a_t)], a_s, stochastic=False)
    assert std == 0.0 and torch.allclose(mean, eta_step(x, eps, a_t, a_s, 0.0)[0], atol=1e-12)


@pytest.mark.parametrize("stochastic", [False, True])
def test_3m_integrates_data_predictions_linear_in_lambda_exactly(stochastic):
    """x0_hat(lambda) = b + c lambda: the mean is the exponential integral in closed form (k = 1 ODE, 2 SDE).

    mean = (sigma_s / sigma_t) e^(h - kh) x_t + alpha_s k int_0^h e^(-k (h - u)) x0_hat(lambda_t + u) du.
    """
    x, b, c = fake_eps(0), fake_eps(1), fake_eps(2)
    alpha_bars = [float(SCHEDULE.alpha_bar(t)) for t in (541, 501, 481, 441)]
    lam = [0.5 * math.log(a / (1 - a)) for a in alpha_bars]
    history = [(b + c * lam[i], alpha_bars[i]) for i in (2, 1, 0)]
    mean, _ = dpmpp_step(x, history, alpha_bars[3], stochastic)
    k, h, a_t, a_s = (2.0 if stochastic else 1.0), lam[3] - lam[2], alpha_bars[2], alpha_bars[3]
    integral_1 = 1 - math.exp(-k * h)  # k int e^(-k (h - u)) du
    integral_u = (k * h - 1 + math.exp(-k * h)) / k  # k int e^(-k (h - u)) u du
    exact = math.sqrt((1 - a_s) / (1 - a_t)) * math.exp(h - k * h) * x + math.sqrt(a_s) * (
        (b + c * lam[2]) * integral_1 + c * integral_u
    )
    assert torch.allclose(mean, exact, atol=1e-12)


def test_cycle_noise_lands_exactly_on_the_recorded_point():
    a_s, a_t = float(SCHEDULE.alpha_bar(401)), float(SCHEDULE.alpha_bar(421))
    x_s = fake_eps(3)
    x_t = forward_step(x_s, a_s, a_t, fake_eps(4))
    mean, sigma = eta_step(x_t, fake_eps(5), a_t, a_s, 1.0)  # any model prediction at the recorded x_t
    assert torch.allclose(mean + sigma * cycle_noise(x_s, mean, sigma), x_s, atol=1e-12)
    assert not torch.allclose(mean + sigma * fake_eps(6), x_s, atol=1e-2)
    assert torch.equal(cycle_noise(x_s, mean, 0.0), torch.zeros_like(x_s))


def test_forward_step_matches_the_marginal_statistics():
    a_s, a_t = float(SCHEDULE.alpha_bar(101)), float(SCHEDULE.alpha_bar(601))
    x_s = torch.full((200_000, 1), 2.0, dtype=torch.float64)
    x_t = forward_step(x_s, a_s, a_t, torch.randn(x_s.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    assert abs(x_t.mean().item() - 2.0 * math.sqrt(a_t / a_s)) < 0.01
    assert abs(x_t.var().item() - (1 - a_t / a_s)) < 0.01


def test_eta_zero_is_deterministic_and_eta_one_has_ddpm_variance():
    a_t, a_s = float(SCHEDULE.alpha_bar(501)), float(SCHEDULE.alpha_bar(481))
    _, sigma0 = eta_step(fake_eps(0), fake_eps(1), a_t, a_s, 0.0)
    assert sigma0 == 0.0
    beta_tilde = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    assert math.isclose(eta_sigma(a_t, a_s, 1.0) ** 2, beta_tilde, rel_tol=1e-12)
