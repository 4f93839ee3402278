"""Inpainting and its SDE counterpart (the paper's inpainting experiment): regenerate the masked region with
DDIM (ODE) or DDPM (the fresh-noise SDE) steps, or (SDE-)DPM-Solver++(2M/3M), from one start.

A 9-channel SD inpainting UNet sees the mask and the masked-image latent as extra input channels, as in
diffusers' StableDiffusionInpaintPipeline; any other model inpaints by a mask rule: outside the mask the
latent follows a known-region trajectory at every step. ``path`` records the input's noise-adding path
(paper Eq. 7) to t0; ``fixed-noise`` noises the input to every step with one noise sample drawn for the
run, as diffusers' pipeline does for a 4-channel model (the paper's Table 2 used that pipeline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from sdedrag.engine import decode, encode, noised_trajectory
from sdedrag.errors import InputError
from sdedrag.io import image_to_tensor
from sdedrag.models.base import DiffusionModel
from sdedrag.settings import InpaintParams
from sdedrag.tasks.common import (
    fit_to_model,
    generator_for,
    image_to_latent,
    latent_to_image,
    mask_to_latent,
    paste_inside,
)


@dataclass
class InpaintResult:
    image: Image.Image  # at the input's size
    latent: Tensor  # the inpainted x0
    seconds: float


def check_mask(mask: np.ndarray, size: tuple[int, int]) -> None:
    """The mask must have the image's size and mark something to edit (True = editable)."""
    if mask.shape != (size[1], size[0]):
        raise InputError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {size[0]}x{size[1]}")
    if not mask.any():
        raise InputError("mask is empty: mark the region to regenerate in white (non-zero)")


def inpaint_latent(
    model: DiffusionModel,
    x0: Tensor,
    mask: Tensor,
    params: InpaintParams = InpaintParams(),
    cond: Any = None,
    mask_rule: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Regenerate the ``mask`` part (1 = editable, broadcast against x0) of latent x0.

    ``mask_rule`` keeps the rest on the ``params.known_region`` trajectory at every step. With ``path`` the
    start x_t0 is the recorded noisy input, with fresh noise inside the mask when t0 = 1; with ``fixed-noise``
    it is the input noised to t0 with the run's noise (that noise itself when t0 = 1), as in diffusers. The
    ODE and SDE versions draw the same trajectory and start from ``generator``: only the solver differs.
    """
    grid = model.schedule.grid(params.steps, params.t0, params.spacing)
    mask = mask.to(device=x0.device, dtype=x0.dtype)
    if params.known_region == "fixed-noise":
        noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        path = noised_trajectory(x0, grid, noise)
        start = noise if params.t0 == 1.0 else path.x_t0
    else:
        path = encode(model, x0, grid, "sde", generator=generator, progress=progress)
        start = path.x_t0
        if params.t0 == 1.0:
            noise = randn_tensor(start.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            start = torch.lerp(start, noise, mask)
    return decode(
        model, start, path, params.process, cond, order=params.order, mask=mask if mask_rule else None,
        guidance=params.guidance, generator=generator, progress=progress,
    )


def inpainting_channels(model: DiffusionModel, image: Image.Image, mask: np.ndarray, region: Tensor) -> Tensor:
    """The 9-channel UNet's extra input [1, 5, h, w]: the latent mask and the latent of the image whose masked
    pixels are set to 0 (mid-grey in [-1, 1]), as diffusers' inpainting pipeline prepares them."""
    pixels = image_to_tensor(fit_to_model(model, image))
    mask_image = fit_to_model(model, Image.fromarray(mask), Image.Resampling.NEAREST)
    keep = torch.from_numpy(~np.asarray(mask_image, dtype=bool))
    masked_latent = model.encode_image((pixels * keep).to(model.device))
    return torch.cat([region.to(masked_latent.dtype), masked_latent], dim=1)


def inpaint(
    model: DiffusionModel,
    image: Image.Image,
    mask: np.ndarray,
    prompt: str = "",
    params: InpaintParams = InpaintParams(),
    progress: bool = False,
) -> InpaintResult:
    """Regenerate the ``mask`` region (boolean HxW of the image's size, True = regenerate) of ``image``.

    ``params.t0`` < 1 starts from the noisy input instead of pure noise. With ``params.paste_back`` every pixel
    outside the mask is the input's, and the mask's edge is feathered over ``params.feather`` pixels inward.
    """
    start_time = time.perf_counter()
    check_mask(mask, image.size)
    generator = generator_for(model, params.seed)
    x0 = image_to_latent(model, image)
    region = mask_to_latent(mask, tuple(x0.shape[-2:]), model)
    cond = model.condition(prompt)
    inpainting_unet = getattr(model, "is_inpainting", False)
    if inpainting_unet:
        cond = replace(cond, extra=inpainting_channels(model, image, mask, region))
    latent = inpaint_latent(
        model, x0, region, params, cond, mask_rule=not inpainting_unet, generator=generator, progress=progress
    )
    result = latent_to_image(model, latent, image.size)
    if params.paste_back:
        result = paste_inside(result, image, mask, params.feather)
    return InpaintResult(result, latent, time.perf_counter() - start_time)
