"""DragDiffusion: motion supervision, point tracking, the mask term, mutual self-attention, and whole drags."""

from __future__ import annotations

import json
import math
import threading
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from conftest import smooth_image
from sdedrag.bench.study import Comparison, Study, VoteStore
from sdedrag.bench.study_server import StudyApp, make_server
from sdedrag.engine import decode, encode
from sdedrag.errors import InputError
from sdedrag.models import load_model
from sdedrag.models.attention_control import mutual_self_attention, self_attention_layers
from sdedrag.models.features import captured_features, feature_block, resize_features
from sdedrag.shapes.bench import make_drag_case
from sdedrag.shapes.metrics import drag_metrics
from sdedrag.tasks.common import image_to_latent
from sdedrag.tasks.dragdiffusion import (
    DragDiffusionParams,
    dragdiffusion,
    motion_supervision,
    optimize_latent,
    shifted_patch,
    to_feature_points,
    track_points,
)

DEFAULTS = DragDiffusionParams()


@pytest.fixture(scope="module")
def shapes():
    return load_model("shapes", "cpu", "float32")


@pytest.fixture(scope="module")
def inverted(tiny64):
    """A 64x64 image DDIM-inverted on tiny at the default strength: (latent, grid, cond, feature size)."""
    cond = tiny64.condition("a photo")
    grid = tiny64.schedule.grid(DEFAULTS.steps, DEFAULTS.inversion_strength)
    latent = encode(tiny64, image_to_latent(tiny64, smooth_image(64, 64)), grid, "ode", cond).x_t0
    return latent, grid, cond, (32, 32)


def features_at(model, latent, t, cond, size, index=DEFAULTS.feature_index):
    with captured_features(model.unet, index) as captured:
        model.predict_eps(latent, t, cond)
    return resize_features(captured[0], size)


def test_defaults_are_the_authors_dragbench_settings():
    """drag_bench_evaluation/run_drag_diffusion.py: 50 DDIM steps, strength 0.7, feature 3 at half size,
    r_m 1, r_p 3, lambda 0.1, lr 0.01, 80 steps, stop within 2 feature pixels, MasaCtrl from step 0 layer 10."""
    assert (DEFAULTS.steps, DEFAULTS.inversion_strength) == (50, 0.7)
    assert (DEFAULTS.feature_index, DEFAULTS.feature_scale) == (3, 0.5)
    assert (DEFAULTS.motion_radius, DEFAULTS.tracking_radius, DEFAULTS.mask_weight) == (1, 3, 0.1)
    assert (DEFAULTS.learning_rate, DEFAULTS.iterations, DEFAULTS.reach) == (0.01, 80, 2.0)
    assert (DEFAULTS.start_step, DEFAULTS.start_layer) == (0, 10)


@pytest.mark.parametrize(
    "change",
    [dict(steps=0), dict(inversion_strength=0.0), dict(inversion_strength=1.5), dict(feature_scale=0.0),
     dict(motion_radius=-1), dict(learning_rate=0.0), dict(iterations=-1), dict(reach=0.0), dict(start_layer=-1)],
)
def test_bad_settings_are_one_line_errors(change):
    with pytest.raises(InputError) as err:
        DragDiffusionParams(**change)
    assert "\n" not in str(err.value)


def test_features_come_from_the_decoder_blocks(tiny32, shapes):
    """Index 0 is the mid block, k the output of up_blocks[k - 1]; the hook is gone afterwards."""
    x = torch.randn(1, 4, 8, 8)
    with captured_features(tiny32.unet, 3) as captured:
        tiny32.predict_eps(x, 500)
        tiny32.predict_eps(x, 400)
    assert len(captured) == 2 and captured[0].shape == (1, 16, 8, 8)
    tiny32.predict_eps(x, 500)
    assert len(captured) == 2 and not feature_block(tiny32.unet, 3)._forward_hooks
    with captured_features(shapes.unet, 0) as captured:
        shapes.predict_eps(torch.randn(1, 3, 32, 32), 500)
    assert captured[0].shape == (1, 128, 8, 8)
    with pytest.raises(InputError):
        feature_block(shapes.unet, 4)


