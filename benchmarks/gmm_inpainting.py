"""Inpainting on an analytic Gaussian mixture: SDE vs ODE against the exact conditional distribution.

The data are a 4-component mixture in 4 dimensions with diagonal covariances; block A (coordinates 0, 1)
is known and block B (coordinates 2, 3) is inpainted with ``sdedrag.tasks.inpaint.inpaint_latent``, the
code behind ``sdedrag inpaint`` for plain models: the known block follows its recorded noise-adding path at
every step (the paper's mask rule), the unknown block starts from pure noise at t0 = 1, and the model's
noise prediction is exact. SDE and ODE runs share the seed, hence the recorded path and the start.

For a diagonal mixture, p(x_B | x_A) is the mixture of the components' B parts with weights
w_k N(x_A; mu_kA, diag(s_kA^2)) renormalised. The distance reported is the sliced Wasserstein-1 distance
between the inpainted samples of x_B and exact samples of p(x_B | x_A): the mean over 128 fixed unit
directions of the 1-D Wasserstein-1 distance (scipy.stats.wasserstein_distance) of the projections. The
"exact" row compares two independent exact sample sets of the same size: the estimator's noise floor.

    python benchmarks/gmm_inpainting.py [--samples 4000] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from sdedrag.models import GaussianMixture
from sdedrag.settings import InpaintParams
from sdedrag.tasks.inpaint import inpaint_latent

WEIGHTS = [0.3, 0.2, 0.25, 0.25]
MEANS = [
    [-2.0, -2.0, -2.0, 1.5],
    [2.0, 2.0, 2.0, -1.0],
    [-2.0, 2.0, 1.5, 2.0],
    [2.0, -2.0, -1.0, -2.0],
]
STDS = [
    [0.6, 0.6, 0.4, 0.3],
    [0.6, 0.6, 0.3, 0.5],
    [0.6, 0.6, 0.5, 0.3],
    [0.6, 0.6, 0.3, 0.4],
]
KNOWN = [0, 1]
UNKNOWN = [2, 3]
CONDITIONS = {"x_A=(-2,-2)": [-2.0, -2.0], "x_A=(0,-2)": [0.0, -2.0], "x_A=(0,0)": [0.0, 0.0]}
STEPS = (10, 25, 50, 100)
ORDERS = (1, 2)


def conditional(gmm: GaussianMixture, x_a: torch.Tensor) -> GaussianMixture:
    """The exact p(x_B | x_A = x_a) of a diagonal Gaussian mixture, itself a Gaussian mixture."""
    means_a, stds_a = gmm.means[:, KNOWN], gmm.stds[:, KNOWN]
    log_likelihood = -0.5 * ((x_a - means_a) / stds_a).pow(2).sum(-1) - stds_a.log().sum(-1)  # up to a constant
    weights = torch.softmax(gmm.weights.log() + log_likelihood, dim=0)
    return GaussianMixture(weights, gmm.means[:, UNKNOWN], gmm.stds[:, UNKNOWN])


def sliced_w1(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    """Mean over ``directions`` (unit rows) of the 1-D Wasserstein-1 distance between the projections."""
    return float(np.mean([wasserstein_distance(a @ u, b @ u) for u in directions]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000, help="samples per setting (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; the tensors are small (default: %(default)s)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    gmm = GaussianMixture(WEIGHTS, MEANS, STDS)
    angles = np.random.default_rng(args.seed).uniform(0.0, math.pi, 128)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    mask = torch.zeros(1, gmm.dim, dtype=gmm.dtype)
    mask[:, UNKNOWN] = 1.0

    rows: dict[str, list[str]] = {}
    floor: list[str] = []
    for c, x_a in enumerate(CONDITIONS.values()):
        x_a = torch.tensor(x_a, dtype=gmm.dtype)
        target = conditional(gmm, x_a)
        exact = target.sample(args.samples, generator=torch.Generator().manual_seed(10_000 + c)).numpy()
        again = target.sample(args.samples, generator=torch.Generator().manual_seed(20_000 + c)).numpy()
        floor.append(f"{sliced_w1(again, exact, directions):.3f}")
        x0 = torch.zeros(args.samples, gmm.dim, dtype=gmm.dtype)
        x0[:, KNOWN] = x_a
        for steps in STEPS:
            for order in ORDERS:
                cells = rows.setdefault(f"{steps:>5} {order:>5}", [])
                for method in ("sde", "ode"):
                    generator = torch.Generator().manual_seed(args.seed + c)
                    out = inpaint_latent(gmm, x0, mask, InpaintParams(method=method, steps=steps, order=order, guidance=1.0), generator=generator)
                    assert torch.equal(out[:, KNOWN], x0[:, KNOWN])
                    cells.append(f"{sliced_w1(out[:, UNKNOWN].numpy(), exact, directions):.3f}")

    names = list(CONDITIONS)
    print(f"Sliced W1 to the exact p(x_B | x_A), {args.samples} samples each (lower is better)\n")
    header = "steps order | " + " | ".join(f"{n:^15}" for n in names)
    print(header)
    print("            | " + " | ".join(f"{'SDE':>7} {'ODE':>7}" for _ in names))
    print("-" * len(header))
    for label, cells in rows.items():
        print(f"{label} | " + " | ".join(f"{cells[2 * i]:>7} {cells[2 * i + 1]:>7}" for i in range(len(names))))
    print(f"{'exact':>11} | " + " | ".join(f"{f:>15}" for f in floor))
    print(f"\n({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
