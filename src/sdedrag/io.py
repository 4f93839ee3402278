"""Images in and out, atomic output folders, and run records (run.json)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sdedrag.errors import InputError

VERSIONED_PACKAGES = ("sdedrag", "torch", "diffusers", "transformers", "peft", "accelerate", "numpy")


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Read an image file, or raise a one-line InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from err


def load_mask(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """Read a mask image as a boolean HxW array (non-zero = editable); it must have the image's ``size``.

    A mask of another size was drawn for another image, so it is refused rather than resized.
    """
    mask = np.asarray(load_image(path, mode="L")) > 0
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        raise InputError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but the image is {size[0]}x{size[1]}; "
            "draw the mask on the same image"
        )
    return mask


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [1, 3, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """Tensor [1, 3, H, W] (or [3, H, W]) in [-1, 1] -> RGB PIL image."""
    array = ((tensor.detach().float().cpu().squeeze(0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success its files replace ``out``'s, on error it vanishes."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should be an ordinary folder
    try:
        yield staging
        if out.exists():
            for entry in staging.iterdir():
                target = out / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(entry, target)
            staging.rmdir()
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, recursively (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write strict JSON atomically (temp file in the same folder, then rename); NaN and inf become null."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def environment() -> dict[str, Any]:
    """Package versions and machine facts recorded in every run.json; replays are bit-identical only with the
    same ``torch_threads`` (the reduction order of CPU kernels depends on it)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }


def run_record(command: str, args: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
    """The run.json payload: the command and every argument (enough to rerun it), environment, results."""
    return {
        "command": command,
        "args": dict(args),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **environment(),
        "results": dict(results),
    }


def read_run_config(path: str | os.PathLike, command: str) -> dict[str, Any]:
    """The arguments stored in a run.json written by ``sdedrag COMMAND``."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InputError(f"config not found: {path}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"config {path} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
        raise InputError(f"config {path} is not a sdedrag run.json (no 'args' object)")
    if record.get("command") != command:
        raise InputError(f"config {path} was written by 'sdedrag {record.get('command')}', not 'sdedrag {command}'")
    return record["args"]
