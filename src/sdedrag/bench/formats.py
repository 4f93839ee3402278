"""The three drag benchmarks' native layouts, and ShapesBench's case folders, read into one case type.

- ``dragbench-s`` (SDE-Drag's DragBench): ``<case>/origin_image.png``, ``mask.png`` (L, 255 = editable),
  ``prompt.json`` {"prompt", "source": [[x, y], ...], "target": [[x, y], ...]}.
- ``dragbench-d`` (DragDiffusion's DragBench): ``<category>/<case>/original_image.png`` and ``meta_data.pkl``
  {"prompt", "points": [[x, y], ...] alternating handle/target, "mask": uint8 HxW, 1 = editable}; the pickle
  is read with :mod:`sdedrag.bench.safe_pickle`, which refuses anything but plain data and numpy arrays.
- ``drag100`` (GoodDrag's Drag100): ``<case>/original.jpg``, ``mask.png``, ``points.json`` {"points": [...]
  alternating}; no prompt.
- ``shapesbench`` (``sdedrag shapes-bench``'s DIR/cases): ``<case>/input.png``, ``mask.png``, ``case.json``
  {"source": [x, y], "target": [x, y], "prompt": the scene's caption}; one drag per case.

Listing a dataset is cheap and never fails on a bad case; :func:`load_case` reads one case and raises a
one-line :class:`~sdedrag.errors.InputError` naming the case when it is malformed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdedrag.bench.safe_pickle import load_pickle
from sdedrag.bench.settings import FORMATS
from sdedrag.errors import InputError
from sdedrag.io import load_image
from sdedrag.tasks.drag import Point, validate_points

IMAGE_FILES = {"dragbench-s": "origin_image.png", "dragbench-d": "original_image.png", "drag100": "original.jpg",
               "shapesbench": "input.png"}
# A file whose presence in a case folder identifies the format.
MARKERS = {"dragbench-s": "prompt.json", "dragbench-d": "meta_data.pkl", "drag100": "points.json",
           "shapesbench": "case.json"}
MAX_JSON_BYTES = 16 * 2**20


@dataclass(frozen=True)
class CaseRef:
    """A case found in a dataset, not yet read: ``id`` is its path below the dataset root."""

    id: str
    category: str | None
    folder: Path
    format: str

    @property
    def image_path(self) -> Path:
        return self.folder / IMAGE_FILES[self.format]


@dataclass
class DragCase:
    """One benchmark case: the image, its prompt, source/target pairs (image pixels, x, y) and the
    editable mask (bool HxW, True = editable)."""

    id: str
    category: str | None
    image: Image.Image
    prompt: str
    sources: list[Point]
    targets: list[Point]
    mask: np.ndarray
    image_path: Path
    format: str


def _subfolders(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith("."))


def detect_format(root: str | Path) -> str:
    """Which of :data:`FORMATS` the dataset at ``root`` is in, judged by its case folders' files."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    for folder in _subfolders(root):
        if (folder / MARKERS["dragbench-s"]).is_file():
            return "dragbench-s"
        if (folder / MARKERS["drag100"]).is_file():
            return "drag100"
        if (folder / MARKERS["shapesbench"]).is_file():
            return "shapesbench"
        if any((case / MARKERS["dragbench-d"]).is_file() for case in _subfolders(folder)):
            return "dragbench-d"
    raise InputError(
        f"cannot tell the format of dataset {root}: no <case>/prompt.json (dragbench-s), <case>/points.json "
        "(drag100), <case>/case.json (shapesbench) or <category>/<case>/meta_data.pkl (dragbench-d) found"
    )


def list_cases(root: str | Path, fmt: str = "auto") -> list[CaseRef]:
    """Every case folder of the dataset, sorted by id (``category/case`` for dragbench-d, else ``case``)."""
    root = Path(root).resolve()
    if fmt == "auto":
        fmt = detect_format(root)
    if fmt not in FORMATS:
        raise InputError(f"unknown dataset format {fmt!r}; choose auto or one of {', '.join(FORMATS)}")
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    if fmt == "dragbench-d":
        return [
            CaseRef(f"{category.name}/{case.name}", category.name, case, fmt)
            for category in _subfolders(root)
            for case in _subfolders(category)
        ]
    return [CaseRef(case.name, None, case, fmt) for case in _subfolders(root)]


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise InputError(f"{path.name} is over {MAX_JSON_BYTES // 2**20} MiB")
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"missing {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path.name} is not valid JSON ({err})") from None
    except RecursionError:
        raise InputError(f"{path.name} is nested too deeply") from None
    except OSError as err:
        raise InputError(f"cannot read {path.name}: {err.strerror or err}") from None


