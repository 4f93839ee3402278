"""The command line: outputs, run.json replay, and one-line errors that leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sdedrag.cli import SUBCOMMANDS, main
from tests.helpers import cli_env, leftovers, run_cli


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_reconstruct_writes_result_and_run_json_and_replays(tmp_path, image_file):
    out = tmp_path / "rec"
    args = ["reconstruct", "--image", str(image_file), "--model", "tiny", "--process", "cycle-sde",
            "--steps", "50", "--t0", "1.0", "--dtype", "float64", "--seed", "3", "--out", str(out)]
    assert main(args) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "reconstruct" and record["args"]["seed"] == 3 and record["args"]["dtype"] == "float64"
    assert record["results"]["latent_rel_error"] <= 1e-8
    assert record["versions"]["torch"] and record["versions"]["diffusers"]
    assert (out / "result.png").is_file()
    assert out.stat().st_mode & 0o077 == 0o777 & ~_umask() & 0o077  # an ordinary folder, not mkdtemp's 0700

    replay = tmp_path / "replay"
    assert main(["reconstruct", "--config", str(out / "run.json"), "--out", str(replay)]) == 0
    assert (replay / "result.png").read_bytes() == (out / "result.png").read_bytes()
    assert json.loads((replay / "run.json").read_text())["args"] == record["args"]


def test_config_values_can_be_overridden(tmp_path, image_file):
    out = tmp_path / "rec"
    assert main(["reconstruct", "--image", str(image_file), "--model", "tiny", "--steps", "5", "--out", str(out)]) == 0
    assert main(["reconstruct", "--config", str(out / "run.json"), "--process", "sde", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "run.json").read_text())["args"]["process"] == "sde"


def test_plain_sde_does_not_reconstruct_from_the_cli(tmp_path, image_file):
    out = tmp_path / "sde"
    assert main(["reconstruct", "--image", str(image_file), "--model", "tiny", "--process", "sde", "--steps", "20",
                 "--dtype", "float64", "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["results"]["latent_rel_error"] > 0.1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image", "missing.png"], "image not found"),
        (["--image", "CORRUPT"], "cannot read image"),
        (["--image", "IMAGE", "--model", "nobody/nothing"], "--model"),
        (["--image", "IMAGE", "--t0", "1.5"], "--t0"),
        (["--image", "IMAGE", "--t0", "0"], "--t0"),
        (["--image", "IMAGE", "--steps", "0"], "--steps"),
        ([], "--image is required"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, image_file, capsys, extra, message):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    extra = [str(image_file) if e == "IMAGE" else str(corrupt) if e == "CORRUPT" else e for e in extra]
    out = tmp_path / "out"
    model = [] if "--model" in extra else ["--model", "tiny"]
    assert run_cli(["reconstruct", *model, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdedrag reconstruct: error:") and message in err[0]
    assert "tiny" in err[0] or message != "--model"
    assert leftovers(out) == []


def test_bad_config_files_are_refused(tmp_path, capsys):
    wrong = tmp_path / "run.json"
    wrong.write_text(json.dumps({"command": "drag", "args": {}}))
    assert main(["reconstruct", "--config", str(wrong), "--out", str(tmp_path / "o")]) == 2
    assert "not 'sdedrag reconstruct'" in capsys.readouterr().err


def test_console_script_info_runs_offline(tmp_path):
    env = {**cli_env(), "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    proc = subprocess.run([sys.executable, "-m", "sdedrag", "info", "--json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["models"]["tiny"].startswith("built in") and facts["versions"]["torch"]
    assert facts["models"]["stable-diffusion-v1-5/stable-diffusion-v1-5"] == "not in local cache"
    assert facts["hf_hub_offline"] == "1" and facts["torch_threads"] == facts["device"]["cpu_threads"] == 1


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_imports_no_torch(command):
    code = (
        "import sys; from sdedrag.cli import main\n"
        f"try: main({[command, '--help'] if command else ['--help']!r})\n"
        "except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'gradio', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0 and "usage: sdedrag" in proc.stdout, proc.stderr


def test_library_errors_name_no_flags_and_the_cli_adds_them(tmp_path, image_file, capsys):
    from sdedrag.errors import ModelLoadError
    from sdedrag.models import load_model

    with pytest.raises(ModelLoadError) as err:
        load_model("nobody/nothing", "cpu")
    assert "--" not in str(err.value)
    argv = ["reconstruct", "--image", str(image_file), "--model", "nobody/nothing", "--out", str(tmp_path / "o")]
    assert run_cli(argv) == 2 and "error: --model: cannot load model 'nobody/nothing'" in capsys.readouterr().err
