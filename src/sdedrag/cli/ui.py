"""Serve the drag web UI: upload an image, brush the editable area, click point pairs, run SDE-Drag or
ODE-Drag with the trajectory streamed, and download result.png, trajectory.gif and run.json (which
`sdedrag drag --config run.json` reruns). The model is loaded once; runs queue and execute one at a time.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sdedrag.cli.common import add_model_options, load_model_arg, positive_int
from sdedrag.errors import SdedragError
from sdedrag.ui import DEFAULT_MAX_PIXELS

PATH_ARGS = ("lora_cache",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; 0.0.0.0 serves the network (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="default: %(default)s")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="largest accepted upload, width x height (default: %(default)s)")
    parser.add_argument("--max-file-size", default="25mb", help="largest accepted upload file (default: %(default)s)")
    parser.add_argument("--lora-cache",
                        help="LoRA cache folder (default: $SDEDRAG_CACHE/lora or ~/.cache/sdedrag/lora)")
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    try:  # imported here so the other subcommands start without gradio (an optional extra)
        from sdedrag.ui.app import build_app, serve
    except ModuleNotFoundError as err:
        if err.name != "gradio":
            raise
        raise SdedragError("the UI needs gradio: pip install 'sdedrag[ui]'") from err
    from sdedrag.lora import LoraCache
    from sdedrag.session import DragSession

    cache = LoraCache(Path(args.lora_cache)) if args.lora_cache else None
    session = DragSession(load_model_arg(args), lora_cache=cache)
    app = build_app(session, max_pixels=args.max_pixels, seed=args.seed)
    print(f"sdedrag ui: model {session.model.name} on {session.model.device}; serving http://{args.host}:{args.port}",
          flush=True)
    serve(app, args.host, args.port, args.max_file_size)
    return 0
