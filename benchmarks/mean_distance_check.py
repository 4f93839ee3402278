"""Does Mean Distance (DragDiffusion's DIFT metric) agree with ShapesBench's ground truth?

Scores the drag results of a ``shapes-bench`` folder (run on ``shapes-sd``, whose DIFT features Mean Distance
uses) twice: with ``bench eval``'s Mean Distance, which sees only the input, the result and the points, and with
ShapesBench's ground-truth measures. Prints, per drag method, both means, the Spearman correlation between Mean
Distance and the true distance of the moved shape to its target, and Mean Distance on the cases ShapesBench calls
a success against those it calls a failure; adds the ground truth and the unedited input as two more "methods"
(a perfect drag and no drag).

    python benchmarks/mean_distance_check.py --folder runs/shapes-bench-sd
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

from sdedrag.bench.dift import DiftExtractor
from sdedrag.bench.evaluate import evaluate
from sdedrag.shapes.bench import read_case, score_drag

REFERENCES = ("truth", "unedited")
"""Two reference "methods": the ground truth (a perfect drag) and the input (no drag)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="a shapes-bench output folder (with cases/)")
    parser.add_argument("--dift-model", default="shapes-sd")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = args.folder / "cases"
    folders = sorted(p for p in cases.iterdir() if p.is_dir())
    extractor = DiftExtractor.from_pretrained(args.dift_model, "cpu")
    with tempfile.TemporaryDirectory() as scratch:
        references = Path(scratch)
        for folder in folders:
            case = read_case(folder)
            (references / folder.name).mkdir()
            case.ground_truth().pil().save(references / folder.name / "truth.png")
            case.scene.pil().save(references / folder.name / "unedited.png")
        labels = sorted({p.stem for p in cases.glob("*/drag/*.png")})
        print(f"{'method':<14}{'cases':>6}{'Mean Distance':>15}{'true distance':>15}{'success':>9}"
              f"{'Spearman rho':>14}{'MD | success':>14}{'MD | failure':>14}")
        for label in [*labels, *REFERENCES]:
            results, name = (references, f"{label}.png") if label in REFERENCES else (cases, f"drag/{label}.png")
            rows = evaluate(cases, results, "shapesbench", extractor, result_file=name).rows
            measured = np.array([row["mean_distance"] for row in rows])
            truth = [score_drag(read_case(cases / row["case"]),
                                np.asarray(Image.open(results / row["case"] / name).convert("RGB"))) for row in rows]
            distance = np.array([t["distance"] for t in truth], dtype=float)
            success = np.array([t["success"] for t in truth], dtype=bool)
            found = np.isfinite(distance)
            rho = spearmanr(measured[found], distance[found]).statistic if found.sum() > 2 else float("nan")
            on_success = measured[success].mean() if success.any() else float("nan")
            on_failure = measured[~success].mean() if (~success).any() else float("nan")
            print(f"{label:<14}{len(rows):>6}{measured.mean():>15.2f}{distance[found].mean():>15.2f}"
                  f"{success.mean():>9.2f}{rho:>14.2f}{on_success:>14.2f}{on_failure:>14.2f}")


if __name__ == "__main__":
    main()
