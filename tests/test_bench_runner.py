"""`sdedrag bench run`: per-case outputs and records, SIGKILL and resume, a 2-process torchrun split, and
malformed cases reported and skipped."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdedrag.bench.formats import list_cases
from sdedrag.cli import main
from tests.conftest import SHARED_DATA
from tests.helpers import WritesAFile, cli_env, run_cli, write_case, write_dataset

SAMPLE = SHARED_DATA / "dragbench-d-sample"
FAST = ["--model", "tiny", "--no-lora", "--steps", "10"]


def dataset_for_subprocess_runs(tmp_path: Path) -> tuple[Path, list[str]]:
    """The DragBench-D sample (first 4 cases, downscaled by --max-size) or a generated stand-in."""
    if SAMPLE.is_dir():
        return SAMPLE, ["--limit", "4", "--max-size", "96"]
    return write_dataset(tmp_path / "data", "dragbench-d", count=4, size=(96, 72)), []


def done_cases(out: Path) -> dict[str, bytes]:
    return {p.parent.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("run.json")}


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if ".partial-" in p.name or ".tmp-" in p.name]


def test_killed_run_resumes_and_does_every_case_exactly_once(tmp_path):
    dataset, subset = dataset_for_subprocess_runs(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sdedrag", "bench", "run", "--dataset", str(dataset), *subset, *FAST, "--out", str(out)]
    process = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (done_cases(out) and leftovers(out)):  # one case finished, the next one under way
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no case finished in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate()
    before = done_cases(out)
    assert 1 <= len(before) < 4 and leftovers(out)  # killed mid-run, with a half-written case in a temp folder
    for folder in {p.parent for p in out.rglob("result.png")} | {p.parent for p in out.rglob("run.json")}:
        assert {p.name for p in folder.iterdir()} == {"result.png", "input.png", "mask.png", "run.json"}

    resumed = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = done_cases(out)
    ids = [ref.id for ref in list_cases(dataset)][:4]
    assert sorted(after) == ids and not leftovers(out)
    assert all(after[case] == record for case, record in before.items())  # finished cases were not redone
    assert all((case in resumed.stdout) == (case not in before) for case in ids)  # each remaining case done once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases_done"] == summary["cases_total"] == 4 and summary["failed"] == summary["missing"] == []
    assert [case["id"] for case in summary["cases"]] == ids
    assert all(case["drag_seconds"] > 0 and case["lora_seconds"] == 0 for case in summary["cases"])


def test_two_processes_split_the_cases(tmp_path):
    dataset, subset = dataset_for_subprocess_runs(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sdedrag", "bench", "run", "--dataset", str(dataset), *subset, *FAST, "--out", str(out)]
    finished = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    records = {case: json.loads(record)["results"] for case, record in done_cases(out).items()}
    ids = [ref.id for ref in list_cases(dataset)][:4]
    assert sorted(records) == ids
    assert {r["world_size"] for r in records.values()} == {2}
    assert sorted(r["rank"] for r in records.values()) == [0, 0, 1, 1]  # split_between_processes: 2 + 2
    for case in ids:  # each case was done by exactly one rank
        assert sum(f" {case}:" in line for line in finished.stdout.splitlines()) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["cases_done"] == 4 and not leftovers(out)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A generated DragBench-D set with two good cases, a malicious pickle and odd points, run in-process;
    returns the dataset, the output folder, the pickle's marker file, the arguments and stdout/stderr."""
    root = tmp_path_factory.mktemp("bench")
    dataset = write_dataset(root / "data", "dragbench-d", count=2, size=(96, 72))
    marker = root / "marker.txt"
    mask = np.ones((72, 96), bool)
    evil = write_case(root / "data", "dragbench-d", "cat2/evil", Image.new("RGB", (96, 72)), [((5, 5), (9, 9))], mask)
    (evil / "meta_data.pkl").write_bytes(pickle.dumps({"points": [[5, 5], [9, 9]], "mask": WritesAFile(marker)}))
    odd = write_case(root / "data", "dragbench-d", "cat2/odd", Image.new("RGB", (96, 72)), [((5, 5), (9, 9))], mask)
    (odd / "meta_data.pkl").write_bytes(pickle.dumps({"points": [[5, 5], [9, 9], [1, 1]], "mask": mask}))
    out = root / "out"
    args = ["bench", "run", "--dataset", str(dataset), "--model", "tiny", "--no-lora", "--steps", "4", "--out", str(out)]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(args) == 0
    return dataset, out, marker, args, stdout.getvalue(), stderr.getvalue()


def test_malformed_cases_are_reported_and_skipped(small_run):
    dataset, out, marker, args, stdout, stderr = small_run
    assert "skipping case cat2/evil: unsafe or corrupt pickle" in stderr and "skipping case cat2/odd: " in stderr
    assert "2/4 cases done" in stdout and "2 skipped: cat2/evil, cat2/odd" in stdout
    assert not marker.exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [f["id"] for f in summary["failed"]] == ["cat2/evil", "cat2/odd"] and "refusing" in summary["failed"][0]["error"]
    assert summary["cases_done"] == 2 and summary["args"]["steps"] == 4
    record = json.loads((out / "cat0" / "case0" / "run.json").read_text())
    assert record["command"] == "drag" and record["args"]["prompt"] == "prompt 0"
    assert record["args"]["source"] == [[42.0, 36.0]] and record["args"]["mask"] == str(out / "cat0" / "case0" / "mask.png")
    assert record["results"]["case"] == "cat0/case0" and record["results"]["rank"] == 0 and record["results"]["size"] == [96, 72]
    assert Image.open(out / "cat0" / "case0" / "result.png").size == (96, 72)


def test_resuming_with_other_settings_is_refused(small_run, capsys):
    dataset, out, _, args, _, _ = small_run
    assert run_cli([*args, "--steps", "5"]) == 2
    assert "holds cases run with other settings (steps 4 -> 5)" in capsys.readouterr().err
    assert run_cli([*args, "--device", "cpu"]) == 0  # the device does not change results


def test_a_case_record_replays_with_sdedrag_drag(small_run, tmp_path):
    dataset, out, *_ = small_run
    replay = tmp_path / "replay"
    assert main(["drag", "--config", str(out / "cat1" / "case1" / "run.json"), "--out", str(replay)]) == 0
    assert (replay / "result.png").read_bytes() == (out / "cat1" / "case1" / "result.png").read_bytes()
