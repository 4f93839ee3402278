"""Settings as data and the words every layer shares, importable without torch (the CLI builds its options here).

``method`` names the pair a paper experiment compares, ``sde`` or ``ode``; which process ``sde`` means differs
by task and is spelled out by each settings' ``process``: drag and DiffEdit decode with **Cycle-SDE** (the noise
recorded while encoding, Eq. 8), SDEdit and inpainting with the **fresh-noise SDE** (DDPM). ``alpha`` in
:class:`DragParams` is the paper's patch gain; the schedule's cumulative product is always ``alpha_bar``.
"""

from __future__ import annotations

import functools
import math
import numbers
import types
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from sdedrag.errors import InputError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
"""The maintained copies of SD 1.5 and SD 1.5 inpainting (the runwayml ids were deleted from the Hub)."""
BUILTIN_MODELS = ("tiny", "tiny-inpaint", "tiny-xl", "shapes", "shapes-sd")
DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")

Process = Literal["sde", "ode", "cycle-sde"]
PROCESSES: tuple[str, ...] = ("cycle-sde", "sde", "ode")
Method = Literal["sde", "ode"]
METHODS: tuple[str, ...] = get_args(Method)
ORDERS = (1, 2, 3)
"""Solver order: 1 DDIM / DDPM steps, 2 and 3 (SDE-)DPM-Solver++(2M) and (3M)."""
KnownRegion = Literal["path", "fixed-noise"]
KNOWN_REGIONS: tuple[str, ...] = get_args(KnownRegion)
"""Inpainting's known region at every step: ``path``, the input's recorded noise-adding path (Eq. 7); ``fixed-noise``,
the input noised with one noise sample drawn for the whole run (diffusers' StableDiffusionInpaintPipeline with a
4-channel model, the paper's inpainting experiment)."""
Spacing = Literal["ddim", "dpm-solver"]
SPACINGS: tuple[str, ...] = get_args(Spacing)
"""Timestep grids: DDIMScheduler's, or DPMSolverMultistepScheduler's (the paper's inpainting experiment)."""


MAX_IMAGE_PIXELS = 4096 * 4096
"""The largest input image read by default (16.8 MP, about 1 GB of working memory); see ``sdedrag.io.load_image``."""
MAX_GUIDANCE = 100.0
MAX_ALPHA = 10.0
MAX_LORA_STEPS = 10_000
"""Upper bounds far beyond any useful setting (the paper: guidance 3, alpha 1.1, 100 LoRA steps) that keep
a float32 latent finite and a run's length sane."""


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _matches(value: object, hint: Any) -> bool:
    """Whether ``value`` has type ``hint``: bool, int, a finite float, str, None, a Literal or a union of
    these (other types are checked by the conditions)."""
    origin = get_origin(hint)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in get_args(hint))
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in get_args(hint))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if hint in (str, type(None)):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", type(None): "None"}
    return names.get(hint, str(hint))


def check(settings: object, *conditions: tuple[bool, str]) -> None:
    """Raise a one-line InputError naming the first field of the wrong type (numbers must be finite, flags
    true or false) or the first failed condition, and the settings."""
    for name, hint in _field_types(type(settings)).items():
        value = getattr(settings, name)
        if not _matches(value, hint):
            raise InputError(f"{name.replace('_', ' ')} must be {_describe(hint)}, not {value!r} (got {settings})")
    for ok, message in conditions:
        if not ok:
            raise InputError(f"{message} (got {settings})")


def solver_conditions(method: str, steps: int, t0: float, order: int, guidance: float) -> tuple[tuple[bool, str], ...]:
    """The conditions every task's solver settings meet."""
    return (
        (method in METHODS, f"method must be one of {', '.join(METHODS)}"),
        (steps >= 1, "steps must be at least 1"),
        (0.0 < t0 <= 1.0, "t0 must be in (0, 1]"),
        (order in ORDERS, "solver order must be 1, 2 or 3"),
        (1.0 <= guidance <= MAX_GUIDANCE, f"guidance must be in [1, {MAX_GUIDANCE:g}]"),
    )


