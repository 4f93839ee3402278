"""Argument types, shared options, and the one way a task subcommand runs: load the model, write DIR atomically,
record DIR/run.json. Importing this (and building any parser) loads no torch: heavy modules load in ``run``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from sdedrag.errors import InputError, ModelLoadError
from sdedrag.settings import DEFAULT_MODEL, DTYPE_NAMES, ORDERS

NOT_RECORDED = {"command", "handler", "config", "out", "path_args", "fast"}  # --fast is recorded as what it sets
INPUT_FILES = ("image", "mask")  # hashed into run.json's results
Settings = TypeVar("Settings")


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line: ``sdedrag CMD: error: ...`` and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def unit_fraction(text: str) -> float:
    """A float in (0, 1], like the paper's t0."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {value}")
    return value


def add_order_option(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--order", type=int, choices=ORDERS, default=default,
        help="solver order: 1 DDIM / DDPM, 2 or 3 DPM-Solver++(2M/3M) / SDE-DPM-Solver++(2M/3M) (default: %(default)s)",
    )


def add_solver_options(parser: argparse.ArgumentParser, defaults: Any, method_help: str, t0_help: str) -> None:
    """--method, --order, --steps, --t0, --guidance, defaulting to the task's settings ``defaults``."""
    parser.add_argument("--method", choices=("sde", "ode"), default=defaults.method,
                        help=f"{method_help} (default: %(default)s)")
    add_order_option(parser, defaults.order)
    parser.add_argument("--steps", type=positive_int, default=defaults.steps,
                        help="solver steps over [0, T] (default: %(default)s)")
    parser.add_argument("--t0", type=unit_fraction, default=defaults.t0, help=f"{t0_help} (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=defaults.guidance,
                        help="classifier-free guidance (default: %(default)s)")


def add_paste_back_options(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """--no-paste-back and --feather: keep the input's pixels outside the mask exactly, or not."""
    parser.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                        help="do not keep the input's pixels outside the mask")
    parser.add_argument(
        "--feather", type=non_negative, default=defaults.feather,
        help="paste-back edge width inside the mask, pixels (default: %(default)s)",
    )


def add_model_options(parser: argparse.ArgumentParser, default_model: str = DEFAULT_MODEL) -> None:
    parser.add_argument(
        "--model", default=default_model, help="Hub id, local diffusers folder, or 'tiny' (default: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="default: %(default)s")
    parser.add_argument("--vae", help="replace the model's VAE: Hub id or local diffusers AutoencoderKL folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--out and --config: every run writes DIR/run.json, from which --config reruns it."""
    parser.add_argument("--out", type=Path, help="output folder (required)")
    parser.add_argument("--config", type=Path, help="rerun with the arguments stored in a run.json")


def require(args: argparse.Namespace, *names: str) -> None:
    """Arguments that are required unless they come from --config."""
    for name in names:
        if getattr(args, name, None) in (None, []):
            raise InputError(f"--{name.replace('_', '-')} is required")


def settings_from(args: argparse.Namespace, cls: Callable[..., Settings], **values: Any) -> Settings:
    """The settings dataclass ``cls`` from the options named like its fields (``values`` for the others)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}, **values)


def recorded_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments stored in run.json (everything but the output folder and the replay source)."""
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key not in NOT_RECORDED
    }


def load_model_arg(args: argparse.Namespace, device: str | None = None) -> Any:
    """The model --model, --device (or ``device``) and --dtype name."""
    from sdedrag.models import load_model

    try:
        return load_model(args.model, device or args.device, args.dtype, vae=args.vae)
    except ModelLoadError as err:
        raise ModelLoadError(f"--model: {err}") from err


def run_task(args: argparse.Namespace, task: Callable[[Any, Path], Mapping[str, Any]]) -> dict[str, Any]:
    """Load the model, let ``task(model, folder)`` write its files into ``folder`` and return its results, and
    write ``folder``/run.json (the arguments; the results with the input files' hashes); ``folder`` becomes
    --out only when everything is written. Returns the results."""
    from sdedrag.io import atomic_output_dir, file_sha256, run_record, write_json

    require(args, "out")
    model = load_model_arg(args)
    with atomic_output_dir(args.out) as staging:
        results = dict(task(model, staging))
        for name in INPUT_FILES:
            if hasattr(args, name):
                path = getattr(args, name)
                results[f"{name}_sha256"] = file_sha256(path) if path else None
        write_json(staging / "run.json", run_record(args.command, recorded_args(args), results))
    return results
