"""``bench eval``: metrics of a results folder (``<case id>/result.png``, or another file name) against its dataset.

One row per case goes to metrics.csv; summary.json holds the means. Mean Distance in the summary is averaged
over all handle points (DragDiffusion's protocol), every other metric over cases. Results of another size
than the input (e.g. from ``bench run --max-size``) are resized to it first, bilinearly.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sdedrag.bench.formats import list_cases, load_case
from sdedrag.bench.metrics import (
    FeatureExtractor,
    PerceptualDistance,
    drag_accuracy_index,
    image_fidelity,
    match_size,
    mean_distances,
    unmasked_psnr_ssim,
)
from sdedrag.bench.settings import DAI_GAMMAS
from sdedrag.errors import InputError
from sdedrag.io import image_to_tensor, load_image



@dataclass
class Evaluation:
    """Per-case rows, the cases without a result, and the cases that could not be read."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)


def evaluate(
    dataset: str | os.PathLike,
    results: str | os.PathLike,
    fmt: str = "auto",
    extractor: FeatureExtractor | None = None,
    distance: PerceptualDistance | None = None,
    dai_gammas: Sequence[int] = DAI_GAMMAS,
    progress: bool = False,
    result_file: str = "result.png",
) -> Evaluation:
    """Score every case of ``dataset`` that has ``results/<id>/<result_file>``; Mean Distance needs
    ``extractor`` and Image Fidelity ``distance`` (each metric is skipped when its callable is None)."""
    results = Path(results)
    if not results.is_dir():
        raise InputError(f"results folder not found: {results}")
    evaluation = Evaluation()
    for ref in tqdm(list_cases(dataset, fmt), desc="evaluating", unit="case", disable=None if progress else True):
        try:
            case = load_case(ref)
        except InputError as err:
            print(f"skipping {err}", file=sys.stderr)
            evaluation.invalid.append({"id": ref.id, "error": str(err)})
            continue
        result_path = results / ref.id / result_file
        if not result_path.is_file():
            evaluation.missing.append(ref.id)
            continue
        result = match_size(load_image(result_path), case.image)
        row: dict[str, Any] = {"case": case.id, "category": case.category or "", "points": len(case.sources)}
        if extractor is not None:
            size = (case.image.size[1], case.image.size[0])
            source_features = extractor(image_to_tensor(case.image), case.prompt)
            result_features = extractor(image_to_tensor(result), case.prompt)
            pixels, normalised = mean_distances(source_features, result_features, case.sources, case.targets, size)
            row["mean_distance"] = float(pixels.mean())
            row["mean_distance_regiondrag"] = float(normalised.mean())
        if distance is not None:
            row["image_fidelity"] = image_fidelity(case.image, result, distance)
        row["psnr_unmasked"], row["ssim_unmasked"] = unmasked_psnr_ssim(case.image, result, case.mask)
        for gamma in dai_gammas:
            row[f"dai_{gamma}"] = drag_accuracy_index(case.image, result, case.sources, case.targets, gamma)
        evaluation.rows.append(row)
    return evaluation


def metric_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [key for key in rows[0] if key not in ("case", "category", "points")] if rows else []


def _json_number(value: float) -> float | str:
    """JSON has no inf or nan: those become the strings "inf", "-inf", "nan"."""
    return value if math.isfinite(value) else str(value)


def _means(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, float | str]:
    """Means over cases; Mean Distance is weighted by each case's number of points (a mean over points)."""
    points = [row["points"] for row in rows]
    return {
        name: _json_number(
            float(np.average([row[name] for row in rows], weights=points if name == "mean_distance" else None))
        )
        for name in names
    }


def summarize(evaluation: Evaluation, settings: dict[str, Any]) -> dict[str, Any]:
    """summary.json: counts, overall and per-category means, skipped cases, and how the metrics were computed."""
    rows, names = evaluation.rows, metric_names(evaluation.rows)
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["category"]:
            by_category[row["category"]].append(row)
    return {
        "cases": len(rows),
        "points": int(sum(row["points"] for row in rows)),
        "metrics": _means(rows, names) if rows else {},
        "by_category": {category: _means(group, names) for category, group in sorted(by_category.items())},
        "missing_results": evaluation.missing,
        "invalid_cases": evaluation.invalid,
        "settings": settings,
    }


def write_metrics_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """One row per case (non-finite values are written as inf / nan)."""
    columns = ["case", "category", "points", *metric_names(rows)]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
