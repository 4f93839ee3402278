"""Metrics: Mean Distance (both protocols) with injected and tiny-DIFT extractors, Image Fidelity, the
offline metrics against hand computations, clear errors without weights, and `bench eval` end to end."""

from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sdedrag.bench.dift import DiftExtractor
from sdedrag.bench.evaluate import evaluate, summarize
from sdedrag.bench.formats import list_cases, load_case
from sdedrag.bench.metrics import (
    LpipsDistance,
    cosine_maps,
    drag_accuracy_index,
    image_fidelity,
    mean_distances,
    regiondrag_regions,
    unmasked_psnr_ssim,
)
from sdedrag.cli import main
from sdedrag.errors import ModelLoadError
from sdedrag.io import image_to_tensor
from sdedrag.models.tiny import build_tiny_pipeline
from tests.conftest import SHARED_DATA, smooth_image
from tests.helpers import write_dataset


def patch_features(image: torch.Tensor, prompt: str = "") -> torch.Tensor:
    """A content-based extractor at full resolution: each pixel's feature is its 5x5 RGB neighbourhood."""
    return F.unfold(image, 5, padding=2).reshape(1, -1, *image.shape[-2:])


def unique_features(image: torch.Tensor, prompt: str = "") -> torch.Tensor:
    """A position-only extractor: a fixed random unit vector per pixel (cosine 1 only with itself)."""
    return torch.randn(1, 16, *image.shape[-2:], generator=torch.Generator().manual_seed(0))


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def identity_results(dataset, folder):
    for ref in list_cases(dataset):
        (folder / ref.id).mkdir(parents=True)
        load_case(ref).image.save(folder / ref.id / "result.png")
    return folder


def test_cosine_maps_equal_the_full_upsampled_protocol():
    torch.manual_seed(0)
    source, result = torch.randn(1, 150, 9, 13), torch.randn(1, 150, 9, 13)
    handles, size = [(3.0, 4.0), (50.6, 30.2)], (37, 53)
    maps = cosine_maps(source, result, handles, size, chunk=64)
    up_source, up_result = (F.interpolate(f, size, mode="bilinear") for f in (source, result))
    for index, (x, y) in enumerate(handles):
        vector = up_source[0, :, int(y), int(x)].view(1, -1, 1, 1)
        assert torch.allclose(maps[index], F.cosine_similarity(vector, up_result, dim=1)[0], atol=1e-6)


def test_mean_distance_finds_content_that_moved():
    image = noise_image(64, 48)
    moved = Image.fromarray(np.roll(np.asarray(image), (2, 3), axis=(0, 1)))  # content moves by (+3, +2)
    features = [patch_features(image_to_tensor(im)) for im in (image, moved)]
    sources = [(20.0, 20.0), (40.0, 25.0)]
    followed = [(23.0, 22.0), (43.0, 27.0)]
    pixels, normalised = mean_distances(*features, sources, followed, (48, 64))
    assert pixels.tolist() == [0.0, 0.0] and normalised.tolist() == [0.0, 0.0]
    pixels, normalised = mean_distances(*features, sources, sources, (48, 64))  # targets where nothing went
    assert np.allclose(pixels, math.hypot(3, 2)) and np.allclose(normalised, math.hypot(3 / 64, 2 / 48))


def test_regiondrag_search_is_limited_to_discs_around_source_and_target():
    regions = regiondrag_regions([(10.0, 10.0), (30.0, 30.0)], [(30.0, 10.0), (30.0, 30.0)], (40, 60))
    radius = 20 / math.sqrt(2)  # |s - t| / sqrt 2 = 14.1 for the first pair; the floor of 5 for the second
    yy, xx = np.mgrid[0:40, 0:60]
    expected = (np.hypot(xx - 10, yy - 10) < radius) | (np.hypot(xx - 30, yy - 10) < radius)
    assert np.array_equal(regions[0].numpy(), expected)
    assert np.array_equal(regions[1].numpy(), np.hypot(xx - 30, yy - 30) < 5)
    # An identical image whose best match lies outside the discs: the RegionDrag variant cannot find it.
    image = noise_image(60, 40, seed=1)
    features = patch_features(image_to_tensor(image))
    shifted = patch_features(image_to_tensor(Image.fromarray(np.roll(np.asarray(image), 20, axis=1))))
    pixels, normalised = mean_distances(features, shifted, [(15.0, 20.0)], [(15.0, 20.0)], (40, 60))
    assert pixels[0] == 20.0 and normalised[0] < 5 / 40


