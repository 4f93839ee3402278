"""The model interface the engine needs; model adapters implement it (the engine never imports them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class EpsModel(Protocol):
    """A noise predictor eps_theta(x_t, t) with per-call guidance and LoRA scale, and batched conditioning."""

    def predict_eps(
        self, x: Tensor, t: int, cond: Any = None, guidance: float = 1.0, lora_scale: float = 1.0
    ) -> Tensor:
        """eps_theta(x_t, t) for a batch x, with classifier-free guidance and the given LoRA scale."""
        ...

    def stack_conditions(self, parts: Sequence[tuple[Any, int]]) -> Any:
        """One conditioning for a batch made of ``(cond, batch_size)`` parts, in order."""
        ...
