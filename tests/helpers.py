"""Helpers shared by test modules (which import them from here or conftest, never from each other)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from sdedrag.cli import main
from tests.conftest import smooth_image


def run_cli(argv: list[str]) -> int:
    """main(), with argparse's usage-error exit turned into a status like the console script's."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def leftovers(folder: Path) -> list[str]:
    """``folder`` and any temporary siblings a command left beside it."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith((folder.name, f".{folder.name}")))


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess: offline, quiet, one thread."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def write_case(root: Path, fmt: str, case_id: str, image: Image.Image, pairs, mask: np.ndarray, prompt: str = "") -> Path:
    """Write one case in ``fmt``'s native layout (``case_id`` is ``category/case`` for dragbench-d)."""
    folder = root / case_id
    folder.mkdir(parents=True)
    points = [list(p) for pair in pairs for p in pair]
    if fmt == "dragbench-s":
        image.save(folder / "origin_image.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
        (folder / "prompt.json").write_text(json.dumps(
            {"prompt": prompt, "source": [list(s) for s, _ in pairs], "target": [list(t) for _, t in pairs]}))
    elif fmt == "dragbench-d":
        image.save(folder / "original_image.png")
        image.save(folder / "user_drag.png")
        meta = {"prompt": prompt, "points": points, "mask": mask.astype(np.uint8)}
        (folder / "meta_data.pkl").write_bytes(pickle.dumps(meta))
    elif fmt == "shapesbench":
        (source, target), = pairs
        image.save(folder / "input.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
        (folder / "case.json").write_text(json.dumps({"prompt": prompt, "source": list(source), "target": list(target)}))
    else:
        image.convert("RGB").save(folder / "original.jpg", quality=95)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
        (folder / "points.json").write_text(json.dumps({"points": points}))
    return folder


def write_dataset(root: Path, fmt: str, count: int = 3, size: tuple[int, int] = (80, 64), same_points: bool = False) -> Path:
    """``count`` cases of smooth images with one drag each (targets equal to handles if ``same_points``)."""
    width, height = size
    for index in range(count):
        mask = np.zeros((height, width), bool)
        mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True
        source = (width // 2 - 6 + index, height // 2)
        target = source if same_points else (source[0] + 10, source[1] - 4)
        case_id = f"cat{index % 2}/case{index}" if fmt == "dragbench-d" else f"case{index}"
        write_case(root, fmt, case_id, smooth_image(width, height, seed=index), [(source, target)], mask, f"prompt {index}")
    return root


class WritesAFile:
    """Unpickling this calls open(path, 'w'), which creates the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")
