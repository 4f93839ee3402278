"""Fewer UNet calls: SDE-Drag and ODE-Drag with second-order solvers at fewer steps, against the default.

Settings are ``ORDER:STEPS``; the first is the reference. The default compares the default drag (first order
at 200 steps, the paper's; 100 on ShapesBench, its own default) with the earlier ``--fast``'s
(SDE-)DPM-Solver++(2M) at 50 steps and with first order at 50 steps as the control.

With a pixel-space shapes model (``--model shapes`` once shipped, or a trained folder) this runs ShapesBench
(``sdedrag.shapes.bench``: one shape dragged per generated scene, measured against the ground truth) and
reports the success rate and the distance to the target with bootstrap 95% intervals. With a Stable
Diffusion model (default ``tiny``, random weights, so images are noise-like) it measures a proxy on the
DragBench-D sample's layouts: the distance of each setting's result latent to the reference's, relative to
how far the reference moved the input latent, next to the seed floor (the reference with another seed: the
SDE's own spread), and the reconstruction error of an unedited encode/decode at each setting (Cycle-SDE
for SDE-Drag, DDIM inversion for ODE-Drag).

    python benchmarks/fast_solvers.py                         # proxy: tiny at 256 px, 4 DragBench-D cases
    python benchmarks/fast_solvers.py --model shapes --cases 40    # ShapesBench (t0 0.3, 100 steps by default)
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_DATASET, UNetMeter, environment_line, median, print_table

from sdedrag.bench.formats import list_cases, load_case, resize_case
from sdedrag.engine import cosine_ramp, decode, encode, linear_ramp
from sdedrag.models import PixelUNet, load_model
from sdedrag.settings import DragParams
from sdedrag.shapes.bench import drag_record, make_drag_case, model_resolution, run_drag
from sdedrag.shapes.metrics import bootstrap_ci
from sdedrag.shapes.settings import SHAPES_DRAG
from sdedrag.tasks.common import image_to_latent
from sdedrag.tasks.drag import DragRequest, drag

METHODS = ("sde", "ode")


def parse_setting(text: str) -> tuple[int, int]:
    order, steps = (int(v) for v in text.split(":"))
    return order, steps


def label(setting: tuple[int, int]) -> str:
    return f"order {setting[0]}, {setting[1]} steps"


def shapes_bench(model: PixelUNet, settings: list[tuple[int, int]], cases: int, seed: int) -> None:
    """ShapesBench's drag track at each setting: success rate, distance to the target, UNet calls."""
    resolution = model_resolution(model)
    rows = []
    for method in METHODS:
        for setting in settings:
            params = replace(SHAPES_DRAG, order=setting[0], steps=setting[1], seed=seed)
            records, meter = [], UNetMeter(model.device, timed=False)
            with meter.attach(model.unet):
                for index in range(cases):
                    case = make_drag_case(seed, index, resolution)
                    records.append(drag_record(case, method, run_drag(model, case, method, params)))
            success = bootstrap_ci([float(r["success"]) for r in records])
            distance = bootstrap_ci([r["distance"] for r in records if r["found"]])
            rows.append([
                method, label(setting), f"{meter.calls / cases:.0f}",
                f"{success['mean']:.2f} [{success['low']:.2f}, {success['high']:.2f}]",
                f"{distance['mean']:.2f} [{distance['low']:.2f}, {distance['high']:.2f}]",
                f"{np.mean([r['duplicated'] for r in records]):.2f}",
            ])
    print_table(["method", "setting", "UNet calls/case", "success [95% CI]", "distance px [95% CI]", "duplicated"],
                rows, f"ShapesBench drag track, {model.name} ({resolution} px), {cases} cases, seed {seed}")


def reconstruction_error(model, x0: torch.Tensor, prompt: str, method: str, setting: tuple[int, int],
                         base: DragParams, seed: int) -> float:
    """||x0_rec - x0|| / ||x0|| of an unedited encode/decode with the drag's grid, ramps and solver."""
    grid = model.schedule.grid(setting[1], base.t0)
    guidance, lora_scale = linear_ramp(grid, 1.0, base.guidance), cosine_ramp(grid, 1.0, base.lora_scale_min)
    process = "cycle-sde" if method == "sde" else "ode"
    cond = model.condition(prompt)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    path = encode(model, x0, grid, process, cond, guidance, lora_scale, generator)
    x = decode(model, path.x_t0, path, process, cond, order=setting[0], guidance=guidance, lora_scale=lora_scale,
               generator=generator)
    return float((x - x0).norm() / x0.norm())


def proxy(model, settings: list[tuple[int, int]], dataset: Path, cases: int, resolution: int) -> None:
    """Result distance to the reference setting, seed floor and reconstruction error on DragBench-D layouts."""
    refs = list_cases(dataset)[:cases]
    rows = []
    for method in METHODS:
        distances: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
        floors, errors, calls = [], {s: [] for s in settings}, {s: 0 for s in settings}
        for ref in refs:
            case = resize_case(load_case(ref), resolution)
            x_in = image_to_latent(model, case.image)

            def run(setting: tuple[int, int], seed: int = 0) -> torch.Tensor:
                params = DragParams(method=method, order=setting[0], steps=setting[1], seed=seed, paste_back=False)
                meter = UNetMeter(model.device, timed=False)
                with meter.attach(model.unet):
                    result = drag(model, DragRequest(case.image, case.sources, case.targets, case.mask, case.prompt, params))
                if seed == 0:
                    calls[setting] += meter.calls
                return result.latent

            reference = run(settings[0])
            moved = float((reference - x_in).norm())
            for setting in settings:
                latent = reference if setting == settings[0] else run(setting)
                distances[setting].append(float((latent - reference).norm()) / moved)
                errors[setting].append(reconstruction_error(model, x_in, case.prompt, method, setting, DragParams(), 0))
            floors.append(float((run(settings[0], seed=1) - reference).norm()) / moved)
        for setting in settings:
            rows.append([
                method, label(setting), f"{calls[setting] / len(refs):.0f}",
                "reference" if setting == settings[0] else f"{median(distances[setting]):.3f}",
                f"{median(floors):.3f}" if setting == settings[0] else "",
                f"{median(errors[setting]):.1e}",
            ])
    print_table(
        ["method", "setting", "UNet calls/case", "distance to reference", "seed floor", "reconstruction error"], rows,
        f"Proxy on {model.name} at {resolution} px, first {len(refs)} cases of {dataset.name} (no LoRA); distances: "
        "||x - x_ref|| / ||x_ref - x_input|| of result latents, medians over cases",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="a pixel shapes model (ShapesBench) or an SD model (proxy)")
    parser.add_argument("--settings", type=parse_setting, nargs="+", help="ORDER:STEPS ... (default: see above)")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=256, help="proxy: longer image side (default: %(default)s)")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.device, "float32")
    print(environment_line(model.device))
    if isinstance(model, PixelUNet):
        shapes_bench(model, args.settings or [(1, SHAPES_DRAG.steps), (2, 50), (1, 50)], args.cases, args.seed)
    else:
        proxy(model, args.settings or [(1, 200), (2, 50), (1, 50)], args.dataset, args.cases, args.resolution)


if __name__ == "__main__":
    main()
