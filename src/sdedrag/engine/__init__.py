"""The editing engine: schedules, the paper's step equations, and the encode/decode path API."""

from sdedrag.engine.paths import PROCESSES, Path, Process, decode, encode, per_step
from sdedrag.engine.ramps import cosine_ramp, linear_ramp
from sdedrag.engine.schedule import Grid, NoiseSchedule

__all__ = [
    "PROCESSES",
    "Grid",
    "NoiseSchedule",
    "Path",
    "Process",
    "cosine_ramp",
    "decode",
    "encode",
    "linear_ramp",
    "per_step",
]
