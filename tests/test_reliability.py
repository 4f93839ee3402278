"""Bad input, one item of issue 15 at a time: each must give a one-line error (or, in a benchmark, a
reported and skipped case), leave no partial output, and never crash, hang or exhaust memory."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sdedrag.io
from sdedrag.bench.formats import list_cases, load_case
from sdedrag.bench.safe_pickle import load_pickle
from sdedrag.bench.study import Study, VoteStore
from sdedrag.bench.study_server import StudyApp, StudyHandler, make_server
from sdedrag.cli import main
from sdedrag.errors import InputError
from sdedrag.io import atomic_output_dir, check_output_dir, load_image, write_json
from sdedrag.settings import DragDiffusionParams, DragParams, InpaintParams, LoraSettings, SDEditParams
from tests.conftest import smooth_image
from tests.helpers import cli_env, write_case, write_dataset
from tests.test_cli import run_cli
from tests.test_study import CASES, results_folder

GB = 2**30
BENCH = ["--model", "tiny", "--no-lora", "--steps", "4"]


def one_line(message: str) -> str:
    """``message`` stripped, after checking it is a single line and no traceback."""
    message = message.strip()
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


def stderr_lines(stderr: str) -> str:
    """A CLI subprocess's stderr without transformers' import-time notices."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("[transformers]"))


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".partial-" in p.name or ".tmp-" in p.name]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, width: int, height: int, pixels: bool) -> Path:
    """A grayscale PNG of ``width`` x ``height`` black pixels, written row by row (never held in memory), or
    with ``pixels=False`` just the header: a few dozen bytes claiming that size."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    with path.open("wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + header)
        compressor, row = zlib.compressobj(1), bytes(width + 1)
        data = b"".join(compressor.compress(row) for _ in range(height if pixels else 0)) + compressor.flush()
        handle.write(png_chunk(b"IDAT", data) + png_chunk(b"IEND", b""))
    return path


class NumpyState:
    """Pickles as numpy's own array reconstruction with a chosen state: any shape, dtype and data."""

    def __init__(self, shape: tuple[int, ...], dtype: str, data: object):
        self.shape, self.dtype, self.data = shape, dtype, data

    def __reduce__(self):
        return np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, np.dtype(self.dtype), False, self.data)


def meta(mask: object, points: object = ((40, 30), (50, 30))) -> dict:
    return {"prompt": "", "points": [list(p) for p in points], "mask": mask}


