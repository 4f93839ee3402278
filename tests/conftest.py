"""Shared fixtures. Tests never touch the network: the Hub is offline and models are built in code."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they lose a lot; the
# variable also reaches the CLI subprocesses the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sdedrag.models import load_model  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny64():
    """The built-in tiny SD pipeline in float64 (shared: tests must not leave LoRA adapters on it)."""
    return load_model("tiny", "cpu", "float64")


@pytest.fixture(scope="session")
def tiny32():
    return load_model("tiny", "cpu", "float32")


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic image with structure at several scales (gradients plus a few blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    channels = []
    for c in range(3):
        base = 0.5 + 0.3 * np.sin(6 * xx + c) * np.cos(4 * yy - c)
        for _ in range(3):
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
            base += 0.3 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)
        channels.append(base)
    return Image.fromarray((np.clip(np.stack(channels, -1), 0, 1) * 255).astype(np.uint8))


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "input.png"
    smooth_image(96, 72).save(path)
    return path


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
