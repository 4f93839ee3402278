"""What defines a ``sdedrag theory`` run: the mixture, the example prior, the t0 values, the resolution."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdedrag.errors import InputError

MAX_STEPS = 1000
"""The schedule's number of training timesteps: the finest grid."""


@dataclass(frozen=True)
class TheoryConfig:
    """A run's parameters; the defaults are the paper-like example (two balanced modes, prior one std off)."""

    weights: tuple[float, ...] = (0.5, 0.5)
    means: tuple[float, ...] = (-1.0, 1.0)
    stds: tuple[float, ...] = (0.3, 0.3)
    prior_mean: float = 1.0
    prior_std: float = 1.0
    t0: tuple[float, ...] = (1.0, 0.6, 0.3)
    steps: int = 1000
    nfe: tuple[int, ...] = (10, 20, 50, 100, 200)
    particles: int = 4000
    solver_particles: int = 16000
    grid_points: int = 2048
    seed: int = 0

    def validate(self) -> None:
        """Raise a one-line InputError for any value no experiment can use."""
        if not self.weights or not len(self.weights) == len(self.means) == len(self.stds):
            raise InputError(
                f"--weights, --means and --stds need one value per mode; got {len(self.weights)}, "
                f"{len(self.means)} and {len(self.stds)}"
            )
        numbers = (*self.weights, *self.means, *self.stds, self.prior_mean, self.prior_std)
        if not all(math.isfinite(v) for v in numbers):
            raise InputError("mixture and prior parameters must be finite numbers")
        if any(w <= 0 for w in self.weights):
            raise InputError(f"--weights must all be positive (they are normalized), got {list(self.weights)}")
        if any(s <= 0 for s in self.stds):
            raise InputError(f"--stds must all be positive, got {list(self.stds)}")
        if self.prior_std <= 0:
            raise InputError(f"--prior-std must be positive, got {self.prior_std}")
        if not self.t0 or any(not 0.0 < t <= 1.0 for t in self.t0):
            raise InputError(f"--t0 values must be in (0, 1], got {list(self.t0)}")
        if len(set(self.t0)) != len(self.t0):
            raise InputError(f"--t0 values must be distinct, got {list(self.t0)}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise InputError(f"--steps must be between 1 and {MAX_STEPS} (the schedule's timesteps), got {self.steps}")
        if not self.nfe or any(n < 1 or round(n / self.t0[0]) > MAX_STEPS for n in self.nfe):
            raise InputError(
                f"--nfe values must be at least 1 and at most {MAX_STEPS} x the first --t0, got {list(self.nfe)}"
            )
        if self.particles < 100 or self.solver_particles < 100:
            raise InputError("--particles and --solver-particles must be at least 100")
        if self.grid_points < 256:
            raise InputError(f"--grid-points must be at least 256, got {self.grid_points}")
