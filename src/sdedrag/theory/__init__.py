"""Exact-score experiments for the paper's theory (Theorems 3.1-3.3): SDEs contract the prior gap, ODEs keep it."""

from sdedrag.theory.config import TheoryConfig
from sdedrag.theory.experiment import TheoryRun, run_theory

__all__ = ["TheoryConfig", "TheoryRun", "run_theory"]
