"""The editing engine: schedules, the paper's step equations, and the encode/decode trajectory API."""

from sdedrag.engine.model import EpsModel
from sdedrag.engine.paths import PROCESSES, Process, Trajectory, decode, encode, noised_trajectory, per_step
from sdedrag.engine.ramps import cosine_ramp, linear_ramp
from sdedrag.engine.schedule import Grid, NoiseSchedule

__all__ = [
    "PROCESSES",
    "EpsModel",
    "Grid",
    "NoiseSchedule",
    "Process",
    "Trajectory",
    "cosine_ramp",
    "decode",
    "encode",
    "linear_ramp",
    "noised_trajectory",
    "per_step",
]
