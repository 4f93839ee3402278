"""encode -> decode on real (tiny) diffusers models: Cycle-SDE reconstructs, SDE does not, masks hold."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import sdedrag.engine
from sdedrag.engine import EpsModel, Trajectory, cosine_ramp, decode, encode, linear_ramp, noised_trajectory
from sdedrag.errors import InputError
from sdedrag.models.gaussian_mixture import GaussianMixture
from sdedrag.tasks.common import image_to_latent
from tests.conftest import smooth_image


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def round_trip(model, process: str, steps: int, t0: float, order: int = 1, prompt: str | None = None,
               guidance: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, its encode -> decode reconstruction)."""
    x0 = image_to_latent(model, smooth_image(96, 72))
    cond = model.condition(prompt)
    trajectory = encode(model, x0, model.schedule.grid(steps, t0), process, cond, generator=seeded(seed))
    return x0, decode(model, trajectory.x_t0, trajectory, process, cond, order=order, guidance=guidance,
                      generator=seeded(seed + 1))


class RecordingModel:
    """An EpsModel that records every latent it is asked about (the engine takes any implementation)."""

    def __init__(self, model: EpsModel):
        self.model, self.inputs = model, []

    def predict_eps(self, x, t, cond=None, guidance=1.0, lora_scale=1.0):
        self.inputs.append(x.clone())
        return self.model.predict_eps(x, t, cond, guidance, lora_scale)

    def stack_conditions(self, parts):
        return self.model.stack_conditions(parts)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_cycle_sde_reconstructs_exactly_in_float64(tiny64, order):
    x0, rec = round_trip(tiny64, "cycle-sde", 50, 1.0, order)
    assert relative_error(rec, x0) <= 1e-8


def test_cycle_sde_reconstructs_in_float32(tiny32):
    x0, rec = round_trip(tiny32, "cycle-sde", 50, 1.0)
    assert relative_error(rec, x0) <= 1e-3


@pytest.mark.parametrize("order", [2, 3])
def test_cycle_sde_reconstructs_with_guidance_prompt_and_partial_t0(tiny64, order):
    x0, rec = round_trip(tiny64, "cycle-sde", 40, 0.6, order, prompt="a cat", guidance=3.0)
    assert relative_error(rec, x0) <= 1e-8


@pytest.mark.parametrize("order", [1, 2, 3])
def test_plain_sde_with_fresh_noise_does_not_reconstruct(tiny64, order):
    x0, rec = round_trip(tiny64, "sde", 50, 1.0, order)
    assert relative_error(rec, x0) > 0.1


def test_masked_decode_follows_the_recorded_trajectory_outside_the_mask(tiny64):
    x0 = image_to_latent(tiny64, smooth_image(64, 64))
    trajectory = encode(tiny64, x0, tiny64.schedule.grid(20, 0.6), "sde", generator=seeded(0))
    mask = torch.zeros_like(x0[:, :1])
    mask[..., 2:5, 2:6] = 1.0
    edited = trajectory.x_t0 + 0.5 * torch.randn(x0.shape, generator=seeded(1), dtype=x0.dtype)
    for process in ("sde", "cycle-sde", "ode"):
        out = decode(tiny64, edited, trajectory, process, mask=mask, generator=seeded(2))
        outside = mask.expand_as(out) == 0
        assert torch.equal(out[outside], x0[outside]), process
        assert not torch.allclose(out[~outside], x0[~outside]), process


