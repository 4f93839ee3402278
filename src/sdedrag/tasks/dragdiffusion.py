"""DragDiffusion (Shi et al., CVPR 2024) on sdedrag's engine: optimise one inverted latent, then decode it.

The image is DDIM-inverted under its prompt (guidance 1) for ``t0`` (the inversion strength) of the DDIM steps.
The latent there is optimised with Adam: motion supervision pulls the UNet decoder features one pixel ahead of
each handle towards the features at the handle, a mask term keeps the one-step DDIM prediction outside the
editable region where it was, and after every step each handle is re-found by nearest-neighbour feature
search around it. The optimised latent is then decoded by DDIM in one batch with the inverted one, whose
self-attention keys and values it takes from ``start_step`` and ``start_layer`` on (mutual self-attention).
Handles and targets live on the feature grid (``feature_scale`` of the image size), as in the authors' code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sdedrag.engine import Grid, decode, encode
from sdedrag.engine.steps import eta_step
from sdedrag.errors import InputError
from sdedrag.models.attention_control import mutual_self_attention, self_attention_layers
from sdedrag.models.base import DiffusionModel
from sdedrag.models.features import captured_features, feature_count, frozen, resize_features, unet_of
from sdedrag.settings import DragDiffusionParams
from sdedrag.tasks.common import image_to_latent, latent_to_image, paste_back, require_plain_model
from sdedrag.tasks.drag import DragRequest, DragResult, Point, latent_mask, targets_outside_mask, validate_points


@dataclass
class DragDiffusionResult(DragResult):
    """A DragDiffusion drag: the result, the Adam steps taken and where point tracking left the handles."""

    iterations: int = 0
    handles: list[Point] = field(default_factory=list)  # image pixels


@dataclass
class LatentOptimization:
    """The optimised latent, the tracked handles (feature pixels, x, y) and the Adam steps taken."""

    latent: Tensor
    handles: np.ndarray
    iterations: int


def feature_size(image_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(height, width) of the supervision features: ``scale`` of the image's, at least one pixel."""
    width, height = image_size
    return max(1, int(scale * height)), max(1, int(scale * width))


def to_feature_points(points: np.ndarray, image_size: tuple[int, int], feature_hw: tuple[int, int]) -> np.ndarray:
    """Image pixel (x, y) -> the nearest feature pixel (x, y), as floats."""
    height, width = feature_hw
    scaled = np.rint(points * np.array([width / image_size[0], height / image_size[1]]))
    return np.clip(scaled, 0, [width - 1, height - 1])


def to_image_points(points: np.ndarray, image_size: tuple[int, int], feature_hw: tuple[int, int]) -> np.ndarray:
    """Feature pixel (x, y) -> image pixel (x, y), the inverse scaling of :func:`to_feature_points`."""
    height, width = feature_hw
    return points * np.array([image_size[0] / width, image_size[1] / height])


