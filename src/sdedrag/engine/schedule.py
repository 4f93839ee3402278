"""Noise schedules and timestep grids, taken from any diffusers scheduler config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from sdedrag.errors import InputError

Spacing = Literal["ddim", "dpm-solver"]
FinalSigma = Literal["sigma-min", "zero"]
SPACINGS: tuple[str, ...] = ("ddim", "dpm-solver")


@dataclass(frozen=True)
class Grid:
    """The decreasing timesteps an edit walks through, from t0 down to the data level.

    ``timesteps[i]`` is the training timestep of grid point ``i`` and ``alpha_bars[i]`` its
    alpha-bar; the last point is training timestep 0, where the image latent x0 lives (its alpha-bar is
    alphas_cumprod[0], or 1 for a grid that ends at noise level 0).
    """

    timesteps: torch.Tensor  # int64, shape [n + 1], decreasing
    alpha_bars: torch.Tensor  # float64, shape [n + 1], increasing

    @property
    def num_steps(self) -> int:
        """Number of solver steps (grid intervals)."""
        return len(self.timesteps) - 1

    def interval(self, i: int) -> tuple[int, float, float]:
        """Step ``i`` goes from grid point i (timestep t, alpha-bar a_t) to point i + 1 (alpha-bar a_s)."""
        return int(self.timesteps[i]), float(self.alpha_bars[i]), float(self.alpha_bars[i + 1])

    @property
    def ends_at_zero_noise(self) -> bool:
        """Whether the last point has alpha-bar 1 (sigma 0), as DPMSolverMultistepScheduler's final_sigmas_type "zero"."""
        return float(self.alpha_bars[-1]) == 1.0


class NoiseSchedule:
    """The VP noise schedule (alpha-bar table) and timestep spacing of a diffusers scheduler config."""

    def __init__(self, config: Mapping[str, Any]):
        self._scheduler = DDIMScheduler.from_config(dict(config))
        self._dpm_solver = DPMSolverMultistepScheduler.from_config(dict(config))
        self.alphas_cumprod = self._scheduler.alphas_cumprod.to(torch.float64)

    @property
    def config(self) -> Mapping[str, Any]:
        return self._scheduler.config

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_bar(self, t: int | torch.Tensor) -> torch.Tensor:
        """alpha-bar at integer training timestep(s) t."""
        return self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long)]

    def grid(self, steps: int, t0: float = 1.0, spacing: Spacing = "ddim", final_sigma: FinalSigma = "sigma-min") -> Grid:
        """The last round(t0 * steps) of ``steps`` scheduler timesteps, ending at the data level (t = 0).

        ``t0`` is the fraction of the way to T the edit starts from (the paper's t0 = 0.6). ``spacing``
        takes the timesteps of DDIMScheduler ("ddim") or of DPMSolverMultistepScheduler ("dpm-solver", which
        spaces SD's "leading" config T // (steps + 1) apart: 951, 932, ..., 20 at 50 steps). The last point
        has alpha-bar alphas_cumprod[0] ("sigma-min": DDIM without set_alpha_to_one, and DPM-Solver in
        diffusers before 0.25) or 1 ("zero": DPMSolverMultistepScheduler's default today).
        """
        if steps < 1:
            raise InputError(f"steps must be at least 1, got {steps}")
        if not 0.0 < t0 <= 1.0:
            raise InputError(f"t0 must be in (0, 1], got {t0}")
        if spacing not in SPACINGS:
            raise InputError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
        if final_sigma not in ("sigma-min", "zero"):
            raise InputError(f"final sigma must be sigma-min or zero, got {final_sigma!r}")
        scheduler = self._scheduler if spacing == "ddim" else self._dpm_solver
        scheduler.set_timesteps(steps)
        # "leading" spacing with steps_offset 1 (SD's config) reaches timestep T at steps > T / 2: clamp.
        full = torch.unique_consecutive(scheduler.timesteps.to(torch.long).clamp(max=self.num_train_timesteps - 1))
        used = max(1, round(t0 * len(full)))
        timesteps = full[len(full) - used :]
        if timesteps[-1] != 0:
            timesteps = torch.cat([timesteps, torch.zeros(1, dtype=torch.long)])
        alpha_bars = self.alpha_bar(timesteps)
        if final_sigma == "zero":
            alpha_bars[-1] = 1.0
        return Grid(timesteps=timesteps, alpha_bars=alpha_bars)

SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
"""Stable Diffusion's VP schedule (scaled-linear betas, 1000 steps, "leading" spacing with offset 1)."""
