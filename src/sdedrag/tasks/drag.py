"""SDE-Drag and its ODE-Drag baseline (paper Sec. 4): point dragging by copy-and-paste of the noisy latent.

A drag is split into m moves along each source -> target segment. Each move encodes the current latent
to t0, copies every source patch to its current target (scaled by alpha), refreshes the source patch
with noise (beta), and decodes: SDE-Drag with Cycle-SDE (eta = 1, recorded noise) under the paper's
guidance and LoRA-scale ramps, ODE-Drag with DDIM inversion (under ``inversion_guidance``, or the decoding's
guidance ramp) and eta = 0, everything else equal.
Outside the editable mask the latent follows the recorded path at every step. With ``reuse`` > 1 each encode
and decode recomputes the UNet's deep features only every ``reuse``-th call (:mod:`sdedrag.models.feature_reuse`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from sdedrag.engine import cosine_ramp, decode, encode, linear_ramp
from sdedrag.errors import InputError
from sdedrag.models.base import DiffusionModel
from sdedrag.models.feature_reuse import feature_reuse
from sdedrag.settings import DragDiffusionParams, DragParams
from sdedrag.tasks.common import (
    generator_for,
    image_to_latent,
    latent_to_image,
    mask_to_latent,
    paste_back,
    require_plain_model,
)

Point = tuple[float, float]
MAX_MOVES = 1000  # each move is a full encode and decode; the paper's drags take tens


@dataclass
class DragResult:
    """A drag's outcome (or its state after the moves done so far)."""

    image: Image.Image  # latest frame, at the input's size
    frames: list[Image.Image]  # one image per finished move
    latent: Tensor  # latest x0
    moves: int  # total number of moves
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unet_calls: int = 0  # in the moves so far
    call_equivalents: float = 0.0  # the same calls in full-call FLOPs: deep-feature reuse calls count their fraction


@dataclass(frozen=True)
class DragRequest:
    """One drag: the image, its point pairs in image pixels (x, y), the editable mask (True = editable, the
    image's size; None = everything), the prompt describing the image, and the settings."""

    image: Image.Image
    sources: Sequence[Point]
    targets: Sequence[Point]
    mask: np.ndarray | None = None
    prompt: str = ""
    params: DragParams | DragDiffusionParams = DragParams()

    def __post_init__(self) -> None:
        validate_points(self.sources, self.targets, self.image.size)
        width, height = self.image.size
        if self.mask is not None and self.mask.shape != (height, width):
            raise InputError(f"mask is {self.mask.shape[1]}x{self.mask.shape[0]} but the image is {width}x{height}")


