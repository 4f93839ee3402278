"""What every task shares: fitting images to the model, seeding, and latents in and out."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import distance_transform_edt

from sdedrag.errors import InputError
from sdedrag.io import image_to_tensor, tensor_to_image
from sdedrag.models.base import DiffusionModel


def model_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The nearest size whose sides are positive multiples of ``multiple`` (what the VAE needs)."""
    return (max(multiple, round(width / multiple) * multiple), max(multiple, round(height / multiple) * multiple))


def fit_to_model(model: DiffusionModel, image: Image.Image,
                 resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """``image`` resized to the model's multiple (unchanged if it already fits)."""
    size = model_size(*image.size, model.latent_scale)
    return image if size == image.size else image.resize(size, resample)


def image_to_latent(model: DiffusionModel, image: Image.Image) -> torch.Tensor:
    """Resize ``image`` to the model's multiple and encode it to x0."""
    return model.encode_image(image_to_tensor(fit_to_model(model, image)).to(model.device))


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
    return blend(result, original, paste_weights(mask, dilate, feather))


def paste_inside(result: Image.Image, original: Image.Image, mask: np.ndarray, feather: float = 4.0) -> Image.Image:
    """The edited ``result`` inside the mask, every ``original`` pixel outside it exactly; the edge is feathered
    inward: a mask pixel at distance d from the outside gets weight min(1, d / (feather + 1))."""
    return blend(result, original, np.clip(distance_transform_edt(mask) / (feather + 1.0), 0.0, 1.0))


def blend(result: Image.Image, original: Image.Image, weights: np.ndarray) -> Image.Image:
    """Per-pixel ``weights * result + (1 - weights) * original`` (weights HxW in [0, 1]), rounded to 8 bits."""
    edited = np.asarray(result.convert("RGB"), dtype=np.float64)
    kept = np.asarray(original.convert("RGB"), dtype=np.float64)
    weights = weights[..., None]
    return Image.fromarray(np.round(weights * edited + (1.0 - weights) * kept).astype(np.uint8))


def mask_to_latent(mask: np.ndarray, latent_hw: tuple[int, int], model: DiffusionModel) -> torch.Tensor:
    """Image mask (True = editable) -> 0/1 latent mask [1, 1, h, w]: a latent cell is editable if any of its
    pixels is (so everything the mask touches is regenerated)."""
    pixels = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.adaptive_max_pool2d(pixels, latent_hw) > 0).to(model.device, model.latent_dtype)


def require_plain_model(model: DiffusionModel, task: str) -> None:
    """Refuse a 9-channel inpainting checkpoint for tasks that need a plain text-to-image UNet."""
    if getattr(model, "is_inpainting", False):
        raise InputError(f"{task} needs a plain (4-channel) model; {model.name!r} is an inpainting checkpoint")