def test_unmasked_psnr_and_ssim_against_hand_computation():
    image = smooth_image(40, 30)
    mask = np.zeros((30, 40), bool)
    mask[10:20, 10:20] = True
    assert unmasked_psnr_ssim(image, image, mask) == (math.inf, 1.0)
    edited = np.asarray(image).copy()
    edited[12:18, 12:18] = 0  # inside the mask only: PSNR of the unedited area stays infinite
    assert unmasked_psnr_ssim(image, Image.fromarray(edited), mask)[0] == math.inf
    changed = np.asarray(image).astype(np.int16)
    changed[0, 0, 0] += 10 if changed[0, 0, 0] < 245 else -10
    psnr, ssim = unmasked_psnr_ssim(image, Image.fromarray(changed.astype(np.uint8)), mask)
    mse = 100 / ((30 * 40 - 100) * 3)
    assert psnr == pytest.approx(10 * math.log10(255**2 / mse)) and 0.9 < ssim < 1.0
    assert all(math.isnan(v) for v in unmasked_psnr_ssim(image, image, np.ones((30, 40), bool)))


def test_drag_accuracy_index_against_hand_computation():
    image = smooth_image(40, 30)
    assert drag_accuracy_index(image, image, [(10, 10)], [(10, 10)], 5) == 0.0
    original = np.asarray(image).astype(np.float64)
    result = original.copy()
    result[13:18, 20:25] = np.clip(original[8:13, 10:15] + 25.5, 0, 255)  # the source patch, moved and brightened
    result = Image.fromarray(result.round().astype(np.uint8))
    clipped = np.clip(original[8:13, 10:15] + 25.5, 0, 255).round() - original[8:13, 10:15]
    expected = np.square(clipped / 255).sum() / 25
    assert drag_accuracy_index(image, result, [(12, 10)], [(22, 15)], 2) == pytest.approx(expected)
    # Patches are clipped by the same amount around both points: a corner point gives a 1x1 patch here.
    assert drag_accuracy_index(image, image, [(0, 0)], [(39, 29)], 3) == pytest.approx(
        np.square((original[0, 0] - original[29, 39]) / 255).sum())


def test_image_fidelity_is_one_minus_the_injected_distance():
    image, other = smooth_image(50, 40), smooth_image(50, 40, seed=3)
    seen = []

    def distance(a, b):
        seen.append((tuple(a.shape), float(a.min()), float(a.max())))
        return float((a - b).abs().mean())

    assert image_fidelity(image, image, distance) == 1.0
    assert 0 < image_fidelity(image, other, distance) < 1
    assert seen[0][0] == (1, 3, 224, 224) and -1 <= seen[0][1] < seen[0][2] <= 1


