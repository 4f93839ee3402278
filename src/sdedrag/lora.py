"""Per-image LoRA for SDE-Drag: fine-tune the UNet on the input image, cache the weights, apply them.

The recipe is the paper's (and DragDiffusion's): a peft LoRA adapter on the UNet attention projections
(rank 16, alpha = rank), trained for 100 AdamW steps at lr 2e-4 with the standard denoising loss on
the image's VAE latent and the prompt. Weights are saved in diffusers' LoRA format (safetensors) and
loaded into the UNet with diffusers' loader, so they also work with ``pipe.load_lora_weights``.

Only Stable Diffusion models (SD 1.x / 2.x and SDXL, not inpainting ones) are supported: diffusers'
``UNet2DModel`` has no adapter API and an inpainting UNet needs mask inputs the recipe does not define.
SDXL's UNet is trained on the same pooled embedding and added time ids (the image's size) it sees in edits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.training_utils import cast_training_params
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from torch import Tensor
from tqdm.auto import trange

from sdedrag.errors import InputError
from sdedrag.io import image_to_tensor, write_json
from sdedrag.models.base import DiffusionModel
from sdedrag.models.sdxl import StableDiffusionXL
from sdedrag.models.stable_diffusion import StableDiffusion
from sdedrag.settings import LoraSettings
from sdedrag.tasks.common import fit_to_model

ADAPTER_NAME = "sdedrag"
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
KEY_VERSION = 1  # bump when the training recipe changes, so old cache entries are not reused


def peft_config(settings: LoraSettings) -> LoraConfig:
    """The peft adapter config of ``settings`` (as in diffusers' train_dreambooth_lora)."""
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.lora_alpha,
        init_lora_weights="gaussian",
        target_modules=list(settings.target_modules),
    )


def supports_lora(model: DiffusionModel) -> bool:
    """Whether the per-image LoRA recipe applies: a plain (non-inpainting) Stable Diffusion model."""
    return isinstance(model, StableDiffusion) and not model.is_inpainting


def _stable_diffusion(model: DiffusionModel) -> StableDiffusion:
    """``model`` as a plain Stable Diffusion model without adapters, or an InputError saying why not."""
    if not supports_lora(model):
        raise InputError(
            f"per-image LoRA needs a (non-inpainting) Stable Diffusion model; {model.name!r} is not one "
            "(drag without LoRA: --no-lora, or lora=None)"
        )
    if model.has_lora:
        raise InputError(f"the UNet of {model.name!r} already carries a LoRA adapter; leave lora_applied() first")
    return model


@torch.enable_grad()
def train_lora(
    model: DiffusionModel,
    image: Image.Image,
    prompt: str = "",
    settings: LoraSettings = LoraSettings(),
    progress: bool = True,
) -> dict[str, Tensor]:
    """Fine-tune a LoRA adapter on ``image`` and return its peft state dict (CPU tensors).

    Each step samples the VAE posterior of the image (fitted to the model's size, as every edit does), a
    timestep and noise, and minimises the MSE to the scheduler's target (noise, velocity or sample). Only the
    adapter is trained; afterwards it is removed, so the model's weights, ``requires_grad`` flags and eval mode
    are as before.
    """
    sd = _stable_diffusion(model)
    unet = sd.unet
    generator = torch.Generator(device=sd.device).manual_seed(settings.seed)
    scheduler = DDPMScheduler.from_config(sd.schedule.config)
    with torch.no_grad():
        posterior = sd.vae.encode(image_to_tensor(fit_to_model(sd, image)).to(sd.device, sd.vae.dtype)).latent_dist
    conditioning = _unet_conditioning(sd, prompt, settings.batch_size, posterior.mean.shape[-2:])
    requires_grad = {name: p.requires_grad for name, p in unet.named_parameters()}
    unet.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=[]):  # peft draws the initial weights on the CPU: seed them
            torch.default_generator.manual_seed(settings.seed)
            try:
                unet.add_adapter(peft_config(settings), adapter_name=ADAPTER_NAME)
            except ValueError as err:  # peft: no target module matches
                raise InputError(f"cannot add a LoRA adapter to {sd.name!r}: {err}") from err
        if sd.dtype in (torch.float16, torch.bfloat16):
            cast_training_params(unet, torch.float32)  # half-precision base, float32 adapter
        optimizer = torch.optim.AdamW(
            [p for p in unet.parameters() if p.requires_grad],
            lr=settings.learning_rate,
            weight_decay=settings.weight_decay,
        )
        unet.train()
        bar = trange(settings.steps, desc="Training LoRA", disable=None if progress else True)
        for _ in bar:
            latents = torch.cat([posterior.sample(generator) for _ in range(settings.batch_size)])
            latents = latents * sd.vae.config.scaling_factor
            noise = randn_tensor(latents.shape, generator=generator, device=sd.device, dtype=latents.dtype)
            timesteps = torch.randint(
                0, scheduler.config.num_train_timesteps, (settings.batch_size,), generator=generator, device=sd.device
            )
            noisy = scheduler.add_noise(latents, noise, timesteps)
            prediction = unet(noisy.to(sd.dtype), timesteps, **conditioning).sample
            loss = F.mse_loss(prediction.to(sd.latent_dtype), _target(sd, latents, noise, timesteps, scheduler))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        state = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
        return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}
    finally:
        unet.unload_lora()
        unet.eval()
        for name, param in unet.named_parameters():
            param.requires_grad_(requires_grad[name])


