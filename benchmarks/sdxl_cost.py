"""SDXL against SD 1.5 from the networks' sizes: parameters, weight memory, UNet FLOPs per call and per move.

Nothing is downloaded and no weight is allocated: the real configs are built on PyTorch's meta device,
parameters are counted, and one UNet call is run under ``torch.utils.flop_counter.FlopCounterMode``
(matmuls, convolutions and attention). A drag move is 120 calls of batch 4 at the paper's settings
(SDE-Drag: edited and recorded latent, each with and without the prompt); per-image LoRA is 100
training steps of batch 1, about 3x a forward's FLOPs each (forward plus backward).

    python benchmarks/sdxl_cost.py
"""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from common import SD15_UNET_CONFIG, SD15_VAE_CONFIG  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

SDXL_UNET_CONFIG = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
"""stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (the entries that differ from the defaults)."""
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12}
CLIP_BIG_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32}
CALLS_PER_MOVE, MOVE_BATCH, LORA_STEPS = 120, 4, 100


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unet_tflops(unet: UNet2DConditionModel, resolution: int, batch: int, text_dim: int, xl: bool) -> float:
    """Forward TFLOPs of one UNet call on ``batch`` latents of a ``resolution`` px image (77 text tokens)."""
    latent = torch.empty(batch, 4, resolution // 8, resolution // 8, device="meta")
    states = torch.empty(batch, 77, text_dim, device="meta")
    added = {"text_embeds": torch.empty(batch, 1280, device="meta"), "time_ids": torch.empty(batch, 6, device="meta")}
    with FlopCounterMode(display=False) as counter:
        unet(latent, torch.tensor(500, device="meta"), states, added_cond_kwargs=added if xl else None)
    return counter.get_total_flops() / 1e12


def main() -> None:
    with torch.device("meta"):
        sd15 = UNet2DConditionModel(**SD15_UNET_CONFIG)
        sdxl = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)  # SDXL's VAE has the same architecture
        clip_l = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **CLIP_L))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, projection_dim=1280, **CLIP_BIG_G))
    weights_gb = {
        "SD 1.5": (2 * (parameters(sd15) + parameters(clip_l)) + 4 * parameters(vae)) / 1e9,
        "SDXL": (2 * (parameters(sdxl) + parameters(clip_l) + parameters(clip_g)) + 4 * parameters(vae)) / 1e9,
    }
    print(f"UNet parameters: SD 1.5 {parameters(sd15) / 1e6:.1f}M, SDXL {parameters(sdxl) / 1e6:.1f}M "
          f"({parameters(sdxl) / parameters(sd15):.2f}x)")
    print(f"text encoders: CLIP ViT-L {parameters(clip_l) / 1e6:.1f}M, OpenCLIP bigG {parameters(clip_g) / 1e6:.1f}M; "
          f"VAE {parameters(vae) / 1e6:.1f}M")
    print("weights in float16 (VAE in float32): " + ", ".join(f"{k} {v:.2f} GB" for k, v in weights_gb.items()))
    rows = [("SD 1.5", sd15, 512, 768, False), ("SDXL", sdxl, 512, 2048, True), ("SDXL", sdxl, 1024, 2048, True)]
    reference = None
    print("\nmodel   image   TFLOPs/call (batch 4)  TFLOPs/move  TFLOPs/LoRA  move vs SD 1.5 at 512")
    for name, unet, resolution, text_dim, xl in rows:
        call = unet_tflops(unet, resolution, MOVE_BATCH, text_dim, xl)
        lora = 3 * LORA_STEPS * unet_tflops(unet, resolution, 1, text_dim, xl)
        reference = reference or call
        print(f"{name:6}  {resolution:5}  {call:21.2f}  {CALLS_PER_MOVE * call:11.0f}  {lora:11.0f}  "
              f"{call / reference:21.1f}x")


if __name__ == "__main__":
    main()
