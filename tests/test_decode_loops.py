"""engine.decode's whole loop against diffusers' schedulers, fed the same model and the same noises.

The model is an exact Gaussian-mixture eps (analytic, float64). Two grids: sdedrag's default "ddim" grid
is DDIMScheduler's ("leading" spacing, T // n apart with steps_offset 1, ending at training timestep 0
with alpha-bar alphas_cumprod[0]); the "dpm-solver" grid is DPMSolverMultistepScheduler's own spacing
(T // (n + 1) apart) ending at sigma_min (final_sigmas_type "sigma_min", as diffusers 0.21 did) or at
sigma 0 ("zero", its default today, with a first-order last step). decode draws one noise per stochastic
step from its generator; the schedulers get the same draws as ``variance_noise``.

diffusers' SDE-DPM-Solver++(3M) has a wrong D2 coefficient, -alpha_t (phi_3 + 1) where the solver's
(k-diffusion's dpmpp_3m_sde, and diffusers' own ODE-3M) is -alpha_t phi_3; sdedrag uses the correct one,
so its loops are compared with :class:`CorrectedSDE3M`, and ``test_diffusers_sde_3m_is_still_wrong``
records the difference so we notice when diffusers fixes it.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from sdedrag.engine import Trajectory, decode
from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG, Grid
from sdedrag.models.gaussian_mixture import GaussianMixture

MODEL = GaussianMixture([0.3, 0.7], [[1.5, -0.5, 0.2, 1.0], [-1.0, 0.8, -0.3, 0.0]], [0.3, 0.5])
SHAPE = (64, 4)
STEP_COUNTS = [10, 25, 50]  # below and above DPMSolverMultistepScheduler's lower_order_final threshold (15)
ALGORITHMS = ["dpmsolver++", "sde-dpmsolver++"]


class CorrectedSDE3M(DPMSolverMultistepScheduler):
    """DPMSolverMultistepScheduler whose SDE-3M step takes the D2 coefficient -alpha_t phi_3 (diffusers: -alpha_t (phi_3 + 1))."""

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        x = super().multistep_dpm_solver_third_order_update(model_output_list, *args, sample=sample, noise=noise, **kwargs)
        if self.config.algorithm_type != "sde-dpmsolver++":
            return x
        points = [self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index + k]) for k in (1, 0, -1, -2)]
        lam_t, lam_0, lam_1, lam_2 = [torch.log(alpha) - torch.log(sigma) for alpha, sigma in points]
        h = lam_t - lam_0
        r0, r1 = (lam_0 - lam_1) / h, (lam_1 - lam_2) / h
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d2 = ((m0 - m1) / r0 - (m1 - m2) / r1) / (r0 + r1)
        return x + points[0][0] * d2


def x_start(shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def noises(seed: int, count: int, shape=SHAPE) -> list[torch.Tensor]:
    """The draws decode makes from ``torch.Generator().manual_seed(seed)``, in order."""
    generator = torch.Generator().manual_seed(seed)
    return [randn_tensor(shape, generator=generator, dtype=torch.float64) for _ in range(count)]


def ours(grid: Grid, process: str, order: int, model=MODEL, shape=SHAPE) -> torch.Tensor:
    x = x_start(shape)
    trajectory = Trajectory(process, grid, [x])
    return decode(model, x, trajectory, process, order=order, generator=torch.Generator().manual_seed(1))


def run(scheduler, timesteps: torch.Tensor, model=MODEL, shape=SHAPE, **step_kwargs) -> torch.Tensor:
    x, feed = x_start(shape), noises(1, len(timesteps), shape)
    for t, noise in zip(timesteps, feed):
        x = scheduler.step(model.predict_eps(x, int(t)), t, x, variance_noise=noise, **step_kwargs).prev_sample
    return x


def dpm_solver(algorithm: str, order: int, final_sigmas_type: str) -> DPMSolverMultistepScheduler:
    return CorrectedSDE3M.from_config(
        SD_SCHEDULER_CONFIG, algorithm_type=algorithm, solver_order=order, final_sigmas_type=final_sigmas_type
    )


def use_float64_sigmas(scheduler: DPMSolverMultistepScheduler, grid: Grid) -> None:
    """Hand the scheduler the grid's noise levels in float64 (diffusers rounds them to float32)."""
    sigmas = ((1 - grid.alpha_bars) / grid.alpha_bars).sqrt()
    assert torch.allclose(scheduler.sigmas.double(), sigmas, rtol=1e-6)
    scheduler.sigmas = sigmas


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_order_1_decode_is_ddim_scheduler(steps, eta):
    scheduler = DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # the same float64 table as the grid
    scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    grid = MODEL.schedule.grid(steps)
    assert torch.equal(grid.timesteps[:-1], scheduler.timesteps)
    expected = run(scheduler, scheduler.timesteps, eta=eta)
    assert relative_error(ours(grid, "sde" if eta else "ode", 1), expected) < 1e-12


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_decode_on_the_ddim_grid_is_dpm_solver_multistep_scheduler(steps, order, algorithm):
    grid = MODEL.schedule.grid(steps)
    scheduler = dpm_solver(algorithm, order, "sigma_min")
    scheduler.set_timesteps(timesteps=grid.timesteps[:-1].tolist())
    use_float64_sigmas(scheduler, grid)
    expected = run(scheduler, scheduler.timesteps)
    # DPMSolverMultistepScheduler.step computes in float32: agreement is at float32 level.
    assert relative_error(ours(grid, "sde" if algorithm.startswith("sde") else "ode", order), expected) < 1e-6


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("final", ["sigma-min", "zero"])
def test_decode_on_the_dpm_solver_grid_is_dpm_solver_multistep_scheduler(steps, order, algorithm, final):
    """The scheduler's own timesteps and final step, as StableDiffusionInpaintPipeline runs it."""
    grid = MODEL.schedule.grid(steps, spacing="dpm-solver", final_sigma=final)
    scheduler = dpm_solver(algorithm, order, final.replace("-", "_"))
    scheduler.set_timesteps(steps)
    assert torch.equal(grid.timesteps[:-1], scheduler.timesteps) and grid.ends_at_zero_noise == (final == "zero")
    use_float64_sigmas(scheduler, grid)
    expected = run(scheduler, scheduler.timesteps)
    assert relative_error(ours(grid, "sde" if algorithm.startswith("sde") else "ode", order), expected) < 1e-6


