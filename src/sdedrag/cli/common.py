"""Argument types, shared options, and the one way a task subcommand runs: load the model, write DIR atomically,
record DIR/run.json. Importing this (and building any parser) loads no torch: heavy modules load in ``run``."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from sdedrag.errors import InputError, ModelLoadError
from sdedrag.settings import DEFAULT_MODEL, DTYPE_NAMES, MAX_GUIDANCE, MAX_IMAGE_PIXELS, ORDERS

# Not stored in run.json: the command's plumbing, the output folder, and --fast (recorded as what it sets).
NOT_RECORDED = {"command", "handler", "config", "out", "path_args", "out_check", "fast"}
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


def number(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [low, high] (in (low, high] with ``low_open``; None: unbounded)."""
    if low is None:
        bounds = f"at most {high:g}" if high is not None else "finite"
    elif high is None:
        bounds = f"greater than {low:g}" if low_open else f"at least {low:g}"
    else:
        bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        value = float(text)
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a number {bounds}, got {text}")
        return value

    parse.__name__ = "number"  # argparse's "invalid number value: ..." for text that is no number
    return parse


finite = number()
unit_fraction = number(0.0, 1.0, low_open=True)  # like the paper's t0
unit_interval = number(0.0, 1.0)
non_negative = number(0.0)
positive = number(0.0, low_open=True)
guidance_scale = number(1.0, MAX_GUIDANCE)


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
    parser.add_argument("--guidance", type=guidance_scale, default=defaults.guidance,
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


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """--max-pixels: the largest input image read (sdedrag.io.MAX_IMAGE_PIXELS)."""
    parser.add_argument("--max-pixels", type=positive_int,
                        help=f"refuse input images with more pixels than this (default: {MAX_IMAGE_PIXELS:,})")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--out and --config: every run writes DIR/run.json, from which --config reruns it."""
    parser.add_argument("--out", type=Path, help="output folder (required)")
    parser.add_argument("--config", type=Path, help="rerun with the arguments stored in a run.json")


def check_out(args: argparse.Namespace) -> None:
    """--out must be new, empty or sdedrag's (:func:`sdedrag.io.check_output_dir`); commands that resume into
    --out define their own ``check_out``."""
    from sdedrag.io import check_output_dir

    check_output_dir(args.out)


def require(args: argparse.Namespace, *names: str) -> None:
    """Arguments that are required unless they come from --config."""
    for name in names:
        if getattr(args, name, None) in (None, []):
            raise InputError(f"--{name.replace('_', '-')} is required")


def config_defaults(parser: argparse.ArgumentParser, stored: Mapping[str, Any], path: Any) -> dict[str, Any]:
    """The arguments of a run.json that ``parser`` knows, each checked and converted by its option's type
    and choices as if given on the command line; a wrong one raises a one-line InputError."""
    actions = {action.dest: action for action in parser._actions}
    values = {}
    for key, value in stored.items():
        if key not in actions or key in NOT_RECORDED:
            continue
        try:
            values[key] = _config_value(actions[key], value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
            shown = json.dumps(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise InputError(f"config {path}: {key} = {shown}: {err}") from None
    return values


def _config_value(action: argparse.Action, value: Any) -> Any:
    """A stored value for ``action``: null only where the option's default is, true/false for flags, a list
    for repeated options, and each item as its type and choices accept it."""
    if value is None:
        if action.default is not None:
            raise ValueError("may not be null")
        return None
    if isinstance(action.const, bool) and action.nargs == 0:  # --flag / --no-flag
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
        if not isinstance(value, list):
            raise ValueError("must be a list")
        return [_config_item(action, item) for item in value]
    return _config_item(action, value)


def _config_item(action: argparse.Action, value: Any) -> Any:
    if isinstance(value, list) and action.type is not None and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        value = ",".join(map(str, value))  # a point [x, y] as its option reads it, "x,y"
    if isinstance(value, (bool, list, dict)):
        raise ValueError(f"must be a {'string' if action.type is None else 'single value'}")
    if action.type is None:
        if not isinstance(value, str):
            raise ValueError("must be a string")
    else:
        try:
            value = action.type(str(value))
        except (ValueError, TypeError):  # as argparse words it
            raise ValueError(f"invalid {getattr(action.type, '__name__', 'value')} value: {value!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"must be one of {', '.join(map(str, action.choices))}")
    return value


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
