"""The evaluation report of an output table: per group, counts, tokens, cost, latency and
accuracy, as text lines or a JSON-ready dict (the HTML page is `batcher.analysis.html`).

- `build_report(table, source=..., by=..., reference=..., answer=...)` -> `Report`
- `render_report(report)` -> aligned text lines.

The figures are `batcher.analysis.totals`'s; costs are the table's `cost_usd` as it is
(price it with `batcher.analysis.cost.with_costs` first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batcher.analysis.cost import PARTS, cost_split
from batcher.analysis.text import (
    DETAIL_HEADERS,
    SPLIT_HEADERS,
    aligned,
    cache_line,
    detail_columns,
    jsonable,
    key_text,
    money,
    seconds,
)
from batcher.analysis.totals import Totals, group_label, group_totals, model_order
from batcher.errors import UsageError
from batcher.prices import PriceTable
from batcher.types import DETAILS

__all__ = ["LATENCY_SAMPLE", "Report", "build_report", "group_label", "render_report"]

LATENCY_SAMPLE = 2000  # latencies kept per group for the chart
EXPECTED_PREFIX = "expected_"  # reference "expected_x" is compared with column "x" by default


def report_dict(g: Totals) -> dict[str, Any]:
    """One group as `batcher report --json` shows it (errors by type, most frequent first)."""
    return {
        "key": {k: jsonable(v) for k, v in g.key.items()},
        "label": g.label,
        "requests": g.requests,
        "ok": g.ok,
        "errors": g.errors,
        "errors_by_type": dict(g.errors_by_type),
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        **{name: g.details.get(name) for name in DETAILS},
        "cost_usd": g.cost_usd,
        **{f"cost_{part}_usd": g.split.get(part) for part in PARTS},
        "cache_hit_rate": g.cache_hit_rate,
        "saved_by_cache_usd": g.split.get("saved"),
        "latency_p50": g.latency_p50,
        "latency_p95": g.latency_p95,
        "accuracy": g.accuracy,
        "accuracy_n": g.scored,
    }


@dataclass(frozen=True)
class Report:
    """The report of one output table: its groups (in `build_report`'s order) and the total."""

    source: str
    by: tuple[str, ...]
    reference: str | None  # the column holding the expected answer
    answer: str | None  # the column compared with it
    groups: list[Totals]
    total: Totals
    latencies: dict[str, list[float]]  # sorted sample per group label (per "total" without `by`)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything but the latency samples."""
        return {
            "source": self.source,
            "by": list(self.by),
            "reference": self.reference,
            "answer": self.answer,
            "groups": [report_dict(g) for g in self.groups],
            "total": report_dict(self.total),
        }

    @property
    def chart_groups(self) -> list[Totals]:
        """The groups the charts show: the groups, or the total alone without `by`."""
        return self.groups or [self.total]


# --- Building ---------------------------------------------------------------------------------


def _columns_text(table: pa.Table) -> str:
    return ", ".join(table.column_names)


def default_by(table: pa.Table) -> tuple[str, ...]:
    """`model` (when the table has it) plus every `param_*` column, in table order."""
    names = table.column_names
    params = [n for n in names if n.startswith("param_")]
    return (*(["model"] if "model" in names else []), *params)


def _resolve_answer(table: pa.Table, reference: str | None, answer: str | None) -> str | None:
    names = table.column_names
    if reference is None:
        if answer is not None:
            raise UsageError(f"answer column {answer!r} given without a reference column")
        return None
    if reference not in names:
        raise UsageError(
            f"--reference-column: no column {reference!r} (columns: {_columns_text(table)})"
        )
    if answer is None:
        bare = reference.removeprefix(EXPECTED_PREFIX)
        answer = bare if bare != reference and bare in names else "content"
    if answer not in names:
        raise UsageError(
            f"no answer column {answer!r} to compare with {reference!r} "
            f"(columns: {_columns_text(table)})"
        )
    return answer


def build_report(
    table: pa.Table,
    *,
    source: str,
    by: Sequence[str] | None = None,
    reference: str | None = None,
    answer: str | None = None,
    prices: PriceTable | None = None,
) -> Report:
    """The report of an output table, grouped by the `by` columns.

    `by` None (the default) groups by `model` plus every `param_*` column (parameter sweeps);
    `()` gives the total alone. With `reference` (the expected answer's column), accuracy is
    the share of rows with a non-empty reference whose `answer` column equals it, compared as
    strings stripped of surrounding whitespace and lower-cased; a row not ok counts as wrong.
    `answer` defaults to the reference's name without "expected_" when the table has such a
    column (a typed structured-output column), else `content`. Latency percentiles are over
    ok rows, not cached, with a latency, linearly interpolated (numpy's default).

    Groups are in the run's model order: models in the order -m gave them (the job metadata
    in OUT's footer), then any other model in order of first appearance (the only order a
    plain Parquet file has; OUT's rows are in input order, then model order). Every other
    key column sorts by value, nulls last (stable, and the same for OUT and its job folder,
    whose rows are in completion order), with the columns' priority as in `by`."""
    by = default_by(table) if by is None else tuple(dict.fromkeys(by))
    for name in by:
        if name not in table.column_names:
            raise UsageError(f"--by: no column {name!r} (columns: {_columns_text(table)})")
    answer = _resolve_answer(table, reference, answer)
    order = {"model": model_order(table)} if "model" in by else None
    split = cost_split(table, prices) if prices is not None else None
    scoring = {"reference": reference, "answer": answer, "split": split}
    groups = group_totals(table, by, order=order, **scoring) if by else []
    (total,) = group_totals(table, (), **scoring)
    samples = {g.label: g.latencies.sample(LATENCY_SAMPLE) for g in groups or [total]}
    return Report(source, by, reference, answer if reference else None, groups, total, samples)


# --- Text -------------------------------------------------------------------------------------


def accuracy_text(g: Totals, number: Callable[[int], str] = str) -> str:
    return "-" if g.accuracy is None else f"{g.accuracy * 100:.1f}% of {number(g.scored)}"


def report_table(
    report: Report, number: Callable[[int], str] = str
) -> tuple[list[str], list[list[str]]]:
    """The header and the rows (the groups, then the total) shared by text and HTML."""
    labels = list(report.by) or [""]
    details, parts = detail_columns(report.total)
    header = [*labels, "ok", "errors", "tokens in", "tokens out"]
    header += [DETAIL_HEADERS[n] for n in details]
    header += [*(SPLIT_HEADERS[p] for p in parts), "cost", "p50", "p95"]
    scoring = report.reference is not None
    if scoring:
        header.append("accuracy")

    def cells(keys: list[str], g: Totals) -> list[str]:
        out = [*keys, number(g.ok), number(g.errors)]
        out += [number(g.prompt_tokens), number(g.completion_tokens)]
        out += [number(g.details[n]) if n in g.details else "-" for n in details]
        out += [*(money(g.split.get(p)) for p in parts), money(g.cost_usd)]
        out += [seconds(g.latency_p50), seconds(g.latency_p95)]
        if scoring:
            out.append(accuracy_text(g, number))
        return out

    rows = [cells([key_text(g.key.get(k)) for k in report.by], g) for g in report.groups]
    rows.append(cells(["total"] + [""] * (len(labels) - 1), report.total))
    return header, rows


def render_report(report: Report) -> list[str]:
    """An aligned text table (one line per group, then the total), then a line of the errors
    by type when there are errors and a line naming the columns compared for accuracy."""
    header, rows = report_table(report)
    lines = aligned([header, *rows], left=max(len(report.by), 1))
    if (cache := cache_line(report.total)) is not None:
        lines.append(cache)
    if report.total.errors_by_type:
        kinds = ", ".join(f"{t} {n}" for t, n in report.total.errors_by_type.items())
        lines.append(f"errors by type: {kinds}")
    if report.reference is not None:
        lines.append(
            f"accuracy: {report.answer} vs {report.reference} "
            "(stripped, case-insensitive; rows without a reference skipped, errors count wrong)"
        )
    return lines
