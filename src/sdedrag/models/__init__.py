"""Model adapters and the loader that turns a model id (Hub id, local folder or built-in name) into one."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DModel,
)

from sdedrag.errors import InputError, ModelLoadError
from sdedrag.models.base import DiffusionModel
from sdedrag.models.gaussian_mixture import GaussianMixture
from sdedrag.models.pixel import PixelUNet
from sdedrag.models.stable_diffusion import StableDiffusion, TextCondition
from sdedrag.models.tiny import build_tiny_pipeline

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
BUILTIN_MODELS = ("tiny", "tiny-inpaint", "shapes")
SHAPES_MODEL_DIR = Path(__file__).resolve().parents[1] / "shapes" / "weights"
"""The shipped ``shapes`` model (a pixel-UNet diffusers folder trained by ``sdedrag train-shapes``)."""
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "DTYPES",
    "DiffusionModel",
    "GaussianMixture",
    "PixelUNet",
    "StableDiffusion",
    "TextCondition",
    "load_model",
    "resolve_device",
]


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise InputError(f"unknown device {device!r}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available (use the CPU)")
    return resolved


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    model_id: str = DEFAULT_MODEL, device: str | torch.device | None = "auto", dtype: str | torch.dtype = "float32"
) -> DiffusionModel:
    """Load a built-in model (``BUILTIN_MODELS``) or a diffusers SD / SD-inpainting / pixel-UNet pipeline."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    dtype = resolve_dtype(dtype)
    if model_id == "tiny":
        return StableDiffusion(build_tiny_pipeline(dtype=dtype).to(device), name="tiny")
    if model_id == "tiny-inpaint":
        return StableDiffusion(build_tiny_pipeline(dtype=dtype, inpainting=True).to(device), name="tiny-inpaint")
    name = model_id
    if model_id == "shapes":
        model_id = str(SHAPES_MODEL_DIR)
    try:
        with warnings.catch_warnings():  # diffusers passes a deprecated hf_hub_download argument
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            index = DiffusionPipeline.load_config(model_id)
    except Exception as err:  # noqa: BLE001 - any failure to find the model is reported the same way
        raise ModelLoadError(
            f"cannot load model {model_id!r}: not a local diffusers folder and not available from the Hub "
            f"cache or network ({type(err).__name__}); pass a local folder or Hub id, or 'tiny' "
            "for the built-in offline test model"
        ) from err
    unet_class = (index.get("unet") or [None, None])[1]
    if unet_class == "UNet2DModel":
        unet = UNet2DModel.from_pretrained(model_id, subfolder="unet", torch_dtype=dtype)
        scheduler_config = dict(DDIMScheduler.load_config(model_id, subfolder="scheduler"))
        return PixelUNet(unet.to(device).eval(), scheduler_config, name=name)
    if unet_class == "UNet2DConditionModel":
        inpainting = "Inpaint" in index.get("_class_name", "")
        pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
        pipe = pipeline_class.from_pretrained(
            model_id, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
        return StableDiffusion(pipe.to(device), name=model_id)
    raise ModelLoadError(f"--model {model_id!r} is a {index.get('_class_name')} pipeline, which sdedrag does not support")
