"""The three benchmark layouts: generated fixtures, the ../shared/data samples, malformed cases, and a
malicious DragBench-D pickle that must execute nothing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sdedrag.bench.formats import FORMATS, detect_format, list_cases, load_case, resize_case
from sdedrag.errors import InputError
from tests.conftest import SHARED_DATA
from tests.helpers import WritesAFile, write_dataset

SAMPLES = {"dragbench-d": ("dragbench-d-sample", 14), "drag100": ("drag100-sample", 4), "dragbench-s": ("dragbench-s-sample", 1)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_generated_fixtures_load_in_every_format(tmp_path, fmt):
    write_dataset(tmp_path, fmt)
    assert detect_format(tmp_path) == fmt
    refs = list_cases(tmp_path)
    ids = ["cat0/case0", "cat0/case2", "cat1/case1"] if fmt == "dragbench-d" else ["case0", "case1", "case2"]
    assert [ref.id for ref in refs] == ids
    case = load_case(refs[0])
    assert case.category == ("cat0" if fmt == "dragbench-d" else None)
    assert case.prompt == ("" if fmt == "drag100" else "prompt 0")  # Drag100 has no prompts
    assert case.sources == [(34.0, 32.0)] and case.targets == [(44.0, 28.0)]
    assert case.image.size == (80, 64) and case.mask.dtype == bool and case.mask.shape == (64, 80)
    assert case.mask[32, 40] and not case.mask[2, 2] and case.mask.sum() == 32 * 40


@pytest.mark.parametrize("fmt", SAMPLES)
def test_shared_samples_load(fmt):
    folder, count = SAMPLES[fmt]
    root = SHARED_DATA / folder
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    assert detect_format(root) == fmt
    refs = list_cases(root)
    assert len(refs) == count
    for ref in refs:
        case = load_case(ref)
        width, height = case.image.size
        assert width == 512 and 288 <= height <= 913
        assert case.mask.shape == (height, width) and 0 < case.mask.mean() < 1
        assert len(case.sources) == len(case.targets) >= 1 and case.sources != case.targets
        assert (fmt == "dragbench-d") == (case.category is not None) == ("/" in case.id)
    if fmt == "dragbench-s":
        bear = load_case(refs[0])
        assert bear.prompt.startswith("Polar bear") and bear.sources == [(145.0, 216.0)] and bear.targets == [(146.0, 144.0)]


def test_a_malicious_pickle_is_refused_and_executes_nothing(tmp_path):
    armed, marker = tmp_path / "armed.txt", tmp_path / "marker.txt"
    pickle.loads(pickle.dumps(WritesAFile(armed)))  # the payload works when unpickled normally ...
    assert armed.exists()

    write_dataset(tmp_path / "data", "dragbench-d", count=2)
    evil = tmp_path / "data" / "cat0" / "case0" / "meta_data.pkl"
    evil.write_bytes(pickle.dumps({"prompt": "x", "points": [[1, 1], [2, 2]], "mask": WritesAFile(marker)}))
    refs = list_cases(tmp_path / "data")
    with pytest.raises(InputError, match=r"case cat0/case0: unsafe or corrupt pickle .*refusing to load io\.open"):
        load_case(refs[0])
    assert not marker.exists()  # ... and not at all through the benchmark loader
    assert load_case(refs[1]).id == "cat1/case1"  # the other case is unaffected


@pytest.mark.parametrize(
    "fmt, damage, message",
    [
        ("dragbench-s", lambda f: (f / "prompt.json").write_text("{not json"), "prompt.json is not valid JSON"),
        ("dragbench-s", lambda f: (f / "mask.png").unlink(), "missing mask.png"),
        ("dragbench-s", lambda f: (f / "prompt.json").write_text('{"source": [[1, 1]], "target": []}'), "paired"),
        ("drag100", lambda f: (f / "points.json").write_text('{"points": [[1, 1], [2, 2], [3, 3]]}'), "alternate"),
        ("drag100", lambda f: (f / "points.json").write_text('{"points": [[1, 1], [500, 2]]}'), "outside the 80x64 image"),
        ("drag100", lambda f: (f / "original.jpg").write_bytes(b"not an image"), "cannot read image"),
        ("dragbench-d", lambda f: (f / "meta_data.pkl").write_bytes(pickle.dumps({"points": [[1, 1], [2, 2]],
                                                                                   "mask": np.ones((5, 5), np.uint8)})),
         "mask is 5x5 but the image is 80x64"),
        ("dragbench-d", lambda f: (f / "meta_data.pkl").write_bytes(b"\x80\x05garbage"), "pickle"),
        ("shapesbench", lambda f: (f / "case.json").write_text('{"source": [1, 1]}'), "needs 'source' and 'target'"),
        ("shapesbench", lambda f: (f / "case.json").write_text('{"source": [1, 1], "target": [900, 2]}'),
         "outside the 80x64 image"),
    ],
)
def test_malformed_cases_are_reported_by_id(tmp_path, fmt, damage, message):
    write_dataset(tmp_path, fmt, count=2)
    refs = list_cases(tmp_path)
    damage(refs[0].folder)
    with pytest.raises(InputError, match=rf"^case {refs[0].id}: .*{message}"):
        load_case(refs[0])
    assert load_case(refs[1]).id == refs[1].id


def test_unknown_layouts_and_formats_are_refused(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(InputError, match="cannot tell the format"):
        list_cases(tmp_path)
    with pytest.raises(InputError, match="not found"):
        detect_format(tmp_path / "absent")
    with pytest.raises(InputError, match="unknown dataset format"):
        list_cases(tmp_path, "dragbench-x")


def test_resize_case_scales_points_and_mask_together(tmp_path):
    write_dataset(tmp_path, "dragbench-s", count=1, size=(160, 120))
    case = load_case(list_cases(tmp_path)[0])
    small = resize_case(case, 40)
    assert small.image.size == (40, 30)
    assert small.sources == [(18.5, 15.0)] and small.targets == [(21.0, 14.0)]
    assert small.mask.shape == (30, 40) and small.mask.sum() == 20 * 15
    assert resize_case(case, 500) is case