def test_lpips_without_the_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` fail
    with pytest.raises(ModelLoadError, match=r"pip install lpips.*--no-lpips"):
        LpipsDistance()


@pytest.mark.parametrize("model", ["/nonexistent/sd21", "sdedrag-tests/no-such-model"])
def test_dift_without_weights_names_the_weights_and_the_flags(model):
    with pytest.raises(ModelLoadError, match=rf"'{model}'.*--dift-model DIR.*--no-mean-distance"):
        DiftExtractor.from_pretrained(model, "cpu")


@pytest.fixture(scope="module")
def tiny_dift():
    return DiftExtractor(build_tiny_pipeline(), ensemble_size=2)


def test_dift_features_on_the_tiny_pipeline(tiny_dift):
    pipe = tiny_dift.pipe
    ran = []
    hooks = [block.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, block in enumerate(pipe.unet.up_blocks)]
    try:
        image = image_to_tensor(smooth_image(72, 56))
        features = tiny_dift(image, "a photo")
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == [0, 1]  # the UNet stops after the hooked up block 1
    channels = pipe.unet.up_blocks[1].resnets[-1].out_channels
    assert features.shape == (1, channels, 7, 9)  # 56x72 -> 7x9 latent; block 1 ends upsampling back to it
    assert torch.equal(tiny_dift(image, "a photo"), features)  # fixed seed: deterministic
    assert not torch.allclose(tiny_dift(image, "another prompt"), features)  # prompt-conditioned
    later = DiftExtractor(pipe, t=900, ensemble_size=2)(image, "a photo")
    assert not torch.allclose(later, features)  # noise level matters


def test_identity_results_give_mean_distance_zero_and_fidelity_one(tmp_path, tiny_dift):
    dataset = write_dataset(tmp_path / "data", "dragbench-s", count=2, size=(96, 72), same_points=True)
    results = identity_results(dataset, tmp_path / "results")
    for extractor in (unique_features, tiny_dift):
        evaluation = evaluate(dataset, results, extractor=extractor, distance=lambda a, b: float((a - b).abs().max()))
        summary = summarize(evaluation, {})
        assert summary["cases"] == 2 and summary["metrics"]["mean_distance"] == 0.0
        assert summary["metrics"]["mean_distance_regiondrag"] == 0.0 and summary["metrics"]["image_fidelity"] == 1.0


@pytest.mark.parametrize("sample", ["dragbench-d-sample", "drag100-sample", "dragbench-s-sample"])
def test_identity_mean_distance_on_the_samples_is_the_drag_length(tmp_path, sample):
    """On an unedited result every handle is found where it was, so Mean Distance = mean |handle - target|."""
    dataset = SHARED_DATA / sample
    if not dataset.is_dir():
        pytest.skip(f"{dataset} is absent")
    results = identity_results(dataset, tmp_path / "results")
    evaluation = evaluate(dataset, results, extractor=unique_features, distance=lambda a, b: 0.0, dai_gammas=(1,))
    cases = [load_case(ref) for ref in list_cases(dataset)]
    lengths = [math.dist(s, t) for case in cases for s, t in zip(case.sources, case.targets)]
    summary = summarize(evaluation, {})
    assert summary["points"] == len(lengths)
    assert summary["metrics"]["mean_distance"] == pytest.approx(np.mean(lengths))
    assert summary["metrics"]["image_fidelity"] == 1.0 and summary["metrics"]["psnr_unmasked"] == "inf"


def test_bench_eval_cli_with_offline_metrics_only(tmp_path):
    dataset = SHARED_DATA / "dragbench-d-sample"
    if not dataset.is_dir():
        dataset = write_dataset(tmp_path / "data", "dragbench-d", count=3)
    results = identity_results(dataset, tmp_path / "results")
    dropped = sorted(results.rglob("result.png"))[:2]  # cases without a result are reported as missing
    missing = sorted(path.parent.relative_to(results).as_posix() for path in dropped)
    for path in dropped:
        path.unlink()
    out = tmp_path / "eval"
    args = ["bench", "eval", "--dataset", str(dataset), "--results", str(results), "--out", str(out),
            "--no-mean-distance", "--no-lpips"]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == len(list_cases(dataset)) - len(missing) == summary["cases"]
    assert summary["missing_results"] == missing
    assert list(rows[0]) == ["case", "category", "points", "psnr_unmasked", "ssim_unmasked", "dai_1", "dai_5", "dai_10", "dai_20"]
    assert all(row["psnr_unmasked"] == "inf" and float(row["ssim_unmasked"]) == 1.0 for row in rows)
    assert summary["metrics"]["ssim_unmasked"] == 1.0 and set(summary["by_category"]) <= {r["category"] for r in rows}
    assert summary["settings"]["mean_distance"] is None and summary["settings"]["image_fidelity"] is None


def test_bench_eval_cli_with_tiny_dift_and_a_clear_error_without_lpips(tmp_path, monkeypatch, capsys):
    dataset = write_dataset(tmp_path / "data", "drag100", count=2, size=(64, 48), same_points=True)
    results = identity_results(dataset, tmp_path / "results")
    out = tmp_path / "eval"
    base = ["bench", "eval", "--dataset", str(dataset), "--results", str(results), "--out", str(out),
            "--dift-model", "tiny", "--dift-ensemble", "2"]
    monkeypatch.setitem(sys.modules, "lpips", None)
    assert main(base) == 2
    assert "pip install lpips" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--no-lpips"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["mean_distance"] == 0.0
    assert summary["settings"]["mean_distance"] == {"dift_model": "tiny", "t": 261, "up_ft_index": 1, "ensemble_size": 2, "seed": 42}
