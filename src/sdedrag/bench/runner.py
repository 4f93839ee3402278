"""``bench run``: drag every case of a dataset, resumably, on one or many processes.

Each case gets ``OUT/<case id>/`` with result.png, input.png and mask.png (what the drag was given, after
``max_size``) and run.json, a ``sdedrag drag`` record (``sdedrag drag --config OUT/<id>/run.json`` redoes the
case) whose results also name the case, dataset, rank and timings. Case folders are written to a temporary
folder and renamed when complete, so a killed run leaves no half-written case; rerunning skips every case
that has its run.json. Under ``torchrun``/``accelerate launch`` the pending cases are split between the
processes with accelerate's ``PartialState.split_between_processes``; OUT/summary.json is rebuilt from the
case records by the main process at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState
from accelerate.utils import gather_object
from PIL import Image

from sdedrag.bench.formats import CaseRef, DragCase, list_cases, load_case, resize_case
from sdedrag.errors import InputError, SdedragError
from sdedrag.io import (
    atomic_output_dir,
    check_output_dir,
    check_writable,
    environment,
    file_sha256,
    is_sdedrag_record,
    run_record,
    write_json,
)
from sdedrag.runs import COMMAND, drag_results, request_args
from sdedrag.session import DragSession
from sdedrag.settings import DragParams, LoraSettings
from sdedrag.tasks.drag import DragRequest

# Drag arguments that may differ between the runs resumed into one output folder (they do not change results).
RESUMABLE_CHANGES = frozenset({"device", "lora_cache"})
SUMMARY = "summary.json"
# What atomic_output_dir and write_json leave when killed: .<name>.partial-XXXXXXXX folders, .<name>.tmp-PID files.
PARTIAL_NAME = re.compile(r"^\..+\.(partial-[A-Za-z0-9_]{8}|tmp-\d+)$")


@dataclass(frozen=True)
class BenchPlan:
    """What to run: the dataset, where results go, and which cases."""

    dataset: Path
    out: Path
    format: str = "auto"
    limit: int | None = None
    max_size: int | None = None
    max_pixels: int | None = None  # per-case image limit; None: sdedrag.io.MAX_IMAGE_PIXELS


def record_path(out: Path, case_id: str) -> Path:
    return out / case_id / "run.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """A case's run.json, or None if it is missing or is not a readable sdedrag drag record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if isinstance(record, dict) and isinstance(record.get("args"), dict) and isinstance(record.get("results"), dict):
        return record
    return None


def check_out(out: Path) -> None:
    """Raise InputError unless ``out`` can take a benchmark run: a new folder, or a writable folder whose
    summary.json, if any, sdedrag wrote (other files in it are never touched)."""
    if not out.exists():
        check_output_dir(out)
        return
    if not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    summary = out / SUMMARY
    if (summary.exists() or summary.is_symlink()) and not is_sdedrag_record(summary):
        raise InputError(f"{summary} was not written by sdedrag; choose another output folder")
    check_writable(out)


def case_problem(out: Path, ref: CaseRef) -> str | None:
    """Why case ``ref`` cannot be run into ``out`` whatever its data, or None."""
    if ref.id.split("/")[0] == SUMMARY:
        return f"case id {ref.id} clashes with the run's {SUMMARY}"
    path = record_path(out, ref.id)
    if path.exists() and read_record(path) is None:
        return f"{path} is not a readable sdedrag record; delete {path.parent} to redo the case"
    return None


def remove_partials(out: Path) -> list[Path]:
    """Delete what killed runs left behind in ``out`` and its category folders: temporary case folders and
    temporary JSON files (by their names, so nothing else is touched)."""
    leftovers = sorted(p for p in [*out.glob(".*"), *out.glob("*/.*")] if PARTIAL_NAME.match(p.name))
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return leftovers


def check_resumable(out: Path, refs: list[CaseRef], drag_args: Mapping[str, Any], max_size: int | None) -> None:
    """Refuse to mix settings in one output folder: a finished case must have been run like this run."""
    for ref in refs:
        record = read_record(record_path(out, ref.id))
        if record is None:
            continue
        stored = {**record["args"], "max_size": record["results"].get("max_size")}
        wanted = {**drag_args, "max_size": max_size}
        changed = sorted(k for k in wanted if k not in RESUMABLE_CHANGES and stored.get(k) != wanted[k])
        if changed:
            details = ", ".join(f"{k} {stored.get(k)!r} -> {wanted[k]!r}" for k in changed)
            raise InputError(
                f"{out} holds cases run with other settings ({details}); resume with the same settings or use another --out"
            )
        return


