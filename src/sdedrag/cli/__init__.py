"""The ``sdedrag`` command line: one subcommand per task, each writing DIR/run.json for --config reruns.

Only the chosen subcommand's module is imported, and its options import no torch: ``--help`` is instant and
each subcommand loads its heavy modules when it runs.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from sdedrag.cli.common import Parser, check_out, config_defaults
from sdedrag.errors import SdedragError

SUBCOMMANDS = {
    "demo": "offline SDE-Drag vs ODE-Drag demo on the built-in shapes model",
    "drag": "drag points of an image (SDE-Drag / ODE-Drag)",
    "reconstruct": "encode an image to t0 and decode it back (Cycle-SDE / SDE / ODE)",
    "inpaint": "regenerate a masked region (fresh-noise SDE / ODE inpainting)",
    "sdedit": "image-to-image translation by SDEdit (fresh-noise SDE / ODE)",
    "diffedit": "text-guided editing inside an automatic mask by DiffEdit (Cycle-SDE / ODE)",
    "bench": "run and score drag benchmarks (DragBench-S/-D, Drag100)",
    "study": "pairwise user study of drag results (web app and report)",
    "shapes-bench": "drag, inpainting and SDEdit benchmark with ground truth on the shapes model",
    "theory": "exact-score experiments: KL along time for ODE / SDE / Cycle-SDE from mismatched priors",
    "ui": "serve the drag web UI (gradio)",
    "train-shapes": "train the small shapes diffusion model (the built-in --model shapes) on CPU",
    "train-shapes-sd": "train the small Stable Diffusion of shapes scenes (the built-in --model shapes-sd) on CPU",
    "info": "print versions, device and reachable models",
}
"""Subcommand names and their one-line help; each is the module ``sdedrag.cli.<name with _ for ->``."""


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"sdedrag.cli.{name.replace('-', '_')}")


def build_parser(command: str | None = None) -> tuple[Parser, Parser | None]:
    """The ``sdedrag`` parser, and ``command``'s subparser: the only one given its options (and module)."""
    parser = Parser(
        prog="sdedrag",
        description="Diffusion-based image editing with SDEs (SDE-Drag, Cycle-SDE, SDE inpainting, SDEdit, DiffEdit).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    chosen = None
    for name, help_text in SUBCOMMANDS.items():
        if name != command:
            commands.add_parser(name, help=help_text)
            continue
        module = command_module(name)
        chosen = commands.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(chosen)
        chosen.set_defaults(handler=module.run, path_args=getattr(module, "PATH_ARGS", ()),
                            out_check=getattr(module, "check_out", check_out))
    return parser, chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdedrag`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # transformers announces at import time that torchvision is absent; the CLI does not use those processors.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser, subparser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "config", None) is not None:
            from sdedrag.io import read_run_config

            stored = read_run_config(args.config, args.command)
            subparser.set_defaults(**config_defaults(subparser, stored, args.config))
            args = parser.parse_args(argv)
        for name in args.path_args:
            value = getattr(args, name, None)
            if value is not None:
                setattr(args, name, [str(Path(v).resolve()) for v in value] if isinstance(value, list)
                        else str(Path(value).resolve()))
        if getattr(args, "out", None) is not None:  # before any work: a bad --out fails at once
            args.out_check(args)
        return args.handler(args)
    except SdedragError as err:
        print(f"sdedrag {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdedrag {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