def _unet_conditioning(sd: StableDiffusion, prompt: str, batch: int, latent_hw: Sequence[int]) -> dict[str, Any]:
    """The UNet's conditioning keywords for a training batch: the prompt's text states and, for SDXL, its
    pooled embedding and the added time ids of the image's size (as :meth:`StableDiffusionXL.predict_eps`)."""
    cond = sd.condition(prompt).expand(batch)
    if isinstance(sd, StableDiffusionXL):
        return {"encoder_hidden_states": cond.cond, "added_cond_kwargs": sd.added_cond_kwargs(cond.pooled, latent_hw)}
    return {"encoder_hidden_states": cond.cond}


def _target(
    model: StableDiffusion, latents: Tensor, noise: Tensor, timesteps: Tensor, scheduler: DDPMScheduler
) -> Tensor:
    """What the UNet is trained to output for x_t = add_noise(latents, noise, t)."""
    if model.prediction_type == "epsilon":
        target = noise
    elif model.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = latents
    return target.to(model.latent_dtype)


def save_lora(directory: str | os.PathLike, state: dict[str, Tensor], settings: LoraSettings) -> Path:
    """Write a :func:`train_lora` state dict as a diffusers LoRA file; returns the safetensors file.

    The keys stay in peft's naming: diffusers' ``convert_state_dict_to_diffusers`` renames only the
    attention layers, and its loader, which checks the first key alone, would then skip the others.
    """
    StableDiffusionPipeline.save_lora_weights(
        directory,
        unet_lora_layers=state,
        weight_name=WEIGHTS_NAME,
        unet_lora_adapter_metadata=peft_config(settings).to_dict(),
    )
    return Path(directory) / WEIGHTS_NAME


@contextlib.contextmanager
def lora_applied(model: DiffusionModel, weights: str | os.PathLike) -> Iterator[DiffusionModel]:
    """Load the LoRA file ``weights`` into the model's UNet for the duration of the block.

    Inside, ``model.has_lora`` is true and ``predict_eps(..., lora_scale=s)`` scales the adapter by s
    (0 is the base model). On exit, also by exception, the adapter layers are removed and the UNet is
    exactly the base model again; the base weights are never reloaded.
    """
    sd = _stable_diffusion(model)
    weights = Path(weights)
    if not weights.is_file():
        raise InputError(f"LoRA weights not found: {weights}")
    try:
        # What pipe.load_lora_weights does for the UNet, without its warning about no text-encoder keys.
        sd.unet.load_lora_adapter(weights.parent, weight_name=weights.name, prefix="unet", adapter_name=ADAPTER_NAME)
        yield model
    finally:
        sd.unet.unload_lora()


def default_cache_root() -> Path:
    """``$SDEDRAG_CACHE/lora``, or ``~/.cache/sdedrag/lora``."""
    base = os.environ.get("SDEDRAG_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "sdedrag") / "lora"


def _fingerprint(modules: dict[str, torch.nn.Module], samples: int = 16) -> str:
    """A content hash of the weights from ``samples`` evenly strided values of every parameter.

    Any other checkpoint (or fine-tune) differs in nearly every tensor, so this identifies the weights
    for a fraction of the cost of hashing them all.
    """
    digest = hashlib.sha256()
    for prefix, module in modules.items():
        picked = []
        for name, param in module.named_parameters():
            flat = param.detach().reshape(-1)
            picked.append(flat[:: max(1, flat.numel() // samples)][:samples].float())
            digest.update(f"{prefix}.{name}:{tuple(param.shape)};".encode())
        digest.update(torch.cat(picked).cpu().numpy().tobytes())
    return digest.hexdigest()


def _weighted_modules(sd: StableDiffusion) -> dict[str, torch.nn.Module]:
    """The networks whose weights a LoRA depends on: UNet, VAE and text encoder(s)."""
    modules = {"unet": sd.unet, "vae": sd.vae, "text_encoder": sd.pipe.text_encoder}
    if isinstance(sd, StableDiffusionXL):
        modules["text_encoder_2"] = sd.pipe.text_encoder_2
    return modules


def _public_config(config: dict) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


class LoraCache:
    """LoRA weights on disk, one folder per key: ``ROOT/KEY/pytorch_lora_weights.safetensors`` plus info.json.

    The key hashes the model (name, dtype, UNet and scheduler configs, a content fingerprint of the
    UNet, VAE and text-encoder(s) weights), the image's pixels, the prompt and the settings. Entries are
    written atomically (a temporary folder, then a rename), so a failed or interrupted training leaves
    nothing behind. Delete ROOT (or one KEY folder) to clear it.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_root()

    def key(self, model: DiffusionModel, image: Image.Image, prompt: str, settings: LoraSettings) -> str:
        sd = _stable_diffusion(model)
        rgb = image.convert("RGB")
        identity = {
            "version": KEY_VERSION,
            "model": sd.name,
            "dtype": str(sd.dtype),
            "unet_config": _public_config(sd.unet.config),
            "scheduler_config": _public_config(sd.schedule.config),
            "weights": _fingerprint(_weighted_modules(sd)),
            "image": hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest(),
            "prompt": prompt or "",
            "settings": settings.to_dict(),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        """The weights file of cache entry ``key`` (it exists once trained)."""
        return self.root / key / WEIGHTS_NAME

    def get_or_train(
        self,
        model: DiffusionModel,
        image: Image.Image,
        prompt: str = "",
        settings: LoraSettings = LoraSettings(),
        progress: bool = True,
    ) -> Path:
        """The cached weights for these inputs, training and saving them first if there are none."""
        key = self.key(model, image, prompt, settings)
        weights = self.path(key)
        if weights.is_file():
            return weights
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=self.root))
        try:
            save_lora(staging, train_lora(model, image, prompt, settings, progress), settings)
            info = {"model": model.name, "prompt": prompt or "", "image_size": list(image.size)}
            write_json(staging / "info.json", {**info, "settings": settings.to_dict()})
            try:
                os.replace(staging, weights.parent)
            except OSError:  # another process finished the same entry first: keep theirs
                if not weights.is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return weights
