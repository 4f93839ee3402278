"""Exact-score experiments for the paper's theory (Theorems 3.1-3.3): SDEs contract the prior gap, ODEs keep it.

``TheoryConfig`` imports without torch (the CLI builds its options from it); the experiment loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from sdedrag.theory.config import TheoryConfig

__all__ = ["TheoryConfig", "TheoryRun", "run_theory"]


def __getattr__(name: str) -> Any:
    if name not in ("TheoryRun", "run_theory"):
        raise AttributeError(f"module 'sdedrag.theory' has no attribute {name!r}")
    return getattr(importlib.import_module("sdedrag.theory.experiment"), name)
