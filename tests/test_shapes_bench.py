"""ShapesBench cases, tracks and summaries, and the `demo` / `shapes-bench` commands on a small pixel model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel
from PIL import Image

from sdedrag.cli import main
from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG
from sdedrag.shapes.bench import MASK_MARGIN, drag_record, make_drag_case, summarize
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
    assert good["success"] and good["distance"] < 0.5 and good["outside_max_diff"] == 0
    assert not bad["success"] and bad["distance"] == pytest.approx(math.dist(case.source, case.target), abs=0.5)
    summary = summarize([good, bad])
    assert summary["drag/sde"]["success"]["mean"] == 1.0 and summary["drag/ode"]["success"]["mean"] == 0.0


def test_demo_writes_the_comparison_and_gifs(tmp_path, pixel_model_dir):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(pixel_model_dir), "--steps", "10", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["method"] for row in metrics["rows"]] == ["sde", "ode"]
    assert all(row["outside_max_diff"] == 0 for row in metrics["rows"])  # the mask rule is exact in pixel space
    assert Image.open(out / "sde.gif").n_frames >= 2 and Image.open(out / "comparison.png").width > 4 * 256
    assert json.loads((out / "run.json").read_text())["command"] == "demo"


def test_shapes_bench_writes_metrics_and_summary(tmp_path, pixel_model_dir):
    out = tmp_path / "bench"
    argv = ["shapes-bench", "--model", str(pixel_model_dir), "--cases", "2", "--steps", "10", "--inpaint-steps", "5",
            "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert set(summary) == {"drag/sde", "drag/ode", "inpaint/sde-5", "inpaint/ode-5"}
    assert summary["drag/sde"]["distance"]["n"] == 2
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4
    assert len(list((out / "cases").iterdir())) == 2 and (out / "overview.png").is_file()


def test_shapes_bench_refuses_a_latent_model(tmp_path, capsys):
    assert run_cli(["shapes-bench", "--model", "tiny", "--cases", "1", "--out", str(tmp_path / "o")]) == 2
    assert "pixel-space" in capsys.readouterr().err and not (tmp_path / "o").exists()
