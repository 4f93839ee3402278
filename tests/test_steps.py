"""The paper's equations against diffusers' schedulers and against their own identities."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from sdedrag.engine import NoiseSchedule
from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG
from sdedrag.engine.steps import (
    cycle_noise,
    dpmpp_2m_mean,
    eta_sigma,
    eta_step,
    eta_step_mean,
    forward_step,
    predict_x0,
)

SCHEDULE = NoiseSchedule(SD_SCHEDULER_CONFIG)


def fake_eps(step: int, shape=(2, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1000 + step), dtype=torch.float64)


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
def test_eta_step_matches_ddim_scheduler(eta):
    scheduler = DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(50)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # same inputs: diffusers keeps float32 tables
    scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    grid = SCHEDULE.grid(50)
    assert torch.equal(grid.timesteps[:-1], scheduler.timesteps)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for i in range(grid.num_steps):
        t, a_t, a_s = grid.interval(i)
        eps, noise = fake_eps(i), fake_eps(500 + i)
        expected = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        ours = eta_step(x, eps, a_t, a_s, eta, noise)
        assert torch.allclose(ours, expected, atol=1e-6, rtol=0), (i, (ours - expected).abs().max())
        x = expected


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
@pytest.mark.parametrize("steps", [10, 20])
def test_dpmpp_2m_matches_dpm_solver_multistep(algorithm, steps):
    grid = SCHEDULE.grid(steps)
    scheduler = DPMSolverMultistepScheduler.from_config(
        SD_SCHEDULER_CONFIG, algorithm_type=algorithm, solver_order=2, final_sigmas_type="sigma_min"
    )
    scheduler.set_timesteps(timesteps=grid.timesteps[:-1].tolist())
    scheduler.sigmas = ((1 - grid.alphas) / grid.alphas).sqrt()  # same inputs: diffusers rounds sigmas to float32
    stochastic = algorithm.startswith("sde")
    x_ref = x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    history = None
    for i in range(grid.num_steps):
        t, a_t, a_s = grid.interval(i)
        eps, noise = fake_eps(i), fake_eps(500 + i)
        x_ref = scheduler.step(eps, t, x_ref, variance_noise=noise).prev_sample
        x0 = predict_x0(x, eps, a_t)
        final_first_order = i == grid.num_steps - 1 and grid.num_steps < 15
        x0_prev, a_prev = (None, None) if history is None or final_first_order else history
        mean, std = dpmpp_2m_mean(x, x0, x0_prev, a_t, a_s, a_prev, stochastic)
        x = mean + std * noise
        history = (x0, a_t)
        # DPMSolverMultistepScheduler.step casts the sample to float32, so agreement is relative, at float32 level.
        relative = (torch.linalg.vector_norm(x - x_ref) / torch.linalg.vector_norm(x_ref)).item()
        assert relative < 1e-6, (i, relative)


def test_first_order_sde_dpm_solver_is_the_ddpm_step():
    x, eps, noise = fake_eps(0), fake_eps(1), fake_eps(2)
    a_t, a_s = float(SCHEDULE.alpha(801)), float(SCHEDULE.alpha(781))
    mean, std = dpmpp_2m_mean(x, predict_x0(x, eps, a_t), None, a_t, a_s, None, stochastic=True)
    assert math.isclose(std, eta_sigma(a_t, a_s, 1.0), rel_tol=1e-12)
    assert torch.allclose(mean + std * noise, eta_step(x, eps, a_t, a_s, 1.0, noise), atol=1e-12)


def test_cycle_noise_lands_exactly_on_the_recorded_point():
    a_s, a_t = float(SCHEDULE.alpha(401)), float(SCHEDULE.alpha(421))
    x_s = fake_eps(3)
    x_t = forward_step(x_s, a_s, a_t, fake_eps(4))
    eps = fake_eps(5)  # any model prediction at the recorded x_t
    w = cycle_noise(x_t, x_s, eps, a_t, a_s)
    assert torch.allclose(eta_step(x_t, eps, a_t, a_s, 1.0, w), x_s, atol=1e-12)
    assert not torch.allclose(eta_step(x_t, eps, a_t, a_s, 1.0, fake_eps(6)), x_s, atol=1e-2)


def test_forward_step_matches_the_marginal_statistics():
    a_s, a_t = float(SCHEDULE.alpha(101)), float(SCHEDULE.alpha(601))
    x_s = torch.full((200_000, 1), 2.0, dtype=torch.float64)
    x_t = forward_step(x_s, a_s, a_t, torch.randn(x_s.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    assert abs(x_t.mean().item() - 2.0 * math.sqrt(a_t / a_s)) < 0.01
    assert abs(x_t.var().item() - (1 - a_t / a_s)) < 0.01


def test_eta_zero_is_deterministic_and_eta_one_has_ddpm_variance():
    a_t, a_s = float(SCHEDULE.alpha(501)), float(SCHEDULE.alpha(481))
    _, sigma0 = eta_step_mean(fake_eps(0), fake_eps(1), a_t, a_s, 0.0)
    assert sigma0 == 0.0
    beta_tilde = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    assert math.isclose(eta_sigma(a_t, a_s, 1.0) ** 2, beta_tilde, rel_tol=1e-12)
