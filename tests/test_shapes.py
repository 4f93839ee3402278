"""The shapes generator's ground truth, the ShapesBench metrics on results with known answers, and the shipped model."""

from __future__ import annotations

import math

import numpy as np
from safetensors.torch import load_file
import pytest
import torch
from scipy.ndimage import binary_dilation

from sdedrag.models import PixelUNet, load_model
from sdedrag.shapes.data import KINDS, PALETTE, Shape, ShapesDataset, render, sample_background, sample_scene
from sdedrag.shapes.metrics import (
    PSNR_CAP,
    bootstrap_ci,
    colour_mask,
    colour_regions,
    drag_metrics,
    realism_metrics,
)
from sdedrag.shapes import train as train_module
from sdedrag.shapes.train import TrainConfig, sample, train


def scene_with_shapes(count: int, resolution: int = 32):
    """The first seeded scene with exactly ``count`` shapes."""
    return next(s for s in (sample_scene(seed, resolution) for seed in range(1000)) if len(s.shapes) == count)


def test_generator_is_deterministic_per_seed():
    a, b, c = sample_scene(7), sample_scene(7), sample_scene(8)
    assert np.array_equal(a.image, b.image) and a.shapes == b.shapes
    assert not np.array_equal(a.image, c.image)
    dataset = ShapesDataset(4, seed=3)
    assert torch.equal(dataset[2], ShapesDataset(4, seed=3)[2]) and not torch.equal(dataset[2], dataset[1])
    assert dataset[0].shape == (3, 32, 32) and dataset[0].min() >= -1 and dataset[0].max() <= 1


@pytest.mark.parametrize("seed", range(20))
def test_ground_truth_matches_the_pixels(seed):
    scene = sample_scene(seed, resolution=48)
    assert 1 <= len(scene.shapes) <= 3 and scene.image.shape == (48, 48, 3)
    assert len({s.colour for s in scene.shapes}) == len(scene.shapes)
    union = np.zeros((48, 48), dtype=bool)
    for shape, mask in zip(scene.shapes, scene.masks):
        assert shape.kind in KINDS and not (union & mask).any()  # shapes never overlap
        union |= mask
        assert abs(mask.sum() - shape.area) < 0.15 * shape.area + 8
        ys, xs = np.nonzero(mask)
        assert math.dist((xs.mean() + 0.5, ys.mean() + 0.5), shape.centre) < 0.5
        assert np.array_equal(mask, shape.mask(48, 48))
        # fully covered pixels carry exactly the palette colour
        assert (scene.image[shape.coverage(48, 48) == 1] == PALETTE[shape.colour]).all()
    far = ~binary_dilation(union, iterations=2)  # beyond the anti-aliased edges only the background shows
    assert np.array_equal(scene.image[far], scene.background[far])
    assert not np.array_equal(scene.image[union], scene.background[union])


def test_moved_and_without_render_the_ground_truth_of_edits():
    scene = scene_with_shapes(2)
    scene = scene.with_shapes([scene.shapes[0].moved((8.0, 8.0)), scene.shapes[1].moved((24.0, 24.0))])
    shape, target = scene.shapes[0], (8.0, 22.0)
    moved = scene.moved(0, target)
    assert moved.shapes[0].centre == target and moved.shapes[1] == scene.shapes[1]
    assert np.array_equal(moved.masks[0], shape.moved(target).mask(32, 32))
    empty = scene.without(0)
    assert empty.shapes == (scene.shapes[1],)
    assert np.array_equal(empty.image[scene.masks[0]], scene.background[scene.masks[0]])


def drag_case():
    """A red disc on a seeded background, dragged 20 px to the right, with a generous editable mask."""
    shape = Shape("disc", "red", (20.0, 32.0), 6.5)
    scene = render(sample_background(np.random.default_rng(0), 64), [shape])
    target = (40.0, 32.0)
    editable = np.zeros((64, 64), dtype=bool)
    editable[10:54, 8:56] = True
    return scene, shape, target, editable


def test_a_perfect_drag_scores_perfectly():
    scene, shape, target, editable = drag_case()
    result = scene.moved(0, target).image
    m = drag_metrics(scene.image, result, shape, target, editable)
    assert m.found and m.distance < 0.3 and abs(m.area_ratio - 1) < 0.05 and m.colour_error < 1
    assert m.solidity > 0.95 and m.duplication == 0 and not m.duplicated
    assert m.drag_length == pytest.approx(20.0)
    assert m.outside_max_diff == 0 and m.outside_psnr == PSNR_CAP


def test_an_unmoved_shape_is_at_drag_length_and_a_copy_is_a_duplicate():
    scene, shape, target, editable = drag_case()
    unmoved = drag_metrics(scene.image, scene.image, shape, target, editable)
    assert unmoved.found and unmoved.distance == pytest.approx(20.0, abs=0.3)
    assert unmoved.duplicated and unmoved.duplication > 0.95
    copy = scene.with_shapes([shape, shape.moved(target)]).image
    duplicate = drag_metrics(scene.image, copy, shape, target, editable)
    assert duplicate.distance < 0.3 and duplicate.duplicated  # found at the target, but also left at the source


