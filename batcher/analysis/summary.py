"""What a job did: `JobSummary`, from totals per model (`ModelTally`), and its lines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from batcher.analysis.text import cache_line, seconds
from batcher.analysis.totals import Totals, group_totals
from batcher.prices import UNPRICED_HINT
from batcher.types import DETAILS, describe_limit


@dataclass(frozen=True)
class JobSummary:
    """What a finished (or stopped) job did; returned by `batcher.run`."""

    output: Path | None
    rows: int
    requests: int
    ok: int
    errors: int
    errors_by_type: dict[str, int]
    models: dict[str, Totals]  # per model, in the order the job met them
    latency_p50: float | None
    latency_p95: float | None
    wall_s: float
    sent: int  # HTTP attempts made by this run
    # models whose cost is unknown: no price, and no server-stated cost (an unbilled error
    # costs nothing, but the model's line shows no "$0.0000" that looks like a price)
    unpriced: tuple[str, ...] = ()
    resumed: int = 0  # requests already done by earlier runs of this OUT
    cache_hits: int = 0  # requests answered from the response cache
    stop_reason: str | None = None
    # rate limits learned per model: {"gpt-x": {"rpm": (600.0, "429s")}}
    learned: dict[str, dict[str, tuple[float, str]]] = field(default_factory=dict)
    interrupted: bool = False
    job_dir: Path | None = None
    submitted: str | None = None  # --no-wait: the batches submitted, nothing collected yet

    @property
    def cost_usd(self) -> float | None:
        """The job's cost; None when a row's cost is unknown (no price, no usage)."""
        if self.unpriced or any(m.unpriced for m in self.models.values()):
            return None
        costs = [m.cost_usd for m in self.models.values() if m.cost_usd is not None]
        return sum(costs) if costs else None

    @property
    def exit_code(self) -> int:
        if self.submitted is not None:
            return 0
        return 0 if self.errors == 0 and self.stop_reason is None else 1

    def to_dict(self) -> dict:
        return {
            "output": str(self.output) if self.output else None,
            "rows": self.rows,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "errors_by_type": dict(self.errors_by_type),
            "models": {m: _model_dict(t, m in self.unpriced) for m, t in self.models.items()},
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


class ModelTally:
    """Totals per model, added up window by window as OUT is written."""

    def __init__(self) -> None:
        self.models: dict[str, Totals] = {}

    def add(self, table: pa.Table, split: Mapping[str, pa.Array] | None = None) -> None:
        for found in group_totals(table, ("model",), sort=False, split=split):
            model = found.key["model"]
            if model in self.models:
                self.models[model] += found
            else:
                self.models[model] = found

    def overall(self) -> Totals:
        total = Totals()
        for found in self.models.values():
            total += found
        return total


def render(summary: JobSummary) -> list[str]:
    """The end-of-job lines printed on stderr."""
    if summary.submitted is not None:
        return [summary.submitted]
    lines = []
    errors = ", ".join(f"{n} {t}" for t, n in sorted(summary.errors_by_type.items()))
    lines.append(
        f"{summary.ok} ok, {summary.errors} error{'s' if summary.errors != 1 else ''}"
        + (f" ({errors})" if errors else "")
        + f" of {summary.requests} requests from {summary.rows} rows"
    )
    for name, m in summary.models.items():
        lines.append(
            f"  {name}: {m.ok}/{m.requests} ok, {m.prompt_tokens} tokens in{_of(m, 'cached')}, "
            f"{m.completion_tokens} out{_of(m, 'reasoning')}{_searches(m)}"
            f"{'' if name in summary.unpriced else _cost(m)}"
        )
    priced = [m for name, m in summary.models.items() if name not in summary.unpriced]
    known = [m.cost_usd for m in priced if m.cost_usd is not None]
    unknown = sum(m.unpriced for m in summary.models.values())
    if known and not unknown:
        lines.append(f"cost: ${sum(known):.4f}")
    elif known:
        lines.append(f"cost: at least ${sum(known):.4f} ({unknown} rows of unknown cost)")
    total = Totals()
    for m in summary.models.values():
        total += m
    if (cache := cache_line(total)) is not None:
        lines.append(cache)
    if summary.unpriced:
        lines.append(f"no price for: {', '.join(summary.unpriced)} {UNPRICED_HINT}")
    unsaid = sum(m.unknown_usage for m in summary.models.values())
    if unsaid:
        lines.append(
            f"usage unknown for {unsaid} rows that were or may have been billed (the server "
            "did not say, said nonsense, or timed out): their tokens and cost are left empty"
        )
    if summary.latency_p50 is not None:
        lines.append(
            f"latency: p50 {seconds(summary.latency_p50)}, p95 {seconds(summary.latency_p95)}; "
            f"wall time {summary.wall_s:.1f}s"
        )
    else:
        lines.append(f"wall time {summary.wall_s:.1f}s")
    if summary.resumed or summary.cache_hits:
        lines.append(
            f"this run sent {summary.sent} HTTP requests; {summary.resumed} results were done "
            f"by earlier runs, {summary.cache_hits} came from the cache"
        )
    for model, limits in summary.learned.items():
        said = ", ".join(f"~{describe_limit(name, value)}" for name, value in limits.items())
        lines.append(f"learned {said} for {model}")
    if summary.stop_reason:
        lines.append(f"stopped early: {summary.stop_reason}")
    if summary.output:
        lines.append(f"wrote {summary.output}")
    return lines


def _of(m: Totals, what: str) -> str:
    """ " (12 cached)" when some of the tokens were cached (reasoning), else ""."""
    n = m.details.get(f"{what}_tokens")
    return f" ({n} {what})" if n else ""


def _searches(m: Totals) -> str:
    n = m.details.get("search_queries")
    return f", {n} search{'es' if n != 1 else ''}" if n else ""


def _cost(m: Totals) -> str:
    """ ", $0.1234" when every row's cost is known, ", cost partly unknown" when some are."""
    if m.cost_usd is None or (m.unpriced and m.unpriced == m.requests):
        return ""
    if m.unpriced:
        return f", at least ${m.cost_usd:.4f} ({m.unpriced} rows of unknown cost)"
    return f", ${m.cost_usd:.4f}"


def _model_dict(totals: Totals, unpriced: bool) -> dict:
    return {
        "requests": totals.requests,
        "ok": totals.ok,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        **{name: totals.details.get(name) for name in DETAILS},
        "cost_usd": None if unpriced else totals.cost_usd,
        "cache_hit_rate": totals.cache_hit_rate,
    }
