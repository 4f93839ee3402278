"""Model adapters and the loader that turns a model id (Hub id, local folder or built-in name) into one."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DModel,
)

from sdedrag.errors import InputError, ModelLoadError
from sdedrag.models.base import DiffusionModel
from sdedrag.models.gaussian_mixture import GaussianMixture
from sdedrag.models.pixel import PixelUNet
from sdedrag.models.sdxl import StableDiffusionXL, XLCondition
from sdedrag.models.stable_diffusion import StableDiffusion, TextCondition
from sdedrag.models.tiny import build_tiny_pipeline, build_tiny_xl_pipeline
from sdedrag.settings import BUILTIN_MODELS, DEFAULT_MODEL, DTYPE_NAMES

TINY_PIPELINES = {
    "tiny": build_tiny_pipeline,
    "tiny-inpaint": partial(build_tiny_pipeline, inpainting=True),
    "tiny-xl": build_tiny_xl_pipeline,
}
SHAPES_MODEL_DIR = Path(__file__).resolve().parents[1] / "shapes" / "weights"
"""The shipped ``shapes`` model (a pixel-UNet diffusers folder trained by ``sdedrag train-shapes``)."""
SHAPES_SD_MODEL_DIR = Path(__file__).resolve().parents[1] / "shapes" / "weights_sd"
"""The shipped ``shapes-sd`` model (a Stable Diffusion folder trained by ``sdedrag train-shapes-sd``)."""
SHIPPED_MODELS = {"shapes": SHAPES_MODEL_DIR, "shapes-sd": SHAPES_SD_MODEL_DIR}
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "DTYPES",
    "DiffusionModel",
    "GaussianMixture",
    "PixelUNet",
    "StableDiffusion",
    "StableDiffusionXL",
    "TextCondition",
    "XLCondition",
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


def load_vae(vae_id: str, dtype: torch.dtype) -> AutoencoderKL:
    """A diffusers AutoencoderKL from a Hub id or a local folder."""
    try:
        return AutoencoderKL.from_pretrained(vae_id, torch_dtype=dtype)
    except Exception as err:  # noqa: BLE001 - any failure to find the VAE is reported the same way
        raise ModelLoadError(
            f"cannot load VAE {vae_id!r}: not a local diffusers AutoencoderKL folder and not available from the Hub "
            f"cache or network ({type(err).__name__})"
        ) from err


def latent_model(
    pipe: DiffusionPipeline, name: str, device: torch.device, dtype: torch.dtype, vae: str | None = None
) -> StableDiffusion:
    """The SD or SDXL adapter of ``pipe`` on ``device``, its VAE first replaced by ``vae`` (Hub id or folder)."""
    if vae is not None:
        replacement = load_vae(vae, dtype)
        if replacement.config.latent_channels != pipe.vae.config.latent_channels:
            raise ModelLoadError(
                f"VAE {vae!r} has {replacement.config.latent_channels} latent channels; {name!r} needs "
                f"{pipe.vae.config.latent_channels}"
            )
        pipe.register_modules(vae=replacement)
    adapter = StableDiffusionXL if "text_encoder_2" in pipe.components else StableDiffusion
    return adapter(pipe.to(device), name=name)


def load_model(
    model_id: str = DEFAULT_MODEL,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype = "float32",
    vae: str | None = None,
) -> DiffusionModel:
    """Load a built-in model (``BUILTIN_MODELS``) or a diffusers SD / SDXL (plain or inpainting) or pixel-UNet
    pipeline; ``vae`` (Hub id or folder) replaces a latent model's VAE."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    dtype = resolve_dtype(dtype)
    if model_id in TINY_PIPELINES:
        return latent_model(TINY_PIPELINES[model_id](dtype=dtype), model_id, device, dtype, vae)
    name = model_id
    if model_id in SHIPPED_MODELS:
        model_id = str(SHIPPED_MODELS[model_id])
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
        if vae is not None:
            raise InputError(f"{name!r} is a pixel-space model: it has no VAE to replace")
        unet = UNet2DModel.from_pretrained(model_id, subfolder="unet", torch_dtype=dtype)
        scheduler_config = dict(DDIMScheduler.load_config(model_id, subfolder="scheduler"))
        return PixelUNet(unet.to(device).eval(), scheduler_config, name=name)
    if unet_class == "UNet2DConditionModel":
        inpainting = "Inpaint" in index.get("_class_name", "")
        if "text_encoder_2" in index:
            pipeline_class = StableDiffusionXLInpaintPipeline if inpainting else StableDiffusionXLPipeline
            pipe = pipeline_class.from_pretrained(model_id, torch_dtype=dtype, add_watermarker=False)
        else:
            pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
            pipe = pipeline_class.from_pretrained(
                model_id, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
            )
        return latent_model(pipe, name, device, dtype, vae)
    raise ModelLoadError(f"model {model_id!r} is a {index.get('_class_name')} pipeline, which sdedrag does not support")