def test_a_vanished_shape_a_blob_and_a_change_outside_are_measured():
    scene, shape, target, editable = drag_case()
    vanished = drag_metrics(scene.image, scene.background, shape, target, editable)
    assert not vanished.found and math.isnan(vanished.distance) and not vanished.duplicated
    blob = scene.background.copy()  # an irregular L-shaped smear of the colour at the target
    blob[28:36, 36:50] = shape.rgb
    blob[36:46, 36:40] = shape.rgb
    smeared = drag_metrics(scene.image, blob, shape, target, editable)
    assert smeared.found and smeared.solidity < 0.8
    assert smeared.area_ratio == pytest.approx((8 * 14 + 10 * 4) / colour_mask(scene.image, shape.rgb).sum())
    changed = scene.moved(0, target).image.copy()
    changed[0, 0] = 255 - changed[0, 0]
    outside = drag_metrics(scene.image, changed, shape, target, editable)
    assert outside.outside_max_diff == np.abs(255 - 2 * scene.image[0, 0].astype(int)).max()
    assert outside.outside_psnr < PSNR_CAP


def test_colour_error_measures_a_wrong_shade():
    scene, shape, target, editable = drag_case()
    result = scene.moved(0, target).image.astype(int)
    region = shape.moved(target).mask(64, 64)
    result[region] -= np.array([30, 0, 0])  # red 215 -> 185
    m = drag_metrics(scene.image, result.astype(np.uint8), shape, target, editable)
    assert m.colour_error == pytest.approx(30, abs=2)


def test_realism_separates_a_clean_inpainting_from_a_noisy_one():
    scene = scene_with_shapes(2, resolution=64)
    scene = scene.with_shapes([scene.shapes[0].moved((16.0, 16.0)), scene.shapes[1].moved((46.0, 46.0))])
    region = binary_dilation(scene.masks[0], iterations=2)
    clean = realism_metrics(scene.image, scene.without(0).image, region, scene.background)
    assert clean.shapes == 0 and clean.stray_fraction == 0 and clean.outside_max_diff == 0
    regenerated = realism_metrics(scene.image, scene.image, region, scene.background)
    assert regenerated.shapes >= 1 and regenerated.solidity > 0.9 and regenerated.colour_error < 2
    noisy = scene.image.copy()
    noisy[region] = np.random.default_rng(0).integers(0, 256, size=(int(region.sum()), 3))
    assert realism_metrics(scene.image, noisy, region, scene.background).stray_fraction > 0.5


def test_bootstrap_interval_covers_the_mean():
    values = np.random.default_rng(0).normal(5.0, 1.0, size=200)
    ci = bootstrap_ci(values)
    assert ci["low"] < ci["mean"] < ci["high"] and ci["low"] > 4.6 and ci["high"] < 5.4 and ci["n"] == 200
    assert bootstrap_ci([2.0, 2.0, math.nan]) == {"mean": 2.0, "low": 2.0, "high": 2.0, "n": 2}
    assert bootstrap_ci([])["n"] == 0


def test_shipped_shapes_model_samples_shapes():
    model = load_model("shapes", "cpu", "float32")
    assert isinstance(model, PixelUNet) and model.name == "shapes"
    images = sample(model, 4, 32, steps=20, process="ode", seed=0)
    assert images.shape == (4, 3, 32, 32)
    arrays = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    found = [max((r.area for rgb in PALETTE.values() for r in colour_regions(a, rgb)), default=0) for a in arrays]
    assert max(found) >= 20  # at least one clearly coloured shape-sized region


def test_training_writes_a_loadable_model_and_resumes_exactly_after_a_kill(tmp_path, monkeypatch):
    config = TrainConfig(steps=4, batch_size=2, resolution=16, block_out_channels=(16, 32), warmup=1,
                         checkpoint_every=2, sample_steps=2, threads=torch.get_num_threads())
    results = train(config, tmp_path / "straight", progress=False)
    assert results["steps"] == 4 and math.isfinite(results["final_loss"])
    save = train_module._save_checkpoint

    def save_then_die(path, state):
        save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 2
    train(config, tmp_path / "resumed", progress=False)
    weights = [load_file(tmp_path / run / "unet" / "diffusion_pytorch_model.safetensors") for run in ("straight", "resumed")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert all(v.dtype == torch.float16 for v in weights[0].values())
    model = load_model(str(tmp_path / "resumed"), "cpu", "float32")
    assert isinstance(model, PixelUNet) and model.schedule.alphas_cumprod[-1] < 1e-4
    for name in ("training_config.json", "loss.png", "samples.png", "README.md", "loss_log.csv"):
        assert (tmp_path / "resumed" / name).is_file()


def test_train_shapes_cli_refuses_a_resolution_the_unet_cannot_halve(tmp_path, capsys):
    from sdedrag.cli import main

    assert main(["train-shapes", "--out", str(tmp_path / "m"), "--resolution", "30", "--channels", "32,64,128"]) == 2
    assert "divisible by 4" in capsys.readouterr().err and not (tmp_path / "m").exists()
    with pytest.raises(SystemExit):
        main(["train-shapes", "--out", str(tmp_path / "m"), "--channels", "32,40"])
