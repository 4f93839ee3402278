"""UNet forward and backward calls per drag for SDE-Drag, ODE-Drag and DragDiffusion at their default settings.

Counts are properties of the algorithms (moves x steps, inversion + optimisation + decoding), not of the weights,
except where DragDiffusion stops early (its handles reach their targets); the model is ``tiny`` unless
``--model`` says otherwise. LoRA fine-tuning is not counted (see the README for its steps).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sdedrag.models import load_model  # noqa: E402
from sdedrag.settings import DragDiffusionParams, DragParams  # noqa: E402
from sdedrag.tasks.drag import DragRequest, drag  # noqa: E402
from sdedrag.tasks.dragdiffusion import dragdiffusion  # noqa: E402


def gradient_image(size: int) -> Image.Image:
    """A smooth test image (the counts do not depend on its content, except DragDiffusion's early stop)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.5 + 0.4 * np.cos(5 * yy), 0.5 + 0.3 * np.sin(4 * (xx + yy))], -1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--drag", type=int, default=80, help="drag length in image pixels (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model, "cpu", "float32")
    count = {"forward": 0, "samples": 0, "backward": 0}

    def on_forward(module: torch.nn.Module, inputs: tuple, kwargs: dict) -> None:
        count["forward"] += 1
        count["samples"] += (inputs[0] if inputs else kwargs["sample"]).shape[0]

    def on_backward(*_: object) -> None:
        count["backward"] += 1

    model.unet.register_forward_pre_hook(on_forward, with_kwargs=True)
    model.unet.conv_in.register_full_backward_hook(on_backward)
    image = gradient_image(args.size)
    centre = args.size // 2
    sources, targets = [(centre - args.drag // 2, centre)], [(centre + args.drag // 2, centre)]
    mask = np.zeros((args.size, args.size), bool)
    mask[args.size // 4 : 3 * args.size // 4, args.size // 4 : 3 * args.size // 4] = True
    runs = {
        "SDE-Drag": lambda: drag(model, DragRequest(image, sources, targets, mask, "a photo", DragParams())),
        "ODE-Drag": lambda: drag(model, DragRequest(image, sources, targets, mask, "a photo", DragParams(method="ode"))),
        "DragDiffusion": lambda: dragdiffusion(
            model, DragRequest(image, sources, targets, mask, "a photo", DragDiffusionParams())
        ),
    }
    print(f"{args.model}, {args.size}x{args.size} image, one {args.drag}-pixel drag, default settings, LoRA not counted")
    print(f"{'method':<14}{'forward calls':>15}{'samples':>10}{'backward calls':>16}{'seconds':>10}")
    for name, run in runs.items():
        count.update(forward=0, samples=0, backward=0)
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        print(f"{name:<14}{count['forward']:>15}{count['samples']:>10}{count['backward']:>16}{seconds:>10.1f}")


if __name__ == "__main__":
    main()
