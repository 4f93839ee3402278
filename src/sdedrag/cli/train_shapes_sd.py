"""Train shapes-sd: a small text-to-image Stable Diffusion (AutoencoderKL, CLIP text encoder, cross-attention
UNet) of captioned ShapesBench scenes, on CPU; the built-in --model shapes-sd.

DIR becomes a stock StableDiffusionPipeline folder (EMA weights) with training_config.json, the loss logs
and curve, the checks (VAE PSNR, caption adherence, Cycle-SDE reconstruction), samples.png, a model card
(README.md) and run.json. DIR/vae_checkpoint.pt, DIR/latents.pt, DIR/unet_checkpoint.pt and
DIR/decoder_checkpoint.pt are written as training goes: rerunning the same command resumes from them
(--unet-steps and --decoder-steps may change to stop early or extend).
"""

from __future__ import annotations

import argparse

from sdedrag.cli.common import positive_int, recorded_args, require
from sdedrag.errors import InputError
from sdedrag.shapes.sd_settings import SDTrainConfig

DEFAULTS = SDTrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder (required; rerunning with the same folder resumes)")
    parser.add_argument("--config", help="rerun with the arguments stored in a run.json")
    parser.add_argument("--resolution", type=positive_int, default=DEFAULTS.resolution,
                        help="image side in pixels, a multiple of 32 (default: %(default)s)")
    parser.add_argument("--pool", type=positive_int, default=DEFAULTS.pool,
                        help="training scenes, rendered and encoded once (default: %(default)s)")
    parser.add_argument("--vae-steps", type=positive_int, default=DEFAULTS.vae_steps, help="default: %(default)s")
    parser.add_argument("--unet-steps", type=positive_int, default=DEFAULTS.unet_steps,
                        help="UNet and text-encoder steps; may change when resuming (default: %(default)s)")
    parser.add_argument("--unet-batch", type=positive_int, default=DEFAULTS.unet_batch, help="default: %(default)s")
    parser.add_argument("--decoder-steps", type=int, default=DEFAULTS.decoder_steps,
                        help="then fine-tune the VAE decoder alone on the fixed latents; may change when resuming "
                        "(default: %(default)s, none)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed,
                        help="data, noise and init seed (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=DEFAULTS.threads,
                        help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=DEFAULTS.checkpoint_every,
                        help="steps between checkpoints (default: %(default)s)")
    parser.add_argument("--check-samples", type=positive_int, default=64,
                        help="captions sampled for the adherence check (default: %(default)s)")


def check_out(args: argparse.Namespace) -> None:
    """Training resumes into --out, so it may hold files; it must be a writable folder (or creatable)."""
    from sdedrag.io import check_output_dir

    check_output_dir(args.out, resume=True)


def run(args: argparse.Namespace) -> int:
    from sdedrag.io import run_record, write_json
    from sdedrag.shapes.sd_checks import write_model_card
    from sdedrag.shapes.train_sd import train

    require(args, "out")
    if args.resolution % 32:
        raise InputError(f"resolution {args.resolution} is not a multiple of 32 (8x VAE, three UNet levels)")
    if args.decoder_steps < 0:
        raise InputError(f"--decoder-steps must be at least 0, got {args.decoder_steps}")
    config = SDTrainConfig(resolution=args.resolution, pool=args.pool, vae_steps=args.vae_steps,
                           unet_steps=args.unet_steps, unet_batch=args.unet_batch, decoder_steps=args.decoder_steps,
                           seed=args.seed,
                           threads=args.threads, checkpoint_every=args.checkpoint_every)
    try:
        results = train(config, args.out)
    except ValueError as err:
        raise InputError(str(err)) from err
    checks = write_model_card(args.out, config, results, samples=args.check_samples)
    write_json(f"{args.out}/run.json", run_record(args.command, recorded_args(args), {**results, **checks}))
    print(f"VAE {results['vae_minutes']:.0f} min, UNet {results['unet_minutes']:.0f} min, final loss "
          f"{results['unet_final_loss']:.4f}; VAE PSNR {checks['vae_psnr']:.1f} dB, caption adherence "
          f"{checks['adherence']:.0%}; wrote {args.out}")
    return 0
