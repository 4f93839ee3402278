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
from PIL import Image

from sdedrag.bench.study import Comparison, Study, VoteStore
from sdedrag.bench.study_server import StudyApp, make_server
from sdedrag.engine import decode, encode
from sdedrag.errors import InputError
from sdedrag.lora import LoraCache
from sdedrag.models import GaussianMixture, load_model
from sdedrag.models.attention_control import mutual_self_attention, self_attention_layers
from sdedrag.models.features import captured_features, feature_block, resize_features
from sdedrag.runs import settings_args, settings_from_args
from sdedrag.session import DragSession
from sdedrag.settings import DRAGDIFFUSION_LORA, DragDiffusionParams, DragParams
from sdedrag.shapes.bench import BenchSettings, make_drag_case, run_case, score_folder
from sdedrag.shapes.metrics import drag_metrics
from sdedrag.shapes.settings import SHAPES_DRAG, SHAPES_DRAGDIFFUSION
from sdedrag.tasks.common import image_to_latent, paste_weights
from sdedrag.tasks.drag import DragRequest
from sdedrag.tasks.dragdiffusion import (
    dragdiffusion,
    motion_supervision,
    optimize_latent,
    shifted_patch,
    to_feature_points,
    track_points,
)
from sdedrag.ui import handlers
from tests.conftest import smooth_image
from tests.helpers import leftovers, run_cli, write_dataset

DEFAULTS = DragDiffusionParams()


@pytest.fixture(scope="module")
def shapes():
    return load_model("shapes", "cpu", "float32")


@pytest.fixture(scope="module")
def inverted(tiny64):
    """A 64x64 image DDIM-inverted on tiny at the default strength: (latent, grid, cond, feature size)."""
    cond = tiny64.condition("a photo")
    grid = tiny64.schedule.grid(DEFAULTS.steps, DEFAULTS.t0)
    latent = encode(tiny64, image_to_latent(tiny64, smooth_image(64, 64)), grid, "ode", cond).x_t0
    return latent, grid, cond, (32, 32)


def features_at(model, latent, t, cond, size, index=DEFAULTS.feature_index):
    with captured_features(model.unet, index) as captured:
        model.predict_eps(latent, t, cond)
    return resize_features(captured[0], size)


def test_defaults_are_the_authors_dragbench_settings():
    """drag_bench_evaluation/run_drag_diffusion.py: 50 DDIM steps, strength 0.7, feature 3 at half size,
    r_m 1, r_p 3, lambda 0.1, lr 0.01, 80 steps, stop within 2 feature pixels, MasaCtrl from step 0 layer 10."""
    assert (DEFAULTS.steps, DEFAULTS.t0) == (50, 0.7)  # t0: the inversion strength
    assert (DEFAULTS.feature_index, DEFAULTS.feature_scale) == (3, 0.5)
    assert (DEFAULTS.motion_radius, DEFAULTS.tracking_radius, DEFAULTS.mask_weight) == (1, 3, 0.1)
    assert (DEFAULTS.latent_lr, DEFAULTS.iterations, DEFAULTS.reach) == (0.01, 80, 2.0)
    assert (DEFAULTS.start_step, DEFAULTS.start_layer) == (0, 10)


@pytest.mark.parametrize(
    "change",
    [dict(steps=0), dict(t0=0.0), dict(t0=1.5), dict(feature_scale=0.0), dict(method="sde"),
     dict(motion_radius=-1), dict(latent_lr=0.0), dict(iterations=-1), dict(reach=0.0), dict(start_layer=-1)],
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
        request = DragRequest(smooth_image(64, 48), [(20, 20)], [(30, 24)], None, "a photo", params)
        result = dragdiffusion(tiny64, request)
    finally:
        for hook in hooks:
            hook.remove()
    assert all(torch.equal(weights[name], p) for name, p in unet.state_dict().items())
    assert {name: p.requires_grad for name, p in unet.named_parameters()} == flags
    assert all(p.grad is None for p in unet.parameters())
    steps = round(DEFAULTS.t0 * DEFAULTS.steps)
    stopped_early = int(result.iterations < params.iterations)
    assert calls == {"forward": steps + 1 + result.iterations + stopped_early + steps, "backward": result.iterations}
    assert result.image.size == (64, 48) and result.latent.shape == (1, 4, 6, 8)


def test_without_optimisation_the_drag_is_the_ode_reconstruction(tiny64):
    """Zero iterations: both decoded branches are the inverted latent, so mutual self-attention changes nothing
    and the result is the engine's DDIM reconstruction."""
    image = smooth_image(64, 64)
    params = replace(DEFAULTS, iterations=0, start_layer=0, paste_back=False)
    result = dragdiffusion(tiny64, DragRequest(image, [(20, 20)], [(30, 24)], None, "a photo", params))
    cond = tiny64.condition("a photo")
    grid = tiny64.schedule.grid(params.steps, params.t0)
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
    request = DragRequest(case.scene.pil(), [case.source], [case.target], case.editable, "", params)
    result = dragdiffusion(shapes, request)
    metrics = drag_metrics(case.scene.image, np.asarray(result.image), case.shape, case.target, case.editable)
    assert metrics.found and metrics.distance < 0.25 * metrics.drag_length
    assert math.dist(result.handles[0], case.target) < 2 * 2 / DEFAULTS.feature_scale
    assert any("mutual self-attention is off" in w for w in result.warnings)  # 4 self-attention layers < 10


def test_bad_inputs_are_one_line_errors(tiny32):
    image = smooth_image(32, 32)
    mixture = GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    for model, params in ((tiny32, replace(DEFAULTS, feature_index=4)), (mixture, DEFAULTS)):
        with pytest.raises(InputError) as err:
            dragdiffusion(model, DragRequest(image, [(5, 5)], [(9, 5)], None, "", params))
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="needs DragDiffusionParams"):
        dragdiffusion(tiny32, DragRequest(image, [(5, 5)], [(9, 5)]))


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


