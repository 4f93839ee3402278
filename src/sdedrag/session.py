"""A drag session: one loaded model and a LoRA cache, so repeated drags never reload or retrain."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from sdedrag.lora import LoraCache, lora_applied, supports_lora
from sdedrag.models import DiffusionModel, load_model
from sdedrag.settings import DEFAULT_MODEL, DragDiffusionParams, LoraSettings
from sdedrag.tasks.drag import DragRequest, DragResult, iter_drag
from sdedrag.tasks.dragdiffusion import iter_dragdiffusion


class DragSession:
    """Keeps ``model`` loaded between drags; per-image LoRA weights are trained once and cached on disk.

    Drags on one session run one at a time (the LoRA adapter and its scale are state inside the UNet),
    so a session can be shared by a UI's request threads.
    """

    def __init__(
        self,
        model: DiffusionModel | str = DEFAULT_MODEL,
        device: str | None = "auto",
        dtype: str = "float32",
        lora_cache: LoraCache | None = None,
    ):
        self.model = load_model(model, device, dtype) if isinstance(model, str) else model
        self.lora_cache = lora_cache or LoraCache()
        self._lock = threading.Lock()

    def stream(
        self, request: DragRequest, lora: LoraSettings | None = None, progress: bool = False
    ) -> Iterator[DragResult]:
        """Like :func:`sdedrag.tasks.drag.iter_drag` (``iter_dragdiffusion`` for DragDiffusion settings), with
        per-image LoRA (trained or read from the cache) when ``lora`` is given and the model supports it (else a
        warning says it was skipped); ``timings`` gain ``lora_seconds``."""
        notes = []
        if lora is not None and not supports_lora(self.model):
            notes.append(f"per-image LoRA skipped: {self.model.name!r} is not a plain Stable Diffusion model")
            lora = None
        with self._lock:
            lora_seconds = 0.0
            adapter = contextlib.nullcontext()
            if lora is not None:
                start = time.perf_counter()
                weights = self.lora_cache.get_or_train(self.model, request.image, request.prompt, lora, progress)
                lora_seconds = time.perf_counter() - start
                adapter = lora_applied(self.model, weights)
            with adapter:
                run = iter_dragdiffusion if isinstance(request.params, DragDiffusionParams) else iter_drag
                for result in run(self.model, request, progress):
                    result.timings["lora_seconds"] = lora_seconds
                    result.warnings[:0] = [n for n in notes if n not in result.warnings]
                    yield result

    def drag(self, request: DragRequest, lora: LoraSettings | None = None, progress: bool = False) -> DragResult:
        """The complete result of :meth:`stream`."""
        for result in self.stream(request, lora, progress):
            pass
        return result