def test_noised_trajectory_is_x0_noised_with_one_fixed_noise(tiny64):
    x0 = image_to_latent(tiny64, smooth_image(64, 64))
    grid, noise = tiny64.schedule.grid(20, 0.6), torch.randn(x0.shape, generator=seeded(3), dtype=x0.dtype)
    trajectory = noised_trajectory(x0, grid, noise)
    assert len(trajectory.latents) == grid.num_steps + 1 and trajectory.x0 is x0
    for latent, a in zip(trajectory.latents[:-1], grid.alpha_bars[:-1].tolist()):
        assert torch.allclose(latent, math.sqrt(a) * x0 + math.sqrt(1 - a) * noise, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("process", ["sde", "ode"])
def test_masked_decode_follows_the_noised_trajectory_at_every_step(tiny64, process, order):
    x0 = image_to_latent(tiny64, smooth_image(64, 64))
    grid = tiny64.schedule.grid(20, 0.6)
    trajectory = noised_trajectory(x0, grid, torch.randn(x0.shape, generator=seeded(3), dtype=x0.dtype))
    mask = torch.zeros_like(x0[:, :1])
    mask[..., 2:5, 2:6] = 1.0
    start = torch.randn(x0.shape, generator=seeded(4), dtype=x0.dtype)
    model = RecordingModel(tiny64)
    out = decode(model, start, trajectory, process, order=order, mask=mask, generator=seeded(5))
    outside = mask.expand_as(x0) == 0
    seen = [*model.inputs, out]
    assert len(seen) == grid.num_steps + 1
    for i in range(1, len(seen)):
        assert torch.equal(seen[i][outside], trajectory.latents[i][outside]), i
    assert not torch.allclose(out[~outside], x0[~outside])


def test_recorded_noise_differs_from_fresh_noise_only_through_the_solver(tiny64):
    """With the same seed, sde and cycle-sde encodings are identical: only decoding differs."""
    x0 = image_to_latent(tiny64, smooth_image(64, 64))
    grid = tiny64.schedule.grid(10)
    a = encode(tiny64, x0, grid, "sde", generator=seeded(3))
    b = encode(tiny64, x0, grid, "cycle-sde", generator=seeded(3))
    assert all(torch.equal(p, q) for p, q in zip(a.latents, b.latents))


def test_ode_inversion_is_deterministic_and_records_every_step(tiny64):
    x0 = image_to_latent(tiny64, smooth_image(64, 64))
    grid = tiny64.schedule.grid(10)
    a = encode(tiny64, x0, grid, "ode")
    b = encode(tiny64, x0, grid, "ode")
    assert len(a.latents) == grid.num_steps + 1 and torch.equal(a.x_t0, b.x_t0) and torch.equal(a.x0, x0)


def test_same_seed_reproduces_and_another_seed_does_not(tiny32):
    _, first = round_trip(tiny32, "sde", 10, 0.5, seed=7)
    _, again = round_trip(tiny32, "sde", 10, 0.5, seed=7)
    _, other = round_trip(tiny32, "sde", 10, 0.5, seed=8)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_decode_refuses_an_unknown_order_or_process(tiny64):
    x = torch.zeros(1, 4, 8, 8, dtype=torch.float64)
    trajectory = Trajectory("sde", tiny64.schedule.grid(4), [x])
    with pytest.raises(InputError, match="order"):
        decode(tiny64, x, trajectory, "sde", order=4)
    with pytest.raises(InputError, match="process"):
        decode(tiny64, x, trajectory, "langevin")


def test_models_implement_the_engine_protocol_and_the_engine_never_imports_them(tiny64):
    assert isinstance(tiny64, EpsModel) and isinstance(GaussianMixture([1.0], [[0.0]], [1.0]), EpsModel)
    imported = set()
    for source in Path(sdedrag.engine.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "sdedrag.engine.schedule" in imported
    assert not [name for name in imported if name.startswith("sdedrag.models")]


def test_grid_for_the_paper_setting(tiny64):
    grid = tiny64.schedule.grid(200, 0.6)
    assert grid.num_steps == 120 and int(grid.timesteps[-1]) == 0
    assert 590 <= int(grid.timesteps[0]) <= 610
    assert torch.all(grid.alpha_bars[1:] > grid.alpha_bars[:-1])


@pytest.mark.parametrize("steps", [1000, 999, 750])
def test_grids_with_more_steps_than_half_of_t_stay_in_range(tiny64, steps):
    grid = tiny64.schedule.grid(steps)
    assert int(grid.timesteps[0]) <= 999 and int(grid.timesteps[-1]) == 0
    assert torch.all(grid.timesteps[1:] < grid.timesteps[:-1])


@pytest.mark.parametrize("steps, t0", [(0, 0.5), (10, 0.0), (10, 1.5)])
def test_grid_rejects_impossible_parameters(tiny64, steps, t0):
    with pytest.raises(InputError):
        tiny64.schedule.grid(steps, t0)


@pytest.mark.parametrize("options", [{"spacing": "karras"}, {"final_sigma": "one"}])
def test_grid_rejects_unknown_spacings_and_final_sigmas(tiny64, options):
    with pytest.raises(InputError):
        tiny64.schedule.grid(10, **options)


def test_ramps_run_from_t0_to_the_data_level(tiny64):
    grid = tiny64.schedule.grid(200, 0.6)
    guidance, lora = linear_ramp(grid, 1.0, 3.0), cosine_ramp(grid, 1.0, 0.5)
    assert len(guidance) == grid.num_steps
    assert guidance[0] == pytest.approx(3.0) and guidance[-1] == pytest.approx(1.0, abs=0.02)
    assert lora[0] == pytest.approx(0.5) and lora[-1] == pytest.approx(1.0, abs=1e-3)
    assert all(a >= b for a, b in zip(guidance, guidance[1:])) and all(a <= b for a, b in zip(lora, lora[1:]))