@dataclass(frozen=True)
class SolverParams:
    """What every edit's solver takes: the ``method`` pair, ``steps`` over [0, T], the start ``t0`` as a
    fraction of T, the solver ``order``, classifier-free ``guidance`` and the ``seed``."""

    method: Method = "sde"
    steps: int = 50
    t0: float = 1.0
    order: int = 1
    guidance: float = 7.5
    seed: int = 0
    sde_process: ClassVar[Process] = "sde"  # what method "sde" decodes with

    def __post_init__(self) -> None:
        check(self, *self.conditions())

    def conditions(self) -> tuple[tuple[bool, str], ...]:
        return solver_conditions(self.method, self.steps, self.t0, self.order, self.guidance)

    @property
    def process(self) -> Process:
        return self.sde_process if self.method == "sde" else "ode"


@dataclass(frozen=True)
class DragParams(SolverParams):
    """SDE-Drag settings; the defaults are the paper's DragBench setting. ``sde`` is SDE-Drag (Cycle-SDE),
    ``ode`` ODE-Drag (DDIM inversion)."""

    steps: int = 200
    t0: float = 0.6
    guidance: float = 3.0  # classifier-free guidance at t0, ramping linearly to 1 at t = 0
    inversion_guidance: float | Literal["ramp"] = 1.0  # ODE-Drag's DDIM inversion CFG, or the decoding's ramp
    step_size: float = 2.0  # latent pixels per move
    radius: int = 5  # latent pixels
    alpha: float = 1.1  # the paper's patch gain: target patch = alpha * source patch
    beta: float = 0.3  # source patch = beta * source + sqrt(1 - beta^2) * noise
    lora_scale_min: float = 0.5  # LoRA scale at t0, rising on a cosine to 1 at t = 0
    reuse: int = 1  # the UNet's deep features recomputed every reuse-th call, reused between (1: every call)
    paste_back: bool = True  # keep the input's pixels exactly outside the dilated, feathered mask
    dilate: float = 8.0  # image pixels
    feather: float = 8.0  # image pixels
    sde_process: ClassVar[Process] = "cycle-sde"

    def conditions(self) -> tuple[tuple[bool, str], ...]:
        return (
            *super().conditions(),
            (self.step_size > 0, "step size must be positive"),
            (self.radius >= 1, "radius must be at least 1 latent pixel"),
            (0 < self.alpha <= MAX_ALPHA, f"alpha must be in (0, {MAX_ALPHA:g}]"),
            (0.0 <= self.beta <= 1.0, "beta must be in [0, 1]"),
            (0.0 <= self.lora_scale_min <= 1.0, "lora scale minimum must be in [0, 1]"),
            (self.reuse >= 1, "reuse interval must be at least 1"),
            (self.dilate >= 0 and self.feather >= 0, "dilate and feather must be non-negative"),
            (self.inversion_guidance == "ramp" or 1.0 <= self.inversion_guidance <= MAX_GUIDANCE,
             f"inversion guidance must be in [1, {MAX_GUIDANCE:g}] or 'ramp'"),
        )


DragMethod = Literal["sde", "ode", "dragdiffusion"]
DRAG_METHODS: tuple[str, ...] = get_args(DragMethod)
"""Drag methods: SDE-Drag, ODE-Drag (:class:`DragParams`) and DragDiffusion (:class:`DragDiffusionParams`)."""