def window(point: np.ndarray, radius: int, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns within ``radius`` of the integer point (x, y), clipped to the map."""
    x, y = int(point[0]), int(point[1])
    return slice(max(0, y - radius), min(height, y + radius + 1)), slice(max(0, x - radius), min(width, x + radius + 1))


def shifted_patch(features: Tensor, rows: slice, cols: slice, shift: np.ndarray) -> Tensor:
    """The features of the patch ``rows`` x ``cols`` moved by the sub-pixel ``shift`` (x, y), bilinearly
    sampled (border values beyond the map)."""
    height, width = features.shape[-2:]
    ys = torch.arange(rows.start, rows.stop, dtype=features.dtype, device=features.device) + float(shift[1])
    xs = torch.arange(cols.start, cols.stop, dtype=features.dtype, device=features.device) + float(shift[0])
    grid_y, grid_x = torch.meshgrid(2 * ys / max(height - 1, 1) - 1, 2 * xs / max(width - 1, 1) - 1, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].expand(features.shape[0], -1, -1, -1)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)


def motion_supervision(features: Tensor, handles: np.ndarray, targets: np.ndarray, radius: int, reach: float) -> Tensor:
    """Motion supervision: sum over handles p_i not yet within ``reach`` of t_i of
    (2 r_m + 1)^2 mean |sg(F(patch at p_i)) - F(patch at p_i + d_i)|, with d_i = (t_i - p_i) / |t_i - p_i|."""
    height, width = features.shape[-2:]
    loss = features.new_zeros(())
    for handle, target in zip(handles, targets):
        distance = float(np.linalg.norm(target - handle))
        if distance < reach:
            continue
        rows, cols = window(handle, radius, height, width)
        moved = shifted_patch(features, rows, cols, (target - handle) / distance)
        loss = loss + (2 * radius + 1) ** 2 * F.l1_loss(moved, features[..., rows, cols].detach())
    return loss


@torch.no_grad()
def track_points(
    reference: Tensor, features: Tensor, initial: np.ndarray, current: np.ndarray, radius: int
) -> np.ndarray:
    """Point tracking: each handle moves to the pixel within ``radius`` of it whose feature is nearest (L1) to
    the reference feature at its initial position."""
    height, width = features.shape[-2:]
    tracked = current.copy()
    for i, (start, point) in enumerate(zip(initial, current)):
        query = reference[0, :, int(start[1]), int(start[0])]
        rows, cols = window(point, radius, height, width)
        distance = (features[0, :, rows, cols] - query[:, None, None]).abs().sum(0)
        row, col = divmod(int(distance.argmin()), distance.shape[1])
        tracked[i] = (cols.start + col, rows.start + row)
    return tracked


def reached(handles: np.ndarray, targets: np.ndarray, reach: float) -> bool:
    """Whether every handle is within ``reach`` of its target (the early stop)."""
    return bool((np.linalg.norm(targets - handles, axis=1) < reach).all())


def optimize_latent(
    model: DiffusionModel,
    latent: Tensor,
    grid: Grid,
    cond: Any,
    handles: np.ndarray,
    targets: np.ndarray,
    region: Tensor | None,
    feature_hw: tuple[int, int],
    params: DragDiffusionParams,
) -> LatentOptimization:
    """DragDiffusion's latent optimisation at the grid's first time step; only the latent is updated.

    Each iteration evaluates the UNet with gradients, tracks the handles (after the first), stops if all are
    within ``reach``, and takes an Adam step on motion supervision plus ``mask_weight`` times the L1 change of
    the one-step DDIM prediction outside ``region`` (1 = editable; None: no mask term).
    """
    unet = unet_of(model)
    t, a_t, a_s = grid.interval(0)
    with frozen(unet), captured_features(unet, params.feature_index) as captured:
        with torch.no_grad():
            eps = model.predict_eps_with_grad(latent, t, cond)
            reference = resize_features(captured.pop(), feature_hw)
            kept, _ = eta_step(latent, eps, a_t, a_s, 0.0)
        latent = latent.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=params.latent_lr)
        initial, taken = handles.copy(), 0
        for step in range(params.iterations):
            eps = model.predict_eps_with_grad(latent, t, cond)
            features = resize_features(captured.pop(), feature_hw)
            if step > 0:
                handles = track_points(reference, features, initial, handles, params.tracking_radius)
            if reached(handles, targets, params.reach):
                break
            loss = motion_supervision(features, handles, targets, params.motion_radius, params.reach)
            if region is not None:
                change = (eta_step(latent, eps, a_t, a_s, 0.0)[0] - kept) * (1.0 - region)
                loss = loss + params.mask_weight * change.abs().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            taken += 1
    return LatentOptimization(latent.detach(), handles, taken)


def iter_dragdiffusion(model: DiffusionModel, request: DragRequest, progress: bool = False) -> Iterator[DragResult]:
    """DragDiffusion on a request whose ``params`` are :class:`DragDiffusionParams`, as :func:`iter_drag` runs
    SDE-Drag: one update, the complete result (one frame). LoRA, if wanted, is applied around this call."""
    yield dragdiffusion(model, request, progress)


def dragdiffusion(model: DiffusionModel, request: DragRequest, progress: bool = False) -> DragDiffusionResult:
    """Drag the request's sources to its targets with DragDiffusion (``request.params``: DragDiffusionParams)."""
    start = time.perf_counter()
    require_plain_model(model, "drag")
    image, mask, params = request.image, request.mask, request.params
    if not isinstance(params, DragDiffusionParams):
        raise InputError(f"DragDiffusion needs DragDiffusionParams, got {type(params).__name__}")
    unet = unet_of(model)
    if params.feature_index >= feature_count(unet):
        count = feature_count(unet)
        raise InputError(f"feature index must be below {count} for {model.name!r}, got {params.feature_index}")
    source_px, target_px = validate_points(request.sources, request.targets, image.size)
    warnings = targets_outside_mask(request.targets, mask)
    layers = len(self_attention_layers(unet))
    if params.start_layer >= layers:
        warnings.append(
            f"mutual self-attention is off: start layer {params.start_layer} but {model.name!r} has {layers} "
            "self-attention layers"
        )
    timings = {}

    x0 = image_to_latent(model, image)
    cond = model.condition(request.prompt)
    grid = model.schedule.grid(params.steps, params.t0)
    trajectory = encode(model, x0, grid, "ode", cond, progress=progress)
    timings["inversion_seconds"] = time.perf_counter() - start

    feature_hw = feature_size(image.size, params.feature_scale)
    handles = to_feature_points(source_px, image.size, feature_hw)
    goals = to_feature_points(target_px, image.size, feature_hw)
    region = latent_mask(mask, tuple(x0.shape[-2:]), model)
    optimized = optimize_latent(model, trajectory.x_t0, grid, cond, handles, goals, region, feature_hw, params)
    timings["optimization_seconds"] = time.perf_counter() - start - timings["inversion_seconds"]

    with mutual_self_attention(unet, params.start_step, params.start_layer):
        pair = decode(model, torch.cat([trajectory.x_t0, optimized.latent]), trajectory, "ode", cond, progress=progress)
    latent = pair[1:]
    result_image = latent_to_image(model, latent, image.size)
    if params.paste_back and region is not None:
        result_image = paste_back(result_image, image, mask, params.dilate, params.feather)
    timings["drag_seconds"] = time.perf_counter() - start
    tracked = to_image_points(optimized.handles, image.size, feature_hw)
    return DragDiffusionResult(
        image=result_image,
        frames=[result_image],
        latent=latent,
        moves=1,
        timings=timings,
        warnings=warnings,
        iterations=optimized.iterations,
        handles=[(float(x), float(y)) for x, y in tracked],
    )
