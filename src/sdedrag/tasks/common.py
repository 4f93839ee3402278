"""What every task shares: fitting images to the model, seeding, and latents in and out."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import distance_transform_edt

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


def paste_weights(mask: np.ndarray, dilate: float = 8.0, feather: float = 8.0) -> np.ndarray:
    """Blend weights for paste-back: 1 within ``dilate`` pixels of the mask, a linear ramp over
    ``feather`` more pixels, and exactly 0 beyond, where the input's pixels are kept unchanged."""
    distance = distance_transform_edt(~mask)
    return np.clip(1.0 - (distance - dilate) / max(feather, 1e-6), 0.0, 1.0)


def paste_back(result: Image.Image, original: Image.Image, mask: np.ndarray, dilate: float = 8.0,
               feather: float = 8.0) -> Image.Image:
    """The edited ``result`` inside the (dilated, feathered) mask, the ``original`` pixels exactly outside."""
    weights = paste_weights(mask, dilate, feather)[..., None]
    edited = np.asarray(result.convert("RGB"), dtype=np.float64)
    kept = np.asarray(original.convert("RGB"), dtype=np.float64)
    return Image.fromarray(np.round(weights * edited + (1.0 - weights) * kept).astype(np.uint8))