@dataclass(frozen=True)
class DragDiffusionParams:
    """DragDiffusion (Shi et al., CVPR 2024) settings; the defaults are the authors' DragBench evaluation
    (drag_bench_evaluation/run_drag_diffusion.py). ``t0`` is their inversion strength: the fraction of the
    ``steps`` DDIM steps that are inverted, optimised at and decoded from (35 of 50), both ways with guidance 1."""

    method: Literal["dragdiffusion"] = "dragdiffusion"
    steps: int = 50
    t0: float = 0.7
    feature_index: int = 3  # 0: the UNet's mid block, k: its decoder block k - 1
    feature_scale: float = 0.5  # supervision features are resized to this fraction of the image size
    motion_radius: int = 1  # r_m, feature pixels
    tracking_radius: int = 3  # r_p, feature pixels
    mask_weight: float = 0.1  # lambda: weight of the L1 change of the one-step DDIM prediction outside the mask
    latent_lr: float = 0.01  # Adam on the latent
    iterations: int = 80  # at most this many Adam steps
    reach: float = 2.0  # feature pixels: a handle this close to its target is done; all done stops early
    start_step: int = 0  # mutual self-attention from this denoising step on ...
    start_layer: int = 10  # ... in the self-attention layers from this one on (call order)
    paste_back: bool = True  # keep the input's pixels exactly outside the dilated, feathered mask
    dilate: float = 8.0  # image pixels
    feather: float = 8.0  # image pixels
    process: ClassVar[Process] = "ode"

    def __post_init__(self) -> None:
        check(
            self,
            (self.method == "dragdiffusion", "method must be dragdiffusion"),
            (self.steps >= 1, "steps must be at least 1"),
            (0.0 < self.t0 <= 1.0, "t0 (inversion strength) must be in (0, 1]"),
            (self.feature_index >= 0, "feature index must be non-negative"),
            (0.0 < self.feature_scale <= 1.0, "feature scale must be in (0, 1]"),
            (self.motion_radius >= 0, "motion supervision radius must be non-negative"),
            (self.tracking_radius >= 0, "point tracking radius must be non-negative"),
            (self.mask_weight >= 0, "mask weight must be non-negative"),
            (self.latent_lr > 0, "latent learning rate must be positive"),
            (self.iterations >= 0, "iterations must be non-negative"),
            (self.reach > 0, "reach must be positive"),
            (self.start_step >= 0 and self.start_layer >= 0, "start step and start layer must be non-negative"),
            (self.dilate >= 0 and self.feather >= 0, "dilate and feather must be non-negative"),
        )


FAST_PRESET: dict[str, int] = {"order": 1, "steps": 25, "reuse": 2}
"""``--fast``: 25 first-order steps (15 per move at t0 0.6) with the UNet's deep features recomputed every second
call: 8 full and 7 reuse calls per move, 9-10 full-call equivalents against the paper's 120 (benchmarks/README.md)."""
DRAGBENCH_PASTE_BACK = False
DRAGBENCH_LORA_RANK = 4
"""``sdedrag bench run``'s defaults for SDE-Drag and ODE-Drag where they differ from ``sdedrag drag``'s: the
paper's DragBench evaluation (ML-GSAI/SDE-Drag sdedrag_dragbench.py) trains a rank-4 LoRA (100 steps at
lr 2e-4, utils/train_lora.py, as :class:`LoraSettings`) and saves the decoded image without pasting back."""


@dataclass(frozen=True)
class MaskedEditParams(SolverParams):
    """Solver settings of an edit inside a mask, whose result keeps the input's pixels outside it."""

    paste_back: bool = True  # keep every input pixel outside the mask
    feather: float = 4.0  # paste-back edge width inside the mask, image pixels

    def conditions(self) -> tuple[tuple[bool, str], ...]:
        return (*super().conditions(), (self.feather >= 0, "feather must be non-negative"))


@dataclass(frozen=True)
class InpaintParams(MaskedEditParams):
    """SDE / ODE inpainting settings (``sde``: the fresh-noise SDE); ``t0`` = 1 starts from pure noise
    inside the mask. ``known_region`` and ``spacing``: see :data:`KNOWN_REGIONS` and :data:`SPACINGS`."""

    known_region: KnownRegion = "path"
    spacing: Spacing = "ddim"

    def conditions(self) -> tuple[tuple[bool, str], ...]:
        return (
            *super().conditions(),
            (self.known_region in KNOWN_REGIONS, f"known region must be one of {', '.join(KNOWN_REGIONS)}"),
            (self.spacing in SPACINGS, f"spacing must be one of {', '.join(SPACINGS)}"),
        )


@dataclass(frozen=True)
class SDEditParams(SolverParams):
    """SDEdit settings (``sde``: the fresh-noise SDE): noise the input to ``t0``, solve back under the prompt."""

    t0: float = 0.5


