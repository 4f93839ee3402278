"""encode -> edit -> decode: the one editing API every task uses (paper Sec. 3).

``encode`` takes x0 to t0 and records every latent on the way (a :class:`Path`); a task changes
``path.x_t0``; ``decode`` solves back to the data level with an ODE, an SDE, or Cycle-SDE (the SDE
whose noise is recovered from the recorded path, so an unedited latent comes back exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from tqdm.auto import trange

from sdedrag.engine.schedule import Grid
from sdedrag.errors import InputError
from sdedrag.engine.steps import (
    ddim_inversion_step,
    dpmpp_2m_mean,
    eta_step_mean,
    forward_step,
    predict_x0,
    recover_noise,
)

if TYPE_CHECKING:
    from sdedrag.models.base import DiffusionModel

Process = Literal["sde", "ode", "cycle-sde"]
PROCESSES: tuple[str, ...] = get_args(Process)
StepValues = float | Sequence[float]


@dataclass
class Path:
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
    model: DiffusionModel,
    x0: Tensor,
    grid: Grid,
    process: Process,
    cond: Any = None,
    guidance: StepValues = 1.0,
    lora_scale: StepValues = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Path:
    """Take x0 to t0: the noise-adding SDE (Eq. 7) for sde/cycle-sde, DDIM inversion for ode.

    ``guidance`` and ``lora_scale`` (used by the inversion only) are constants or one value per grid
    interval, indexed like ``decode``'s steps, so an inversion can mirror its decoding schedule.
    """
    _check_process(process)
    guidance, lora_scale = per_step(guidance, grid.num_steps), per_step(lora_scale, grid.num_steps)
    latents = [x0]
    for i in trange(grid.num_steps - 1, -1, -1, desc=f"encode ({process})", disable=None if progress else True, leave=False):
        t_s, a_t, a_s = int(grid.timesteps[i + 1]), float(grid.alphas[i]), float(grid.alphas[i + 1])
        x_s = latents[-1]
        if process == "ode":
            eps = model.predict_eps(x_s, t_s, cond, guidance[i], lora_scale[i])
            latents.append(ddim_inversion_step(x_s, eps, a_s, a_t))
        else:
            noise = randn_tensor(x_s.shape, generator=generator, device=x_s.device, dtype=x_s.dtype)
            latents.append(forward_step(x_s, a_s, a_t, noise))
    return Path(process=process, grid=grid, latents=latents[::-1])


def _solver_mean(
    order: int, x: Tensor, eps: Tensor, a_t: float, a_s: float, eta: float, history: tuple[Tensor, float] | None
) -> tuple[Tensor, float, Tensor]:
    """One solver step without noise: (mean, std, x0 prediction) for the eta-step or (SDE-)DPM-Solver++(2M)."""
    x0 = predict_x0(x, eps, a_t)
    if order == 1:
        mean, std = eta_step_mean(x, eps, a_t, a_s, eta)
        return mean, std, x0
    x0_prev, a_prev = history if history is not None else (None, None)
    mean, std = dpmpp_2m_mean(x, x0, x0_prev, a_t, a_s, a_prev, stochastic=eta > 0)
    return mean, std, x0


def decode(
    model: DiffusionModel,
    x_t0: Tensor,
    path: Path,
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
    """Solve from an edited x_t0 back to the data level along ``path.grid``.

    ode: eta = 0; sde: eta = 1 with fresh noise; cycle-sde: eta = 1 with the noise of Eq. 8 recovered
    from ``path`` (the recorded prediction uses ``record_cond``, default ``cond``, and is evaluated in
    the same batched model call as the edited one). ``order`` 1 is the eta-step (DDIM/DDPM), 2 is
    (SDE-)DPM-Solver++(2M). With ``mask`` (1 = editable), the rest follows the recorded path at every step.
    ``guidance`` and ``lora_scale`` are constants or one value per step.
    """
    _check_process(process)
    if order not in (1, 2):
        raise InputError(f"solver order must be 1 or 2, got {order}")
    grid, recorded = path.grid, path.latents
    n = grid.num_steps
    guidance, lora_scale = per_step(guidance, n), per_step(lora_scale, n)
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
    history_edit: tuple[Tensor, float] | None = None
    history_record: tuple[Tensor, float] | None = None
    for i in trange(n, desc=f"decode ({process})", disable=None if progress else True, leave=False):
        t, a_t, a_s = grid.interval(i)
        step_order = 1 if (i == n - 1 and n < 15) else order  # lower-order final step, as in DPM-Solver
        if cycle:
            eps, eps_record = model.predict_eps(
                torch.cat([x, recorded[i]]), t, joint_cond, guidance[i], lora_scale[i]
            ).chunk(2)
        else:
            eps = model.predict_eps(x, t, cond, guidance[i], lora_scale[i])
        mean, std, x0 = _solver_mean(step_order, x, eps, a_t, a_s, eta, history_edit)
        history_edit = (x0, a_t)
        if cycle:
            mean_record, _, x0_record = _solver_mean(step_order, recorded[i], eps_record, a_t, a_s, eta, history_record)
            history_record = (x0_record, a_t)
            noise = recover_noise(recorded[i + 1], mean_record, std)
        else:
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype) if std > 0 else None
        x = mean if noise is None else mean + std * noise
        if mask is not None:
            x = torch.lerp(recorded[i + 1], x, mask)
    return x