def test_method_defaults_resolve_missing_settings():
    """Absent or None arguments take the method's defaults: the authors' for DragDiffusion (LoRA too)."""
    params, lora = settings_from_args({"method": "dragdiffusion", "steps": None, "iterations": 7, "lora": True})
    assert params == replace(DEFAULTS, iterations=7) and lora == DRAGDIFFUSION_LORA
    assert (lora.rank, lora.steps, lora.learning_rate, lora.batch_size) == (16, 80, 5e-4, 4)
    params, lora = settings_from_args({"method": "ode", "t0": None, "lora": False})
    assert params == DragParams(method="ode") and lora is None
    assert settings_from_args(settings_args(params, DRAGDIFFUSION_LORA)) == (params, DRAGDIFFUSION_LORA)
    with pytest.raises(InputError, match="method must be one of sde, ode, dragdiffusion"):
        settings_from_args({"method": "gan", "lora": False})


def write_inputs(folder, image, mask):
    image.save(folder / "input.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
    return folder / "input.png", folder / "mask.png"


def test_dragdiffusion_from_the_cli_records_the_authors_settings_and_replays(tmp_path):
    image = smooth_image(96, 72)
    mask = np.zeros((72, 96), bool)
    mask[10:60, 10:80] = True
    image_path, mask_path = write_inputs(tmp_path, image, mask)
    out = tmp_path / "dd"
    argv = ["drag", "--method", "dragdiffusion", "--model", "tiny", "--image", str(image_path), "--mask",
            str(mask_path), "--source", "30,30", "--target", "50,40", "--prompt", "a photo", "--iterations", "4",
            "--lora-steps", "2", "--lora-cache", str(tmp_path / "cache"), "--out", str(out)]
    assert run_cli(argv) == 0
    record = json.loads((out / "run.json").read_text())
    args, results = record["args"], record["results"]
    assert {k: args[k] for k in ("method", "steps", "t0", "feature_index", "feature_scale", "motion_radius")} == {
        "method": "dragdiffusion", "steps": 50, "t0": 0.7, "feature_index": 3, "feature_scale": 0.5, "motion_radius": 1}
    assert (args["tracking_radius"], args["mask_weight"], args["latent_lr"], args["iterations"]) == (3, 0.1, 0.01, 4)
    assert (args["start_step"], args["start_layer"], args["lora_lr"], args["lora_batch_size"]) == (0, 10, 5e-4, 4)
    assert results["process"] == "ode" and results["moves"] == 1 and 0 < results["iterations"] <= 4
    assert len(results["tracked"]) == 1 and "lora_seconds" in results["timings"]
    [info] = (tmp_path / "cache").glob("*/info.json")
    assert json.loads(info.read_text())["settings"]["batch_size"] == 4
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["000_input.png", "001.png"]
    assert Image.open(out / "trajectory.gif").n_frames == 2
    result = np.asarray(Image.open(out / "result.png").convert("RGB"))
    outside = paste_weights(mask) == 0
    assert result.shape == (72, 96, 3) and np.array_equal(result[outside], np.asarray(image)[outside])

    replay = tmp_path / "replay"
    assert run_cli(["drag", "--config", str(out / "run.json"), "--out", str(replay)]) == 0
    assert (replay / "result.png").read_bytes() == (out / "result.png").read_bytes()


def test_dragdiffusion_from_the_cli_on_shapes(tmp_path):
    """The pixel-space shapes model: no LoRA (a warning says so), mutual self-attention off at the default layer."""
    case = make_drag_case(0, 3)
    image_path, mask_path = write_inputs(tmp_path, case.scene.pil(), case.editable)
    out = tmp_path / "shapes"
    (sx, sy), (tx, ty) = case.source, case.target
    argv = ["drag", "--method", "dragdiffusion", "--model", "shapes", "--image", str(image_path), "--mask",
            str(mask_path), "--source", f"{sx},{sy}", "--target", f"{tx},{ty}", "--iterations", "3", "--out", str(out)]
    assert run_cli(argv) == 0
    results = json.loads((out / "run.json").read_text())["results"]
    assert results["size"] == [32, 32] and results["iterations"] <= 3
    assert any("LoRA skipped" in w for w in results["warnings"])
    assert any("mutual self-attention is off" in w for w in results["warnings"])
    assert Image.open(out / "trajectory.gif").n_frames == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--feature-index", "9"], "feature index must be below 4"), (["--motion-radius", "-1"], "radius must be"),
     (["--latent-lr", "0"], "latent"), (["--feature-scale", "2"], "--feature-scale")],
)
def test_bad_dragdiffusion_options_are_one_line_errors(tmp_path, capsys, extra, message):
    image_path = tmp_path / "input.png"
    smooth_image(32, 32).save(image_path)
    out = tmp_path / "out"
    argv = ["drag", "--method", "dragdiffusion", "--model", "tiny", "--no-lora", "--image", str(image_path),
            "--source", "5,5", "--target", "20,9", "--out", str(out), *extra]
    assert run_cli(argv) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert leftovers(out) == []