def test_image_points_map_to_the_feature_grid():
    points = np.array([[0.0, 0.0], [63.0, 10.0], [95.9, 71.9]])
    assert to_feature_points(points, (96, 72), (36, 48)).tolist() == [[0, 0], [32, 5], [47, 35]]


def test_shifted_patch_is_bilinear():
    features = torch.arange(2 * 6 * 7, dtype=torch.float64).reshape(1, 2, 6, 7)
    rows, cols = slice(1, 4), slice(2, 5)
    assert torch.equal(shifted_patch(features, rows, cols, np.array([1.0, 2.0])), features[..., 3:6, 3:6])
    half = shifted_patch(features, rows, cols, np.array([0.5, 0.0]))
    assert torch.allclose(half, 0.5 * (features[..., 1:4, 2:5] + features[..., 1:4, 3:6]))


def test_point_tracking_finds_a_known_shift():
    """Features rolled by (dx, dy) = (2, -3): each handle is re-found at its shifted position, within r_p."""
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(1, 8, 20, 24, generator=generator)
    moved = torch.roll(reference, shifts=(-3, 2), dims=(2, 3))
    initial = np.array([[10.0, 10.0], [5.0, 12.0]])
    current = initial + np.array([[1.0, 0.0], [0.0, -1.0]])
    assert track_points(reference, moved, initial, current, 3).tolist() == [[12, 7], [7, 9]]
    # A shift beyond the radius cannot be reached: the handle stays within r_p of where it was.
    far = torch.roll(reference, shifts=(0, 6), dims=(2, 3))
    tracked = track_points(reference, far, initial[:1], initial[:1], 3)
    assert np.abs(tracked - initial[:1]).max() <= 3


def test_motion_supervision_skips_reached_handles():
    features = torch.randn(1, 4, 10, 10, requires_grad=True)
    handles, targets = np.array([[5.0, 5.0]]), np.array([[6.0, 5.0]])
    assert motion_supervision(features, handles, targets, 1, 2.0).item() == 0.0
    loss = motion_supervision(features, handles, np.array([[8.0, 5.0]]), 1, 2.0)
    expected = 9 * F.l1_loss(features[..., 4:7, 5:8], features[..., 4:7, 4:7].detach())
    assert torch.allclose(loss, expected)


def test_motion_supervision_lowers_the_feature_distance(tiny64, inverted):
    """After optimisation the feature at the target is closer to the original feature at the handle."""
    latent, grid, cond, size = inverted
    t = int(grid.timesteps[0])
    handle, target = np.array([[12.0, 14.0]]), np.array([[18.0, 14.0]])
    before = features_at(tiny64, latent, t, cond, size)[0, :, 14, 12]

    def distance(z):
        return (features_at(tiny64, z, t, cond, size)[0, :, 14, 18] - before).abs().sum().item()

    result = optimize_latent(tiny64, latent, grid, cond, handle, target, None, size, replace(DEFAULTS, iterations=10))
    assert result.iterations >= 5
    assert distance(result.latent) < 0.7 * distance(latent)
    assert result.handles[0, 0] > handle[0, 0]  # tracking followed the content towards the target


def test_mask_term_keeps_the_latent_outside_the_mask(tiny64, inverted):
    """With lambda = 0.1 the mean change of the latent outside the mask stays small (Adam's L1 steps oscillate
    about the start) while without the term it grows with the iterations; inside it is the same."""
    latent, grid, cond, size = inverted
    region = torch.zeros(1, 1, 8, 8, dtype=latent.dtype)
    region[..., 2:6, 2:6] = 1.0
    handle, target = np.array([[16.0, 16.0]]), np.array([[22.0, 16.0]])
    params = replace(DEFAULTS, iterations=16, reach=0.5)

    def mean_change(weight):
        settings = replace(params, mask_weight=weight)
        z = optimize_latent(tiny64, latent, grid, cond, handle, target, region, size, settings)
        change = (z.latent - latent).abs().mean(dim=1, keepdim=True)
        return (change * (1 - region)).sum().item() / (1 - region).sum().item(), change[region > 0].mean().item()

    free_outside, free_inside = mean_change(0.0)
    kept_outside, kept_inside = mean_change(DEFAULTS.mask_weight)
    assert kept_outside < 0.5 * free_outside
    assert kept_inside > 0.8 * free_inside


