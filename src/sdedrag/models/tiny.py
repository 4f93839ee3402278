"""The built-in ``tiny``, ``tiny-inpaint`` and ``tiny-xl`` models: randomly initialised SD- and SDXL-architecture
pipelines built in memory, offline (``tiny-inpaint`` has the 9-channel inpainting UNet: latent, mask,
masked-image latent; ``tiny-xl`` has SDXL's two text encoders, pooled embedding and added time ids).

Its weights are random (seeded, so every build is identical) and its images look like noise by
design: it exercises every code path of a real checkpoint at a small fraction of the cost.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG

TEXT_DIM = 32


def build_tiny_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer from an in-memory vocabulary (every byte, as word piece and word end)."""
    byte_symbols = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>", *byte_symbols, *(s + "</w>" for s in byte_symbols)]
    return CLIPTokenizer(vocab={tok: i for i, tok in enumerate(tokens)}, merges=[], model_max_length=77)


def build_tiny_pipeline(
    seed: int = 0, dtype: torch.dtype = torch.float32, inpainting: bool = False
) -> StableDiffusionPipeline | StableDiffusionInpaintPipeline:
    """A Stable Diffusion pipeline with the SD 1.x architecture (8x VAE, cross-attention UNet) at toy width.

    Weights are drawn in float32 from ``seed`` and then cast, so every dtype holds the same network.
    ``inpainting`` builds a StableDiffusionInpaintPipeline whose UNet takes 4 + 1 + 4 = 9 input channels.
    """
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=9 if inpainting else 4,
            out_channels=4,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = build_tiny_vae()
        text_encoder = CLIPTextModel(tiny_text_config(tokenizer))
    return assemble_pipeline(unet, vae, text_encoder, tokenizer, dtype, inpainting)


def build_tiny_vae(**config) -> AutoencoderKL:
    """SD's 8x KL autoencoder (four levels, 4 latent channels) at toy width; ``config`` overrides."""
    return AutoencoderKL(
        **{
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (8, 16, 16, 16),
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 8,
            "sample_size": 256,
            **config,
        }
    )


def tiny_text_config(tokenizer: CLIPTokenizer, **config) -> CLIPTextConfig:
    """A two-layer CLIP text transformer of width ``TEXT_DIM`` over ``tokenizer``'s vocabulary."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **config,
    )


def build_tiny_xl_pipeline(
    seed: int = 0, dtype: torch.dtype = torch.float32, inpainting: bool = False
) -> StableDiffusionXLPipeline | StableDiffusionXLInpaintPipeline:
    """A Stable Diffusion XL pipeline with the SDXL architecture at toy width.

    As in SDXL: a plain first level and cross-attention (linear projections) below it, cross-attention over
    both CLIP encoders' penultimate states concatenated (2 x ``TEXT_DIM``), the second encoder's projected
    pooled embedding plus six Fourier-embedded time ids (``addition_embed_type="text_time"``), and the VAE's
    scaling factor 0.13025. ``inpainting`` builds a StableDiffusionXLInpaintPipeline with a 9-channel UNet.
    """
    tokenizer = build_tiny_tokenizer()
    time_embed_dim = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=9 if inpainting else 4,
            out_channels=4,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),
            cross_attention_dim=2 * TEXT_DIM,
            attention_head_dim=8,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_DIM,
            norm_num_groups=8,
        )
        vae = build_tiny_vae(scaling_factor=0.13025)
        text_encoder = CLIPTextModel(tiny_text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config(tokenizer, projection_dim=TEXT_DIM))
    for module in (unet, vae, text_encoder, text_encoder_2):
        torch.nn.Module.to(module.eval(), dtype=dtype)
    pipeline_class = StableDiffusionXLInpaintPipeline if inpainting else StableDiffusionXLPipeline
    return pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_tiny_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler.from_config(SD_SCHEDULER_CONFIG),
        add_watermarker=False,
    )


def assemble_pipeline(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    dtype: torch.dtype = torch.float32,
    inpainting: bool = False,
) -> StableDiffusionPipeline | StableDiffusionInpaintPipeline:
    """Freshly built components cast to ``dtype`` and put together with SD's DDIM scheduler config."""
    for module in (unet, vae, text_encoder):
        # A plain parameter cast: diffusers' ModelMixin.to warns about fp32-kept modules, which these lack.
        torch.nn.Module.to(module.eval(), dtype=dtype)
    pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    return pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
