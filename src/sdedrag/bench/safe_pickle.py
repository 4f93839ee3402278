"""Loading untrusted benchmark pickles: only plain containers and numpy arrays may be reconstructed.

Nothing but numpy's array, dtype and scalar constructors can be called, object dtypes are refused, and
every array's shape, dtype and byte size are checked against a budget before numpy allocates it, so a
100-byte pickle cannot ask for gigabytes.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from sdedrag.errors import InputError

# Bytes one pickle may hold, and bytes all its arrays together may take (a DragBench-D mask: 512 x 512 x 1).
MAX_PICKLE_BYTES = 64 * 2**20


def _plain_dtype(dtype: Any) -> np.dtype:
    """``dtype`` if it is a numpy dtype holding no Python objects."""
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"expected a numpy dtype, got {type(dtype).__name__}")
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing numpy object dtype {dtype}")
    return dtype


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """numpy.dtype, refusing object dtypes."""
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"refusing dtype spec of type {type(spec).__name__}")
    return _plain_dtype(np.dtype(spec, align=bool(align), copy=bool(copy)))


def _scalar(dtype: Any, data: Any = None) -> np.generic:
    """numpy's scalar constructor for plain dtypes with exactly ``itemsize`` bytes of data."""
    dtype = _plain_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"a {dtype} scalar needs {dtype.itemsize} bytes of data")
    return np._core.multiarray.scalar(dtype, data)


class _CheckedArray(np.ndarray):
    """An empty array whose pickled state (shape, dtype, data) is checked before numpy fills it in."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, fortran, data = state[-4:]
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)) or len(shape) > 32:
            raise pickle.UnpicklingError(f"malformed numpy array shape {str(shape)[:80]}")
        dtype = _plain_dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        self._unpickler.spend(nbytes)
        if not isinstance(data, bytes) or len(data) != nbytes:
            raise pickle.UnpicklingError(f"array data does not match its shape {shape} and dtype {dtype}")
        super().__setstate__((shape, dtype, bool(fortran), data))


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that calls nothing but numpy's array, dtype and scalar constructors, checked, so no code
    runs and no array is larger than ``max_bytes`` in all."""

    def __init__(self, file: io.BufferedIOBase, max_bytes: int = MAX_PICKLE_BYTES):
        super().__init__(file)
        self.max_bytes = self.budget = max_bytes

    def spend(self, nbytes: int) -> None:
        """Count ``nbytes`` of array data against the budget before it is allocated."""
        if nbytes > self.budget:
            raise pickle.UnpicklingError(f"arrays over the {self.max_bytes / 2**20:g} MiB budget")
        self.budget -= nbytes

    def _reconstruct(self, subtype: Any, shape: Any = (0,), dtype: Any = b"b") -> _CheckedArray:
        """numpy.core.multiarray._reconstruct: an empty array, filled in by the BUILD that follows."""
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError("refusing to reconstruct a numpy array subclass")
        array = _CheckedArray((0,), np.uint8)
        array._unpickler = self
        return array

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "_reconstruct":
                return self._reconstruct
            if name == "scalar":
                return _scalar
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _plain(value: Any, seen: dict[int, Any]) -> Any:
    """``value`` with every checked array turned into a plain ndarray, inside dicts, lists and tuples."""
    if id(value) in seen:
        return seen[id(value)]
    if isinstance(value, _CheckedArray):
        seen[id(value)] = plain = value.view(np.ndarray)
        return plain
    if isinstance(value, dict):
        seen[id(value)] = value
        for key in value:
            value[key] = _plain(value[key], seen)
    elif isinstance(value, list):
        seen[id(value)] = value
        value[:] = [_plain(item, seen) for item in value]
    elif isinstance(value, tuple):
        plain = tuple(_plain(item, seen) for item in value)
        seen[id(value)] = plain
        return plain
    return value


def load_pickle(path: str | os.PathLike, max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`, or raise a one-line InputError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"{path} is {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:g} MiB limit for pickles")
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        return _plain(RestrictedUnpickler(io.BytesIO(data), max_bytes).load(), {})
    except pickle.UnpicklingError as err:
        raise InputError(f"unsafe or corrupt pickle {path}: {err}") from err
    except EOFError:
        raise InputError(f"corrupt pickle {path}: truncated") from None
    except RecursionError:
        raise InputError(f"corrupt pickle {path}: nested too deeply") from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, MemoryError) as err:
        raise InputError(f"corrupt pickle {path}: {err}") from err
