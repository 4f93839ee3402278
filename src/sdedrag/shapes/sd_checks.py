"""Checks that ``shapes-sd`` is a working model, and its model card.

- VAE: PSNR of the posterior-mean round trip on held-out scenes.
- Caption adherence: samples from held-out captions (stock ``StableDiffusionPipeline``, DDIM, classifier-free
  guidance) checked with ShapesBench's colour detector: every named colour is present as a shape-sized
  region of the named kind, and no unnamed palette colour is.
- Cycle-SDE: the latent relative error of an unedited encode and decode (zero up to float rounding).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from sdedrag.models.stable_diffusion import StableDiffusion
from sdedrag.settings import ReconstructParams
from sdedrag.shapes.captions import caption, named_shapes
from sdedrag.shapes.data import PALETTE, SIZE_RANGE, sample_scene
from sdedrag.shapes.metrics import colour_regions, min_shape_area
from sdedrag.shapes.train import image_grid
from sdedrag.shapes.sd_settings import SDTrainConfig
from sdedrag.shapes.settings import SHAPES_SD_GUIDANCE
from sdedrag.tasks.reconstruct import reconstruct

SQUARE_EXTENT = 0.86
"""A region filling more than this fraction of its bounding box is a square: exact discs fill pi / 4 = 0.79 and
squares 1; through the shapes-sd VAE, held-out discs fill at most 0.83 and squares at least 0.89."""
SAMPLE_STEPS = 50


@dataclass(frozen=True)
class Adherence:
    """How one sample matches its caption."""

    caption: str
    colours: bool  # every named colour is present as a shape-sized region
    kinds: bool  # ... and its largest region has the named kind
    extras: int  # unnamed palette colours present as shape-sized regions

    @property
    def exact(self) -> bool:
        return self.kinds and self.extras == 0


def kind_of(extent: float) -> str:
    """ "square" or "disc" from a region's area / bounding-box area."""
    return "square" if extent > SQUARE_EXTENT else "disc"


def adherence(image: np.ndarray, text: str) -> Adherence:
    """Check a uint8 [H, W, 3] sample against the shapes its caption names."""
    min_area = min_shape_area(image.shape[0])
    regions = {colour: colour_regions(image, rgb, min_area=min_area) for colour, rgb in PALETTE.items()}
    named = named_shapes(text)
    colours = all(regions[c] for c, _ in named)
    kinds = colours and all(kind_of(regions[c][0].extent) == k for c, k in named)
    extras = sum(1 for c in PALETTE if regions[c] and c not in {c for c, _ in named})
    return Adherence(text, colours, kinds, extras)


def held_out(config: SDTrainConfig, count: int) -> list:
    """``count`` scenes the model never saw (the data seed after the training seed)."""
    return [sample_scene(np.random.default_rng([config.seed + 1, i]), config.resolution, config.max_shapes)
            for i in range(count)]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def vae_round_trip(pipe: StableDiffusionPipeline, scenes: Sequence) -> np.ndarray:
    """Each scene through the VAE (posterior mean), uint8 [N, H, W, 3]."""
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return to_uint8(pipe.vae.decode(pipe.vae.encode(images).latent_dist.mean).sample)


