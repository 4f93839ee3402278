"""Deep-feature reuse (DeepCache) on both diffusers UNets: what a reuse call skips and returns, its schedule,
its cost, and Cycle-SDE reconstruction when the edited and recorded latents share each reuse decision."""

from __future__ import annotations

import pytest
import torch

from sdedrag.engine import decode, encode
from sdedrag.errors import InputError
from sdedrag.models import load_model
from sdedrag.models.feature_reuse import call_equivalents, deep_modules, feature_reuse, reuse_calls_in_run
from sdedrag.settings import DragParams
from sdedrag.tasks.common import image_to_latent
from sdedrag.tasks.drag import DragRequest, drag
from tests.conftest import smooth_image


@pytest.fixture(scope="module")
def shapes():
    return load_model("shapes", "cpu", "float32")


@pytest.fixture(params=["tiny", "shapes"])
def model(request, tiny32, shapes):
    return tiny32 if request.param == "tiny" else shapes


def latents(model, seed: int, batch: int = 2) -> torch.Tensor:
    size = 32 if model.latent_scale == 1 else 64
    return torch.randn(batch, *model.latent_shape(size, size), generator=torch.Generator().manual_seed(seed))


def eps(model, x: torch.Tensor, t: int = 400) -> torch.Tensor:
    return model.predict_eps(x, t, model.condition("a lake"), guidance=2.0)


def calls_counter(module: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    count = [0]

    def hook(*_):
        count[0] += 1

    return count, module.register_forward_hook(hook)


def test_a_reuse_call_on_the_full_calls_input_repeats_it_exactly_and_otherwise_differs(model):
    x, y = latents(model, 0), latents(model, 1)
    full_x, full_y = eps(model, x), eps(model, y)
    with feature_reuse(model, 2) as schedule:
        assert torch.equal(eps(model, x), full_x)  # full
        assert torch.equal(eps(model, x), full_x)  # reuse: the deep features are those of this very input
        assert torch.equal(eps(model, y), full_y)  # full
        reused = eps(model, x)  # reuse: deep features of y, shallow ones of x
    assert schedule.calls == 4 and schedule.full_calls == 2
    assert not torch.allclose(reused, full_x, atol=1e-3)


def test_a_reuse_call_skips_the_deep_levels_and_runs_the_shallow_ones(model):
    unet = model.unet
    deep, deep_handle = calls_counter(unet.mid_block.resnets[0])
    shallow, shallow_handle = calls_counter(unet.up_blocks[-1].resnets[0])
    x = latents(model, 0)
    try:
        with feature_reuse(model, 3):
            for _ in range(6):
                eps(model, x)
    finally:
        deep_handle.remove()
        shallow_handle.remove()
    assert deep[0] == 2 and shallow[0] == 6


def test_hooks_leave_with_the_context_and_interval_one_changes_nothing(model):
    x, y = latents(model, 0), latents(model, 1)
    full_y = eps(model, y)
    with feature_reuse(model, 1) as schedule:
        eps(model, x)
        assert torch.equal(eps(model, y), full_y)
    assert schedule.calls == 0
    with feature_reuse(model, 5):
        eps(model, x)
    assert torch.equal(eps(model, y), full_y)
    assert all(not getattr(m, "_diffusers_hook", None) or not m._diffusers_hook.hooks for m in model.unet.modules())


def test_schedule_restarts_every_period_after_a_reset_and_on_a_new_input_shape(tiny32):
    small, large = latents(tiny32, 0, batch=1), latents(tiny32, 0, batch=2)
    decisions = []
    with feature_reuse(tiny32, 3, period=4) as schedule:
        for x in [small] * 8:
            eps(tiny32, x)
            decisions.append(schedule.reuse)
        eps(tiny32, large)  # position 0 of the third period: full anyway
        eps(tiny32, small)  # a reuse position, but the shape changed since the last call: full
        decisions += [schedule.reuse]
        schedule.reset()
        eps(tiny32, small)  # a reuse position, but after a reset: full
        decisions += [schedule.reuse]
    assert decisions == [False, True, True, False] * 2 + [False, False]


def test_reuse_cost_is_the_measured_flop_fraction_and_counts_in_call_equivalents(model):
    with feature_reuse(model, 4) as schedule:
        for _ in range(8):
            eps(model, latents(model, 0))
    assert 0.1 < schedule.reuse_cost < 0.5
    assert schedule.equivalents() == pytest.approx(2 + 6 * schedule.reuse_cost)
    assert call_equivalents(2, 6, 0.25) == 3.5
    assert [reuse_calls_in_run(n, 3) for n in (1, 3, 4, 9, 10)] == [0, 2, 2, 6, 6]


def reconstruction_error(model, predictor, interval: int) -> float:
    """||x0_rec - x0|| / ||x0|| of an unedited Cycle-SDE encode/decode with deep features reused."""
    x0 = image_to_latent(model, smooth_image(32, 32) if model.latent_scale == 1 else smooth_image(64, 64))
    grid = model.schedule.grid(50, 0.6)
    cond = model.condition("a lake")
    generator = torch.Generator().manual_seed(0)
    path = encode(model, x0, grid, "cycle-sde", cond, generator=generator)
    with feature_reuse(model, interval, period=grid.num_steps):
        x = decode(predictor, path.x_t0, path, "cycle-sde", cond, guidance=2.0, generator=generator)
    return float((x - x0).norm() / x0.norm())


class SplitCalls:
    """The model, but evaluating the edited and the recorded half of each batch in two UNet calls."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict_eps(self, x, t, cond=None, guidance=1.0, lora_scale=1.0):
        return torch.cat([self.model.predict_eps(half, t, cond, guidance, lora_scale) for half in x.chunk(2)])

    def stack_conditions(self, parts):
        return parts[0][0]  # both halves have the same prompt: each call takes it as it is


def test_cycle_sde_reconstructs_to_float32_round_off_with_shared_reuse_decisions(model):
    plain = reconstruction_error(model, model, 1)
    reused = reconstruction_error(model, model, 3)
    assert reused <= max(4 * plain, 1e-5)
    # The same schedule with the two halves in separate calls: at some steps one half reuses deep features and
    # the other does not, so the recovered noise no longer matches and the reconstruction drifts.
    assert reconstruction_error(model, SplitCalls(model), 3) > 100 * max(reused, 1e-7)


def test_refusals(tiny32, shapes):
    with pytest.raises(InputError, match="interval"):
        with feature_reuse(tiny32, 0):
            pass
    with pytest.raises(InputError, match="depth"):
        deep_modules(shapes.unet, len(shapes.unet.down_blocks))
    with pytest.raises(InputError, match="UNet"):
        with feature_reuse(torch.nn.Linear(1, 1), 2):
            pass
    with feature_reuse(tiny32, 2):
        with pytest.raises(InputError, match="already active"):
            with feature_reuse(tiny32, 2):
                pass


def test_a_drag_with_reuse_counts_its_calls_and_their_cost(tiny32):
    image = smooth_image(64, 64)
    results = {}
    for reuse in (1, 3):
        params = DragParams(steps=20, reuse=reuse, paste_back=False)
        results[reuse] = drag(tiny32, DragRequest(image, [(20, 30)], [(36, 30)], None, "a lake", params))
    plain, reused = results[1], results[3]
    calls = 12 * plain.moves  # round(0.6 * 20) decoding steps per move
    assert plain.unet_calls == reused.unet_calls == calls and plain.call_equivalents == calls
    assert 4 * plain.moves < reused.call_equivalents < 0.6 * calls  # 4 full calls per move, 8 at a fraction
    assert not torch.equal(plain.latent, reused.latent)
