"""What every task shares: fitting images to the model, seeding, and latents in and out."""

from __future__ import annotations

import torch
from PIL import Image

from sdedrag.io import image_to_tensor, tensor_to_image
from sdedrag.models.base import DiffusionModel


def model_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The nearest size whose sides are positive multiples of ``multiple`` (what the VAE needs)."""
    return (max(multiple, round(width / multiple) * multiple), max(multiple, round(height / multiple) * multiple))


def image_to_latent(model: DiffusionModel, image: Image.Image) -> torch.Tensor:
    """Resize ``image`` to the model's multiple and encode it to x0."""
    size = model_size(*image.size, model.latent_scale)
    resized = image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)
    return model.encode_image(image_to_tensor(resized).to(model.device))


def latent_to_image(model: DiffusionModel, latent: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """Decode x0 and return it at ``size`` (the input's original size)."""
    image = tensor_to_image(model.decode_latent(latent))
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def generator_for(model: DiffusionModel, seed: int) -> torch.Generator:
    """A seeded torch.Generator on the model's device, so runs reproduce."""
    return torch.Generator(device=model.device).manual_seed(seed)
