"""Train the small pixel-space diffusion model of procedural shape scenes that ships as ``--model shapes``.

DIR becomes a diffusers folder (model_index.json, unet/, scheduler/; EMA weights) with
training_config.json, loss_log.csv, loss.png, samples.png, a model card (README.md) and run.json.
DIR/checkpoint.pt is written as training goes: rerunning the same command resumes from it.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from sdedrag.cli.common import positive, positive_int, recorded_args, require
from sdedrag.errors import InputError
from sdedrag.shapes.settings import TrainConfig

DEFAULTS = TrainConfig()


def channels(text: str) -> tuple[int, ...]:
    """Comma-separated UNet widths, one per resolution level, each a multiple of 16."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if len(values) < 2 or any(v < 16 or v % 16 for v in values):
        raise argparse.ArgumentTypeError(f"need at least two widths, each a multiple of 16, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder (required; rerunning with the same folder resumes)")
    parser.add_argument("--config", help="rerun with the arguments stored in a run.json")
    parser.add_argument("--train-steps", type=positive_int, default=DEFAULTS.steps,
                        help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="default: %(default)s")
    parser.add_argument("--lr", type=positive, default=DEFAULTS.lr, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--warmup", type=positive_int, default=DEFAULTS.warmup,
                        help="linear learning-rate warmup steps (default: %(default)s)")
    parser.add_argument("--resolution", type=positive_int, default=DEFAULTS.resolution,
                        help="image side in pixels, a multiple of 2^(levels-1) (default: %(default)s)")
    parser.add_argument("--channels", type=channels, default=",".join(map(str, DEFAULTS.block_out_channels)),
                        help="UNet widths per level (default: %(default)s)")
    parser.add_argument("--layers-per-block", type=positive_int, default=DEFAULTS.layers_per_block,
                        help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="data, noise and init seed (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=DEFAULTS.threads,
                        help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=DEFAULTS.checkpoint_every,
                        help="steps between checkpoints and progress samples (default: %(default)s)")
    parser.add_argument("--prediction-type", choices=("v_prediction", "epsilon"),
                        default=DEFAULTS.scheduler["prediction_type"], help="network target (default: %(default)s)")
    parser.add_argument("--save-dtype", choices=("float16", "float32"), default=DEFAULTS.save_dtype,
                        help="dtype of the saved weights (default: %(default)s)")


def check_out(args: argparse.Namespace) -> None:
    """Training resumes into --out, so it may hold files; it must be a writable folder (or creatable)."""
    from sdedrag.io import check_output_dir

    check_output_dir(args.out, resume=True)


def run(args: argparse.Namespace) -> int:
    from sdedrag.io import run_record, write_json
    from sdedrag.shapes.train import train

    require(args, "out")
    if args.resolution % 2 ** (len(args.channels) - 1):
        raise InputError(f"--resolution {args.resolution} must be divisible by {2 ** (len(args.channels) - 1)} "
                         f"for {len(args.channels)} UNet levels")
    config = TrainConfig(
        steps=args.train_steps, batch_size=args.batch_size, lr=args.lr, resolution=args.resolution, seed=args.seed,
        threads=args.threads, checkpoint_every=args.checkpoint_every, block_out_channels=tuple(args.channels),
        layers_per_block=args.layers_per_block, save_dtype=args.save_dtype,
        warmup=args.warmup,
        scheduler={**DEFAULTS.scheduler, "prediction_type": args.prediction_type},
    )
    results = train(config, args.out)
    write_json(f"{args.out}/run.json", run_record(args.command, {**recorded_args(args), "channels": list(args.channels)},
                                                  {**results, "config": asdict(config)}))
    print(f"{results['steps']} steps in {results['train_minutes']:.1f} min, final loss {results['final_loss']:.4f}; "
          f"wrote {args.out}")
    return 0
