"""`batcher status`: how far a job is, from its job directory (running or stopped) or OUT."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batcher.errors import UsageError
from batcher.io.assemble import KEY_NAMES, PART_SCHEMA, part_files

COLUMNS = [
    "_row",
    "model",
    "_variant",
    "sample",
    "status",
    "error_type",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "_done_at",
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


def job_status(path: Path, *, now: float | None = None) -> JobStatus:
    """Status of OUT (or OUT.batcher/): the job directory if there is one, else OUT."""
    now = time.time() if now is None else now
    path = Path(path)
    job_dir = path if path.is_dir() else path.with_name(path.name + ".batcher")
    if job_dir.is_dir():
        return from_job_dir(job_dir, now)
    if path.is_file():
        return from_output(path)
    raise UsageError(f"{path}: no such output or job directory")


def from_job_dir(job_dir: Path, now: float) -> JobStatus:
    info = read_info(job_dir)
    latest: dict[tuple, dict] = {}
    for part in part_files(job_dir):
        try:
            rows = pq.read_table(part, columns=COLUMNS).to_pylist()
        except (OSError, ValueError):
            continue  # being replaced or damaged: the job itself deals with it
        for row in rows:
            latest[(row["_row"], row["model"], row["_variant"], row["sample"])] = row
    per_model = {m: ModelStatus(m) for m in info.get("models", [])}
    totals = info.get("per_model", {})
    times = []
    for row in latest.values():
        m = per_model.setdefault(row["model"], ModelStatus(row["model"]))
        add_row(m, row)
        if row["_done_at"] is not None:
            times.append(row["_done_at"])
    for m in per_model.values():
        if m.model in totals:
            m.pending = max(0, totals[m.model] - m.done)
    pid = info.get("pid")
    state = "running" if pid and alive(pid) else "stopped"
    return summarize(str(job_dir), state, info, list(per_model.values()), times, now, pid)


def from_output(path: Path) -> JobStatus:
    try:
        meta = json.loads(pq.read_metadata(path).metadata[b"batcher"])
    except (KeyError, TypeError, ValueError, OSError):
        raise UsageError(f"{path}: not a batcher output file") from None
    names = [c for c in COLUMNS if not c.startswith("_") and c != "sample"]
    per_model: dict[str, ModelStatus] = {}
    for row in pq.read_table(path, columns=names).to_pylist():
        if row["error_type"] == "not_sent":
            continue
        add_row(per_model.setdefault(row["model"], ModelStatus(row["model"])), row)
    for m in per_model.values():
        m.pending = 0
    info = {"rows": meta.get("rows"), "requests": meta.get("requests")}
    return summarize(str(path), "finished", info, list(per_model.values()), [], 0.0, None)


def add_row(m: ModelStatus, row: dict) -> None:
    m.done += 1
    if row["status"] == "ok":
        m.ok += 1
    else:
        kind = row["error_type"] or "unknown"
        m.errors[kind] = m.errors.get(kind, 0) + 1
    m.prompt_tokens += row["prompt_tokens"] or 0
    m.completion_tokens += row["completion_tokens"] or 0
    if row["cost_usd"] is not None:
        m.cost_usd = (m.cost_usd or 0.0) + row["cost_usd"]


def summarize(path, state, info, models, times, now, pid) -> JobStatus:
    errors: Counter[str] = Counter()
    for m in models:
        errors.update(m.errors)
    return JobStatus(
        path=path,
        state=state,
        rows=info.get("rows"),
        requests=info.get("requests"),
        done=sum(m.done for m in models),
        ok=sum(m.ok for m in models),
        errors=dict(errors),
        models=models,
        last_minute=sum(1 for t in times if t >= now - 60),
        last_progress=max(times) if times else None,
        pid=pid,
    )


def read_info(job_dir: Path) -> dict:
    try:
        return json.loads((job_dir / "job.json").read_text())
    except (OSError, ValueError):
        return {}


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
    header = f"  {'model':<28} {'done':>8} {'ok':>8} {'errors':>7} {'pending':>8} "
    header += f"{'tokens in':>10} {'tokens out':>10} {'cost':>10}"
    lines.append(header)
    for m in status.models:
        pending = "?" if m.pending is None else str(m.pending)
        cost = "-" if m.cost_usd is None else f"${m.cost_usd:.4f}"
        lines.append(
            f"  {m.model:<28} {m.done:>8} {m.ok:>8} {sum(m.errors.values()):>7} {pending:>8} "
            f"{m.prompt_tokens:>10} {m.completion_tokens:>10} {cost:>10}"
        )
    if status.errors:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(status.errors.items()))
        lines.append(f"errors: {kinds}")
    if status.last_progress is not None:
        ago = max(0.0, now - status.last_progress)
        lines.append(
            f"rate: {status.last_minute} results in the last minute; last progress {ago:.0f} s ago"
        )
    return lines


def read_results(path: Path) -> pa.Table:
    """The result rows of OUT, or of its job directory while the job runs or after it
    stopped (newest result per key; parts being written are skipped)."""
    path = Path(path)
    job_dir = path if path.is_dir() else path.with_name(path.name + ".batcher")
    if job_dir.is_dir():
        tables = []
        for number, part in enumerate(part_files(job_dir)):
            try:
                table = pq.read_table(part)
            except (OSError, ValueError):
                continue
            tables.append(table.append_column("_part", pa.array([number] * table.num_rows)))
        if not tables:
            return PART_SCHEMA.empty_table()
        table = pa.concat_tables(tables, promote_options="permissive")
        keys = zip(*(table.column(n).to_pylist() for n in KEY_NAMES))
        newest = {key: i for i, key in enumerate(keys)}  # parts are in write order
        return table.take(pa.array(sorted(newest.values()), pa.int64()))
    if path.is_file():
        try:
            return pq.read_table(path)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: not a readable Parquet file: {exc}") from None
    raise UsageError(f"{path}: no such output or job directory")