def _number(value: Any) -> float:
    """A finite int or float (numpy's too); strings and booleans are not numbers here."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(value)
    number = float(value)  # OverflowError for integers beyond float's range
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _points(value: Any, what: str) -> list[Point]:
    """A list of [x, y] pairs of finite numbers."""
    try:
        if isinstance(value, (str, bytes, dict)):
            raise TypeError(value)
        points = []
        for point in value:
            if isinstance(point, (str, bytes, dict)) or len(point) != 2:
                raise TypeError(point)
            points.append((_number(point[0]), _number(point[1])))
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what} must be a list of [x, y] pairs of finite numbers") from None
    return points


def _split_alternating(points: list[Point], what: str) -> tuple[list[Point], list[Point]]:
    if len(points) % 2:
        raise InputError(f"{what} has {len(points)} points; they must alternate handle, target")
    return points[0::2], points[1::2]


def _mask_array(value: Any) -> np.ndarray:
    """A mask given as an array: numeric, HxW or HxWx1; non-zero = editable."""
    try:
        mask = np.asarray(value)
    except (ValueError, TypeError):
        raise InputError("the mask must be a numeric array, not a ragged sequence") from None
    if mask.dtype.kind not in "biuf":
        raise InputError(f"the mask must be a numeric array, not {type(value).__name__} of {mask.dtype}")
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(f"the mask must be 2-D (or 3-D with one channel), not of shape {mask.shape}")
    return mask > 0


def _mask_file(path: Path, max_pixels: int | None) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"missing {path.name}")
    return np.asarray(load_image(path, mode="L", max_pixels=max_pixels)) > 0


def _read_native(ref: CaseRef, max_pixels: int | None) -> tuple[str, list[Point], list[Point], np.ndarray]:
    """(prompt, sources, targets, mask) from the case's native files."""
    folder = ref.folder
    if ref.format == "dragbench-s":
        meta = _read_json(folder / "prompt.json")
        if not isinstance(meta, dict) or "source" not in meta or "target" not in meta:
            raise InputError("prompt.json needs 'source' and 'target' lists")
        prompt = meta.get("prompt", "")
        sources, targets = _points(meta["source"], "source"), _points(meta["target"], "target")
        mask = _mask_file(folder / "mask.png", max_pixels)
    elif ref.format == "dragbench-d":
        meta = load_pickle(folder / "meta_data.pkl")
        if not isinstance(meta, dict) or "points" not in meta or "mask" not in meta:
            raise InputError("meta_data.pkl must hold a dict with 'points' and 'mask'")
        prompt = meta.get("prompt", "")
        sources, targets = _split_alternating(_points(meta["points"], "points"), "meta_data.pkl")
        mask = _mask_array(meta["mask"])
    elif ref.format == "shapesbench":
        meta = _read_json(folder / "case.json")
        if not isinstance(meta, dict) or "source" not in meta or "target" not in meta:
            raise InputError("case.json needs 'source' and 'target' points")
        prompt = meta.get("prompt", "")
        sources, targets = _points([meta["source"]], "source"), _points([meta["target"]], "target")
        mask = _mask_file(folder / "mask.png", max_pixels)
    else:
        meta = _read_json(folder / "points.json")
        if not isinstance(meta, dict) or "points" not in meta:
            raise InputError("points.json needs a 'points' list")
        prompt = ""
        sources, targets = _split_alternating(_points(meta["points"], "points"), "points.json")
        mask = _mask_file(folder / "mask.png", max_pixels)
    if not isinstance(prompt, str):
        raise InputError("the prompt must be a string")
    return prompt, sources, targets, mask


def load_case(ref: CaseRef, max_pixels: int | None = None) -> DragCase:
    """Read and check one case (images of at most ``max_pixels``, default :data:`sdedrag.io.MAX_IMAGE_PIXELS`);
    a malformed case raises ``InputError('case <id>: ...')``."""
    try:
        image = load_image(ref.image_path, max_pixels=max_pixels)
        prompt, sources, targets, mask = _read_native(ref, max_pixels)
        validate_points(sources, targets, image.size)
        if mask.shape != (image.size[1], image.size[0]):
            width, height = image.size
            raise InputError(f"mask is {mask.shape[-1]}x{mask.shape[0]} but the image is {width}x{height}")
    except InputError as err:
        raise InputError(f"case {ref.id}: {err}") from err
    return DragCase(ref.id, ref.category, image, prompt, sources, targets, mask, ref.image_path, ref.format)


def resize_case(case: DragCase, max_size: int) -> DragCase:
    """The case scaled down so that its longer side is at most ``max_size`` (points and mask along with it);
    a case that already fits comes back unchanged."""
    width, height = case.image.size
    scale = max_size / max(width, height)
    if scale >= 1.0:
        return case
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    sx, sy = size[0] / width, size[1] / height
    mask = Image.fromarray(case.mask).resize(size, Image.Resampling.NEAREST)
    return DragCase(
        case.id, case.category, case.image.resize(size, Image.Resampling.LANCZOS), case.prompt,
        [(x * sx, y * sy) for x, y in case.sources], [(x * sx, y * sy) for x, y in case.targets],
        np.asarray(mask), case.image_path, case.format,
    )
