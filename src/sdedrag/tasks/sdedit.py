"""SDEdit and its ODE baseline: noise the input to t0 (paper Eq. 7) and solve back under a target prompt with
the fresh-noise SDE (DDPM / SDE-DPM-Solver++(2M/3M)) or the ODE (DDIM / DPM-Solver++(2M/3M)), from the same
start."""

from __future__ import annotations

import time
from dataclasses import dataclass

from PIL import Image
from torch import Tensor

from sdedrag.engine import decode, encode
from sdedrag.models.base import DiffusionModel
from sdedrag.settings import SDEditParams
from sdedrag.tasks.common import generator_for, image_to_latent, latent_to_image, require_plain_model


@dataclass
class SDEditResult:
    image: Image.Image  # at the input's size
    latent: Tensor  # the edited x0
    seconds: float


def sdedit(
    model: DiffusionModel,
    image: Image.Image,
    prompt: str = "",
    params: SDEditParams = SDEditParams(),
    progress: bool = False,
) -> SDEditResult:
    """Translate ``image`` toward ``prompt``: noise it to ``params.t0`` and decode with the fresh-noise SDE or
    the ODE; both methods draw the same noisy start from ``params.seed``."""
    start_time = time.perf_counter()
    require_plain_model(model, "SDEdit")
    generator = generator_for(model, params.seed)
    x0 = image_to_latent(model, image)
    grid = model.schedule.grid(params.steps, params.t0)
    path = encode(model, x0, grid, "sde", generator=generator, progress=progress)
    latent = decode(
        model, path.x_t0, path, params.process, model.condition(prompt), order=params.order,
        guidance=params.guidance, generator=generator, progress=progress,
    )
    return SDEditResult(latent_to_image(model, latent, image.size), latent, time.perf_counter() - start_time)
