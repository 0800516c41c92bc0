"""`batcher status`: how far a job is, from its job folder (running or stopped) or OUT.

The counts, tokens and cost are those `batcher cost` shows for the same path: the newest
result per key, priced with the same price table (`analysis.totals`, `analysis.cost`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from batcher.analysis.cost import with_costs
from batcher.analysis.text import aligned
from batcher.analysis.totals import Totals, group_totals
from batcher.errors import UsageError
from batcher.io.jobdir import JobDir
from batcher.io.output import metadata as output_metadata
from batcher.io.output import read_output
from batcher.prices import PriceTable

COLUMNS = [
    "model",
    "status",
    "error_type",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "cached",
]


@dataclass
class ModelStatus:
    model: str
    done: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    pending: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


@dataclass
class JobStatus:
    path: str
    state: str  # running | stopped | finished
    rows: int | None
    requests: int | None
    done: int
    ok: int
    errors: dict[str, int]
    models: list[ModelStatus]
    last_minute: int  # results in the last 60 seconds
    last_progress: float | None  # unix time of the newest result
    pid: int | None = None

    @property
    def pending(self) -> int | None:
        return None if self.requests is None else max(0, self.requests - self.done)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["pending"] = self.pending
        out["error_count"] = sum(self.errors.values())
        return out


def job_status(
    path: Path, *, prices: PriceTable | None = None, now: float | None = None
) -> JobStatus:
    """Status of OUT (or OUT.batcher/): the job folder if there is one, else OUT."""
    now = time.time() if now is None else now
    prices = prices if prices is not None else PriceTable.load()
    job_dir = JobDir.of(Path(path))
    if job_dir.exists():
        return _from_job_dir(job_dir, prices, now)
    if Path(path).exists():
        return _from_output(Path(path), prices)
    raise UsageError(f"{path}: no such output or job directory")


def _from_job_dir(job_dir: JobDir, prices: PriceTable, now: float) -> JobStatus:
    info = job_dir.read_info()
    table = with_costs(job_dir.results([*COLUMNS, "_done_at"]), prices)
    per_model = {m: ModelStatus(m) for m in info.get("models", [])}
    for found in group_totals(table, ("model",), sort=False):
        model = found.key["model"]
        per_model[model] = _model_status(model, found)
    totals = info.get("per_model", {})
    for m in per_model.values():
        if m.model in totals:
            m.pending = max(0, totals[m.model] - m.done)
    done_at = table.column("_done_at")
    recent = pc.sum(pc.greater_equal(done_at, now - 60)).as_py() or 0
    newest = pc.max(done_at).as_py()
    pid = info.get("pid")
    state = "running" if pid and alive(pid) else "stopped"
    return _status(str(job_dir.path), state, info, list(per_model.values()), recent, newest, pid)


def _from_output(path: Path, prices: PriceTable) -> JobStatus:
    meta = output_metadata(path)
    if meta is None:
        raise UsageError(f"{path}: not a batcher output")
    table = with_costs(read_output(path, COLUMNS), prices)
    sent = pc.invert(pc.fill_null(pc.equal(table.column("error_type"), "not_sent"), False))
    per_model = [
        _model_status(found.key["model"], found, pending=0)
        for found in group_totals(table.filter(sent), ("model",), sort=False)
    ]
    info = {"rows": meta.get("rows"), "requests": meta.get("requests")}
    return _status(str(path), "finished", info, per_model, 0, None, None)


def _model_status(model: str, found: Totals, pending: int | None = None) -> ModelStatus:
    return ModelStatus(
        model=model,
        done=found.requests,
        ok=found.ok,
        errors=dict(found.errors_by_type),
        pending=pending,
        prompt_tokens=found.prompt_tokens,
        completion_tokens=found.completion_tokens,
        cost_usd=found.cost_usd,
    )


def _status(path, state, info, models, recent, newest, pid) -> JobStatus:
    errors: dict[str, int] = {}
    for m in models:
        for kind, n in m.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    return JobStatus(
        path=path,
        state=state,
        rows=info.get("rows"),
        requests=info.get("requests"),
        done=sum(m.done for m in models),
        ok=sum(m.ok for m in models),
        errors=errors,
        models=models,
        last_minute=recent,
        last_progress=newest,
        pid=pid,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render(status: JobStatus, *, now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    total = f" of {status.requests}" if status.requests is not None else ""
    share = ""
    if status.requests:
        share = f" ({100 * status.done / status.requests:.1f}%)"
    pid = f" (pid {status.pid})" if status.state == "running" else ""
    lines = [f"{status.path}: {status.state}{pid}, {status.done}{total} requests done{share}"]
    rows = [["model", "done", "ok", "errors", "pending", "tokens in", "tokens out", "cost"]]
    for m in status.models:
        pending = "?" if m.pending is None else str(m.pending)
        cost = "-" if m.cost_usd is None else f"${m.cost_usd:.4f}"
        errors = str(sum(m.errors.values()))
        tokens = [str(m.prompt_tokens), str(m.completion_tokens)]
        rows.append([m.model, str(m.done), str(m.ok), errors, pending, *tokens, cost])
    lines += ["  " + line for line in aligned(rows)]
    if status.errors:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(status.errors.items()))
        lines.append(f"errors: {kinds}")
    if status.last_progress is not None:
        ago = max(0.0, now - status.last_progress)
        lines.append(
            f"rate: {status.last_minute} results in the last minute; last progress {ago:.0f} s ago"
        )
    return lines
