"""Reconstruction: encode an image to t0 and decode it unedited (Cycle-SDE brings it back exactly)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from sdedrag.engine import Process, decode, encode
from sdedrag.models.base import DiffusionModel
from sdedrag.tasks.common import generator_for, image_to_latent, latent_to_image


@dataclass
class Reconstruction:
    image: Image.Image
    latent: torch.Tensor
    latent_rel_error: float


def reconstruct(
    model: DiffusionModel,
    image: Image.Image,
    process: Process = "cycle-sde",
    steps: int = 50,
    t0: float = 1.0,
    prompt: str | None = None,
    guidance: float = 1.0,
    order: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> Reconstruction:
    """Encode ``image`` to t0 with ``process`` and decode it back without an edit.

    ``latent_rel_error`` is ||x0_rec - x0|| / ||x0|| in latent space.
    """
    generator = generator_for(model, seed)
    x0 = image_to_latent(model, image)
    cond = model.condition(prompt)
    grid = model.schedule.grid(steps, t0)
    path = encode(model, x0, grid, process, cond, generator=generator, progress=progress)
    x0_rec = decode(
        model, path.x_t0, path, process, cond, order=order, guidance=guidance, generator=generator, progress=progress
    )
    error = float(torch.linalg.vector_norm(x0_rec - x0) / torch.linalg.vector_norm(x0))
    return Reconstruction(latent_to_image(model, x0_rec, image.size), x0_rec, error)
