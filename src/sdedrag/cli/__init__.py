"""The ``sdedrag`` command line: one subcommand per task, each writing DIR/run.json for --config reruns."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

# transformers announces at import time that torchvision is absent; the CLI does not use those processors.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from sdedrag.cli import (  # noqa: E402
    bench,
    demo,
    diffedit,
    drag,
    info,
    inpaint,
    reconstruct,
    sdedit,
    shapes_bench,
    study,
    theory,
    train_shapes,
    ui,
)
from sdedrag.cli.common import Parser  # noqa: E402
from sdedrag.errors import SdedragError  # noqa: E402
from sdedrag.io import read_run_config  # noqa: E402

SUBCOMMANDS = (
    demo,
    drag,
    reconstruct,
    inpaint,
    sdedit,
    diffedit,
    bench,
    study,
    shapes_bench,
    theory,
    ui,
    train_shapes,
    info,
)


def build_parser() -> tuple[Parser, dict[str, Parser]]:
    parser = Parser(
        prog="sdedrag",
        description="Diffusion-based image editing with SDEs (SDE-Drag, Cycle-SDE, SDE inpainting, SDEdit, DiffEdit).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers = {}
    for module in SUBCOMMANDS:
        sub = commands.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run, path_args=getattr(module, "PATH_ARGS", ()))
        subparsers[module.NAME] = sub
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdedrag`` console script; returns the exit status."""
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "config", None) is not None:
            stored = read_run_config(args.config, args.command)
            known = {action.dest for action in subparsers[args.command]._actions}
            subparsers[args.command].set_defaults(**{k: v for k, v in stored.items() if k in known})
            args = parser.parse_args(argv)
        for name in args.path_args:
            value = getattr(args, name, None)
            if value is not None:
                setattr(args, name, [str(Path(v).resolve()) for v in value] if isinstance(value, list)
                        else str(Path(value).resolve()))
        return args.handler(args)
    except SdedragError as err:
        print(f"sdedrag {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdedrag {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
