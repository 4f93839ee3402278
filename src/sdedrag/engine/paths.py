"""encode -> edit -> decode: the one editing API every task uses (paper Sec. 3).

``encode`` takes x0 to t0 and records every latent on the way (a :class:`Trajectory`); a task changes
``trajectory.x_t0``; ``decode`` solves back to the data level with an ODE, an SDE, or Cycle-SDE (the SDE
whose noise is recovered from the recorded trajectory, so an unedited latent comes back exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from tqdm.auto import trange

from sdedrag.engine.model import EpsModel
from sdedrag.engine.schedule import Grid
from sdedrag.engine.steps import (
    cycle_noise,
    ddim_inversion_step,
    dpmpp_step,
    eta_step,
    forward_step,
    predict_x0,
)
from sdedrag.errors import InputError

Process = Literal["sde", "ode", "cycle-sde"]
PROCESSES: tuple[str, ...] = get_args(Process)
StepValues = float | Sequence[float]


@dataclass
class Trajectory:
    """A recorded trajectory: ``latents[i]`` sits at ``grid`` point i (``latents[0]`` = x_t0, ``latents[-1]`` = x0)."""

    process: Process
    grid: Grid
    latents: list[Tensor]

    @property
    def x_t0(self) -> Tensor:
        return self.latents[0]

    @property
    def x0(self) -> Tensor:
        return self.latents[-1]


def _check_process(process: str) -> None:
    if process not in PROCESSES:
        raise InputError(f"process must be one of {', '.join(PROCESSES)}, got {process!r}")


def per_step(values: StepValues, num_steps: int) -> list[float]:
    """A constant or one value per decoding step, as a list of ``num_steps`` floats."""
    if isinstance(values, (int, float)):
        return [float(values)] * num_steps
    values = [float(v) for v in values]
    if len(values) != num_steps:
        raise InputError(f"expected {num_steps} per-step values, got {len(values)}")
    return values


def encode(
    model: EpsModel,
    x0: Tensor,
    grid: Grid,
    process: Process,
    cond: Any = None,
    guidance: StepValues = 1.0,
    lora_scale: StepValues = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Trajectory:
    """Take x0 to t0: the noise-adding SDE (Eq. 7) for sde/cycle-sde, DDIM inversion for ode.

    ``guidance`` and ``lora_scale`` (used by the inversion only) are constants or one value per grid
    interval, indexed like ``decode``'s steps, so an inversion can mirror its decoding schedule.
    """
    _check_process(process)
    guidance, lora_scale = per_step(guidance, grid.num_steps), per_step(lora_scale, grid.num_steps)
    latents = [x0]
    steps = trange(grid.num_steps - 1, -1, -1, desc=f"encode ({process})", disable=None if progress else True, leave=False)
    for i in steps:
        t_s, a_t, a_s = int(grid.timesteps[i + 1]), float(grid.alpha_bars[i]), float(grid.alpha_bars[i + 1])
        x_s = latents[-1]
        if process == "ode":
            eps = model.predict_eps(x_s, t_s, cond, guidance[i], lora_scale[i])
            latents.append(ddim_inversion_step(x_s, eps, a_s, a_t))
        else:
            noise = randn_tensor(x_s.shape, generator=generator, device=x_s.device, dtype=x_s.dtype)
            latents.append(forward_step(x_s, a_s, a_t, noise))
    return Trajectory(process=process, grid=grid, latents=latents[::-1])


def noised_trajectory(x0: Tensor, grid: Grid, noise: Tensor) -> Trajectory:
    """x0 noised to every grid point with one fixed noise z, sqrt(a_i) x0 + sqrt(1 - a_i) z; x0 at the data level."""
    latents = [forward_step(x0, 1.0, float(a), noise) for a in grid.alpha_bars[:-1]]
    return Trajectory(process="sde", grid=grid, latents=[*latents, x0])


def step_orders(order: int, num_steps: int, to_zero_noise: bool = False) -> list[int]:
    """Each step's solver order as in diffusers' DPMSolverMultistepScheduler (lower_order_final).

    The orders warm up from 1; below 15 steps the last step is first order and the one before at most
    second; a last step onto noise level 0 (``to_zero_noise``) is first order at any length.
    """
    orders = [min(order, i + 1) for i in range(num_steps)]
    if num_steps < 15 or to_zero_noise:
        orders[-1] = 1
    if num_steps < 15 and num_steps > 1:
        orders[-2] = min(orders[-2], 2)
    return orders


def _solver_step(
    x: Tensor, eps: Tensor, a_t: float, a_s: float, eta: float, order: int, history: list[tuple[Tensor, float]]
) -> tuple[Tensor, float]:
    """One step without noise, (mean, std): Eq. 6 at order 1, (SDE-)DPM-Solver++ above; ``history`` gains x0_hat."""
    history.insert(0, (predict_x0(x, eps, a_t), a_t))
    del history[3:]
    if order == 1:
        return eta_step(x, eps, a_t, a_s, eta)
    return dpmpp_step(x, history[:order], a_s, stochastic=eta > 0)


def decode(
    model: EpsModel,
    x_t0: Tensor,
    trajectory: Trajectory,
    process: Process,
    cond: Any = None,
    *,
    order: int = 1,
    mask: Tensor | None = None,
    guidance: StepValues = 1.0,
    lora_scale: StepValues = 1.0,
    record_cond: Any = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Solve from an edited x_t0 back to the data level along ``trajectory.grid``.

    ode: eta = 0; sde: eta = 1 with fresh noise; cycle-sde: eta = 1 with the noise of Eq. 8 recovered
    from ``trajectory`` (the recorded prediction uses ``record_cond``, default ``cond``, and is evaluated in
    the same batched model call as the edited one). ``order`` 1 is the eta-step (DDIM/DDPM), 2 and 3
    are (SDE-)DPM-Solver++(2M/3M) with the step orders of :func:`step_orders`. With ``mask``
    (1 = editable), the rest follows the recorded trajectory at every step. ``guidance`` and
    ``lora_scale`` are constants or one value per step.
    """
    _check_process(process)
    if order not in (1, 2, 3):
        raise InputError(f"solver order must be 1, 2 or 3, got {order}")
    grid, recorded = trajectory.grid, trajectory.latents
    n = grid.num_steps
    guidance, lora_scale = per_step(guidance, n), per_step(lora_scale, n)
    orders = step_orders(order, n, grid.ends_at_zero_noise)
    eta = 0.0 if process == "ode" else 1.0
    cycle = process == "cycle-sde"
    batch = x_t0.shape[0]
    joint_cond = (
        model.stack_conditions([(cond, batch), (cond if record_cond is None else record_cond, batch)])
        if cycle
        else cond
    )

    x = x_t0
    if mask is not None:
        mask = mask.to(device=x.device, dtype=x.dtype)
    history_edit: list[tuple[Tensor, float]] = []
    history_record: list[tuple[Tensor, float]] = []
    for i in trange(n, desc=f"decode ({process})", disable=None if progress else True, leave=False):
        t, a_t, a_s = grid.interval(i)
        if cycle:
            eps, eps_record = model.predict_eps(
                torch.cat([x, recorded[i]]), t, joint_cond, guidance[i], lora_scale[i]
            ).chunk(2)
        else:
            eps = model.predict_eps(x, t, cond, guidance[i], lora_scale[i])
        mean, std = _solver_step(x, eps, a_t, a_s, eta, orders[i], history_edit)
        if cycle:
            mean_record, _ = _solver_step(recorded[i], eps_record, a_t, a_s, eta, orders[i], history_record)
            noise = cycle_noise(recorded[i + 1], mean_record, std)
        else:
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype) if std > 0 else None
        x = mean if noise is None else mean + std * noise
        if mask is not None:
            x = torch.lerp(recorded[i + 1], x, mask)
    return x
