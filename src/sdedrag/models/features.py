"""UNet decoder features by forward hooks, for the UNet2DConditionModel and UNet2DModel adapters alike.

Feature index 0 is the mid block's output and index k >= 1 the output of decoder block ``up_blocks[k - 1]``
(DragDiffusion's numbering: on SD 1.5, index 3 is the 640-channel map at the latent's resolution).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from sdedrag.errors import InputError
from sdedrag.models.base import DiffusionModel


def unet_of(model: DiffusionModel) -> nn.Module:
    """The diffusers UNet behind ``model`` (both adapters keep it as ``model.unet``)."""
    unet = getattr(model, "unet", None)
    if not isinstance(unet, nn.Module):
        raise InputError(f"{model.name!r} has no UNet to take features from")
    return unet


def feature_count(unet: nn.Module) -> int:
    """How many feature indices the UNet has: the mid block plus one per decoder block."""
    return 1 + len(unet.up_blocks)


def feature_block(unet: nn.Module, index: int) -> nn.Module:
    """The block whose output is feature ``index``."""
    if not 0 <= index < feature_count(unet):
        raise InputError(f"feature index must be in [0, {feature_count(unet) - 1}] for this UNet, got {index}")
    return unet.mid_block if index == 0 else unet.up_blocks[index - 1]


@contextlib.contextmanager
def captured_features(unet: nn.Module, index: int) -> Iterator[list[Tensor]]:
    """Within the block, every UNet call appends its feature ``index`` (with autograd, if enabled) to the list."""
    captured: list[Tensor] = []

    def keep(module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = feature_block(unet, index).register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


@contextlib.contextmanager
def frozen(unet: nn.Module) -> Iterator[nn.Module]:
    """The UNet with ``requires_grad`` off for every weight inside the block (gradients reach inputs only)."""
    flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    unet.requires_grad_(False)
    try:
        yield unet
    finally:
        for name, param in unet.named_parameters():
            param.requires_grad_(flags[name])


def resize_features(features: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of [B, C, h, w] features to ``size`` = (height, width), in at least float32."""
    features = features.to(torch.promote_types(features.dtype, torch.float32))
    return nn.functional.interpolate(features, size, mode="bilinear", align_corners=False)
