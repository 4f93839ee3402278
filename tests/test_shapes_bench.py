"""ShapesBench cases, tracks and summaries, and the `demo` / `shapes-bench` commands on a small pixel model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel
from PIL import Image

from sdedrag.cli import main
from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG
from sdedrag.shapes.bench import (
    BOX_FRACTION,
    CORRUPTIONS,
    MASK_MARGIN,
    corrupt,
    drag_record,
    inpaint_region,
    make_drag_case,
    summarize,
)
from sdedrag.shapes.data import fits
from sdedrag.tasks.drag import DragResult
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def pixel_model_dir(tmp_path_factory):
    """A small random pixel UNet saved as a diffusers folder (loads through the same path as `shapes`)."""
    folder = tmp_path_factory.mktemp("pixel") / "model"
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("index", range(6))
def test_drag_cases_are_deterministic_and_well_formed(index):
    case = make_drag_case(3, index)
    again = make_drag_case(3, index)
    assert case.case_id == again.case_id and case.target == again.target
    assert np.array_equal(case.scene.image, again.scene.image) and np.array_equal(case.editable, again.editable)
    others = [s for i, s in enumerate(case.scene.shapes) if i != case.shape_index]
    assert fits(case.shape.moved(case.target), others, 32)
    assert 0.25 * 32 <= math.dist(case.source, case.target) <= 0.45 * 32
    moved_mask = case.shape.moved(case.target).mask(32, 32)
    assert case.editable[case.scene.masks[case.shape_index]].all() and case.editable[moved_mask].all()
    for i, mask in enumerate(case.scene.masks):
        if i != case.shape_index:
            assert not (case.editable & mask).any()
    truth = case.ground_truth()
    assert np.array_equal(truth.masks[case.shape_index], moved_mask)
    assert case.radius() >= case.shape.radius and MASK_MARGIN >= 1


def test_a_perfect_drag_succeeds_and_doing_nothing_fails():
    case = make_drag_case(0, 1)
    perfect = DragResult(case.ground_truth().pil(), [], None, 1, {"drag_seconds": 0.0})
    still = DragResult(case.scene.pil(), [], None, 1, {"drag_seconds": 0.0})
    good, bad = drag_record(case, "sde", perfect), drag_record(case, "ode", still)
    assert good["success"] and good["distance"] < 0.5 and good["outside_max_diff"] == 0 and good["truth_ssim"] == 1.0
    assert not bad["success"] and bad["distance"] == pytest.approx(math.dist(case.source, case.target), abs=0.5)
    summary = summarize([good, bad])
    assert summary["measures"]["drag/sde"]["success"]["mean"] == 1.0
    assert summary["measures"]["drag/ode"]["success"]["mean"] == 0.0
    assert summary["sde_minus_ode"]["drag/sde-vs-ode"]["success"]["mean"] == 1.0


def test_inpainting_regions_and_sdedit_corruptions():
    case = make_drag_case(0, 2)
    shape_mask = case.scene.masks[case.shape_index]
    assert inpaint_region(case, "shape")[shape_mask].all()
    box = inpaint_region(case, "box")
    assert 0.3 < (box & shape_mask).sum() / shape_mask.sum() < 0.7  # the box's edge halves the shape
    assert box.sum() <= (BOX_FRACTION * 32 + 1) ** 2 and np.array_equal(box, inpaint_region(make_drag_case(0, 2), "box"))
    for kind in CORRUPTIONS:
        corrupted = corrupt(case, kind)
        assert corrupted.shape == case.scene.image.shape and np.array_equal(corrupted, corrupt(case, kind))
        assert 2 < np.abs(corrupted.astype(int) - case.scene.image).mean() < 60


def test_demo_writes_the_comparison_and_a_verdict_that_agrees_with_the_measures(tmp_path, pixel_model_dir, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(pixel_model_dir), "--steps", "10", "--cases", "0", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("demo: SDE-Drag and ODE-Drag on ShapesBench cases 0 3")
    assert "case 0-0000 SDE-Drag" in captured.err  # per-move progress
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert [row["method"] for row in rows] == ["sde", "ode", "sde", "ode"]
    assert all(row["outside_max_diff"] == 0 for row in rows)  # the mask rule is exact in pixel space
    verdicts = [line for line in captured.out.splitlines() if line.startswith("verdict:")]
    for line, pair in zip(verdicts, (rows[:2], rows[2:])):
        for row, part in zip(pair, line.removeprefix("verdict: ").split("; ")):
            assert part.startswith(f"{row['method'].upper()}-Drag " + ("succeeds" if row["success"] else "fails: "))
    assert len(verdicts) == 2 and "PSNR dB (more)" in captured.out
    assert Image.open(out / "sde.gif").n_frames >= 2 and Image.open(out / "comparison.png").height > 500
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["0-0000", "0-0003"]
    assert json.loads((out / "run.json").read_text())["command"] == "demo"


def test_shapes_bench_writes_every_track_and_scores_any_folder(tmp_path, pixel_model_dir, capsys):
    out = tmp_path / "bench"
    argv = ["shapes-bench", "--model", str(pixel_model_dir), "--cases", "2", "--steps", "10", "--inpaint-steps", "2",
            "--inpaint-regions", "box", "--corruptions", "noise", "--sdedit-t0", "0.2", "--sdedit-steps", "5",
            "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]["measures"]) == {"drag/sde", "drag/ode", "inpaint/box/sde-2", "inpaint/box/ode-2",
                                                   "sdedit/noise/sde-t0.2", "sdedit/noise/ode-t0.2"}
    assert summary["summary"]["measures"]["drag/sde"]["vacated_clean_fraction"]["n"] == 2
    assert summary["thresholds"]["SUCCESS_DISTANCE"] == 2.0
    assert "cases_needed" in summary["summary"]["sde_minus_ode"]["inpaint/box/sde-2-vs-ode-2"]["success"]
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 2 * 6
    case = out / "cases" / "0-0000"
    assert {p.name for p in case.iterdir()} >= {"case.json", "input.png", "mask.png", "truth.png", "drag", "inpaint"}
    assert (out / "overview.png").is_file()
    # another method's results, laid out the same way, are scored on the same cases
    (case / "drag" / "copy-of-truth.png").write_bytes((case / "truth.png").read_bytes())
    capsys.readouterr()
    assert main(["shapes-bench", "--score", str(out), "--out", str(tmp_path / "scored")]) == 0
    rescored = json.loads((tmp_path / "scored" / "summary.json").read_text())["summary"]["measures"]
    assert rescored["drag/copy-of-truth"]["success"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 1}
    assert rescored["drag/sde"] == summary["summary"]["measures"]["drag/sde"]


@pytest.mark.slow
def test_shapes_bench_workers_give_the_same_results(tmp_path, pixel_model_dir):
    argv = ["shapes-bench", "--model", str(pixel_model_dir), "--cases", "2", "--steps", "6", "--tracks", "drag"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    assert main([*argv, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    assert (tmp_path / "one" / "metrics.csv").read_text() == (tmp_path / "two" / "metrics.csv").read_text()


def test_shapes_bench_refuses_an_inpainting_model_and_a_folder_without_cases(tmp_path, capsys):
    assert run_cli(["shapes-bench", "--model", "tiny-inpaint", "--cases", "1", "--out", str(tmp_path / "o")]) == 2
    assert "needs a plain (4-channel) model" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert run_cli(["shapes-bench", "--score", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "holds no ShapesBench cases" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_demo_says_what_it_will_do_within_five_seconds(tmp_path):
    """The first line comes before torch is imported: a newcomer sees the plan at once."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "sdedrag", "demo", "--out", str(tmp_path / "demo")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stderr.readline()
        elapsed = time.perf_counter() - start
    finally:
        process.terminate()
        process.wait()
    assert first.startswith("demo: SDE-Drag and ODE-Drag on ShapesBench cases 0 1 2") and elapsed < 5.0
