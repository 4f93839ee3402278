"""Drag-editing metrics on one (input, result) pair.

- Mean Distance (DragDiffusion's protocol): features of both images are upsampled (bilinear) to the input's
  size; each handle's feature in the input is matched by cosine argmax over the whole result, and the
  distance from the match to the target is measured in pixels. The RegionDrag variant searches only discs
  around each source and target (radius max(|s - t| / sqrt 2, 5)) and normalises x and y offsets by the
  image's width and height.
- Image Fidelity: 1 - LPIPS (AlexNet) between both images resized (bilinear) to 224 x 224, in [-1, 1].
- Offline, weight-free: PSNR and SSIM of the unedited area (outside the editable mask) and GoodDrag's Drag
  Accuracy Index (DAI): squared difference between the source patch of the input and the target patch of the
  result (RGB in [0, 1], summed over channels, averaged over the patch's pixels and the points).

The feature extractor (for Mean Distance) and the perceptual distance (for Image Fidelity) are plain
callables, so tests and users can inject their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor

from sdedrag.errors import ModelLoadError
from sdedrag.io import image_to_tensor
from sdedrag.tasks.drag import Point

FeatureExtractor = Callable[[Tensor, str], Tensor]
"""(image [1, 3, H, W] in [-1, 1], prompt) -> features [1, C, h, w]."""
PerceptualDistance = Callable[[Tensor, Tensor], float]
"""(image a, image b), both [1, 3, 224, 224] in [-1, 1] -> distance (0 for identical images)."""

LPIPS_SIZE = (224, 224)
REGIONDRAG_MIN_RADIUS = 5.0


def match_size(result: Image.Image, reference: Image.Image) -> Image.Image:
    """``result`` at ``reference``'s size (bilinear, as DragDiffusion's evaluation resizes results)."""
    result = result.convert("RGB")
    return result if result.size == reference.size else result.resize(reference.size, Image.Resampling.BILINEAR)


def _pixel_points(points: Sequence[Point]) -> np.ndarray:
    """Integer pixel (x, y) of each point, [N, 2]."""
    return np.floor(np.asarray(points, dtype=np.float64)).astype(np.int64).reshape(-1, 2)


def _upsampled_chunks(features: Tensor, size: tuple[int, int], chunk: int) -> Iterator[Tensor]:
    """``features`` [1, C, h, w] upsampled bilinearly to ``size`` (H, W), ``chunk`` channels at a time
    (the full map of SD's 1280-channel features at 512 x 913 would need 2.4 GB)."""
    for start in range(0, features.shape[1], chunk):
        part = features[:, start : start + chunk].float()
        yield part if tuple(part.shape[-2:]) == tuple(size) else F.interpolate(part, size, mode="bilinear")


def cosine_maps(
    source_features: Tensor, result_features: Tensor, handles: Sequence[Point], size: tuple[int, int], chunk: int = 64
) -> Tensor:
    """Cosine similarity [N, H, W] between each handle's (upsampled) input feature and every pixel's
    (upsampled) result feature; ``size`` is (H, W)."""
    pixels = torch.from_numpy(_pixel_points(handles))
    rows, cols = pixels[:, 1], pixels[:, 0]
    handle_vectors = torch.cat([up[0, :, rows, cols].cpu() for up in _upsampled_chunks(source_features, size, chunk)])
    dots = torch.zeros(len(rows), *size)
    norms = torch.zeros(size)
    for start, up in zip(range(0, result_features.shape[1], chunk), _upsampled_chunks(result_features, size, chunk)):
        vectors = handle_vectors[start : start + up.shape[1]].to(up.device)
        dots += torch.einsum("cn,chw->nhw", vectors, up[0]).cpu()
        norms += up[0].square().sum(0).cpu()
    denominator = (handle_vectors.square().sum(0)[:, None, None] * norms[None]).clamp_min(1e-16).sqrt()
    return dots / denominator


def best_matches(maps: Tensor, regions: Tensor | None = None) -> np.ndarray:
    """Pixel (x, y) of each map's maximum [N, 2], searched only inside ``regions`` [N, H, W] when given."""
    if regions is not None:
        maps = maps.masked_fill(~regions, -math.inf)
    flat = maps.flatten(1).argmax(1).numpy()
    width = maps.shape[-1]
    return np.stack([flat % width, flat // width], axis=1)


def regiondrag_regions(sources: Sequence[Point], targets: Sequence[Point], size: tuple[int, int]) -> Tensor:
    """RegionDrag's search areas [N, H, W]: pixels closer than max(|s - t| / sqrt 2, 5) to the source or target."""
    src, tgt = _pixel_points(sources).astype(np.float64), _pixel_points(targets).astype(np.float64)
    radius = np.maximum(np.linalg.norm(src - tgt, axis=1) / math.sqrt(2.0), REGIONDRAG_MIN_RADIUS)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    near = [
        (np.hypot(xx - s[0], yy - s[1]) < r) | (np.hypot(xx - t[0], yy - t[1]) < r) for s, t, r in zip(src, tgt, radius)
    ]
    return torch.from_numpy(np.stack(near))


def mean_distances(
    source_features: Tensor,
    result_features: Tensor,
    sources: Sequence[Point],
    targets: Sequence[Point],
    size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Per point: the DragDiffusion distance (pixels, match anywhere) and the RegionDrag distance (offsets
    divided by width and height, match inside the point's discs). ``size`` is the input's (H, W)."""
    maps = cosine_maps(source_features, result_features, sources, size)
    goal = _pixel_points(targets).astype(np.float64)
    anywhere = best_matches(maps)
    local = best_matches(maps, regiondrag_regions(sources, targets, size))
    scale = np.array([size[1], size[0]], dtype=np.float64)
    return np.linalg.norm(goal - anywhere, axis=1), np.linalg.norm((goal - local) / scale, axis=1)


def image_fidelity(original: Image.Image, result: Image.Image, distance: PerceptualDistance) -> float:
    """1 - ``distance`` between both images resized (bilinear) to 224 x 224 in [-1, 1]."""
    a, b = (F.interpolate(image_to_tensor(im), LPIPS_SIZE, mode="bilinear") for im in (original, result))
    return 1.0 - float(distance(a, b))


def unmasked_psnr_ssim(original: Image.Image, result: Image.Image, mask: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and mean SSIM over the pixels outside the editable ``mask``; PSNR is inf where they are
    identical, both are nan when everything is editable."""
    a, b = np.asarray(original.convert("RGB")), np.asarray(result.convert("RGB"))
    keep = ~mask
    if not keep.any():
        return math.nan, math.nan
    psnr = math.inf if np.array_equal(a[keep], b[keep]) else peak_signal_noise_ratio(a[keep], b[keep], data_range=255)
    _, ssim_map = structural_similarity(a, b, channel_axis=-1, data_range=255, full=True)
    return float(psnr), float(ssim_map[keep].mean())


def drag_accuracy_index(
    original: Image.Image, result: Image.Image, sources: Sequence[Point], targets: Sequence[Point], gamma: int
) -> float:
    """GoodDrag's DAI with patch radius ``gamma``: the mean over points of the squared RGB difference ([0, 1]
    scale, summed over channels) between the input's source patch and the result's target patch, per pixel.
    Patches are clipped at the image border by the same amount around both points."""
    a = np.asarray(original.convert("RGB"), dtype=np.float64) / 255.0
    b = np.asarray(result.convert("RGB"), dtype=np.float64) / 255.0
    height, width = a.shape[:2]
    values = []
    for (sx, sy), (tx, ty) in zip(_pixel_points(sources), _pixel_points(targets)):
        left, up = min(gamma, sx, tx), min(gamma, sy, ty)
        right, down = min(gamma, width - 1 - sx, width - 1 - tx), min(gamma, height - 1 - sy, height - 1 - ty)
        source_patch = a[sy - up : sy + down + 1, sx - left : sx + right + 1]
        target_patch = b[ty - up : ty + down + 1, tx - left : tx + right + 1]
        values.append(np.square(source_patch - target_patch).sum() / (source_patch.shape[0] * source_patch.shape[1]))
    return float(np.mean(values))


class LpipsDistance:
    """LPIPS with AlexNet from the ``lpips`` package (which fetches torchvision's AlexNet weights once)."""

    def __init__(self, device: str | torch.device = "cpu"):
        try:
            import lpips
        except ImportError as err:
            raise ModelLoadError(
                "Image Fidelity needs LPIPS (AlexNet weights): pip install lpips (the 'metrics' extra; it needs "
                "torchvision), or pass --no-lpips"
            ) from err
        self.device = torch.device(device)
        try:
            self.model = lpips.LPIPS(net="alex", verbose=False).to(self.device).eval()
        except Exception as err:  # noqa: BLE001 - any failure to get the weights is reported the same way
            raise ModelLoadError(
                f"cannot load the LPIPS AlexNet weights ({type(err).__name__}: {err}); they are downloaded by "
                "torchvision on first use, so run once with network access, or pass --no-lpips"
            ) from err

    @torch.no_grad()
    def __call__(self, a: Tensor, b: Tensor) -> float:
        return float(self.model(a.to(self.device), b.to(self.device)).item())