def test_dpm_solver_grid_is_diffusers_leading_spacing_for_sd():
    grid = MODEL.schedule.grid(50, spacing="dpm-solver")
    assert grid.timesteps[:3].tolist() == [951, 932, 913] and grid.timesteps[-2:].tolist() == [20, 0]
    assert float(grid.alpha_bars[-1]) == float(MODEL.schedule.alphas_cumprod[0])
    partial = MODEL.schedule.grid(50, 0.5, spacing="dpm-solver", final_sigma="zero")
    assert partial.num_steps == 25 and torch.equal(partial.timesteps, grid.timesteps[25:])
    assert float(partial.alpha_bars[-1]) == 1.0


def test_diffusers_sde_3m_is_still_wrong():
    """diffusers' own SDE-3M spreads a 1-D mixture's modes (std 0.3) fourfold; ours keeps them as ODE-3M does.

    At 50 steps with DPMSolverMultistepScheduler's defaults (final sigma 0): left-mode std 0.28 for ours
    and for ODE-3M, 1.13 for diffusers' SDE-3M.
    """
    model = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [0.3, 0.3])
    shape = (4000, 1)
    grid = model.schedule.grid(50, spacing="dpm-solver", final_sigma="zero")
    plain = DPMSolverMultistepScheduler.from_config(SD_SCHEDULER_CONFIG, algorithm_type="sde-dpmsolver++", solver_order=3)
    plain.set_timesteps(50)
    left_std = lambda x: float(x[x < 0].std())  # noqa: E731
    mine, ode = left_std(ours(grid, "sde", 3, model, shape)), left_std(ours(grid, "ode", 3, model, shape))
    assert abs(mine - ode) < 0.02 and abs(mine - 0.3) < 0.05
    assert left_std(run(plain, plain.timesteps, model, shape)) > 3 * mine, "diffusers' SDE-3M looks fixed: drop CorrectedSDE3M"