def run_case(
    session: DragSession,
    case: DragCase,
    folder: Path,
    params: DragParams,
    lora: LoraSettings | None,
    drag_args: Mapping[str, Any],
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """Drag one case into ``folder`` (atomically) and return its run.json results."""
    start = time.perf_counter()
    with atomic_output_dir(folder) as staging:
        request = DragRequest(case.image, case.sources, case.targets, case.mask, case.prompt, params)
        result = session.drag(request, lora)
        result.image.save(staging / "result.png")
        case.image.save(staging / "input.png")
        Image.fromarray(case.mask.astype(np.uint8) * 255).save(staging / "mask.png")
        args = {**request_args(request, str(folder / "input.png"), str(folder / "mask.png")), **drag_args}
        results = {
            "case": case.id,
            "category": case.category,
            **info,
            "dataset_image": str(case.image_path),
            "dataset_image_sha256": file_sha256(case.image_path),
            **drag_results(request, result),
            "seconds": time.perf_counter() - start,
        }
        write_json(staging / "run.json", run_record(COMMAND, args, results))
    return results


def build_summary(
    plan: BenchPlan, refs: list[CaseRef], failed: list[dict[str, str]], header: Mapping[str, Any]
) -> dict[str, Any]:
    """summary.json from the case records on disk: per-case timings (LoRA and drag apart), totals, and the
    cases that failed or are still missing."""
    cases = []
    for ref in refs:
        record = read_record(record_path(plan.out, ref.id))
        if record is not None:
            results = record["results"]
            cases.append({
                "id": ref.id,
                "category": ref.category,
                "rank": results["rank"],
                "moves": results["moves"],
                "lora_seconds": results["timings"].get("lora_seconds", 0.0),
                "drag_seconds": results["timings"]["drag_seconds"],
                "seconds": results["seconds"],
            })
    done = {case["id"] for case in cases}
    failed = [f for f in failed if f["id"] not in done]
    unfinished = done | {f["id"] for f in failed}
    totals = {key: sum(case[key] for case in cases) for key in ("lora_seconds", "drag_seconds", "seconds")}
    return {
        **header,
        "cases_total": len(refs),
        "cases_done": len(cases),
        "failed": failed,
        "missing": [ref.id for ref in refs if ref.id not in unfinished],
        "totals": totals,
        "means": {key: value / len(cases) for key, value in totals.items()} if cases else {},
        "cases": cases,
        **environment(),
    }


def run_benchmark(
    plan: BenchPlan,
    make_session: Callable[[], DragSession],
    params: DragParams,
    lora: LoraSettings | None,
    drag_args: Mapping[str, Any],
    state: PartialState,
) -> dict[str, Any] | None:
    """Run the plan's pending cases on this process's share; the main process returns the summary (written
    to OUT/summary.json), the others None. Cases that cannot be read or dragged are reported and skipped."""
    refs = list_cases(plan.dataset, plan.format)[: plan.limit]
    check_out(plan.out)
    check_resumable(plan.out, refs, drag_args, plan.max_size)
    if state.is_main_process:
        plan.out.mkdir(parents=True, exist_ok=True)
        remove_partials(plan.out)
    pending = [ref for ref in refs if not record_path(plan.out, ref.id).exists() or case_problem(plan.out, ref)]
    state.wait_for_everyone()  # every process has the same pending list before anyone writes
    tag = f"[rank {state.process_index}] " if state.num_processes > 1 else ""
    info = {
        "dataset": str(plan.dataset),
        "format": refs[0].format if refs else plan.format,
        "max_size": plan.max_size,
        "rank": state.process_index,
        "world_size": state.num_processes,
    }
    failed: list[dict[str, str]] = []
    with state.split_between_processes(pending) as mine:
        session = make_session() if mine else None
        for index, ref in enumerate(mine, 1):
            try:
                problem = case_problem(plan.out, ref)
                if problem:
                    raise InputError(problem)
                case = load_case(ref, plan.max_pixels)
                if plan.max_size:
                    case = resize_case(case, plan.max_size)
                results = run_case(session, case, plan.out / ref.id, params, lora, drag_args, info)
            except Exception as err:  # one bad case must not end the run: report it and go on
                reason = str(err) if isinstance(err, SdedragError) else f"{type(err).__name__}: {err}"
                reason = " ".join(reason.split()) or type(err).__name__
                message = reason if reason.startswith(f"case {ref.id}: ") else f"case {ref.id}: {reason}"
                print(f"{tag}skipping {message}", file=sys.stderr)
                failed.append({"id": ref.id, "error": message})
                continue
            timings = results["timings"]
            print(
                f"{tag}{index}/{len(mine)} {ref.id}: {results['moves']} moves, "
                f"lora {timings.get('lora_seconds', 0.0):.1f}s, drag {timings['drag_seconds']:.1f}s",
                flush=True,
            )
    failed = gather_object(failed)
    if not state.is_main_process:
        return None
    header = {
        "dataset": str(plan.dataset),
        "format": info["format"],
        "out": str(plan.out),
        "limit": plan.limit,
        "max_size": plan.max_size,
        "world_size": state.num_processes,
        "args": dict(drag_args),
    }
    summary = build_summary(plan, refs, failed, header)
    write_json(plan.out / SUMMARY, summary)
    return summary


def summary_line(summary: Mapping[str, Any]) -> str:
    """One line for the console: cases done, failed, and time spent."""
    totals = summary["totals"]
    line = (
        f"{summary['cases_done']}/{summary['cases_total']} cases done "
        f"(lora {totals['lora_seconds']:.1f}s, drag {totals['drag_seconds']:.1f}s in total)"
    )
    if summary["failed"]:
        line += f"; {len(summary['failed'])} skipped: " + ", ".join(f["id"] for f in summary["failed"])
    return line + f"; wrote {Path(summary['out']) / 'summary.json'}"

