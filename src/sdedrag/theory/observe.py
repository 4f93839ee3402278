"""Watching the engine's own decode loop: every level of a trajectory, without a second sampling loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from sdedrag.engine.paths import Process, Trajectory, decode
from sdedrag.engine.schedule import Grid
from sdedrag.models.base import DiffusionModel

Observer = Callable[[Tensor], None]


class ModelWrapper(DiffusionModel):
    """A DiffusionModel that delegates to ``model``; subclasses intercept predict_eps."""

    def __init__(self, model: DiffusionModel):
        self.model = model
        self.name, self.schedule, self.device, self.dtype = model.name, model.schedule, model.device, model.dtype

    def predict_eps(
        self, x: Tensor, t: int, cond: Any = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        return self.model.predict_eps(x, t, cond, guidance, lora_scale)

    def stack_conditions(self, parts: Sequence[tuple[Any, int]]) -> Any:
        return self.model.stack_conditions(parts)


class ObservedModel(ModelWrapper):
    """Hands every predict_eps input to ``observe`` first: decode calls it once per level, in order."""

    def __init__(self, model: DiffusionModel, observe: Observer):
        super().__init__(model)
        self.observe = observe

    def predict_eps(
        self, x: Tensor, t: int, cond: Any = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        self.observe(x)
        return self.model.predict_eps(x, t, cond, guidance, lora_scale)


class RecordedEpsCache(ModelWrapper):
    """For Cycle-SDE decodes of several edits against one recorded path: the recorded half's eps, once per level.

    Cycle-SDE evaluates [edited; recorded] in one batch; the recorded half is the same for every edit,
    so its eps is reused whenever that half is bit-identical to the one cached for the timestep.
    """

    def __init__(self, model: DiffusionModel, batch: int):
        super().__init__(model)
        self.batch = batch
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}

    def predict_eps(
        self, x: Tensor, t: int, cond: Any = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        edited, recorded = x[: self.batch], x[self.batch :]
        cached = self._cache.get(t)
        if cached is not None and torch.equal(cached[0], recorded):
            return torch.cat([self.model.predict_eps(edited, t, cond, guidance, lora_scale), cached[1]])
        eps = self.model.predict_eps(x, t, cond, guidance, lora_scale)
        self._cache[t] = (recorded.clone(), eps[self.batch :])
        return eps


def unrecorded_path(grid: Grid, x_t0: Tensor, process: Process) -> Trajectory:
    """The Trajectory decode needs to solve the ODE or SDE from a prior sample: its grid and x_t0 (no record)."""
    return Trajectory(process=process, grid=grid, latents=[x_t0])


def decode_observed(
    model: DiffusionModel,
    x_t0: Tensor,
    path: Trajectory,
    process: Process,
    observe: Observer,
    *,
    order: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """engine.decode, with ``observe`` called on the latent at every grid level (x_t0 first, the result last).

    For cycle-sde decode evaluates the edited and the recorded latents in one batch, so ``observe``
    then sees both, edited first.
    """
    final = decode(ObservedModel(model, observe), x_t0, path, process, order=order, generator=generator)
    observe(final)
    return final


def decode_trajectory(
    model: DiffusionModel,
    x_t0: Tensor,
    path: Trajectory,
    process: Process,
    *,
    order: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Every level of engine.decode's trajectory from x_t0, shape [levels, *x_t0.shape] (x_t0 first)."""
    levels: list[Tensor] = []
    decode_observed(
        model, x_t0, path, process, lambda latent: levels.append(latent[: len(x_t0)].detach().clone()),
        order=order, generator=generator,
    )
    return torch.stack(levels)
