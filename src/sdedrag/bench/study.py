"""A pairwise user study of drag results, as in the paper's Sec. 5: which result follows the drag better
while staying realistic? Votes live in SQLite (one per rater, case and method pair); the report gives each
method pair's win rate with a 95% binomial confidence interval (Wilson by default, or Clopper-Pearson).

Methods are results folders (``bench run`` output, or any folder of ``<case id>/result.png``), named by the
folder's name. The input and its arrows come from a case's run.json (input.png, mask.png and the points, as
``bench run`` writes them) or from the dataset.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import binomtest

from sdedrag.bench.formats import list_cases, load_case
from sdedrag.bench.settings import INTERVALS
from sdedrag.errors import InputError
from sdedrag.io import load_image
from sdedrag.visualize import draw_drag_arrows

QUESTION = "Which result follows the drag better while staying realistic?"

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY,
    rater TEXT NOT NULL,
    case_id TEXT NOT NULL,
    method_a TEXT NOT NULL,  -- the pair in sorted order: method_a < method_b
    method_b TEXT NOT NULL,
    winner TEXT NOT NULL,
    shown_left TEXT NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (rater, case_id, method_a, method_b),
    CHECK (method_a < method_b AND winner IN (method_a, method_b) AND shown_left IN (method_a, method_b))
)
"""


@dataclass(frozen=True)
class Comparison:
    """One case shown with two methods' results; ``pair`` is sorted."""

    case_id: str
    pair: tuple[str, str]


@dataclass(frozen=True)
class Vote:
    rater: str
    case_id: str
    winner: str
    loser: str


@dataclass(frozen=True)
class PairResult:
    """How often ``method`` beat ``other``, with a confidence interval for that rate."""

    method: str
    other: str
    wins: int
    votes: int
    raters: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.wins / self.votes


class VoteStore:
    """Votes in an SQLite file; a second vote by the same rater on the same case and pair is refused."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            yield db

    def add(self, rater: str, comparison: Comparison, winner: str, shown_left: str) -> bool:
        """Record a vote; False if this rater already voted on this comparison."""
        with self._connect() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO votes (rater, case_id, method_a, method_b, winner, shown_left, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rater, comparison.case_id, *comparison.pair, winner, shown_left,
                 datetime.now(timezone.utc).isoformat(timespec="seconds")),
            )
            return cursor.rowcount == 1

    def answered(self, rater: str) -> set[Comparison]:
        with self._connect() as db:
            rows = db.execute("SELECT case_id, method_a, method_b FROM votes WHERE rater = ?", (rater,)).fetchall()
        return {Comparison(case_id, (a, b)) for case_id, a, b in rows}

    def votes(self) -> list[Vote]:
        with self._connect() as db:
            rows = db.execute("SELECT rater, case_id, method_a, method_b, winner FROM votes ORDER BY id").fetchall()
        return [Vote(rater, case_id, winner, b if winner == a else a) for rater, case_id, a, b, winner in rows]


def win_rates(votes: Sequence[Vote], interval: str = "wilson", confidence: float = 0.95) -> list[PairResult]:
    """Per method pair (sorted by name), the first method's wins over all votes on the pair, with a
    binomial confidence interval (scipy's ``binomtest(...).proportion_ci``; 'wilson' or 'exact')."""
    if interval not in INTERVALS:
        raise InputError(f"unknown interval {interval!r}; choose {' or '.join(INTERVALS)}")
    pairs: dict[tuple[str, str], list[Vote]] = {}
    for vote in votes:
        pairs.setdefault(tuple(sorted((vote.winner, vote.loser))), []).append(vote)
    results = []
    for (method, other), group in sorted(pairs.items()):
        wins = sum(vote.winner == method for vote in group)
        ci = binomtest(wins, len(group)).proportion_ci(confidence_level=confidence, method=interval)
        raters = len({vote.rater for vote in group})
        results.append(PairResult(method, other, wins, len(group), raters, float(ci.low), float(ci.high)))
    return results


@dataclass(frozen=True)
class CaseInput:
    """What a rater sees above the results: the input, the drag, the editable mask."""

    image: Image.Image
    sources: list[tuple[float, float]]
    targets: list[tuple[float, float]]
    mask: np.ndarray | None

    def with_arrows(self) -> Image.Image:
        return draw_drag_arrows(self.image, self.sources, self.targets, self.mask)


class Study:
    """The methods (results folders) being compared, their common cases, and where inputs come from."""

    def __init__(self, folders: Sequence[str | os.PathLike], dataset: str | os.PathLike | None = None):
        self.methods = {Path(folder).resolve().name: Path(folder).resolve() for folder in folders}
        if len(folders) < 2:
            raise InputError("a study needs at least two results folders")
        if len(self.methods) != len(folders):
            raise InputError("results folders must have different names (the names label the methods)")
        for folder in self.methods.values():
            if not folder.is_dir():
                raise InputError(f"results folder not found: {folder}")
        self.dataset = {ref.id: ref for ref in list_cases(dataset)} if dataset else None
        cases = {name: self._cases(folder) for name, folder in self.methods.items()}
        self.comparisons = [
            Comparison(case_id, (a, b))
            for a, b in itertools.combinations(sorted(self.methods), 2)
            for case_id in sorted(cases[a] & cases[b])
        ]
        if not self.comparisons:
            raise InputError("no case has a result.png in two of the results folders")
        without_input = sorted({c.case_id for c in self.comparisons if self._input_folder(c.case_id) is None
                                and (self.dataset is None or c.case_id not in self.dataset)})
        if without_input:
            raise InputError(
                f"no input for case {without_input[0]} (and {len(without_input) - 1} more): the results folders "
                "hold no run.json and input.png for it; pass --dataset"
            )

    @staticmethod
    def _cases(folder: Path) -> set[str]:
        return {path.parent.relative_to(folder).as_posix() for path in folder.rglob("result.png")}

    def result_path(self, method: str, case_id: str) -> Path:
        return self.methods[method] / case_id / "result.png"

    def _input_folder(self, case_id: str) -> Path | None:
        """A ``bench run`` case folder (of any method) holding the case's input.png and run.json."""
        for folder in self.methods.values():
            case_folder = folder / case_id
            if (case_folder / "run.json").is_file() and (case_folder / "input.png").is_file():
                return case_folder
        return None

    def case_input(self, case_id: str) -> CaseInput:
        """The input from a ``bench run`` case folder, else from the dataset."""
        folder = self._input_folder(case_id)
        if folder is None:
            case = load_case(self.dataset[case_id])
            return CaseInput(case.image, case.sources, case.targets, case.mask)
        args = json.loads((folder / "run.json").read_text())["args"]
        mask_path = folder / "mask.png"
        mask = np.asarray(load_image(mask_path, mode="L")) > 0 if mask_path.is_file() else None
        sources, targets = [tuple(p) for p in args["source"]], [tuple(p) for p in args["target"]]
        return CaseInput(load_image(folder / "input.png"), sources, targets, mask)
