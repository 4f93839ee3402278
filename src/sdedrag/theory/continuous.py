"""Continuous-time checks: the probability-flow ODE keeps the KL, the reverse SDE dissipates it (Theorems 3.1-3.3).

In u = log alpha-bar, the VP probability-flow ODE is dx/du = (x + score_u(x)) / 2 and does not depend
on beta(t); solved to tight tolerance together with d log X'/du = (1 + score_u'(x)) / 2 (the
instantaneous change of variables), it gives the exact continuous-time KL. For the reverse SDE, two
solutions of the same Fokker-Planck equation satisfy dKL/du = -(1/2) F(p~_u || p_u) with F the
relative Fisher information; integrating F along the discrete chain's exact densities predicts the
KL drop the chain should show.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.integrate import cumulative_trapezoid, solve_ivp

from sdedrag.models.gaussian_mixture import GaussianMixture
from sdedrag.theory.estimators import kl_change_of_variables, trapezoid_weights
from sdedrag.theory.mixture import log_density

ODE_TOLERANCE = 1e-10
"""Relative and absolute tolerance of the continuous-time probability-flow ODE solve."""


def _flow(model: GaussianMixture, u: float, state: np.ndarray) -> np.ndarray:
    """d/du of (x, log X'): ((x + score)/2, (1 + score')/2) at alpha-bar = exp(u)."""
    m = len(state) // 2
    x = torch.as_tensor(state[:m], dtype=torch.float64)[:, None].requires_grad_(True)
    score = model.score(x, float(np.exp(u)))
    (slope,) = torch.autograd.grad(score.sum(), x)
    return np.concatenate([0.5 * (state[:m] + score.detach()[:, 0].numpy()), 0.5 * (1.0 + slope[:, 0].numpy())])


def probability_flow_kl(
    model: GaussianMixture, start: np.ndarray, log_priors: np.ndarray, alphas: Sequence[float]
) -> tuple[np.ndarray, int]:
    """KL(p~_t || p_t) at each alpha-bar in ``alphas`` (increasing, the first at t0) for the continuous-time ODE.

    ``start``: increasing starting points; ``log_priors``: [P, len(start)] prior log-densities there.
    Returns the [P, len(alphas)] curves and the number of flow evaluations.
    """
    u = np.log(np.asarray(alphas, dtype=np.float64))
    solution = solve_ivp(
        lambda s, y: _flow(model, s, y), (u[0], u[-1]), np.concatenate([start, np.zeros_like(start)]),
        method="DOP853", t_eval=u, rtol=ODE_TOLERANCE, atol=ODE_TOLERANCE,
    )
    if not solution.success:
        raise RuntimeError(f"probability-flow ODE solve failed: {solution.message}")
    m, weights = len(start), trapezoid_weights(start)
    p0 = np.exp(log_priors)
    curves = [
        kl_change_of_variables(p0, log_priors, solution.y[m:, j], log_density(model, solution.y[:m, j], a), weights)
        for j, a in enumerate(alphas)
    ]
    return np.stack(curves, axis=1), int(solution.nfev)


def dissipation_prediction(kl_start: np.ndarray, fisher: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """KL(t0) - (1/2) integral of F d log alpha-bar along the levels: the reverse SDE's continuous-time KL curve."""
    return kl_start[..., None] - 0.5 * cumulative_trapezoid(fisher, np.log(alphas), axis=-1, initial=0.0)
