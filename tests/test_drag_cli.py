"""`sdedrag drag` end to end on a non-square DragBench-D image: outputs, exact unedited pixels, replay, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdedrag.bench.safe_pickle import load_pickle
from sdedrag.cli import main
from sdedrag.tasks.common import paste_weights
from tests.conftest import SHARED_DATA, smooth_image
from tests.helpers import leftovers, run_cli

SAMPLE = SHARED_DATA / "dragbench-d-sample" / "animals" / "JH_2023-09-14-1836-56"


@pytest.fixture
def drag_case(tmp_path):
    """(image path, mask path, [(source, target), ...]) from the DragBench-D sample, or a generated stand-in."""
    if (SAMPLE / "meta_data.pkl").is_file():
        meta = load_pickle(SAMPLE / "meta_data.pkl")
        image_path = SAMPLE / "original_image.png"
        mask = meta["mask"] > 0
        points = [tuple(p) for p in meta["points"]]
    else:
        image_path = tmp_path / "image.png"
        smooth_image(160, 120).save(image_path)
        mask = np.zeros((120, 160), bool)
        mask[30:100, 40:140] = True
        points = [(60, 60), (80, 66), (100, 50), (120, 50)]
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
    return image_path, mask_path, list(zip(points[0::2], points[1::2]))


def drag_args(image, mask, pairs, out, *extra):
    args = ["drag", "--image", str(image), "--mask", str(mask), "--model", "tiny", "--no-lora", "--steps", "10",
            "--prompt", "a photo", "--out", str(out), *extra]
    for (sx, sy), (tx, ty) in pairs:
        args += ["--source", f"{sx},{sy}", "--target", f"{tx},{ty}"]
    return args


def test_drag_cli_writes_everything_and_replays_bit_for_bit(tmp_path, drag_case):
    image_path, mask_path, pairs = drag_case
    assert len(pairs) == 2
    out = tmp_path / "drag"
    assert main(drag_args(image_path, mask_path, pairs, out)) == 0

    image = Image.open(image_path).convert("RGB")
    result = Image.open(out / "result.png")
    assert result.size == image.size and image.size[0] != image.size[1]
    mask = np.asarray(Image.open(mask_path)) > 0
    outside = paste_weights(mask) == 0
    assert np.array_equal(np.asarray(result.convert("RGB"))[outside], np.asarray(image)[outside])
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "drag" and record["args"]["source"] == [list(map(float, p[0])) for p in pairs]
    frames = sorted((out / "frames").iterdir())  # GIF frame i is frames/00i*.png: the input, then each move
    moves = record["results"]["moves"]
    assert [f.name for f in frames] == ["000_input.png", *(f"{i:03d}.png" for i in range(1, moves + 1))] and moves >= 1
    gif = Image.open(out / "trajectory.gif")
    assert gif.n_frames == len(frames) and gif.size == image.size
    assert np.array_equal(np.asarray(Image.open(frames[0])), np.asarray(image))
    assert (out / "frames" / f"{moves:03d}.png").read_bytes() == (out / "result.png").read_bytes()
    assert Image.open(out / "input_with_points.png").size == image.size

    replay = tmp_path / "replay"
    assert main(["drag", "--config", str(out / "run.json"), "--out", str(replay)]) == 0
    assert (replay / "result.png").read_bytes() == (out / "result.png").read_bytes()


def test_ode_drag_from_the_cli(tmp_path, drag_case):
    image_path, mask_path, pairs = drag_case
    out = tmp_path / "ode"
    assert main(drag_args(image_path, mask_path, pairs[:1], out, "--method", "ode", "--order", "2")) == 0
    assert json.loads((out / "run.json").read_text())["args"]["method"] == "ode"


@pytest.mark.parametrize(
    "case, message",
    [
        ("outside", "outside the"),
        ("unpaired", "paired"),
        ("mask-size", "mask"),
        ("unreadable", "cannot read image"),
        ("bad-point", "--source"),
    ],
)
def test_bad_drag_input_is_one_line_exit_2_no_output(tmp_path, capsys, case, message):
    image = tmp_path / "image.png"
    smooth_image(96, 64).save(image)
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64) if case == "mask-size" else (96, 64), 255).save(mask)
    if case == "unreadable":
        image.write_bytes(b"GIF89a broken")
    out = tmp_path / "out"
    points = {
        "outside": ["--source", "10,10", "--target", "96,10"],
        "unpaired": ["--source", "10,10", "--source", "20,20", "--target", "30,30"],
        "bad-point": ["--source", "10;10", "--target", "30,30"],
    }.get(case, ["--source", "10,10", "--target", "30,30"])
    argv = ["drag", "--image", str(image), "--mask", str(mask), "--model", "tiny", "--no-lora", "--steps", "4",
            *points, "--out", str(out)]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdedrag drag: error:") and message in err[0], err
    assert leftovers(out) == []
