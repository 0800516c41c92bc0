"""Counting a job's output rows into a summary, in constant memory."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True, slots=True)
class ModelTotals:
    requests: int = 0
    ok: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


@dataclass(frozen=True)
class JobSummary:
    """What a finished (or stopped) job did; returned by `batcher.run`."""

    output: Path | None
    rows: int
    requests: int
    ok: int
    errors: int
    errors_by_type: dict[str, int]
    models: dict[str, ModelTotals]
    latency_p50: float | None
    latency_p95: float | None
    wall_s: float
    sent: int  # HTTP attempts made by this run
    unpriced: tuple[str, ...] = ()  # models whose cost is unknown (no price, no server cost)
    resumed: int = 0  # requests already done by earlier runs of this OUT
    cache_hits: int = 0  # requests answered from the response cache
    stop_reason: str | None = None
    interrupted: bool = False
    job_dir: Path | None = None

    @property
    def cost_usd(self) -> float | None:
        costs = [m.cost_usd for m in self.models.values() if m.cost_usd is not None]
        return sum(costs) if costs else None

    @property
    def exit_code(self) -> int:
        return 0 if self.errors == 0 and self.stop_reason is None else 1

    def to_dict(self) -> dict:
        return {
            "output": str(self.output) if self.output else None,
            "rows": self.rows,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "errors_by_type": dict(self.errors_by_type),
            "models": {m: vars_of(t) for m, t in self.models.items()},
            "cost_usd": self.cost_usd,
            "latency_p50": self.latency_p50,
            "latency_p95": self.latency_p95,
            "wall_s": round(self.wall_s, 3),
            "sent": self.sent,
            "resumed": self.resumed,
            "cache_hits": self.cache_hits,
            "stop_reason": self.stop_reason,
            "unpriced": list(self.unpriced),
        }


def vars_of(totals: ModelTotals) -> dict:
    return {name: getattr(totals, name) for name in totals.__slots__}


class LatencyHistogram:
    """Log-spaced buckets (1% wide) from 1 ms to about 3 hours: percentiles in O(1) memory."""

    BASE = 1.01
    FLOOR = 0.001

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0

    def add_many(self, values: list[float]) -> None:
        for v in values:
            b = 0 if v <= self.FLOOR else int(math.log(v / self.FLOOR, self.BASE)) + 1
            self.counts[b] += 1
        self.n += len(values)

    def percentile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return self.FLOOR * self.BASE ** max(0, b - 0.5) if b else self.FLOOR
        return None


@dataclass
class Tally:
    """Running totals over output tables."""

    rows: int = 0
    ok: int = 0
    errors_by_type: Counter[str] = field(default_factory=Counter)
    models: dict[str, dict] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    unpriced: set[str] = field(default_factory=set)  # models with billed rows but no cost

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        status = table.column("status")
        self.ok += pc.sum(pc.equal(status, "ok")).as_py() or 0
        errors = table.filter(pc.equal(status, "error")).column("error_type")
        self.errors_by_type.update(e or "unknown" for e in errors.to_pylist())
        ok_rows = table.filter(pc.equal(status, "ok"))
        no_cost = ok_rows.filter(pc.is_null(ok_rows.column("cost_usd")))
        self.unpriced.update(no_cost.column("model").unique().to_pylist())
        self.latency.add_many([v for v in ok_rows.column("latency_s").to_pylist() if v is not None])
        grouped = table.group_by("model").aggregate(
            [
                ("status", "count"),
                ("prompt_tokens", "sum"),
                ("completion_tokens", "sum"),
                ("cost_usd", "sum"),
                ("cost_usd", "count"),
            ]
        )
        ok_by_model = Counter(ok_rows.column("model").to_pylist())
        for row in grouped.to_pylist():
            m = self.models.setdefault(
                row["model"], {"requests": 0, "ok": 0, "prompt": 0, "completion": 0, "cost": None}
            )
            m["requests"] += row["status_count"]
            m["ok"] += ok_by_model[row["model"]]
            m["prompt"] += row["prompt_tokens_sum"] or 0
            m["completion"] += row["completion_tokens_sum"] or 0
            if row["cost_usd_count"]:
                m["cost"] = (m["cost"] or 0.0) + row["cost_usd_sum"]

    def model_totals(self) -> dict[str, ModelTotals]:
        return {
            name: ModelTotals(m["requests"], m["ok"], m["prompt"], m["completion"], m["cost"])
            for name, m in self.models.items()
        }


def render(summary: JobSummary) -> list[str]:
    """The end-of-job lines printed on stderr."""
    lines = []
    errors = ", ".join(f"{n} {t}" for t, n in sorted(summary.errors_by_type.items()))
    lines.append(
        f"{summary.ok} ok, {summary.errors} error{'s' if summary.errors != 1 else ''}"
        + (f" ({errors})" if errors else "")
        + f" of {summary.requests} requests from {summary.rows} rows"
    )
    for name, m in summary.models.items():
        cost = f", ${m.cost_usd:.4f}" if m.cost_usd is not None else ""
        lines.append(
            f"  {name}: {m.ok}/{m.requests} ok, {m.prompt_tokens} tokens in, "
            f"{m.completion_tokens} out{cost}"
        )
    if summary.cost_usd is not None:
        lines.append(f"cost: ${summary.cost_usd:.4f}")
    if summary.unpriced:
        lines.append(
            f"no price for: {', '.join(summary.unpriced)} (cost left empty; add them with "
            "--prices FILE)"
        )
    if summary.latency_p50 is not None:
        lines.append(
            f"latency: p50 {summary.latency_p50:.3f}s, p95 {summary.latency_p95:.3f}s; "
            f"wall time {summary.wall_s:.1f}s"
        )
    else:
        lines.append(f"wall time {summary.wall_s:.1f}s")
    if summary.resumed or summary.cache_hits:
        lines.append(
            f"this run sent {summary.sent} HTTP requests; {summary.resumed} results were done "
            f"by earlier runs, {summary.cache_hits} came from the cache"
        )
    if summary.stop_reason:
        lines.append(f"stopped early: {summary.stop_reason}")
    if summary.output:
        lines.append(f"wrote {summary.output}")
    return lines
