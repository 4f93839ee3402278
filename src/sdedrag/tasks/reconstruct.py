"""Reconstruction: encode an image to t0 and decode it unedited (Cycle-SDE brings it back exactly)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from sdedrag.engine import decode, encode
from sdedrag.models.base import DiffusionModel
from sdedrag.settings import ReconstructParams
from sdedrag.tasks.common import generator_for, image_to_latent, latent_to_image


@dataclass
class Reconstruction:
    image: Image.Image
    latent: torch.Tensor
    latent_rel_error: float


def reconstruct(
    model: DiffusionModel,
    image: Image.Image,
    prompt: str | None = None,
    params: ReconstructParams = ReconstructParams(),
    progress: bool = False,
) -> Reconstruction:
    """Encode ``image`` to t0 with ``params.process`` and decode it back without an edit.

    ``latent_rel_error`` is ||x0_rec - x0|| / ||x0|| in latent space.
    """
    generator = generator_for(model, params.seed)
    x0 = image_to_latent(model, image)
    cond = model.condition(prompt)
    grid = model.schedule.grid(params.steps, params.t0)
    path = encode(model, x0, grid, params.process, cond, generator=generator, progress=progress)
    x0_rec = decode(
        model, path.x_t0, path, params.process, cond, order=params.order, guidance=params.guidance,
        generator=generator, progress=progress,
    )
    error = float(torch.linalg.vector_norm(x0_rec - x0) / torch.linalg.vector_norm(x0))
    return Reconstruction(latent_to_image(model, x0_rec, image.size), x0_rec, error)