def test_a_drag_optimises_only_the_latent_and_counts_unet_calls(tiny64):
    """The UNet's weights, flags and gradients are as before; forward calls are inversion + 1 + one per
    iteration (+ the one that found every handle at its target) + decoding, backward calls one per iteration."""
    unet = tiny64.unet
    weights = {name: p.detach().clone() for name, p in unet.state_dict().items()}
    flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    calls = {"forward": 0, "backward": 0}
    hooks = [
        unet.register_forward_pre_hook(lambda *args: calls.__setitem__("forward", calls["forward"] + 1)),
        unet.conv_in.register_full_backward_hook(lambda *args: calls.__setitem__("backward", calls["backward"] + 1)),
    ]
    params = replace(DEFAULTS, iterations=6)
    try:
        result = dragdiffusion(tiny64, smooth_image(64, 48), [(20, 20)], [(30, 24)], None, "a photo", params)
    finally:
        for hook in hooks:
            hook.remove()
    assert all(torch.equal(weights[name], p) for name, p in unet.state_dict().items())
    assert {name: p.requires_grad for name, p in unet.named_parameters()} == flags
    assert all(p.grad is None for p in unet.parameters())
    steps = round(DEFAULTS.inversion_strength * DEFAULTS.steps)
    stopped_early = int(result.iterations < params.iterations)
    assert calls == {"forward": steps + 1 + result.iterations + stopped_early + steps, "backward": result.iterations}
    assert result.image.size == (64, 48) and result.latent.shape == (1, 4, 6, 8)


def test_without_optimisation_the_drag_is_the_ode_reconstruction(tiny64):
    """Zero iterations: both decoded branches are the inverted latent, so mutual self-attention changes nothing
    and the result is the engine's DDIM reconstruction."""
    image = smooth_image(64, 64)
    params = replace(DEFAULTS, iterations=0, start_layer=0, paste_back=False)
    result = dragdiffusion(tiny64, image, [(20, 20)], [(30, 24)], None, "a photo", params)
    cond = tiny64.condition("a photo")
    grid = tiny64.schedule.grid(params.steps, params.inversion_strength)
    trajectory = encode(tiny64, image_to_latent(tiny64, image), grid, "ode", cond)
    assert torch.allclose(result.latent, decode(tiny64, trajectory.x_t0, trajectory, "ode", cond), atol=1e-10)


