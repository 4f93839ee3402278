"""The user study: votes (one per rater and pair) persist across restarts of the web app, the pages keep
methods anonymous, and the report's intervals match hand computations."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import beta

from sdedrag.bench.study import Comparison, Study, VoteStore, win_rates
from sdedrag.bench.study_server import StudyApp, make_server
from sdedrag.cli import main
from sdedrag.errors import InputError
from tests.conftest import smooth_image
from tests.helpers import cli_env, write_dataset

CASES = ["cat0/case0", "cat1/case1"]


def results_folder(root: Path, name: str, seed: int, with_records: bool = True) -> Path:
    """A results folder like ``bench run``'s: per case result.png (and input.png, mask.png, run.json)."""
    folder = root / name
    for index, case in enumerate(CASES):
        case_folder = folder / case
        case_folder.mkdir(parents=True)
        smooth_image(48, 40, seed=seed + index).save(case_folder / "result.png")
        if with_records:
            smooth_image(48, 40, seed=100 + index).save(case_folder / "input.png")
            Image.fromarray(np.full((40, 48), 255, np.uint8)).save(case_folder / "mask.png")
            args = {"source": [[10.0, 10.0]], "target": [[30.0, 20.0]]}
            (case_folder / "run.json").write_text(json.dumps({"command": "drag", "args": args, "results": {}}))
    return folder


