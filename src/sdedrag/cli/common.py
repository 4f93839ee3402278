"""Argument types and shared options for the subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdedrag.errors import InputError
from sdedrag.models import DEFAULT_MODEL, DTYPES

NOT_RECORDED = {"command", "handler", "config", "out", "path_args", "fast"}  # --fast is recorded as what it sets


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


def add_edit_options(parser: argparse.ArgumentParser, t0: float, t0_help: str) -> None:
    """--method, --solver, --steps, --t0, --guidance: what the SDE/ODE versions of a baseline share."""
    parser.add_argument("--method", choices=("sde", "ode"), default="sde", help="default: %(default)s")
    parser.add_argument(
        "--solver", "--order", dest="order", type=int, choices=(1, 2), default=1,
        help="solver order: 1 DDPM/DDIM, 2 SDE-DPM-Solver++(2M)/DPM-Solver++(2M) (default: %(default)s)",
    )
    parser.add_argument("--steps", type=positive_int, default=50, help="solver steps over [0, T] (default: %(default)s)")
    parser.add_argument("--t0", type=unit_fraction, default=t0, help=f"{t0_help} (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance (default: %(default)s)")


def add_paste_back_options(parser: argparse.ArgumentParser) -> None:
    """--no-paste-back and --feather: keep the input's pixels outside the mask exactly, or not."""
    parser.add_argument(
        "--no-paste-back", dest="paste_back", action="store_false", help="do not keep the input's pixels outside the mask"
    )
    parser.add_argument(
        "--feather", type=non_negative, default=4.0,
        help="paste-back edge width inside the mask, pixels (default: %(default)s)",
    )


def add_model_options(parser: argparse.ArgumentParser, default_model: str = DEFAULT_MODEL) -> None:
    parser.add_argument(
        "--model", default=default_model, help="Hub id, local diffusers folder, or 'tiny' (default: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="default: %(default)s")
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


def recorded_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments stored in run.json (everything but the output folder and the replay source)."""
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key not in NOT_RECORDED
    }


Handler = Callable[[argparse.Namespace], int]
