"""Deep-feature reuse between adjacent UNet calls (DeepCache, Ma et al., CVPR 2024), for diffusers UNets.

A UNet's deep features change slowly from one solver step to the next, its shallow ones do not. A *full*
call runs the whole UNet and keeps every deep module's output; a *reuse* call runs only the shallowest
``depth`` levels (``conv_in``, ``down_blocks[:depth]``, ``up_blocks[-depth:]``, ``conv_out``) and takes the
input of ``up_blocks[-depth]`` (and nothing else that it computes) from the last full call. Deep modules are
short-circuited with diffusers' ``ModelHook.new_forward`` (a PyTorch forward hook cannot skip a forward),
so a reuse call really skips their work; the UNet's own forward is untouched.

The decision is made once per UNet call, for the whole batch: Cycle-SDE evaluates the edited and the
recorded latent in one call, so both see the same (possibly reused) features and an unedited latent still
reconstructs to float32 round-off. A run (one encode or decode) starts with a full call; ``period`` restarts
the schedule every ``period`` calls, so one context can span several runs of known length.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.hooks import HookRegistry, ModelHook
from torch.utils.flop_counter import FlopCounterMode

from sdedrag.errors import InputError

HOOK_NAME = "sdedrag_feature_reuse"
UNETS = (UNet2DConditionModel, UNet2DModel)


def call_equivalents(full_calls: int, reuse_calls: int, reuse_cost: float) -> float:
    """Cost in full UNet calls: full + reuse * (cost of a reuse call / cost of a full call)."""
    return full_calls + reuse_calls * reuse_cost


def reuse_calls_in_run(calls: int, interval: int) -> int:
    """Reuse calls among ``calls`` consecutive calls when every ``interval``-th one, from the first, is full."""
    return calls - -(-calls // interval)


def deep_modules(unet: torch.nn.Module, depth: int = 1) -> list[torch.nn.Module]:
    """The modules a reuse call skips: every level below the shallowest ``depth`` (down, mid and up blocks) and
    the downsamplers of ``down_blocks[depth - 1]``, whose output only the skipped levels read."""
    if not isinstance(unet, UNETS):
        kind = type(unet).__name__
        raise InputError(f"feature reuse needs a diffusers UNet2DConditionModel or UNet2DModel, not {kind}")
    levels = len(unet.down_blocks)
    if not 1 <= depth < levels:
        raise InputError(f"feature reuse depth must be in [1, {levels - 1}] for this UNet, got {depth}")
    last_kept = unet.down_blocks[depth - 1]
    downsamplers = list(last_kept.downsamplers) if getattr(last_kept, "downsamplers", None) is not None else []
    mid = [unet.mid_block] if unet.mid_block is not None else []
    return [*downsamplers, *unet.down_blocks[depth:], *mid, *unet.up_blocks[: levels - depth]]


@dataclass
class FeatureReuse:
    """One reuse schedule: every ``interval``-th call (counted from the start of each ``period``) is full.

    Counts calls and measures, with PyTorch's FLOP counter, the FLOPs of the first full and the first reuse
    call at each input shape, so ``reuse_cost`` is this UNet's own fraction at this size.
    """

    interval: int
    period: int | None = None
    calls: int = 0
    full_calls: int = 0
    reuse: bool = False
    _key: tuple | None = field(default=None, repr=False)
    _flops: dict[tuple, int] = field(default_factory=dict, repr=False)

    def reset(self) -> None:
        """Start a new run: the next call is full."""
        self._key = None

    def decide(self, sample: torch.Tensor) -> bool:
        """Whether the coming call reuses deep features (never across input shapes or after :meth:`reset`)."""
        position = self.calls % self.period if self.period else self.calls
        key = (tuple(sample.shape), sample.dtype, sample.device)
        self.reuse = position % self.interval != 0 and key == self._key
        self._key = key
        self.calls += 1
        self.full_calls += not self.reuse
        return self.reuse

    @property
    def reuse_calls(self) -> int:
        return self.calls - self.full_calls

    @property
    def reuse_cost(self) -> float | None:
        """FLOPs of a reuse call over a full call (None until one of each has run at the same shape)."""
        flops = self._flops
        pairs = [(flops[(key, True)], flops[(key, False)]) for key, reuse in flops if reuse and (key, False) in flops]
        return pairs[-1][0] / pairs[-1][1] if pairs else None

    def equivalents(self) -> float | None:
        """The calls so far in full-call equivalents (None while the reuse cost is unknown)."""
        if self.reuse_calls == 0:
            return float(self.full_calls)
        cost = self.reuse_cost
        return None if cost is None else call_equivalents(self.full_calls, self.reuse_calls, cost)

    def measure(self, run: Any) -> Any:
        """``run()`` under the FLOP counter the first time this kind of call is made at this shape."""
        slot = (self._key, self.reuse)
        if slot in self._flops:
            return run()
        with FlopCounterMode(display=False) as counter:
            output = run()
        self._flops[slot] = counter.get_total_flops()
        return output


class _ScheduleHook(ModelHook):
    """On the UNet: decide, once per call, whether its deep modules reuse their outputs, and count FLOPs."""

    def __init__(self, schedule: FeatureReuse):
        super().__init__()
        self.schedule = schedule

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        self.schedule.decide(args[0] if args else kwargs["sample"])
        return self.schedule.measure(lambda: self.fn_ref.original_forward(*args, **kwargs))


class _DeepModuleHook(ModelHook):
    """On a deep module: run and keep the output on full calls, return the kept output on reuse calls."""

    def __init__(self, schedule: FeatureReuse):
        super().__init__()
        self.schedule = schedule
        self.output: Any = None

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not self.schedule.reuse:
            self.output = self.fn_ref.original_forward(*args, **kwargs)
        return self.output


@contextmanager
def feature_reuse(model: Any, interval: int, period: int | None = None, depth: int = 1) -> Iterator[FeatureReuse]:
    """Reuse the deep features of ``model``'s UNet (a model with a ``unet``, or the UNet) on all but every
    ``interval``-th call inside the block; ``interval`` 1 changes nothing. The hooks are removed on exit."""
    if interval < 1:
        raise InputError(f"feature reuse interval must be at least 1, got {interval}")
    if period is not None and period < 1:
        raise InputError(f"feature reuse period must be at least 1, got {period}")
    schedule = FeatureReuse(interval, period)
    if interval == 1:
        yield schedule
        return
    unet = getattr(model, "unet", model)
    modules = deep_modules(unet, depth)
    if any(hasattr(m, "_diffusers_hook") and m._diffusers_hook.get_hook(HOOK_NAME) for m in (unet, *modules)):
        raise InputError("feature reuse is already active on this UNet")
    registries = [HookRegistry.check_if_exists_or_initialize(m) for m in (unet, *modules)]
    registries[0].register_hook(_ScheduleHook(schedule), HOOK_NAME)
    for registry in registries[1:]:
        registry.register_hook(_DeepModuleHook(schedule), HOOK_NAME)
    try:
        yield schedule
    finally:
        for registry in registries:
            registry.remove_hook(HOOK_NAME, recurse=False)
