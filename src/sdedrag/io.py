"""Images in and out, atomic output folders, and run records (run.json)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import struct
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sdedrag import settings
from sdedrag.errors import InputError

# Pixels an input image may have; set it, or pass max_pixels, to read larger images. PIL refuses images over
# 2 * PIL.Image.MAX_IMAGE_PIXELS (179 MP) on its own.
MAX_IMAGE_PIXELS = settings.MAX_IMAGE_PIXELS
# Largest run.json or summary.json read to recognise a folder sdedrag wrote.
MAX_RECORD_BYTES = 16 * 2**20
VERSIONED_PACKAGES = ("sdedrag", "torch", "diffusers", "transformers", "peft", "accelerate", "numpy")


def load_image(path: str | os.PathLike, mode: str = "RGB", max_pixels: int | None = None) -> Image.Image:
    """Read an image file of at most ``max_pixels`` pixels (default :data:`MAX_IMAGE_PIXELS`), or raise a
    one-line InputError naming the file; the size is checked from the header, before any pixel is decoded."""
    path = Path(path)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below governs
            with Image.open(path) as image:
                width, height = image.size
                if width * height > limit:
                    raise InputError(
                        f"image {path} is {width}x{height} ({width * height:,} pixels), over the limit of "
                        f"{limit:,} pixels; raise the pixel limit to read it"
                    )
                image.load()
                return image.convert(mode)
    except InputError:
        raise
    except Image.DecompressionBombError:
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise InputError(
            f"image {path} has over {min(limit, ceiling):,} pixels, more than PIL will decode "
            "(PIL.Image.MAX_IMAGE_PIXELS)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError,
            TypeError, ZeroDivisionError) as err:
        raise InputError(f"cannot read image {path}: {err}") from err
    except MemoryError:
        raise InputError(f"cannot read image {path}: out of memory") from None


def load_mask(path: str | os.PathLike, size: tuple[int, int], max_pixels: int | None = None) -> np.ndarray:
    """Read a mask image as a boolean HxW array (non-zero = editable); it must have the image's ``size``.

    A mask of another size was drawn for another image, so it is refused rather than resized.
    """
    mask = np.asarray(load_image(path, mode="L", max_pixels=max_pixels)) > 0
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


def is_sdedrag_record(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSON record sdedrag wrote (run.json, summary.json: it names sdedrag's version)."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            return False
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(record, dict) and isinstance(record.get("versions"), dict) and "sdedrag" in record["versions"]


def is_sdedrag_output(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a run.json or summary.json that sdedrag wrote."""
    return any(is_sdedrag_record(Path(folder) / name) for name in ("run.json", "summary.json"))


def check_writable(folder: Path) -> None:
    """Raise InputError unless a file can be created in ``folder`` (tried, not guessed from permissions)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sdedrag-check-", dir=folder))
    except OSError as err:
        raise InputError(f"cannot write to folder {folder}: {err.strerror or err}") from None


def _check_output_target(out: Path, resume: bool = False) -> None:
    """The checks of :func:`check_output_dir` that need no trial write."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(f"output {out} exists and is not a folder")
        if resume:
            return
        try:
            foreign = any(out.iterdir()) and not is_sdedrag_output(out)
        except OSError as err:
            raise InputError(f"cannot read output folder {out}: {err.strerror or err}") from None
        if foreign:
            raise InputError(
                f"output folder {out} is not empty and holds no sdedrag results; choose a new or empty folder"
            )
    parent = out.parent
    while not (parent.exists() or parent.is_symlink()):
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create output folder {out}: {parent} is not a folder")


def check_output_dir(out: str | os.PathLike, resume: bool = False) -> Path:
    """Raise a one-line InputError unless ``out`` can take sdedrag's results: a new folder under a writable
    one, an empty folder, or a folder sdedrag wrote before (see :func:`is_sdedrag_output`; with ``resume``,
    any writable folder: commands that resume add files as they go); call it before any work starts.
    Returns the absolute path."""
    out = Path(out).absolute()
    _check_output_target(out, resume)
    if out.is_dir():
        check_writable(out)
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    check_writable(parent)
    return out


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises KeyboardInterrupt like Ctrl-C does, so ``finally`` clauses run (main
    thread only; a handler someone else installed is left alone)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """While active, SIGINT and SIGTERM wait (blocked) so that renames and clean-up are not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success its entries move into ``out``, on error, Ctrl-C or
    SIGTERM it vanishes.

    ``out`` must pass :func:`check_output_dir`: in a folder sdedrag wrote before, entries of the same name
    are replaced and every other file is left alone; a non-empty folder sdedrag did not write is refused.
    """
    out = Path(out).resolve()
    _check_output_target(out)
    with _signals_interrupt():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        except OSError as err:
            raise InputError(f"cannot write to folder {out.parent}: {err.strerror or err}") from None
        try:
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should be an ordinary folder
            yield staging
            with _signals_deferred():
                _check_output_target(out)
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
            with _signals_deferred():
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