@torch.no_grad()
def sample_captions(pipe: StableDiffusionPipeline, captions: Sequence[str], resolution: int, seed: int = 0,
                    guidance: float = SHAPES_SD_GUIDANCE, steps: int = SAMPLE_STEPS, batch: int = 8) -> np.ndarray:
    """One stock-pipeline sample per caption, uint8 [N, H, W, 3]."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(captions), batch):
        images = pipe(list(captions[start : start + batch]), height=resolution, width=resolution,
                      num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="np").images
        out.append((images * 255).round().astype(np.uint8))
    return np.concatenate(out)


def run_checks(folder: str | os.PathLike, config: SDTrainConfig, samples: int = 64) -> dict[str, Any]:
    """VAE PSNR, caption adherence over ``samples`` held-out captions and Cycle-SDE reconstruction; writes
    samples.png (the first 32 samples) and checks.json into ``folder``."""
    folder = Path(folder)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    scenes = held_out(config, samples)
    captions = [caption(s) for s in scenes]
    round_trips = vae_round_trip(pipe, scenes)
    psnr = [float(peak_signal_noise_ratio(s.image, r)) for s, r in zip(scenes, round_trips, strict=True)]
    ceiling = [adherence(r, text).exact for r, text in zip(round_trips, captions, strict=True)]
    images = sample_captions(pipe, captions, config.resolution)
    checks = [adherence(image, text) for image, text in zip(images, captions, strict=True)]
    tiles = torch.from_numpy(images[:32]).permute(0, 3, 1, 2).float() / 127.5 - 1
    image_grid(tiles, columns=8, scale=1).save(folder / "samples.png")
    model = StableDiffusion(pipe, name=str(folder))
    cycle = reconstruct(model, Image.fromarray(scenes[0].image), captions[0],
                        ReconstructParams(process="cycle-sde", steps=50, t0=0.6))
    results = {
        "vae_psnr": float(np.mean(psnr)),
        "vae_psnr_min": float(np.min(psnr)),
        "adherence": float(np.mean([c.exact for c in checks])),
        "vae_adherence": float(np.mean(ceiling)),
        "colour_rate": float(np.mean([c.colours for c in checks])),
        "kind_rate": float(np.mean([c.kinds for c in checks])),
        "samples": samples,
        "guidance": SHAPES_SD_GUIDANCE,
        "sample_steps": SAMPLE_STEPS,
        "cycle_sde_latent_rel_error": cycle.latent_rel_error,
        "per_sample": [{**asdict(c), "exact": c.exact} for c in checks],
    }
    (folder / "checks.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def write_model_card(folder: str | os.PathLike, config: SDTrainConfig, results: dict[str, Any],
                     samples: int = 64) -> dict[str, Any]:
    """Run the checks and write the folder's README.md; returns the checks' summary."""
    checks = {k: v for k, v in run_checks(folder, config, samples).items() if k != "per_sample"}
    (Path(folder) / "README.md").write_text(model_card(config, results, checks))
    return checks


def model_card(config: SDTrainConfig, results: dict[str, Any], checks: dict[str, Any]) -> str:
    """The model folder's README.md."""
    params = {name: f"{count / 1e6:.2f} M" for name, count in results["parameters"].items()}
    side, scale = config.resolution, 2 ** (len(config.vae_channels) - 1)
    radii = [side * f for f in SIZE_RANGE]
    lengths = results["lengths"]
    length_note = "" if len(lengths) == 1 else (
        f"\n- The UNet run was started for {lengths[0][1]} steps and resumed with another length: "
        + ", then ".join(f"{b} steps from step {a}" for a, b in lengths[1:])
        + " (the learning rate is constant after warmup, so only the length changed).")
    rerun = "".join(f" and rerun with `--unet-steps {b}`" for _, b in lengths[1:])
    minutes = {k: f"{results.get(k + '_minutes', 0.0):.1f} min" for k in ("render", "vae", "encode", "unet", "decoder")}
    decoder_note = "" if not results.get("decoder_steps") else (
        f"\n- VAE decoder alone, after the UNet: {results['decoder_steps']} AdamW steps of {config.decoder_batch} "
        f"{config.vae_crop}x{config.vae_crop} crops decoded from posterior samples of the frozen encoder's pool "
        f"latents, L1, learning rate {config.decoder_lr} with cosine decay; the latents the UNet learned do not "
        f"change, the decoded pixels get sharper. Final L1 (mean of the last 100 steps) "
        f"{results['decoder_final_l1']:.4f}.")
    decoder_flag = f" --decoder-steps {config.decoder_steps}" if config.decoder_steps else ""
    return f"""# sdedrag `shapes-sd` model

A small text-to-image latent diffusion model with Stable Diffusion 1.x's pipeline classes, trained on this
project's CPU: `AutoencoderKL` ({params['vae']} parameters, 4 latent channels, {scale}x downsampling), `CLIPTextModel`
({params['text_encoder']}) with an offline word-level CLIP BPE tokenizer, and a cross-attention
`UNet2DConditionModel` ({params['unet']}); {results['weights_bytes'] / 1e6:.1f} MB of weights (VAE and UNet in
{config.save_dtype}, text encoder in float32). It draws {side}x{side} ShapesBench scenes (`sdedrag.shapes.data`;
{side // scale}x{side // scale} latents) from captions such as "a red disc, a blue square and a yellow disc on a
gradient background" (`sdedrag.shapes.captions`: the shapes left to right by colour and kind, and the background
kind; no positions, so a drag never contradicts the prompt). `StableDiffusionPipeline.from_pretrained` loads this
folder with stock diffusers; in sdedrag it is `--model shapes-sd` and takes exactly the Stable Diffusion code path.

## Checks

- VAE reconstruction (posterior mean) of {checks['samples']} held-out scenes: PSNR {checks['vae_psnr']:.1f} dB on
  average, {checks['vae_psnr_min']:.1f} dB at worst.
- Caption adherence over {checks['samples']} held-out captions ({checks['sample_steps']}-step DDIM, guidance
  {checks['guidance']:g}, stock pipeline): every named colour present as a shape-sized region in
  {checks['colour_rate']:.0%} of the samples; each also of the named kind in {checks['kind_rate']:.0%}; and no
  unnamed colour as well (**adherence**) in {checks['adherence']:.0%}. The held-out scenes themselves, through a
  VAE round trip, pass in {checks['vae_adherence']:.0%}. Detector: ShapesBench's colour regions
  (`sdedrag.shapes.metrics.colour_regions`, tolerance 60); a region counts when it has a quarter of the smallest
  shape's area, and is a square when it fills more than {SQUARE_EXTENT} of its bounding box. Per sample:
  `checks.json`.
- Cycle-SDE reconstruction (50 steps, t0 = 0.6, with the caption): latent relative error
  {checks['cycle_sde_latent_rel_error']:.1e}, exact up to float rounding.

The first 32 adherence samples (their captions are in `checks.json`):

![samples](samples.png)

## Drag settings at this size

A latent pixel is {scale} image pixels, as on SD, but the image is {side} px instead of 512: shapes have radius
{radii[0]:.0f}-{radii[1]:.0f} px ({radii[0] / scale:.1f}-{radii[1] / scale:.1f} latent px) and ShapesBench drags are
{side * 0.25:.0f}-{side * 0.45:.0f} px long. The paper's step size (2 latent px) keeps its meaning, but its patch
radius of 5 latent px would cover a whole shape and its surroundings: ShapesBench (`sdedrag.shapes.bench`) sets
it to the shape's circumscribed radius in latent pixels, plus one.

## Training

- Data: {config.pool} scenes (seed {config.seed}) rendered once; captions from their ground truth, dropped to ""
  with probability {config.caption_dropout} (classifier-free guidance).
- VAE: {results['vae_steps']} AdamW steps of {config.vae_batch} random {config.vae_crop}x{config.vae_crop} crops,
  L1 plus SD's KL weight (1e-6 per summed pixel), learning rate {config.vae_lr} with cosine decay, posterior
  log-variance starting at -10; no mid-block attention. Final L1 (mean of the last 100 steps)
  {results['vae_final_l1']:.4f}. Scaling factor {results['scaling_factor']:.4f} (1 / std of the pool's latents).
- UNet and text encoder, trained together: {results['unet_steps']} AdamW steps of batch {config.unet_batch} on the
  pool's latents (a fresh posterior sample each time), learning rate {config.unet_lr} after {config.warmup} warmup
  steps, gradient clipping at 1, EMA with warmup up to decay {config.ema_decay} (the saved weights). Scheduler:
  SD's (scaled-linear betas 0.00085-0.012, 1000 steps, leading spacing) with the v-prediction target of SD 2.x.
  Final loss (mean of the last 100 steps) {results['unet_final_loss']:.4f}.{length_note}{decoder_note}
- Wall time on {config.threads} CPU thread of a 2-core machine shared with other work (at nice 5): rendering
  {minutes['render']}, VAE {minutes['vae']}, encoding the pool {minutes['encode']}, UNet {minutes['unet']},
  VAE decoder {minutes['decoder']}.
- Command: `sdedrag train-shapes-sd --out DIR --resolution {side} --pool {config.pool} --vae-steps \
{config.vae_steps} --unet-steps {lengths[0][1]} --unet-batch {config.unet_batch} --seed {config.seed} \
--threads {config.threads}{decoder_flag}`{rerun}. Configuration: `training_config.json`; losses: `vae_loss_log.csv`,
  `unet_loss_log.csv`{", `decoder_loss_log.csv`" if config.decoder_steps else ""}.

![UNet loss](loss.png)
"""
