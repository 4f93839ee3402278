"""sdedrag inpaint / sdedit / diffedit: both methods and solver orders, exact paste-back, replay, clean failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdedrag.cli import main
from tests.conftest import smooth_image
from tests.helpers import leftovers, run_cli


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """A 64x48 input, a mask of its size, an empty mask and a mask of another size."""
    smooth_image(64, 48).save(tmp_path / "input.png")
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:30, 16:44] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros_like(mask)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((64, 64), 255, dtype=np.uint8)).save(tmp_path / "square.png")
    return {name: str(tmp_path / f"{name}.png") for name in ("input", "mask", "empty", "square")}


def command_args(command: str, files: dict[str, str], model: str = "tiny") -> list[str]:
    specific = {
        "inpaint": ["--mask", files["mask"], "--prompt", "a cat"],
        "sdedit": ["--prompt", "a watercolor", "--t0", "0.6"],
        "diffedit": ["--source-prompt", "a bowl of fruits", "--target-prompt", "a bowl of pears"],
    }[command]
    return [command, "--image", files["input"], *specific, "--model", model, "--steps", "6", "--guidance", "3"]


def masked_pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 0


@pytest.mark.parametrize("command", ["inpaint", "sdedit", "diffedit"])
@pytest.mark.parametrize("method", ["sde", "ode"])
@pytest.mark.parametrize("order", ["1", "2"])
def test_every_command_runs_for_both_methods_and_solver_orders(tmp_path, files, command, method, order):
    out = tmp_path / "out"
    assert main([*command_args(command, files), "--method", method, "--order", order, "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == command
    assert record["args"]["method"] == method and record["args"]["order"] == int(order)
    sde_process = "cycle-sde" if command == "diffedit" else "sde"  # DiffEdit's SDE reuses the recorded noise
    assert record["results"]["process"] == (sde_process if method == "sde" else "ode")
    result, original = np.asarray(Image.open(out / "result.png")), np.asarray(Image.open(files["input"]))
    assert result.shape == original.shape
    if command != "sdedit":
        mask = masked_pixels(files["mask"] if command == "inpaint" else str(out / "mask.png"))
        assert 0 < mask.mean() < 1 and np.array_equal(result[~mask], original[~mask])
        assert record["results"]["mask_fraction"] == pytest.approx(mask.mean())


def test_inpainting_checkpoint_and_disabled_paste_back(tmp_path, files):
    out = tmp_path / "out"
    argv = [*command_args("inpaint", files, "tiny-inpaint"), "--no-paste-back", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["results"]["inpainting_unet"] is True and record["args"]["paste_back"] is False
    mask = masked_pixels(files["mask"])
    result, original = np.asarray(Image.open(out / "result.png")), np.asarray(Image.open(files["input"]))
    assert not np.array_equal(result[~mask], original[~mask])  # without paste-back the VAE round trip shows


@pytest.mark.parametrize("command", ["inpaint", "sdedit", "diffedit"])
def test_config_reproduces_the_run(tmp_path, files, command):
    out, replay = tmp_path / "out", tmp_path / "replay"
    assert main([*command_args(command, files), "--method", "sde", "--seed", "4", "--out", str(out)]) == 0
    assert main([command, "--config", str(out / "run.json"), "--out", str(replay)]) == 0
    for name in ("result.png", "mask.png") if command == "diffedit" else ("result.png",):
        assert (replay / name).read_bytes() == (out / name).read_bytes()
    assert json.loads((replay / "run.json").read_text())["args"] == json.loads((out / "run.json").read_text())["args"]


@pytest.mark.parametrize(
    "command, extra, message",
    [
        ("inpaint", ["--mask", "SQUARE"], "is 64x64 but the image is 64x48"),
        ("inpaint", ["--mask", "EMPTY"], "mask is empty"),
        ("inpaint", ["--t0", "1.5"], "--t0"),
        ("sdedit", ["--t0", "0"], "--t0"),
        ("diffedit", ["--t0", "-0.2"], "--t0"),
        ("diffedit", ["--target-prompt", ""], "target prompt"),
        ("diffedit", ["--source-prompt", "same", "--target-prompt", "same"], "identical"),
        ("diffedit", ["--mask-threshold", "1.5"], "threshold"),
        ("sdedit", ["--model", "tiny-inpaint"], "inpainting checkpoint"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, files, capsys, command, extra, message):
    extra = [files[e.lower()] if e in ("SQUARE", "EMPTY") else e for e in extra]
    out = tmp_path / "out"
    assert run_cli([*command_args(command, files), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sdedrag {command}: error:") and message in err[0], err
    assert leftovers(out) == []


def test_diffedit_without_prompts_is_refused(tmp_path, files, capsys):
    out = tmp_path / "out"
    assert run_cli(["diffedit", "--image", files["input"], "--model", "tiny", "--out", str(out)]) == 2
    assert "--source-prompt is required" in capsys.readouterr().err and leftovers(out) == []
