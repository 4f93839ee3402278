"""DiffEdit (Couairon et al., ICLR 2023) and its SDE counterpart, as in the paper's image-to-image experiments.

Both compute DiffEdit's mask from the difference of noise predictions under the source and target prompts.
ODE (as diffusers' StableDiffusionDiffEditPipeline and the paper's script run it): DDIM inversion under the
source prompt to t0 (guided against the empty prompt), then DDIM (or DPM-Solver++(2M/3M)) sampling under the
target prompt with the source prompt as negative prompt, inside the mask. SDE (the paper's script): the
noise-adding path is recorded and Cycle-SDE decodes under the target prompt, guided against the empty
prompt, with the noise of Eq. 8 recovered under the source prompt. Outside the mask both follow the
recorded path at every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from sdedrag.engine import decode, encode
from sdedrag.engine.steps import forward_step
from sdedrag.errors import InputError
from sdedrag.models.base import DiffusionModel
from sdedrag.settings import DiffEditParams, MaskParams
from sdedrag.tasks.common import (
    generator_for,
    image_to_latent,
    latent_to_image,
    paste_inside,
    require_plain_model,
)


class NegativePrompt:
    """An EpsModel that guides away from a negative conditioning instead of the empty prompt:
    eps = eps(negative) + w (eps(cond) - eps(negative)), both in one batched call."""

    def __init__(self, model: DiffusionModel, negative: Any):
        self.model, self.negative = model, negative

    def predict_eps(self, x: Tensor, t: int, cond: Any = None, guidance: float = 1.0, lora_scale: float = 1.0) -> Tensor:
        if guidance == 1.0:
            return self.model.predict_eps(x, t, cond, 1.0, lora_scale)
        both = self.model.stack_conditions([(cond, x.shape[0]), (self.negative, x.shape[0])])
        eps, eps_negative = self.model.predict_eps(torch.cat([x, x]), t, both, 1.0, lora_scale).chunk(2)
        return eps_negative + guidance * (eps - eps_negative)

    def stack_conditions(self, parts: Sequence[tuple[Any, int]]) -> Any:
        return self.model.stack_conditions(parts)


@dataclass
class DiffEditResult:
    image: Image.Image  # at the input's size
    mask: np.ndarray  # boolean HxW at the input's size, True = edited
    latent: Tensor  # the edited x0
    latent_mask: Tensor  # 0/1 [1, 1, h, w]
    seconds: float


def check_prompts(source_prompt: str | None, target_prompt: str | None) -> None:
    """DiffEdit needs two different, non-empty prompts."""
    if not source_prompt or not target_prompt:
        raise InputError("DiffEdit needs a source prompt (describing the input) and a target prompt (the edit)")
    if source_prompt == target_prompt:
        raise InputError("the source and target prompts are identical: there is nothing for DiffEdit to change")


def diffedit_mask(
    model: DiffusionModel,
    x0: Tensor,
    source: Any,
    target: Any,
    steps: int,
    guidance: float,
    params: MaskParams = MaskParams(),
    generator: torch.Generator | None = None,
) -> Tensor:
    """DiffEdit's latent mask [1, 1, h, w] (1 = edit): |eps(x_t, target) - eps(x_t, source)| averaged over
    ``params.maps`` noisy copies x_t of x0 at ``params.strength`` (on the ``steps`` grid) and over channels,
    clamped at ``clamp_ratio`` times its mean, scaled to [0, 1] and thresholded."""
    t = int(model.schedule.grid(steps, params.strength).timesteps[0])
    noise = randn_tensor((params.maps, *x0.shape[1:]), generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = forward_step(x0, 1.0, float(model.schedule.alpha_bar(t)), noise)
    cond = model.stack_conditions([(source, params.maps), (target, params.maps)])
    eps_source, eps_target = model.predict_eps(torch.cat([x_t, x_t]), t, cond, guidance).chunk(2)
    difference = (eps_target - eps_source).abs().mean(dim=(0, 1), keepdim=True)
    ceiling = float(difference.mean()) * params.clamp_ratio
    if ceiling == 0.0:
        raise InputError("the source and target prompts give identical noise predictions: no DiffEdit mask")
    return (difference.clamp(0.0, ceiling) / ceiling > params.threshold).to(x0.dtype)


def diffedit(
    model: DiffusionModel,
    image: Image.Image,
    source_prompt: str,
    target_prompt: str,
    params: DiffEditParams = DiffEditParams(),
    progress: bool = False,
) -> DiffEditResult:
    """Edit ``image`` from ``source_prompt`` (describing it) to ``target_prompt`` inside DiffEdit's mask.

    ``params.method`` sde (Cycle-SDE) or ode (DDIM inversion + sampling with the source prompt as negative
    prompt); the mask and everything else are drawn identically from ``params.seed``. With ``params.paste_back`` the input's pixels outside the mask
    are kept exactly.
    """
    start_time = time.perf_counter()
    check_prompts(source_prompt, target_prompt)
    require_plain_model(model, "DiffEdit")
    grid = model.schedule.grid(params.steps, params.t0)
    generator = generator_for(model, params.seed)
    x0 = image_to_latent(model, image)
    source, target = model.condition(source_prompt), model.condition(target_prompt)
    region = diffedit_mask(model, x0, source, target, params.steps, params.guidance, params.mask, generator)
    if not region.any():
        raise InputError(f"the DiffEdit mask is empty; lower the mask threshold (now {params.mask.threshold})")
    if params.process == "cycle-sde":
        path = encode(model, x0, grid, "cycle-sde", generator=generator, progress=progress)
        latent = decode(
            model, path.x_t0, path, "cycle-sde", target, order=params.order, mask=region, guidance=params.guidance,
            record_cond=source, progress=progress,
        )
    else:
        path = encode(model, x0, grid, "ode", source, guidance=params.guidance, progress=progress)
        latent = decode(
            NegativePrompt(model, source), path.x_t0, path, "ode", target, order=params.order, mask=region,
            guidance=params.guidance, progress=progress,
        )
    mask = F.interpolate(region, size=(image.size[1], image.size[0]), mode="nearest")[0, 0].cpu().numpy() > 0
    result = latent_to_image(model, latent, image.size)
    if params.paste_back:
        result = paste_inside(result, image, mask, params.feather)
    return DiffEditResult(result, mask, latent, region, time.perf_counter() - start_time)
