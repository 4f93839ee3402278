"""A pairwise user study of drag results: ``study serve`` asks raters in a browser which of two anonymised,
randomly ordered results follows the drag better while staying realistic; ``study report`` gives each
method pair's win rate with a 95% confidence interval. Votes are kept in an SQLite file (--db).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from sdedrag.bench.settings import INTERVALS
from sdedrag.cli.common import Parser, require
from sdedrag.errors import InputError

PATH_ARGS = ("pairs", "dataset", "db")
DEFAULT_DB = "study.sqlite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="study_command", metavar="SUBCOMMAND", parser_class=Parser, required=True)
    serve_parser = commands.add_parser("serve", help="serve the study web app", description=serve.__doc__)
    serve_parser.add_argument("--pairs", nargs="+", metavar="DIR", help="two or more results folders to compare (required)")
    serve_parser.add_argument("--dataset", help="dataset for inputs and points, if the folders hold no bench run.json")
    serve_parser.add_argument("--db", default=DEFAULT_DB, help="SQLite file for the votes (default: %(default)s)")
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the study to the network (default: %(default)s)")
    serve_parser.add_argument("--port", type=int, default=7860, help="port; 0 picks a free one (default: %(default)s)")

    report_parser = commands.add_parser("report", help="win rates with 95%% confidence intervals", description=report.__doc__)
    report_parser.add_argument("--db", default=DEFAULT_DB, help="SQLite file of the votes (default: %(default)s)")
    report_parser.add_argument("--interval", choices=list(INTERVALS), default="wilson", help="binomial interval: wilson (score) or exact (Clopper-Pearson) (default: %(default)s)")
    report_parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    """Serve the study (``study serve``) or report its results (``study report``)."""
    return serve(args) if args.study_command == "serve" else report(args)


def serve(args: argparse.Namespace) -> int:
    """Serve the study until Ctrl+C; every vote is written to --db at once."""
    from sdedrag.bench.study import Study, VoteStore
    from sdedrag.bench.study_server import StudyApp, make_server

    require(args, "pairs")
    study = Study(args.pairs, args.dataset)
    store = VoteStore(args.db)
    try:
        server = make_server(StudyApp(study, store), args.host, args.port)
    except OSError as err:
        raise InputError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from err
    host, port = server.server_address[:2]
    methods = ", ".join(sorted(study.methods))
    print(f"study of {methods}: {len(study.comparisons)} comparisons; votes go to {store.path}", flush=True)
    print(f"serving on http://{host}:{port}/ (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


def report(args: argparse.Namespace) -> int:
    """Each method pair's win rate over all votes on it, with a 95% binomial confidence interval (Wilson
    score, or Clopper-Pearson with --interval exact); votes are treated as independent trials."""
    from sdedrag.bench.study import VoteStore, win_rates

    if not Path(args.db).is_file():
        raise InputError(f"no study database at {args.db}")
    results = win_rates(VoteStore(args.db).votes(), args.interval)
    if not results:
        raise InputError(f"no votes in {args.db} yet")
    if args.json:
        rows = [{**asdict(r), "rate": r.rate, "interval": INTERVALS[args.interval], "confidence": 0.95} for r in results]
        print(json.dumps(rows, indent=2))
        return 0
    for r in results:
        print(
            f"{r.method} vs {r.other}: {r.method} preferred in {r.wins} of {r.votes} votes ({r.rate:.1%}; "
            f"95% CI {r.low:.1%} to {r.high:.1%}, {INTERVALS[args.interval]}), raters: {r.raters}"
        )
    return 0
