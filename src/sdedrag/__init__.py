"""sdedrag: diffusion-based image editing with SDEs (Nie et al., ICLR 2024, arXiv 2311.01410).

One engine (``sdedrag.engine``: encode x0 to t0, edit x_t0, decode with an ODE, SDE or Cycle-SDE),
model adapters (``sdedrag.models``) and tasks as thin edits on top (``sdedrag.tasks``). The names
below are imported on first use, so ``import sdedrag`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Grid": "sdedrag.engine",
    "NoiseSchedule": "sdedrag.engine",
    "Trajectory": "sdedrag.engine",
    "decode": "sdedrag.engine",
    "encode": "sdedrag.engine",
    "DEFAULT_MODEL": "sdedrag.models",
    "load_model": "sdedrag.models",
    "reconstruct": "sdedrag.tasks.reconstruct",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sdedrag' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
