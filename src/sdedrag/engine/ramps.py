"""Per-step control schedules (guidance, LoRA scale) over a decoding grid."""

from __future__ import annotations

import math

from sdedrag.engine.schedule import Grid


def _progress(grid: Grid) -> list[float]:
    """For each decoding step, its start time as a fraction of t0 (1 at t0, towards 0 at the data level)."""
    start = float(grid.timesteps[0])
    return [float(t) / start if start > 0 else 0.0 for t in grid.timesteps[:-1]]


def linear_ramp(grid: Grid, at_data: float, at_t0: float) -> list[float]:
    """Values moving linearly from ``at_t0`` (first step) to ``at_data`` (t = 0): the paper's guidance ramp."""
    return [at_data + (at_t0 - at_data) * u for u in _progress(grid)]


def cosine_ramp(grid: Grid, at_data: float, at_t0: float) -> list[float]:
    """Values on a half cosine from ``at_t0`` (first step) to ``at_data`` (t = 0): the paper's LoRA-scale ramp."""
    return [at_t0 + (at_data - at_t0) * 0.5 * (1.0 + math.cos(math.pi * u)) for u in _progress(grid)]