def test_the_ui_runs_dragdiffusion_and_its_run_replays(tiny32, tmp_path, monkeypatch):
    """Choosing DragDiffusion switches the page to the authors' steps, t0 and LoRA; a run records the method's
    settings in run.json, which ``sdedrag drag --config`` replays exactly; the SDE/ODE comparison refuses it."""
    session = DragSession(tiny32, lora_cache=LoraCache(tmp_path / "lora"))
    assert handlers.method_settings(tiny32, "dragdiffusion") == (50, 0.7, 80, 5e-4)
    assert handlers.method_settings(tiny32, "sde") == (200, 0.6, 100, 2e-4)
    options = {"prompt": "a photo", "method": "dragdiffusion", "steps": 10.0, "t0": 0.7, "step_size": 2.0,
               "radius": 5.0, "alpha": 1.1, "beta": 0.3, "guidance": 3.0, "lora_scale_min": 0.5, "order": 1,
               "paste_back": True, "lora": False, "lora_steps": 80, "lora_rank": 16, "lora_lr": 5e-4, "seed": 0}
    image = smooth_image(64, 48)
    final = list(handlers.run_drag(session, tmp_path / "runs", image, None, [[20, 20], [30, 24]], options))[-1]
    folder = final.files[0].parent
    record = json.loads((folder / "run.json").read_text())
    args = record["args"]
    assert (args["method"], args["steps"], args["iterations"]) == ("dragdiffusion", 10, 80)
    assert args["lora_batch_size"] == 4 and record["results"]["iterations"] <= 80
    assert "7 DDIM inversion steps, up to 80 latent-optimisation steps" in handlers.run_cost(
        tiny32, image.size, [[20, 20], [30, 24]], options)
    monkeypatch.chdir(folder)
    assert run_cli(["drag", "--config", "run.json", "--out", str(tmp_path / "replay")]) == 0
    assert (tmp_path / "replay" / "result.png").read_bytes() == (folder / "result.png").read_bytes()
    with pytest.raises(InputError, match="choose one of them"):
        list(handlers.compare_drags(session, image, None, [[20, 20], [30, 24]], options))


def test_bench_run_with_dragdiffusion(tmp_path):
    dataset = write_dataset(tmp_path / "dataset", "dragbench-d", count=1)
    out = tmp_path / "results"
    argv = ["bench", "run", "--dataset", str(dataset), "--format", "dragbench-d", "--model", "tiny", "--device", "cpu",
            "--method", "dragdiffusion", "--iterations", "2", "--no-lora", "--out", str(out)]
    assert run_cli(argv) == 0
    record = json.loads((out / "cat0" / "case0" / "run.json").read_text())
    assert (record["args"]["method"], record["args"]["steps"], record["args"]["t0"]) == ("dragdiffusion", 50, 0.7)
    assert record["results"]["process"] == "ode" and record["results"]["iterations"] <= 2
    assert Image.open(out / "cat0" / "case0" / "result.png").size == (80, 64)


def test_shapes_bench_runs_dragdiffusion_beside_sde_and_ode(shapes, tmp_path):
    """The drag track with ``drag_methods`` sde, ode and dragdiffusion: every case gets all three results, scored."""
    settings = BenchSettings(tracks=("drag",), drag=replace(SHAPES_DRAG, steps=10),
                             dragdiffusion=replace(SHAPES_DRAGDIFFUSION, iterations=3),
                             drag_methods=("sde", "ode", "dragdiffusion"))
    run_case(shapes, make_drag_case(0, 3), settings, tmp_path / "cases" / "0-0003")
    rows = score_folder(tmp_path)
    assert sorted(row["label"] for row in rows) == ["dragdiffusion", "ode", "sde"]
    assert SHAPES_DRAGDIFFUSION == replace(DEFAULTS, t0=0.48, paste_back=False)
    with pytest.raises(InputError):
        BenchSettings(drag_methods=("gan",))