@dataclass(frozen=True)
class MaskParams:
    """DiffEdit mask settings; the defaults are diffusers' StableDiffusionDiffEditPipeline.generate_mask."""

    strength: float = 0.5  # noise level of the mask's noise draws, as a fraction of T
    maps: int = 10  # noise draws averaged
    clamp_ratio: float = 3.0  # the difference map is clamped at this multiple of its mean, then scaled to [0, 1]
    threshold: float = 0.5  # editable where the scaled difference exceeds this

    def __post_init__(self) -> None:
        check(
            self,
            (0.0 < self.strength <= 1.0, "mask strength must be in (0, 1]"),
            (self.maps >= 1, "mask maps must be at least 1"),
            (self.clamp_ratio > 0, "mask clamp ratio must be positive"),
            (0.0 <= self.threshold < 1.0, "mask threshold must be in [0, 1)"),
        )


@dataclass(frozen=True)
class DiffEditParams(MaskedEditParams):
    """DiffEdit settings (``sde``: Cycle-SDE with the noise recorded under the source prompt; ``ode``: DDIM
    inversion under the source prompt, sampling under the target with the source as negative prompt). ``t0``
    is DiffEdit's encoding ratio; 0.7 is the paper's (ML-GSAI/SDE-Drag diffedit.py; diffusers' default is 0.8)."""

    t0: float = 0.7
    mask: MaskParams = field(default_factory=MaskParams)
    sde_process: ClassVar[Process] = "cycle-sde"


@dataclass(frozen=True)
class ReconstructParams:
    """Reconstruction settings: encode to ``t0`` with ``process`` and decode back unedited."""

    process: Process = "cycle-sde"
    steps: int = 50
    t0: float = 1.0
    order: int = 1
    guidance: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check(
            self,
            (self.process in PROCESSES, f"process must be one of {', '.join(PROCESSES)}"),
            *solver_conditions("sde", self.steps, self.t0, self.order, self.guidance),
        )


@dataclass(frozen=True)
class LoraSettings:
    """How the per-image LoRA is trained; ``alpha`` is LoRA's own (scaling = alpha / rank; None means rank)."""

    rank: int = 16
    steps: int = 100
    learning_rate: float = 2e-4
    alpha: float | None = None
    batch_size: int = 1
    weight_decay: float = 1e-2
    target_modules: tuple[str, ...] = field(default=("to_q", "to_k", "to_v", "to_out.0"))
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        check(
            self,
            (_is_int(self.rank) and self.rank >= 1, "LoRA rank must be a positive integer"),
            (_is_int(self.steps) and 1 <= self.steps <= MAX_LORA_STEPS,
             f"LoRA steps must be an integer in [1, {MAX_LORA_STEPS}]"),
            (_is_int(self.batch_size) and self.batch_size >= 1, "LoRA batch size must be a positive integer"),
            (_is_int(self.seed) and 0 <= self.seed < 2**63, "LoRA seed must be an integer in [0, 2^63)"),
            (_positive(self.learning_rate), "LoRA learning rate must be a positive number"),
            (self.alpha is None or _positive(self.alpha), "LoRA alpha must be a positive number (or None for rank)"),
            (_positive(self.weight_decay) or self.weight_decay == 0, "LoRA weight decay must be a non-negative number"),
            (
                bool(self.target_modules) and all(isinstance(m, str) and m for m in self.target_modules),
                "LoRA target modules must be a non-empty list of module names",
            ),
        )

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def to_dict(self) -> dict:
        """The settings with alpha resolved (what the cache key and the cache's info.json hold)."""
        return {**asdict(self), "alpha": self.lora_alpha, "target_modules": list(self.target_modules)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


DRAGDIFFUSION_LORA = LoraSettings(steps=80, learning_rate=5e-4, batch_size=4)
"""DragDiffusion's per-image LoRA (drag_bench_evaluation/run_lora_training.py): rank 16, 80 AdamW steps at
lr 5e-4, batch 4, weight decay 1e-2, on the attention projections."""