def test_mutual_self_attention_uses_the_reference_keys_and_values():
    """A group-normed, residual attention layer on 4-D input (as in UNet2DModel): the reference's output is
    unchanged, the edited sample's is attention(q(edited), k(reference), v(reference))."""
    torch.manual_seed(0)
    attn = Attention(16, heads=2, dim_head=8, norm_num_groups=4, residual_connection=True, bias=True).eval()
    hidden = torch.randn(2, 16, 3, 5)
    with torch.no_grad():
        plain = attn(hidden)
        with mutual_self_attention(attn, start_step=0, start_layer=0):
            mutual = attn(hidden)
        tokens = attn.group_norm(hidden.flatten(2)).transpose(1, 2)
        q = attn.to_q(tokens[1:]).unflatten(-1, (2, 8)).transpose(1, 2)
        k, v = (proj(tokens[:1]).unflatten(-1, (2, 8)).transpose(1, 2) for proj in (attn.to_k, attn.to_v))
        out = attn.to_out[0](F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        expected = out.transpose(1, 2).reshape(1, 16, 3, 5) + hidden[1:]
    assert torch.allclose(mutual[:1], plain[:1], atol=1e-6)
    assert torch.allclose(mutual[1:], expected, atol=1e-5)
    assert not torch.allclose(mutual[1:], plain[1:], atol=1e-3)
    assert attn(hidden).equal(plain)  # the processor is restored


def test_mutual_self_attention_counts_steps_and_layers(tiny32):
    """Self-attention layers are counted per UNet call in call order, steps per UNet call; from start_layer = number
    of layers on nothing changes, and start_step 1 leaves the first call alone."""
    layers = len(self_attention_layers(tiny32.unet))
    assert layers == 4
    generator = torch.Generator().manual_seed(0)
    pair = torch.randn(2, 4, 8, 8, generator=generator)
    cond = tiny32.condition("")
    plain = tiny32.predict_eps(pair, 500, cond)
    with mutual_self_attention(tiny32.unet, 0, layers) as control:
        assert torch.equal(tiny32.predict_eps(pair, 500, cond), plain)
    assert control.step == 1 and control.layer == layers
    with mutual_self_attention(tiny32.unet, 1, 0):
        first, second = tiny32.predict_eps(pair, 500, cond), tiny32.predict_eps(pair, 500, cond)
    assert torch.equal(first, plain)
    assert torch.allclose(second[:1], plain[:1], atol=1e-6) and not torch.allclose(second[1:], plain[1:], atol=1e-4)
    with mutual_self_attention(tiny32.unet, 0, layers - 1):  # the last layer alone: another, non-zero change
        last = tiny32.predict_eps(pair, 500, cond)
    assert not torch.allclose(last[1:], plain[1:], atol=1e-4) and not torch.allclose(last[1:], second[1:], atol=1e-4)


def test_a_shapes_drag_moves_the_shape_towards_the_target(shapes):
    """A ShapesBench case at the authors' settings: the shape is found much nearer the target than it started."""
    case = make_drag_case(0, 3)
    params = replace(DEFAULTS, paste_back=False)
    result = dragdiffusion(shapes, case.scene.pil(), [case.source], [case.target], case.editable, "", params)
    metrics = drag_metrics(case.scene.image, np.asarray(result.image), case.shape, case.target, case.editable)
    assert metrics.found and metrics.distance < 0.25 * metrics.drag_length
    assert math.dist(result.handles[0], case.target) < 2 * 2 / DEFAULTS.feature_scale
    assert any("mutual self-attention is off" in w for w in result.warnings)  # 4 self-attention layers < 10


def test_bad_inputs_are_one_line_errors(tiny32):
    image = smooth_image(32, 32)
    for call in (
        lambda: dragdiffusion(tiny32, image, [(5, 5)], [(40, 5)]),
        lambda: dragdiffusion(tiny32, image, [(5, 5)], [(9, 5)], np.ones((8, 8), bool)),
        lambda: dragdiffusion(tiny32, image, [(5, 5)], [(9, 5)], params=replace(DEFAULTS, feature_index=4)),
    ):
        with pytest.raises(InputError) as err:
            call()
        assert "\n" not in str(err.value)


def test_the_study_compares_three_method_folders_pairwise(tmp_path):
    """``study serve --pairs sde ode dragdiffusion``: every case is shown with every pair of the three methods."""
    cases = ["cat/case0", "cat/case1"]
    folders = []
    for seed, method in enumerate(("sde", "ode", "dragdiffusion")):
        for index, case in enumerate(cases):
            (tmp_path / method / case).mkdir(parents=True)
            smooth_image(40, 32, seed=10 * seed + index).save(tmp_path / method / case / "result.png")
            smooth_image(40, 32, seed=99 + index).save(tmp_path / method / case / "input.png")
            record = {"command": "drag", "args": {"source": [[5.0, 5.0]], "target": [[20.0, 12.0]]}, "results": {}}
            (tmp_path / method / case / "run.json").write_text(json.dumps(record))
        folders.append(tmp_path / method)
    study = Study(folders)
    pairs = [("dragdiffusion", "ode"), ("dragdiffusion", "sde"), ("ode", "sde")]
    assert sorted(study.comparisons, key=lambda c: (c.pair, c.case_id)) == [
        Comparison(case, pair) for pair in pairs for case in cases
    ]
    server = make_server(StudyApp(study, VoteStore(tmp_path / "votes.sqlite")), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/?rater=alice", timeout=30) as response:
            assert "Comparison 1 of 6" in response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