def validate_points(
    sources: Sequence[Point], targets: Sequence[Point], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Check that the points are paired and inside the image; return them as float arrays [N, 2] of (x, y)."""
    if len(sources) == 0:
        raise InputError("at least one source/target point pair is needed")
    if len(sources) != len(targets):
        raise InputError(f"points must be paired: got {len(sources)} sources and {len(targets)} targets")
    width, height = size
    for kind, points in (("source", sources), ("target", targets)):
        for x, y in points:
            if not (0 <= x < width and 0 <= y < height):
                raise InputError(f"{kind} point ({x:g}, {y:g}) lies outside the {width}x{height} image")
    return np.asarray(sources, dtype=np.float64), np.asarray(targets, dtype=np.float64)


def to_latent_points(points: np.ndarray, image_size: tuple[int, int], latent_hw: tuple[int, int]) -> np.ndarray:
    """Image pixel (x, y) -> integer latent pixel (x, y); the image is resized to fill the latent grid."""
    height, width = latent_hw
    scale = np.array([width / image_size[0], height / image_size[1]])
    latent = np.floor(points * scale).astype(np.int64)
    return np.clip(latent, 0, [width - 1, height - 1])


def latent_mask(mask: np.ndarray | None, latent_hw: tuple[int, int], model: DiffusionModel) -> Tensor | None:
    """The latent editable region (see :func:`mask_to_latent`); no mask, or a mask with nothing or everything
    editable, means the whole image is editable (None)."""
    if mask is None or not mask.any() or mask.all():
        return None
    return mask_to_latent(mask, latent_hw, model)


def move_count(sources: np.ndarray, targets: np.ndarray, step_size: float) -> int:
    """Number of moves m: the longest drag (latent pixels) over m is as close to ``step_size`` as possible;
    more than :data:`MAX_MOVES` is refused."""
    longest = float(np.linalg.norm(targets - sources, axis=1).max())
    if longest <= step_size:
        return 1
    if longest / step_size > MAX_MOVES:
        raise InputError(
            f"a drag of {longest:g} latent pixels at a step size of {step_size:g} takes {longest / step_size:.3g} "
            f"moves, more than the limit of {MAX_MOVES}; use a step size of at least {longest / MAX_MOVES:.3g}"
        )
    m = math.floor(longest / step_size)
    return m + 1 if abs(longest / (m + 1) - step_size) < abs(longest / m - step_size) else m


def patch_bounds(
    source: Sequence[int], target: Sequence[int], radius: int, height: int, width: int
) -> tuple[int, int, int, int]:
    """Half-extents (left, right, up, down) of a patch of radius ``radius`` that fits at both points."""
    (sx, sy), (tx, ty) = source, target
    return (
        min(radius, sx, tx),
        min(radius, width - sx, width - tx),
        min(radius, sy, ty),
        min(radius, height - sy, height - ty),
    )


def copy_and_paste(
    x: Tensor,
    sources: np.ndarray,
    targets: np.ndarray,
    radius: int,
    alpha: float,
    beta: float,
    generator: torch.Generator | None,
) -> Tensor:
    """The SDE-Drag edit of a noisy latent, pair by pair: target patch = alpha * source patch, and the source
    patch = beta * source + sqrt(1 - beta^2) * noise. Pairs whose source equals their target are left alone."""
    x = x.clone()
    height, width = x.shape[-2:]
    for (sx, sy), (tx, ty) in zip(sources.tolist(), targets.tolist()):
        if (sx, sy) == (tx, ty):
            continue
        left, right, up, down = patch_bounds((sx, sy), (tx, ty), radius, height, width)
        source_rows, source_cols = slice(sy - up, sy + down), slice(sx - left, sx + right)
        patch = x[..., source_rows, source_cols].clone()
        noise = randn_tensor(patch.shape, generator=generator, device=x.device, dtype=x.dtype)
        x[..., source_rows, source_cols] = beta * patch + math.sqrt(1.0 - beta**2) * noise
        x[..., ty - up : ty + down, tx - left : tx + right] = alpha * patch
    return x


def iter_drag(model: DiffusionModel, request: DragRequest, progress: bool = False) -> Iterator[DragResult]:
    """Run the drag move by move, yielding the result so far after each move (the last one is complete).

    LoRA, if wanted, is applied around this call (see ``sdedrag.session.DragSession``).
    """
    start = time.perf_counter()
    require_plain_model(model, "drag")
    image, mask, params = request.image, request.mask, request.params
    source_px, target_px = validate_points(request.sources, request.targets, image.size)
    generator = generator_for(model, params.seed)
    x = image_to_latent(model, image)
    latent_hw = tuple(x.shape[-2:])
    source_lat = to_latent_points(source_px, image.size, latent_hw)
    target_lat = to_latent_points(target_px, image.size, latent_hw)
    region = latent_mask(mask, latent_hw, model)
    keep_outside = params.paste_back and region is not None

    cond = model.condition(request.prompt)
    grid = model.schedule.grid(params.steps, params.t0)
    guidance = linear_ramp(grid, 1.0, params.guidance)
    inversion_guidance = guidance if params.inversion_guidance == "ramp" else params.inversion_guidance
    lora_scale = cosine_ramp(grid, 1.0, params.lora_scale_min)
    moves = move_count(source_lat, target_lat, params.step_size)
    displacement = (target_lat - source_lat).astype(np.float64)
    warnings = targets_outside_mask(request.targets, mask)
    result = DragResult(image=image, frames=[], latent=x, moves=moves, warnings=warnings)
    for move in range(moves):
        move_sources = np.round(source_lat + move / moves * displacement).astype(np.int64)
        move_targets = np.round(source_lat + (move + 1) / moves * displacement).astype(np.int64)
        with feature_reuse(model, params.reuse, period=grid.num_steps) as reuse:
            path = encode(model, x, grid, params.process, cond, inversion_guidance, lora_scale, generator, progress)
            edited = copy_and_paste(
                path.x_t0, move_sources, move_targets, params.radius, params.alpha, params.beta, generator
            )
            x = decode(
                model, edited, path, params.process, cond, order=params.order, mask=region, guidance=guidance,
                lora_scale=lora_scale, generator=generator, progress=progress,
            )
        calls = grid.num_steps * (2 if params.process == "ode" else 1)  # Cycle-SDE's encoding calls no UNet
        result.unet_calls += calls
        result.call_equivalents += reuse.equivalents() if params.reuse > 1 else calls
        frame = latent_to_image(model, x, image.size)
        if keep_outside:
            frame = paste_back(frame, image, mask, params.dilate, params.feather)
        result.image, result.latent = frame, x
        result.frames.append(frame)
        result.timings["drag_seconds"] = time.perf_counter() - start
        yield result


def targets_outside_mask(targets: Sequence[Point], mask: np.ndarray | None) -> list[str]:
    """Warnings for targets the mask does not let the drag reach."""
    if mask is None or not mask.any() or mask.all():
        return []
    return [
        f"target ({x:g}, {y:g}) lies outside the editable mask; content cannot be moved there"
        for x, y in targets
        if not mask[int(y), int(x)]
    ]


def drag(model: DiffusionModel, request: DragRequest, progress: bool = False) -> DragResult:
    """Drag the request's sources to its targets: the complete result of :func:`iter_drag`."""
    for result in iter_drag(model, request, progress):
        pass
    return result
