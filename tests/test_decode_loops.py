"""engine.decode's whole loop against diffusers' schedulers, fed the same model and the same noises.

The model is an exact Gaussian-mixture eps (analytic, float64). sdedrag's grid is DDIMScheduler's
("leading" spacing, T // n apart with steps_offset 1, ending at training timestep 0 with alpha-bar
alphas_cumprod[0]). DPMSolverMultistepScheduler would space the same config differently (its default
"linspace", or "leading" at T // (n + 1)) and end at sigma 0 by default, so it is handed the grid's
timesteps and final_sigmas_type="sigma_min", whose last point is that same alpha-bar. decode draws one
noise per stochastic step from its generator; the schedulers get the same draws as ``variance_noise``.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from sdedrag.engine import Trajectory, decode
from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG
from sdedrag.models.gaussian_mixture import GaussianMixture

MODEL = GaussianMixture([0.3, 0.7], [[1.5, -0.5, 0.2, 1.0], [-1.0, 0.8, -0.3, 0.0]], [0.3, 0.5])
SHAPE = (64, 4)
STEP_COUNTS = [10, 25]  # below and above DPMSolverMultistepScheduler's lower_order_final threshold (15)


def x_start() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def noises(seed: int, count: int) -> list[torch.Tensor]:
    """The draws decode makes from ``torch.Generator().manual_seed(seed)``, in order."""
    generator = torch.Generator().manual_seed(seed)
    return [randn_tensor(SHAPE, generator=generator, dtype=torch.float64) for _ in range(count)]


def ours(steps: int, process: str, order: int) -> torch.Tensor:
    grid = MODEL.schedule.grid(steps)
    x = x_start()
    trajectory = Trajectory(process, grid, [x])
    return decode(MODEL, x, trajectory, process, order=order, generator=torch.Generator().manual_seed(1))


def run(scheduler, timesteps: torch.Tensor, **step_kwargs) -> torch.Tensor:
    x, feed = x_start(), noises(1, len(timesteps))
    for t, noise in zip(timesteps, feed):
        x = scheduler.step(MODEL.predict_eps(x, int(t)), t, x, variance_noise=noise, **step_kwargs).prev_sample
    return x


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_order_1_decode_is_ddim_scheduler(steps, eta):
    scheduler = DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # the same float64 table as the grid
    scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    assert torch.equal(MODEL.schedule.grid(steps).timesteps[:-1], scheduler.timesteps)
    expected = run(scheduler, scheduler.timesteps, eta=eta)
    assert relative_error(ours(steps, "sde" if eta else "ode", 1), expected) < 1e-12


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_decode_is_dpm_solver_multistep_scheduler(steps, order, algorithm):
    grid = MODEL.schedule.grid(steps)
    scheduler = DPMSolverMultistepScheduler.from_config(
        SD_SCHEDULER_CONFIG, algorithm_type=algorithm, solver_order=order, final_sigmas_type="sigma_min"
    )
    scheduler.set_timesteps(timesteps=grid.timesteps[:-1].tolist())
    assert torch.allclose(scheduler.sigmas.double(), ((1 - grid.alpha_bars) / grid.alpha_bars).sqrt(), rtol=1e-6)
    scheduler.sigmas = ((1 - grid.alpha_bars) / grid.alpha_bars).sqrt()  # float64 (diffusers rounds to float32)
    expected = run(scheduler, scheduler.timesteps)
    # DPMSolverMultistepScheduler.step computes in float32: agreement is at float32 level.
    assert relative_error(ours(steps, "sde" if algorithm.startswith("sde") else "ode", order), expected) < 1e-6