class Browser:
    """A rater's browser: cookies kept, redirects followed."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def get(self, path: str = "/") -> str:
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read().decode()

    def image(self, path: str) -> bytes:
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read()

    def vote(self, page: str, choice: str) -> str:
        token = re.search(r'name="token" value="([^"]+)"', page).group(1)
        data = urllib.parse.urlencode({"token": token, "choice": choice}).encode()
        with self.opener.open(self.base + "/vote", data=data, timeout=30) as response:
            return response.read().decode()


class Running:
    """The study app served on a free localhost port in a thread, stopped on exit."""

    def __init__(self, study: Study, db: Path):
        self.server = make_server(StudyApp(study, VoteStore(db)), port=0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def image_sources(page: str) -> list[str]:
    return re.findall(r'<img src="(/image/[^"]+)"', page)


def test_votes_persist_across_restarts_and_pages_stay_anonymous(tmp_path):
    folders = [results_folder(tmp_path, "ours", 0), results_folder(tmp_path, "baseline", 10)]
    study, db = Study(folders), tmp_path / "votes.sqlite"
    assert study.comparisons == [Comparison(case, ("baseline", "ours")) for case in CASES]
    results = {f.read_bytes(): f.parent.parent.parent.name for f in tmp_path.rglob("result.png")}
    with Running(study, db) as base:
        assert base.startswith("http://127.0.0.1:")
        alice = Browser(base)
        page = alice.get("/?rater=alice")
        assert "ours" not in page and "baseline" not in page and str(tmp_path) not in page
        assert alice.get() == page  # reloading shows the same question, in the same order
        input_src, left_src, _ = image_sources(page)
        assert alice.image(input_src)[:4] == b"\x89PNG"
        left = results[alice.image(left_src)]
        page = alice.vote(page, "left")
        assert "Comparison 2 of 2" in page
    assert [(v.rater, v.winner) for v in VoteStore(db).votes()] == [("alice", left)]

    with Running(study, db) as base:  # a restart: the vote is still there and alice continues where she was
        alice.base = base
        stale = re.sub(r'(name="token" value=")[^"]+', r"\1stale", page)
        assert "That vote was not recorded" in alice.vote(stale, "right")  # a page from before the restart
        page = alice.get()
        assert "Comparison 2 of 2" in page
        right = results[alice.image(image_sources(page)[2])]
        assert "Thank you" in alice.vote(page, "right")
        assert "Thank you" in alice.get()
        bob = Browser(base)
        page = bob.get()
        bob.vote(page, "left")
        with pytest.raises(urllib.error.HTTPError, match="404"):
            bob.image("/image/not-a-token")
    votes = VoteStore(db).votes()
    assert [(v.rater, v.winner) for v in votes[:2]] == [("alice", left), ("alice", right)]
    assert len(votes) == 3 and votes[2].rater != "alice" and len({v.case_id for v in votes[:2]}) == 2


def test_one_vote_per_rater_and_comparison(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    comparison = Comparison("case", ("ode", "sde"))
    assert store.add("alice", comparison, "sde", "ode")
    assert not store.add("alice", comparison, "ode", "ode")
    assert store.add("bob", comparison, "ode", "sde")
    assert [(v.rater, v.winner, v.loser) for v in VoteStore(tmp_path / "votes.sqlite").votes()] == [
        ("alice", "sde", "ode"), ("bob", "ode", "sde")]


def wilson(wins: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = wins / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


def clopper_pearson(wins: int, n: int) -> tuple[float, float]:
    low = beta.ppf(0.025, wins, n - wins + 1) if wins else 0.0
    high = beta.ppf(0.975, wins + 1, n - wins) if wins < n else 1.0
    return low, high


def test_report_intervals_match_a_hand_computed_vote_table(tmp_path, capsys):
    table = {("sde", "ode"): (23, 2), ("sde", "dragdiffusion"): (14, 6), ("dragdiffusion", "ode"): (10, 10)}
    store = VoteStore(tmp_path / "votes.sqlite")
    for (first, second), (first_wins, second_wins) in table.items():
        pair = tuple(sorted((first, second)))
        for index in range(first_wins + second_wins):
            winner = first if index < first_wins else second
            store.add(f"rater{index}", Comparison("case", pair), winner, first)
    results = {(r.method, r.other): r for r in win_rates(store.votes())}
    assert list(results) == [("dragdiffusion", "ode"), ("dragdiffusion", "sde"), ("ode", "sde")]
    for (method, other), wins, n in [(("ode", "sde"), 2, 25), (("dragdiffusion", "sde"), 6, 20), (("dragdiffusion", "ode"), 10, 20)]:
        result = results[(method, other)]
        assert (result.wins, result.votes) == (wins, n)
        assert (result.low, result.high) == pytest.approx(wilson(wins, n), abs=1e-12)
    exact = {(r.method, r.other): r for r in win_rates(store.votes(), "exact")}
    assert (exact[("ode", "sde")].low, exact[("ode", "sde")].high) == pytest.approx(clopper_pearson(2, 25), abs=1e-9)
    assert (exact[("dragdiffusion", "ode")].low, exact[("dragdiffusion", "ode")].high) == pytest.approx(
        clopper_pearson(10, 20), abs=1e-9)

    assert main(["study", "report", "--db", str(tmp_path / "votes.sqlite")]) == 0
    low, high = wilson(2, 25)
    assert f"ode vs sde: ode preferred in 2 of 25 votes (8.0%; 95% CI {low:.1%} to {high:.1%}, Wilson score)" in capsys.readouterr().out
    assert main(["study", "report", "--db", str(tmp_path / "votes.sqlite"), "--interval", "exact", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[2]["method"] == "ode" and rows[2]["interval"] == "Clopper-Pearson"
    assert rows[2]["low"] == pytest.approx(clopper_pearson(2, 25)[0], abs=1e-9)
    assert main(["study", "report", "--db", str(tmp_path / "absent.sqlite")]) == 2


def test_inputs_come_from_the_dataset_when_folders_have_no_records(tmp_path):
    dataset = write_dataset(tmp_path / "data", "dragbench-d", count=2)
    folders = [results_folder(tmp_path, "a", 0, with_records=False), results_folder(tmp_path, "b", 5, with_records=False)]
    with pytest.raises(InputError, match="pass --dataset"):
        Study(folders)
    study = Study(folders, dataset)
    shown = study.case_input("cat1/case1")
    assert shown.sources == [(35.0, 32.0)] and shown.targets == [(45.0, 28.0)] and shown.image.size == (80, 64)
    with pytest.raises(InputError, match="different names"):
        Study([folders[0], folders[0]])
    with pytest.raises(InputError, match="at least two"):
        Study(folders[:1])


def test_study_serve_binds_localhost_and_stops(tmp_path):
    folders = [results_folder(tmp_path, "sde", 0), results_folder(tmp_path, "ode", 10)]
    command = [sys.executable, "-m", "sdedrag", "study", "serve", "--pairs", *map(str, folders),
               "--db", str(tmp_path / "votes.sqlite"), "--port", "0"]
    server = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [server.stdout.readline(), server.stdout.readline()]
        assert "2 comparisons" in lines[0], server.stderr.read() if server.poll() is not None else lines
        url = re.search(r"http://127\.0\.0\.1:\d+/", lines[1]).group(0)
        assert "Which result follows the drag better" in Browser(url.rstrip("/")).get()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert (tmp_path / "votes.sqlite").is_file()