def run_measured(command: list[str], limit: int) -> tuple[int, str, str, int]:
    """Run ``command`` and return (exit status, stdout, stderr, peak RSS in bytes); the child is killed as
    soon as its RSS passes ``limit``, so a memory bomb fails the test instead of the machine."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=cli_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        status_file = Path(f"/proc/{process.pid}/status")
        while not (waited := os.wait4(process.pid, os.WNOHANG))[0]:
            with contextlib.suppress(OSError):
                lines = status_file.read_text().splitlines()
                if sum(int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")) > limit:
                    process.kill()
            time.sleep(0.01)
        _, status, usage = waited
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return process.returncode, out.read(), err.read(), usage.ru_maxrss * 1024


# Item 1, 2, 4, 7: malformed DragBench-D cases next to good ones; every failure is reported by case id and
# reason, the good cases are done, and memory stays bounded.
BAD_D_CASES = {
    "bad/mask_none": ("the mask must be a numeric array", lambda: meta(None)),
    "bad/mask_string": ("the mask must be a numeric array", lambda: meta("editable")),
    "bad/mask_ragged": ("ragged", lambda: meta([[1, 0, 1], [1]])),
    "bad/mask_0d": ("the mask must be 2-D", lambda: meta(np.array(1, np.uint8))),
    "bad/mask_rgb": ("the mask must be 2-D", lambda: meta(np.ones((72, 96, 3), np.uint8))),
    "bad/point_huge": ("pairs of finite numbers", lambda: meta(np.ones((72, 96), np.uint8), [(10**400, 5), (9, 9)])),
    "bad/pickle_oversized": ("MiB budget", lambda: meta(NumpyState((32768, 32768), "f8", b""))),
    "bad/pickle_object_array": ("object dtype", lambda: meta(NumpyState((32768, 32768), "O", []))),
}
BAD_IMAGES = {
    "bad/image_header_bomb": ("more than PIL will decode", (30000, 30000, False)),
    "bad/image_huge": ("over the limit of 16,777,216 pixels", (10000, 10000, True)),
}


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed") / "data"
    write_dataset(root, "dragbench-d", count=2, size=(96, 72))
    good = smooth_image(96, 72)
    for case_id, (_, make) in BAD_D_CASES.items():
        folder = write_case(root, "dragbench-d", case_id, good, [((40, 30), (50, 30))], np.ones((72, 96), bool))
        (folder / "meta_data.pkl").write_bytes(pickle.dumps(make()))
    for case_id, (_, (width, height, pixels)) in BAD_IMAGES.items():
        folder = write_case(root, "dragbench-d", case_id, good, [((40, 30), (50, 30))], np.ones((72, 96), bool))
        write_png(folder / "original_image.png", width, height, pixels)
    write_case(root, "dragbench-d", "summary.json/case", good, [((40, 30), (50, 30))], np.ones((72, 96), bool))
    return root


def test_bench_run_skips_every_malformed_case_and_stays_under_1_gb_extra(mixed_dataset, tmp_path):
    good_only = tmp_path / "good"
    for case in ("cat0/case0", "cat1/case1"):
        (good_only / case).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(mixed_dataset / case, good_only / case)
    command = [sys.executable, "-m", "sdedrag", "bench", "run", *BENCH]
    status, stdout, stderr, baseline = run_measured([*command, "--dataset", str(good_only), "--out", str(tmp_path / "base")], 4 * GB)
    assert status == 0 and "2/2 cases done" in stdout, stderr

    out = tmp_path / "out"
    status, stdout, stderr, peak = run_measured([*command, "--dataset", str(mixed_dataset), "--out", str(out)], baseline + GB)
    assert status == 0, stderr[-2000:]
    print(f"peak RSS {peak / 2**20:.0f} MiB, {baseline / 2**20:.0f} MiB for the good cases alone")
    assert peak < baseline + GB, f"peak RSS {peak / GB:.2f} GB vs {baseline / GB:.2f} GB for the good cases alone"
    expected = {**{k: v[0] for k, v in BAD_D_CASES.items()}, **{k: v[0] for k, v in BAD_IMAGES.items()},
                "summary.json/case": "clashes with the run's summary.json"}
    skipped = [one_line(line) for line in stderr.splitlines() if line.startswith("skipping case ")]
    assert len(skipped) == len(expected), stderr
    for case_id, reason in expected.items():
        assert any(line.startswith(f"skipping case {case_id}: ") and reason in line for line in skipped), (case_id, skipped)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases_done"] == 2 and summary["cases_total"] == len(expected) + 2
    assert {f["id"]: f["error"] for f in summary["failed"]}.keys() == expected.keys()
    assert all(reason in {f["id"]: f["error"] for f in summary["failed"]}[case] for case, reason in expected.items())
    assert [case["id"] for case in summary["cases"]] == ["cat0/case0", "cat1/case1"]
    assert (out / "summary.json").is_file() and not partials(out)
    assert f"2/{len(expected) + 2} cases done" in stdout

    # Item 7: an empty run.json met on resume is reported, the rest still counts, and nothing is deleted.
    (out / "cat0" / "case0" / "run.json").write_text("")
    resumed = io.StringIO()
    with contextlib.redirect_stderr(resumed), contextlib.redirect_stdout(io.StringIO()):
        assert main(["bench", "run", *BENCH, "--dataset", str(mixed_dataset), "--out", str(out)]) == 0
    assert "skipping case cat0/case0: " in resumed.getvalue() and "not a readable sdedrag record" in resumed.getvalue()
    summary = json.loads((out / "summary.json").read_text())
    assert [case["id"] for case in summary["cases"]] == ["cat1/case1"] and "cat0/case0" in {f["id"] for f in summary["failed"]}
    assert (out / "cat0" / "case0" / "result.png").is_file() and not partials(out)


def write_s_case(root: Path, name: str, prompt_json: object | None) -> Path:
    folder = write_case(root, "dragbench-s", name, smooth_image(96, 72), [((40, 30), (50, 30))], np.ones((72, 96), bool))
    if prompt_json is not None:
        (folder / "prompt.json").write_text(prompt_json if isinstance(prompt_json, str) else json.dumps(prompt_json))
    return folder


def test_dragbench_s_prompt_files_of_any_shape_are_reported_per_case(tmp_path):
    root = tmp_path / "data"
    write_s_case(root, "good", None)
    write_s_case(root, "deep", "[" * 100_000 + "]" * 100_000)
    folder = write_s_case(root, "folder", None)
    (folder / "prompt.json").unlink()
    (folder / "prompt.json").mkdir()
    write_s_case(root, "string_point", {"prompt": "", "source": "20,20", "target": [[30, 20]]})
    write_s_case(root, "string_pair", {"prompt": "", "source": ["20", "20"], "target": ["30", "20"]})
    write_s_case(root, "infinite", '{"prompt": "", "source": [[1e999, 20]], "target": [[30, 20]]}')
    expected = {"deep": "nested too deeply", "folder": "cannot read prompt.json", "string_point": "pairs of finite numbers",
                "string_pair": "pairs of finite numbers", "infinite": "pairs of finite numbers"}
    out, stderr, stdout = tmp_path / "out", io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        assert main(["bench", "run", *BENCH, "--format", "dragbench-s", "--dataset", str(root), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    failed = {f["id"]: one_line(f["error"]) for f in summary["failed"]}
    assert failed.keys() == expected.keys() and all(reason in failed[case] for case, reason in expected.items()), failed
    assert [case["id"] for case in summary["cases"]] == ["good"] and not partials(out)
    assert sum(line.startswith("skipping case ") for line in stderr.getvalue().splitlines()) == len(expected)


# Item 2: the unpickler checks shape, dtype and size before allocating.
@pytest.mark.parametrize(("payload", "reason"), [
    (NumpyState((32768, 32768), "f8", b""), "arrays over the 64 MiB budget"),
    (NumpyState((2**62, 2**62), "u1", b""), "arrays over the 64 MiB budget"),
    (NumpyState((2,), "O", [1, 2]), "refusing numpy object dtype"),
    (NumpyState((2,), "u1", b"\x00"), "does not match its shape"),
    (NumpyState((-1,), "u1", b""), "malformed numpy array shape"),
])
def test_unpickler_checks_arrays_before_allocating(tmp_path, payload, reason):
    path = tmp_path / "meta_data.pkl"
    path.write_bytes(pickle.dumps({"mask": payload}))
    assert len(path.read_bytes()) < 200
    with pytest.raises(InputError) as err:
        load_pickle(path)
    assert reason in one_line(str(err.value))


def test_unpickler_bounds_file_size_and_nesting_and_returns_plain_arrays(tmp_path):
    deep = tmp_path / "deep.pkl"
    deep.write_bytes(b"\x80\x04" + b"]" * 100_000 + b"a" * 99_999 + b".")
    with pytest.raises(InputError, match="nested too deeply"):
        load_pickle(deep)
    big = tmp_path / "big.pkl"
    with big.open("wb") as handle:
        handle.truncate(65 * 2**20)
    with pytest.raises(InputError, match="over the 64 MiB limit for pickles"):
        load_pickle(big)
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"mask": mask, "points": [np.int64(3), np.float32(2.5)], "t": (mask,)}))
    loaded = load_pickle(tmp_path / "ok.pkl")
    assert type(loaded["mask"]) is np.ndarray and np.array_equal(loaded["mask"], mask) and type(loaded["t"][0]) is np.ndarray
    assert loaded["points"] == [3, 2.5]


# Item 4: a pixel limit on every image read, checked from the header.
def test_header_bomb_and_huge_images_are_refused_before_decoding(tmp_path):
    bomb = write_png(tmp_path / "bomb.png", 30000, 30000, pixels=False)
    assert bomb.stat().st_size < 100
    with pytest.raises(InputError) as err:
        load_image(bomb)
    assert "more than PIL will decode" in one_line(str(err.value))
    image = tmp_path / "image.png"
    smooth_image(40, 30).save(image)
    with pytest.raises(InputError) as err:
        load_image(image, max_pixels=1000)
    assert one_line(str(err.value)) == (f"image {image} is 40x30 (1,200 pixels), over the limit of 1,000 pixels; "
                                        "raise the pixel limit to read it")
    assert load_image(image, max_pixels=1200).size == (40, 30)


def test_the_pixel_limit_is_a_library_setting_and_pils_warning_is_handled(tmp_path, monkeypatch):
    image = tmp_path / "image.png"
    smooth_image(40, 30).save(image)
    monkeypatch.setattr(sdedrag.io, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match="over the limit of 1,000 pixels"):
        load_image(image)
    with pytest.raises(InputError, match="over the limit of 1,000 pixels"):
        sdedrag.io.load_mask(image, (40, 30))
    monkeypatch.setattr(sdedrag.io, "MAX_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above 1000 pixels, refuses above 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(image).size == (40, 30)
    smooth_image(50, 50).save(image)
    with pytest.raises(InputError, match="has over 2,000 pixels, more than PIL will decode"):
        load_image(image)


def test_bench_cases_take_the_pixel_limit(tmp_path):
    write_dataset(tmp_path, "drag100", count=1, size=(80, 64))
    (ref,) = list_cases(tmp_path)
    assert load_case(ref).image.size == (80, 64)
    with pytest.raises(InputError, match=r"^case case0: image .* over the limit of 5,000 pixels"):
        load_case(ref, max_pixels=5000)


# Item 3: output folders: an existing file, a foreign folder, an unwritable place.
def test_output_checks_refuse_files_foreign_folders_and_unwritable_places(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    foreign = tmp_path / "photos"
    (foreign / "frames").mkdir(parents=True)
    (foreign / "frames" / "000.png").write_text("mine")
    (foreign / "result.png").write_text("mine")
    cases = {
        existing: "exists and is not a folder",
        existing / "out": f"{existing} is not a folder",
        foreign: "is not empty and holds no sdedrag results",
        Path("/proc/self/out"): "cannot write to folder /proc/self",
    }
    for out, reason in cases.items():
        with pytest.raises(InputError) as err:
            check_output_dir(out)
        assert reason in one_line(str(err.value)), out
        with pytest.raises(InputError), atomic_output_dir(out):
            pytest.fail("the body ran although the output folder is unusable")
    assert existing.read_text() == "mine" and (foreign / "frames" / "000.png").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper" and not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")


def test_rerunning_into_an_sdedrag_folder_replaces_its_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "out"
    for run in range(2):
        with atomic_output_dir(out) as staging:
            (staging / "frames").mkdir()
            (staging / "frames" / f"{run}.png").write_text(str(run))
            write_json(staging / "run.json", {"run": run, "versions": {"sdedrag": "0"}})
        (out / "notes.txt").write_text("the user's")
    assert sorted(p.name for p in out.iterdir()) == ["frames", "notes.txt", "run.json"]
    assert [p.name for p in (out / "frames").iterdir()] == ["1.png"] and json.loads((out / "run.json").read_text())["run"] == 1
    assert (out / "notes.txt").read_text() == "the user's" and not partials(tmp_path)


# Item 7: SIGTERM and Ctrl-C leave no staging folders behind.
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_write_leaves_no_partial_folder(tmp_path, signum):
    code = (  # Ctrl-C raises KeyboardInterrupt as in a terminal, even if this test runs as a background job
        "import signal, time, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from sdedrag.io import atomic_output_dir\n"
        "from sdedrag.errors import SdedragError\n"
        "try:\n"
        f"    with atomic_output_dir({str(tmp_path / 'out')!r}) as staging:\n"
        "        (staging / 'result.png').write_text('half'); print('ready', flush=True); time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', file=sys.stderr); sys.exit(130)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    assert [p.name.split(".partial-")[0] for p in tmp_path.iterdir()] == [".out"]
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and one_line(stderr) == "interrupted"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_bench_run_leaves_no_partial_case(tmp_path):
    dataset = write_dataset(tmp_path / "data", "dragbench-d", count=2, size=(96, 72))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sdedrag", "bench", "run", "--model", "tiny", "--no-lora", "--steps", "400",
               "--dataset", str(dataset), "--out", str(out)]
    process = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not partials(out):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no case started in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130 and one_line(stderr_lines(stderr)) == "sdedrag bench: interrupted", stderr
    assert not partials(out) and not list(out.rglob("run.json"))


# Item 8: the study server answers malformed requests, bounds bodies and state, and takes bursts.
@pytest.fixture
def study_server(tmp_path):
    study = Study([results_folder(tmp_path, "ours", 0), results_folder(tmp_path, "baseline", 10)])
    app = StudyApp(study, VoteStore(tmp_path / "votes.sqlite"), max_open=50)
    server = make_server(app, port=0)
    server.RequestHandlerClass.timeout = 2.0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, server.server_address[:2]
    server.shutdown()
    server.server_close()
    thread.join()


def raw_request(address: tuple[str, int], request: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(("length", "status"), [("-1", b"400"), ("abc", b"400"), ("", b"400"), ("99999999", b"413")])
def test_study_server_answers_bad_content_lengths(study_server, length, status):
    _, address = study_server
    header = f"Content-Length: {length}\r\n" if length else ""
    start = time.monotonic()
    response = raw_request(address, f"POST /vote HTTP/1.1\r\nHost: x\r\n{header}\r\ntoken=a&choice=left".encode())
    assert response.split(b" ")[1] == status and time.monotonic() - start < 1.5


def test_study_server_times_out_a_client_that_stops_sending(study_server):
    assert StudyHandler.timeout == 30.0  # the fixture shortens it to 2 s
    _, address = study_server
    start = time.monotonic()
    response = raw_request(address, b"POST /vote HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\ntoken=a")
    assert response == b"" and time.monotonic() - start < 5


def test_study_server_bounds_and_expires_open_questions(tmp_path):
    study = Study([results_folder(tmp_path, "ours", 0), results_folder(tmp_path, "baseline", 10)])
    now = [0.0]
    app = StudyApp(study, VoteStore(tmp_path / "votes.sqlite"), max_open=50, ttl=60.0, clock=lambda: now[0])
    first = app.next_question("rater0")
    for rater in range(1, 200):  # cookie-less visitors: a new random rater each
        app.next_question(f"rater{rater}")
    assert app.open_questions() == (50, 150)
    assert app.image(first[2]["left"]) is None and not app.vote("rater0", first[0], "left")
    token, _, images = app.next_question("rater199")
    assert app.image(images["left"]) is not None
    now[0] = 61.0
    assert app.open_questions() == (0, 0) and app.image(images["left"]) is None
    assert not app.vote("rater199", token, "left") and len(CASES) == 2


def test_study_server_accepts_a_burst_of_200_connections(tmp_path):
    study = Study([results_folder(tmp_path, "ours", 0), results_folder(tmp_path, "baseline", 10)])
    server = make_server(StudyApp(study, VoteStore(tmp_path / "votes.sqlite")), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    try:  # nobody accepts yet: the kernel's listen queue alone must hold the burst
        clients = []
        for _ in range(200):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(server.server_address[:2])
            clients.append(client)
        connected, deadline = set(), time.monotonic() + 2
        while len(connected) < 200 and time.monotonic() < deadline:
            _, writable, _ = select.select([], [c for c in clients if c not in connected], [], 0.1)
            connected |= {c for c in writable if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0}
        assert len(connected) == 200
        thread.start()
        answered = 0
        for client in clients:
            with client:
                with contextlib.suppress(OSError):
                    client.settimeout(10)
                    client.sendall(b"GET /missing HTTP/1.0\r\n\r\n")
                    answered += client.recv(12).startswith(b"HTTP/1.0 404")
        assert answered == 200
    finally:
        if thread.is_alive():
            server.shutdown()
        server.server_close()


# Item 5: every float option and every float in a --config is finite and in range; moves are bounded.
FLOAT_CASES = [
    (["drag", "--alpha", "inf"], "argument --alpha: must be a number in (0, 10], got inf"),
    (["drag", "--guidance", "inf"], "argument --guidance: must be a number in [1, 100], got inf"),
    (["drag", "--beta", "nan"], "argument --beta: must be a number in [0, 1], got nan"),
    (["drag", "--lora-scale-min", "-0.5"], "argument --lora-scale-min: must be a number in [0, 1], got -0.5"),
    (["drag", "--lora-lr", "inf"], "argument --lora-lr: must be a number greater than 0, got inf"),
    (["drag", "--inversion-guidance", "nan"], "argument --inversion-guidance: must be a number in [1, 100] or 'ramp'"),
    (["drag", "--source", "nan,3"], "argument --source: expected X,Y (two finite numbers), got 'nan,3'"),
    (["drag", "--method", "dragdiffusion", "--reach", "inf"], "argument --reach: must be a number greater than 0"),
    (["inpaint", "--guidance", "nan"], "argument --guidance: must be a number in [1, 100], got nan"),
    (["sdedit", "--guidance", "-5"], "argument --guidance: must be a number in [1, 100], got -5"),
    (["reconstruct", "--guidance", "-5"], "argument --guidance: must be a number in [1, 100], got -5"),
    (["diffedit", "--mask-threshold", "inf"], "argument --mask-threshold: must be a number in [0, 1], got inf"),
    (["theory", "--stds", "1", "-1"], "argument --stds: must be a number greater than 0, got -1"),
    (["theory", "--means", "0", "inf"], "argument --means: must be a number finite, got inf"),
    (["train-shapes", "--lr", "nan"], "argument --lr: must be a number greater than 0, got nan"),
]


@pytest.mark.parametrize(("argv", "message"), FLOAT_CASES, ids=[" ".join(c[0]) for c in FLOAT_CASES])
def test_non_finite_and_out_of_range_options_are_refused(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert run_cli([*argv, "--out", str(out)]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("settings", "message"), [
    (lambda: DragParams(alpha=math.inf), "alpha must be a finite number, not inf"),
    (lambda: DragParams(guidance=math.inf), "guidance must be a finite number, not inf"),
    (lambda: InpaintParams(guidance=math.nan), "guidance must be a finite number, not nan"),
    (lambda: SDEditParams(guidance=-5.0), "guidance must be in [1, 100]"),
    (lambda: DragParams(alpha=1e300), "alpha must be in (0, 10]"),
    (lambda: DragParams(paste_back="false"), "paste back must be true or false, not 'false'"),
    (lambda: DragParams(steps=2.5), "steps must be an integer, not 2.5"),
    (lambda: DragDiffusionParams(latent_lr=math.inf), "latent lr must be a finite number"),
    (lambda: LoraSettings(steps=10**6), "LoRA steps must be an integer in [1, 10000]"),
])
def test_settings_refuse_wrong_types_and_non_finite_numbers(settings, message):
    with pytest.raises(InputError) as err:
        settings()
    assert message in one_line(str(err.value))


def test_a_tiny_step_size_is_refused_with_the_bound_on_moves(tmp_path, image_file):
    out = tmp_path / "out"
    argv = ["drag", "--image", str(image_file), "--source", "10,10", "--target", "90,60", "--step-size", "1e-300",
            "--model", "tiny", "--no-lora", "--steps", "2", "--out", str(out)]
    finished = subprocess.run([sys.executable, "-m", "sdedrag", *argv], env=cli_env(), capture_output=True, text=True,
                              timeout=300)  # without the bound: about 1e301 moves
    assert finished.returncode == 2 and not out.exists()
    message = one_line(stderr_lines(finished.stderr))
    assert "takes 1.17e+301 moves, more than the limit of 1000; use a step size of at least 0.0117" in message


# Item 6: a --config's values are checked by type as if given as options.
def drag_record(tmp_path: Path, image_file: Path) -> dict:
    out = tmp_path / "good"
    argv = ["drag", "--image", str(image_file), "--source", "10,10", "--target", "20,12", "--model", "tiny",
            "--no-lora", "--steps", "2", "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return json.loads((out / "run.json").read_text())


CONFIG_CASES = [
    ({"lora": "false"}, 'lora = "false": must be true or false'),
    ({"paste_back": "false"}, 'paste_back = "false": must be true or false'),
    ({"source": "20,20"}, 'source = "20,20": must be a list'),
    ({"source": ["20", "20"]}, "source = [\"20\", \"20\"]: expected X,Y (two numbers), got '20'"),
    ({"guidance": math.inf}, "guidance = Infinity: must be a number in [1, 100], got inf"),
    ({"alpha": None}, "alpha = null: may not be null"),
    ({"steps": 2.5}, "steps = 2.5: invalid positive_int value: 2.5"),
    ({"method": "sdx"}, 'method = "sdx": must be one of sde, ode, dragdiffusion'),
    ({"prompt": 5}, "prompt = 5: must be a string"),
]


def test_config_values_are_checked_like_options(tmp_path, capsys, image_file):
    record = drag_record(tmp_path, image_file)
    assert record["args"]["lora"] is False and record["args"]["paste_back"] is True
    for index, (change, message) in enumerate(CONFIG_CASES):
        config = tmp_path / f"config{index}.json"
        config.write_text(json.dumps({**record, "args": {**record["args"], **change}}))
        out = tmp_path / f"out{index}"
        assert run_cli(["drag", "--config", str(config), "--out", str(out)]) == 2, change
        assert one_line(capsys.readouterr().err) == f"sdedrag drag: error: config {config}: {message}", change
        assert not out.exists()
    replay = tmp_path / "replay"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**record, "args": {**record["args"], "paste_back": False}}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["drag", "--config", str(config), "--out", str(replay)]) == 0
    assert json.loads((replay / "run.json").read_text())["args"]["paste_back"] is False


# Item 3 through the CLI: the output check runs before anything else, even loading the model.
def test_the_cli_checks_out_before_any_work(tmp_path, capsys, image_file):
    foreign = tmp_path / "photos"
    (foreign / "frames").mkdir(parents=True)
    (foreign / "frames" / "000.png").write_text("mine")
    cases = {image_file: "exists and is not a folder", foreign: "is not empty and holds no sdedrag results",
             Path("/proc/self/out"): "cannot write to folder /proc/self"}
    for out, reason in cases.items():
        argv = ["reconstruct", "--image", str(image_file), "--model", "nobody/nothing", "--out", str(out)]
        assert run_cli(argv) == 2
        message = one_line(capsys.readouterr().err)
        assert reason in message and "cannot load model" not in message
    assert (foreign / "frames" / "000.png").read_text() == "mine" and image_file.stat().st_size > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [image_file.name, "photos"]


# Item 4 through the CLI: --max-pixels, and per case in bench run.
def test_max_pixels_option(tmp_path, capsys, image_file):
    argv = ["drag", "--image", str(image_file), "--source", "10,10", "--target", "20,12", "--model", "tiny",
            "--no-lora", "--steps", "2", "--max-pixels", "1000", "--out", str(tmp_path / "out")]
    assert run_cli(argv) == 2
    assert "is 96x72 (6,912 pixels), over the limit of 1,000 pixels" in one_line(capsys.readouterr().err)
    dataset = write_dataset(tmp_path / "data", "drag100", count=2, size=(80, 64))
    out = tmp_path / "bench"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as stderr:
        assert main(["bench", "run", *BENCH, "--dataset", str(dataset), "--max-pixels", "5000", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases_done"] == 0 and len(summary["failed"]) == 2
    assert all("over the limit of 5,000 pixels" in one_line(f["error"]) for f in summary["failed"])
    assert stderr.getvalue().count("skipping case") == 2


# Item 9: the UI refuses clicks outside the image and bounds LoRA steps.
def test_ui_refuses_clicks_outside_the_image_and_bounds_lora_steps():
    from sdedrag.ui import handlers

    assert handlers.add_point([], (-3, -2), (64, 48)) == [] and handlers.add_point([], (-0.4, 5), (512, 512)) == []
    scale = handlers.view_scale((64, 48))
    assert handlers.add_point([], (2 * scale, 3 * scale), (64, 48)) == [[2, 3]]
    with pytest.raises(InputError, match=r"LoRA steps must be an integer in \[1, 10000\]"):
        handlers.drag_settings({"lora": True, "lora_steps": 10**6})
