"""SDE-Drag / ODE-Drag: geometry units, the zero-drag identities, masks, paste-back and the control ramps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdedrag.engine import decode, encode
from sdedrag.errors import InputError
from sdedrag.tasks.common import image_to_latent, paste_weights
from sdedrag.settings import DragParams
from sdedrag.tasks.drag import (
    DragRequest,
    copy_and_paste,
    drag,
    latent_mask,
    move_count,
    patch_bounds,
    to_latent_points,
    validate_points,
)
from tests.conftest import smooth_image

FAST = dict(steps=20, t0=0.6)


def relative_error(a, b) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize(
    "distance, step_size, expected", [(0.0, 2.0, 1), (2.0, 2.0, 1), (3.0, 2.0, 2), (10.0, 2.0, 5), (10.9, 2.0, 5), (11.0, 2.0, 6)]
)
def test_move_count_makes_moves_closest_to_the_step_size(distance, step_size, expected):
    sources = np.array([[10.0, 10.0], [5.0, 5.0]])
    targets = sources + np.array([[distance, 0.0], [0.0, distance / 2]])
    assert move_count(sources, targets, step_size) == expected


def test_patch_bounds_clip_at_borders_for_both_points():
    assert patch_bounds((10, 10), (20, 12), 5, 64, 64) == (5, 5, 5, 5)
    assert patch_bounds((1, 10), (20, 62), 5, 64, 64) == (1, 5, 5, 2)  # left by source x, down by target y
    left, right, up, down = patch_bounds((0, 0), (63, 63), 5, 64, 64)
    assert (left, right, up, down) == (0, 1, 0, 1)


def test_copy_and_paste_moves_the_patch_and_refreshes_the_source():
    x = torch.arange(2 * 16 * 16, dtype=torch.float64).reshape(1, 2, 16, 16)
    out = copy_and_paste(x, np.array([[4, 4]]), np.array([[10, 9]]), 2, 1.1, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(out[..., 7:11, 8:12], 1.1 * x[..., 2:6, 2:6])
    refreshed = out[..., 2:6, 2:6]
    assert not torch.allclose(refreshed, x[..., 2:6, 2:6]) and torch.equal(out[..., 12:, :], x[..., 12:, :])
    residual = (refreshed - 0.3 * x[..., 2:6, 2:6]) / (1 - 0.3**2) ** 0.5
    assert residual.abs().max() < 5  # a unit Gaussian, not the old content
    same = copy_and_paste(x, np.array([[4, 4]]), np.array([[4, 4]]), 2, 1.1, 0.3, None)
    assert torch.equal(same, x)


def test_points_and_masks_map_consistently_for_non_square_images(tiny32):
    # A 512x288 DragBench-like image has a 64x36 latent; a point at pixel (x, y) lands in cell (x // 8, y // 8).
    points = np.array([[0.0, 0.0], [511.0, 287.0], [100.0, 50.0]])
    assert to_latent_points(points, (512, 288), (36, 64)).tolist() == [[0, 0], [63, 35], [12, 6]]
    # A 130x100 image is fitted to 128x104 (multiples of 8): a 16x13 latent, scaled per axis.
    assert to_latent_points(np.array([[129.0, 99.0], [65.0, 50.0]]), (130, 100), (13, 16)).tolist() == [[15, 12], [8, 6]]
    mask = np.zeros((288, 512), bool)
    mask[96:104, 200:216] = True  # exactly latent row 12, columns 25 and 26
    region = latent_mask(mask, (36, 64), tiny32)
    cells = torch.nonzero(region[0, 0]).tolist()
    assert cells == [[12, 25], [12, 26]]
    assert latent_mask(np.zeros((288, 512), bool), (36, 64), tiny32) is None
    assert latent_mask(np.ones((288, 512), bool), (36, 64), tiny32) is None


@pytest.mark.parametrize(
    "sources, targets, message",
    [
        ([], [], "at least one"),
        ([(1, 1), (2, 2)], [(3, 3)], "paired"),
        ([(130, 5)], [(3, 3)], "outside"),
        ([(5, 5)], [(3, -1)], "outside"),
    ],
)
def test_bad_points_are_refused(sources, targets, message):
    with pytest.raises(InputError, match=message):
        validate_points(sources, targets, (128, 96))


def test_bad_parameters_are_refused():
    for bad in (dict(t0=0.0), dict(beta=1.5), dict(radius=0), dict(method="gan"), dict(guidance=0.5), dict(order=4)):
        with pytest.raises(InputError):
            DragParams(**bad)


def test_zero_displacement_sde_drag_returns_the_input_latent(tiny64):
    image = smooth_image(128, 96)
    mask = np.zeros((96, 128), bool)
    mask[20:80, 20:110] = True
    points = [(40, 50), (70, 30)]
    result = drag(tiny64, DragRequest(image, points, points, mask, "a photo", DragParams(**FAST, paste_back=False)))
    assert result.moves == 1
    assert relative_error(result.latent, image_to_latent(tiny64, image)) < 1e-10


def test_zero_displacement_ode_drag_is_exactly_a_ddim_round_trip(tiny64):
    image = smooth_image(96, 64)
    params = DragParams(**FAST, method="ode", guidance=1.0)
    result = drag(tiny64, DragRequest(image, [(40, 30)], [(40, 30)], params=params))
    x0 = image_to_latent(tiny64, image)
    grid = tiny64.schedule.grid(params.steps, params.t0)
    path = encode(tiny64, x0, grid, "ode")
    assert torch.allclose(result.latent, decode(tiny64, path.x_t0, path, "ode"), atol=1e-12)


def test_sde_drag_changes_the_masked_region_and_keeps_the_rest_exactly(tiny64):
    image = smooth_image(128, 96)
    mask = np.zeros((96, 128), bool)
    mask[16:80, 16:112] = True
    request = DragRequest(image, [(40, 50), (60, 40)], [(72, 56), (90, 40)], mask, params=DragParams(**FAST))
    result = drag(tiny64, request)
    assert result.moves == 2 and len(result.frames) == 2 and result.image.size == image.size
    before, after = np.asarray(image), np.asarray(result.image)
    outside = paste_weights(mask) == 0
    assert np.array_equal(before[outside], after[outside])
    assert np.abs(before[mask].astype(int) - after[mask]).mean() > 5


def test_masked_latent_outside_follows_the_input_without_paste_back(tiny64):
    image = smooth_image(128, 96)
    mask = np.zeros((96, 128), bool)
    mask[32:64, 32:96] = True
    result = drag(tiny64, DragRequest(image, [(40, 40)], [(56, 48)], mask, params=DragParams(**FAST, paste_back=False)))
    region = latent_mask(mask, tuple(result.latent.shape[-2:]), tiny64)
    outside = (region == 0).expand_as(result.latent)
    assert torch.allclose(result.latent[outside], image_to_latent(tiny64, image)[outside], atol=1e-10)


def test_same_seed_reproduces_bit_for_bit(tiny32):
    image = smooth_image(96, 64)
    a = drag(tiny32, DragRequest(image, [(20, 20)], [(40, 30)], params=DragParams(**FAST, seed=5)))
    b = drag(tiny32, DragRequest(image, [(20, 20)], [(40, 30)], params=DragParams(**FAST, seed=5)))
    c = drag(tiny32, DragRequest(image, [(20, 20)], [(40, 30)], params=DragParams(**FAST, seed=6)))
    assert a.image.tobytes() == b.image.tobytes() and a.image.tobytes() != c.image.tobytes()


def test_the_paper_ramps_reach_the_model(tiny32, monkeypatch):
    calls = []
    original = type(tiny32).predict_eps

    def spy(self, x, t, cond=None, guidance=1.0, lora_scale=1.0):
        calls.append((x.shape[0], t, guidance, lora_scale))
        return original(self, x, t, cond, guidance, lora_scale)

    monkeypatch.setattr(type(tiny32), "predict_eps", spy)
    drag(tiny32, DragRequest(smooth_image(64, 64), [(20, 20)], [(30, 20)], params=DragParams(steps=50, t0=0.6)))
    assert len(calls) == 30  # one batched call per step: edited and recorded latents together, no encode calls
    assert all(batch == 2 for batch, *_ in calls)
    guidance, lora = [g for _, _, g, _ in calls], [s for *_, s in calls]
    assert guidance[0] == pytest.approx(3.0) and guidance[-1] == pytest.approx(1.0, abs=0.01)
    assert lora[0] == pytest.approx(0.5) and lora[-1] == pytest.approx(1.0, abs=1e-3)
    assert all(a >= b for a, b in zip(guidance, guidance[1:])) and all(a <= b for a, b in zip(lora, lora[1:]))


def test_targets_outside_the_mask_are_reported(tiny32):
    mask = np.zeros((64, 64), bool)
    mask[10:30, 10:30] = True
    request = DragRequest(smooth_image(64, 64), [(15, 15)], [(50, 50)], mask, params=DragParams(steps=10, t0=0.5))
    result = drag(tiny32, request)
    assert len(result.warnings) == 1 and "outside the editable mask" in result.warnings[0]


def test_drag_refuses_an_inpainting_checkpoint():
    from sdedrag.models import load_model

    with pytest.raises(InputError, match="plain"):
        request = DragRequest(smooth_image(64, 64), [(10, 10)], [(20, 20)], params=DragParams(steps=4))
        drag(load_model("tiny-inpaint", "cpu"), request)


def test_session_skips_lora_for_models_without_it(tmp_path):
    from diffusers import UNet2DModel

    from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG
    from sdedrag.lora import LoraCache, LoraSettings
    from sdedrag.models import PixelUNet
    from sdedrag.session import DragSession

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8)
    session = DragSession(PixelUNet(unet.eval(), SD_SCHEDULER_CONFIG, "pixel"), lora_cache=LoraCache(tmp_path))
    request = DragRequest(smooth_image(16, 16), [(3, 3)], [(9, 9)], params=DragParams(steps=10))
    result = session.drag(request, LoraSettings(steps=2))
    assert result.image.size == (16, 16) and result.timings["lora_seconds"] == 0.0
    assert any("LoRA skipped" in w for w in result.warnings) and not any(tmp_path.iterdir())
