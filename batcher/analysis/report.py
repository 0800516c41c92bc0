"""The evaluation report of an output table: per group, counts, tokens, cost, latency and
accuracy, as text lines, a JSON-ready dict or a self-contained HTML page with inline SVG charts.

- `build_report(table, source=..., by=..., reference=..., answer=...)` -> `Report`
- `render_report(report)` -> aligned text lines; `render_html(report)` -> one HTML page
  (inline CSS and SVG, no script, no network).

Costs are the table's `cost_usd` as it is (price it with `batcher.analysis.cost.with_costs` first).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batcher.errors import UsageError

__all__ = [
    "LATENCY_SAMPLE",
    "GroupReport",
    "Report",
    "build_report",
    "group_label",
    "render_html",
    "render_report",
]

LATENCY_SAMPLE = 2000  # latencies kept per group for the chart
EXPECTED_PREFIX = "expected_"  # reference "expected_x" is compared with column "x" by default
UNKNOWN_ERROR = "unknown"  # error_type of an error row that has none
_TMP = "__report_"  # prefix of the working columns


# --- Data -------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _key_text(value: Any) -> str:
    return "(none)" if value is None else str(value)


def group_label(key: dict[str, Any]) -> str:
    """A group's display label: "total" for {}, the bare value for one key column, else
    "m1, temperature=0.7" (model bare, other columns as name=value without "param_")."""
    if not key:
        return "total"
    if len(key) == 1:
        return _key_text(next(iter(key.values())))
    parts = []
    for name, value in key.items():
        if name == "model":
            parts.append(_key_text(value))
        else:
            parts.append(f"{name.removeprefix('param_')}={_key_text(value)}")
    return ", ".join(parts)


@dataclass(frozen=True)
class GroupReport:
    """Counts, tokens, cost, latency and accuracy of one group (the total has the key {})."""

    key: dict[str, Any]  # e.g. {"model": "m1", "param_temperature": 0.7}
    requests: int
    ok: int
    errors: int  # every row not ok
    errors_by_type: dict[str, int]  # most frequent first; a missing error_type is "unknown"
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # the sum of the known costs; None when no row's cost is known
    latency_p50: float | None  # over ok, not cached rows with a latency (linear interpolation)
    latency_p95: float | None
    accuracy: float | None  # correct / accuracy_n; None without a reference or with n == 0
    accuracy_n: int  # rows with a non-empty reference (error rows count, as wrong)

    @property
    def label(self) -> str:
        return group_label(self.key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": {k: _jsonable(v) for k, v in self.key.items()},
            "label": self.label,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "errors_by_type": dict(self.errors_by_type),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "latency_p50": self.latency_p50,
            "latency_p95": self.latency_p95,
            "accuracy": self.accuracy,
            "accuracy_n": self.accuracy_n,
        }


@dataclass(frozen=True)
class Report:
    """The report of one output table: its groups (sorted by key, nulls last) and the total."""

    source: str
    by: tuple[str, ...]
    reference: str | None  # the column holding the expected answer
    answer: str | None  # the column compared with it
    groups: list[GroupReport]
    total: GroupReport
    latencies: dict[str, list[float]]  # sorted sample per group label (per "total" without `by`)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything but the latency samples."""
        return {
            "source": self.source,
            "by": list(self.by),
            "reference": self.reference,
            "answer": self.answer,
            "groups": [g.to_dict() for g in self.groups],
            "total": self.total.to_dict(),
        }

    @property
    def chart_groups(self) -> list[GroupReport]:
        """The groups the charts show: the groups, or the total alone without `by`."""
        return self.groups or [self.total]


# --- Building ---------------------------------------------------------------------------------


def _columns_text(table: pa.Table) -> str:
    return ", ".join(table.column_names)


def _decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as strings (dictionary-decoded; other types cast, else Python's str)."""
    column = _decoded(column)
    if column.type == pa.string():
        return column
    try:
        return column.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        values = [None if v is None else str(v) for v in column.to_pylist()]
        return pa.chunked_array([pa.array(values, pa.string())])


def _normalised(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Strings stripped of surrounding whitespace and lower-cased, for comparing answers."""
    return pc.utf8_lower(pc.utf8_trim_whitespace(_text(column)))


def _optional(table: pa.Table, name: str, kind: pa.DataType) -> pa.ChunkedArray:
    if name in table.column_names:
        return _decoded(table[name]).cast(kind)
    return pa.chunked_array([pa.nulls(table.num_rows, kind)])


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
) -> Report:
    """The report of an output table, grouped by the `by` columns.

    `by` None (the default) groups by `model` plus every `param_*` column (parameter sweeps);
    `()` gives the total alone. With `reference` (the expected answer's column), accuracy is
    the share of rows with a non-empty reference whose `answer` column equals it, compared as
    strings stripped of surrounding whitespace and lower-cased; a row not ok counts as wrong.
    `answer` defaults to the reference's name without "expected_" when the table has such a
    column (a typed structured-output column), else `content`. Latency percentiles are over
    ok rows, not cached, with a latency, linearly interpolated (numpy's default)."""
    names = table.column_names
    by = default_by(table) if by is None else tuple(dict.fromkeys(by))
    for name in by:
        if name not in names:
            raise UsageError(f"--by: no column {name!r} (columns: {_columns_text(table)})")
    if "status" not in names:
        raise UsageError("not a batcher output table: no column status")
    answer = _resolve_answer(table, reference, answer)

    ok = pc.equal(_text(table["status"]), "ok").fill_null(False)
    work: dict[str, Any] = {
        "ok": ok.cast(pa.int64()),
        "prompt": _optional(table, "prompt_tokens", pa.int64()).fill_null(0),
        "completion": _optional(table, "completion_tokens", pa.int64()).fill_null(0),
        "cost": _optional(table, "cost_usd", pa.float64()),
    }
    fresh = pc.invert(_optional(table, "cached", pa.bool_()).fill_null(False))
    latency = _optional(table, "latency_s", pa.float64())
    work["latency"] = pc.if_else(pc.and_(ok, fresh), latency, None)
    if reference is not None and answer is not None:
        expected = _normalised(table[reference])
        scored = pc.not_equal(expected, "").fill_null(False)
        same = pc.equal(_normalised(table[answer]), expected).fill_null(False)
        work["scored"] = scored.cast(pa.int64())
        work["correct"] = pc.and_(pc.and_(scored, ok), same).cast(pa.int64())
    kind = _text(_optional(table, "error_type", pa.string())).fill_null(UNKNOWN_ERROR)
    error_type = pc.if_else(ok, pa.scalar(None, pa.string()), kind)
    types = sorted(t for t in pc.unique(error_type).to_pylist() if t is not None)
    for i, t in enumerate(types):
        work[f"e{i}"] = pc.equal(error_type, t).fill_null(False).cast(pa.int64())

    keys = {name: _decoded(table[name]) for name in by}
    data = pa.table({**keys, **{_TMP + k: v for k, v in work.items()}})
    groups: list[GroupReport] = []
    samples: dict[str, list[float]] = {}
    if by:
        for key, row in _aggregate(data, list(by), table):
            group = _group(key, row, types, reference is not None)
            groups.append(group)
            samples[group.label] = _sample(row[_TMP + "latency_list"])
    total_data = data.append_column(_TMP + "all", pa.array(np.zeros(len(data), np.int8)))
    totals = _aggregate(total_data, [_TMP + "all"], table)
    total_row = totals[0][1] if totals else None
    total = _group({}, total_row, types, reference is not None)
    if not by:
        samples["total"] = _sample(total_row[_TMP + "latency_list"] if total_row else [])
    return Report(
        source=source,
        by=by,
        reference=reference,
        answer=answer,
        groups=groups,
        total=total,
        latencies=samples,
    )


def _aggregate(
    data: pa.Table, keys: list[str], table: pa.Table
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(key, aggregated row) per group, sorted by key (nulls last)."""
    sums = [c for c in data.column_names if c.startswith(_TMP) and c != _TMP + "latency"]
    sums = [c for c in sums if c not in keys]
    aggregations = [(c, "sum") for c in sums]
    aggregations += [(_TMP + "ok", "count"), (_TMP + "cost", "count")]
    aggregations.append((_TMP + "latency", "list"))
    try:
        agg = data.group_by(keys, use_threads=False).aggregate(aggregations)
        # nulls sort last by default
        order = pc.sort_indices(agg, sort_keys=[(k, "ascending") for k in keys])
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        kinds = ", ".join(f"{k} ({table.schema.field(k).type})" for k in keys)
        raise UsageError(f"--by: cannot group by {kinds}") from exc
    agg = agg.take(order)
    out = []
    for i, row in enumerate(agg.drop_columns([_TMP + "latency_list"]).to_pylist()):
        row[_TMP + "latency_list"] = agg[_TMP + "latency_list"][i].values
        out.append(({k: row[k] for k in keys if not k.startswith(_TMP)}, row))
    return out


def _group(
    key: dict[str, Any], row: dict[str, Any] | None, types: list[str], scoring: bool
) -> GroupReport:
    row = row or {}

    def total(name: str) -> int:
        return row.get(f"{_TMP}{name}_sum") or 0

    requests = row.get(_TMP + "ok_count", 0)
    latencies = _latencies(row.get(_TMP + "latency_list"))
    p50 = p95 = None
    if latencies.size:
        p50, p95 = (float(v) for v in np.percentile(latencies, [50, 95]))
    by_type = {t: total(f"e{i}") for i, t in enumerate(types)}
    by_type = {t: n for t, n in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])) if n}
    n = total("scored") if scoring else 0
    return GroupReport(
        key=key,
        requests=requests,
        ok=total("ok"),
        errors=requests - total("ok"),
        errors_by_type=by_type,
        prompt_tokens=total("prompt"),
        completion_tokens=total("completion"),
        cost_usd=row.get(_TMP + "cost_sum") if row.get(_TMP + "cost_count") else None,
        latency_p50=p50,
        latency_p95=p95,
        accuracy=total("correct") / n if n else None,
        accuracy_n=n,
    )


def _latencies(values: Any) -> np.ndarray:
    if values is None:
        return np.empty(0)
    if isinstance(values, pa.Array):
        values = pc.drop_null(values).to_numpy(zero_copy_only=False)
    array = np.asarray(values, dtype=float)
    return np.sort(array[~np.isnan(array)])


def _sample(values: Any, cap: int = LATENCY_SAMPLE) -> list[float]:
    """Sorted latencies; above `cap` values, `cap` evenly spaced order statistics."""
    array = _latencies(values)
    if array.size > cap:
        array = array[np.linspace(0, array.size - 1, cap).round().astype(int)]
    return array.tolist()


# --- Text -------------------------------------------------------------------------------------


def _money(cost: float | None) -> str:
    return "-" if cost is None else f"${cost:.4f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _accuracy(g: GroupReport, number: Callable[[int], str] = str) -> str:
    return "-" if g.accuracy is None else f"{g.accuracy * 100:.1f}% of {number(g.accuracy_n)}"


def _table(report: Report, number: Callable[[int], str] = str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows (the groups, then the total) shared by text and HTML."""
    labels = list(report.by) or [""]
    header = [*labels, "ok", "errors", "tokens in", "tokens out", "cost", "p50 s", "p95 s"]
    scoring = report.reference is not None
    if scoring:
        header.append("accuracy")

    def cells(keys: list[str], g: GroupReport) -> list[str]:
        out = [*keys, number(g.ok), number(g.errors)]
        out += [number(g.prompt_tokens), number(g.completion_tokens), _money(g.cost_usd)]
        out += [_seconds(g.latency_p50), _seconds(g.latency_p95)]
        if scoring:
            out.append(_accuracy(g, number))
        return out

    rows = [cells([_key_text(g.key.get(k)) for k in report.by], g) for g in report.groups]
    rows.append(cells(["total"] + [""] * (len(labels) - 1), report.total))
    return header, rows


def render_report(report: Report) -> list[str]:
    """An aligned text table (one line per group, then the total), then a line of the errors
    by type when there are errors and a line naming the columns compared for accuracy."""
    header, rows = _table(report)
    n_keys = max(len(report.by), 1)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        parts = [
            c.ljust(w) if i < n_keys else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        ]
        lines.append("  ".join(parts).rstrip())
    if report.total.errors_by_type:
        kinds = ", ".join(f"{t} {n}" for t, n in report.total.errors_by_type.items())
        lines.append(f"errors by type: {kinds}")
    if report.reference is not None:
        lines.append(
            f"accuracy: {report.answer} vs {report.reference} "
            "(stripped, case-insensitive; rows without a reference skipped, errors count wrong)"
        )
    return lines


# --- HTML -------------------------------------------------------------------------------------

_E = html.escape
WIDTH = 1040  # chart width in px (the page's content column is 1088 px)
ROW = 27  # px per group in a chart
BAR = 18  # bar thickness
CHAR = 7.3  # estimated px per character of 13px text
MAX_LABEL = 48  # characters of a group label shown before it is cut (the full one in <title>)
PALETTE = (  # Okabe-Ito, readable for colour-blind readers
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#999999",
    "#000000",
)

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2328;
 font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:16px auto;padding:20px 16px;background:#fff;border-radius:8px;
 box-shadow:0 1px 3px rgba(0,0,0,.08)}
h1{font-size:22px;margin:0 0 4px;word-break:break-all}
h2{font-size:17px;margin:24px 0 6px;padding-top:14px;border-top:1px solid #e5e7eb}
.meta{color:#57606a;margin:0 0 16px}
.tiles{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.tile{flex:1 1 150px;border:1px solid #e5e7eb;border-radius:6px;padding:10px 14px}
.tile b{display:block;font-size:20px}
.tile span{color:#57606a;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid #e5e7eb;white-space:nowrap}
th{background:#f6f8fa;text-align:left;font-weight:600}
td.n,th.n{text-align:right}
tbody tr:nth-child(even){background:#fafbfc}
tfoot td{font-weight:600;border-top:2px solid #d0d7de}
figure{margin:0}
figcaption{color:#57606a;font-size:13px;margin:4px 0 0}
svg{display:block;max-width:100%;height:auto}
svg text{font-family:inherit;font-size:13px;fill:#1f2328}
svg .tick{font-size:12px;fill:#57606a}
svg .axis{font-size:13px;fill:#57606a}
svg .grid{stroke:#e5e7eb}
svg .value{font-size:12px}
svg .muted{fill:#57606a;font-style:italic}
.none{color:#57606a;font-style:italic}
"""


def _nice(top: float, ticks: int = 6) -> tuple[float, float]:
    """(axis maximum, tick step) for values up to `top`: steps of 1, 2, 2.5 or 5 x 10^k."""
    if not top > 0 or not math.isfinite(top):
        return 1.0, 0.2
    raw = top / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    return math.ceil(top / step - 1e-9) * step, step


def _decimals(step: float) -> int:
    for d in range(10):
        if abs(round(step, d) - step) <= step * 1e-6:
            return d
    return 10


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


class _Chart:
    """A horizontal chart: one row per group label, a linear x axis from 0 to `top`."""

    def __init__(
        self,
        *,
        ident: str,
        title: str,
        desc: str,
        labels: list[str],
        by: Sequence[str],
        top: float,
        x_label: str,
        tick: Callable[[float], str],
        legend: Sequence[tuple[str, str]] = (),
        right: int = 170,
    ) -> None:
        self.ident, self.title, self.desc = ident, title, desc
        self.labels = labels
        self.label_w = min(
            max(len(s) for s in [*map(self._cut, labels), " · ".join(by) or "group"]) * CHAR,
            MAX_LABEL * CHAR,
        )
        self.left = int(self.label_w) + 24
        self.right = right
        self.plot_w = WIDTH - self.left - self.right
        self.max, self.step = _nice(top)
        self.x_label = x_label
        self.tick = tick
        self.by = by
        self.legend_rows = self._legend_layout(legend)
        self.top = 36 + 24 * len(self.legend_rows)
        self.height = self.top + ROW * len(labels) + 52
        self.parts: list[str] = []

    @staticmethod
    def _cut(label: str) -> str:
        return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"

    def _legend_layout(self, legend: Sequence[tuple[str, str]]) -> list[list[tuple[str, str, int]]]:
        rows: list[list[tuple[str, str, int]]] = []
        x = WIDTH
        for name, colour in legend:
            w = int(len(name) * CHAR) + 34
            if x + w > WIDTH:
                rows.append([])
                x = 0
            rows[-1].append((name, colour, x))
            x += w
        return rows

    def x(self, value: float) -> float:
        return self.left + max(0.0, min(value, self.max)) / self.max * self.plot_w

    def y(self, i: int) -> float:
        """The centre line of row i."""
        return self.top + ROW * i + ROW / 2

    def add(self, svg: str) -> None:
        self.parts.append(svg)

    def text_end(self, i: int, value: float, text: str, *, cls: str = "value") -> None:
        """`text` just right of `value` on row i."""
        self.add(
            f'<text class="{cls}" x="{self.x(value) + 6:.1f}" y="{self.y(i):.1f}" '
            f'dominant-baseline="central">{_E(text)}</text>'
        )

    def render(self) -> str:
        plot_top, plot_bottom = self.top - 6, self.top + ROW * len(self.labels) + 2
        head = [
            f'<svg role="img" aria-labelledby="{self.ident}-t {self.ident}-d" '
            f'width="{WIDTH}" height="{self.height}" viewBox="0 0 {WIDTH} {self.height}">',
            f'<title id="{self.ident}-t">{_E(self.title)}</title>',
            f'<desc id="{self.ident}-d">{_E(self.desc)}</desc>',
        ]
        for r, row in enumerate(self.legend_rows):
            for name, colour, x in row:
                ly = 8 + 22 * r
                head.append(
                    f'<rect x="{x}" y="{ly}" width="14" height="14" rx="2" fill="{colour}"/>'
                    f'<text x="{x + 20}" y="{ly + 7}" dominant-baseline="central">'
                    f"{_E(name)}</text>"
                )
        head.append(
            f'<text class="axis" x="{self.left - 12}" y="{self.top - 14}" text-anchor="end">'
            f"{_E(' · '.join(self.by) or 'group')}</text>"
        )
        n_ticks = round(self.max / self.step)
        for t in range(n_ticks + 1):
            value = t * self.step
            x = self.x(value)
            head.append(
                f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{plot_top}" '
                f'y2="{plot_bottom}"/>'
                f'<text class="tick" x="{x:.1f}" y="{plot_bottom + 16}" text-anchor="middle">'
                f"{_E(self.tick(value))}</text>"
            )
        head.append(
            f'<line x1="{self.left}" x2="{self.left}" y1="{plot_top}" y2="{plot_bottom}" '
            'stroke="#8c959f"/>'
        )
        for i, label in enumerate(self.labels):
            cut = self._cut(label)
            tip = f"<title>{_E(label)}</title>" if cut != label else ""
            head.append(
                f'<text x="{self.left - 12}" y="{self.y(i):.1f}" text-anchor="end" '
                f'dominant-baseline="central">{tip}{_E(cut)}</text>'
            )
        foot = (
            f'<text class="axis" x="{self.left + self.plot_w / 2:.1f}" y="{plot_bottom + 38}" '
            f'text-anchor="middle">{_E(self.x_label)}</text></svg>'
        )
        return "\n".join([*head, *self.parts, foot])


def _bar(chart: _Chart, i: int, value: float, colour: str, tip: str) -> None:
    y = chart.y(i) - BAR / 2
    width = max(chart.x(value) - chart.left, 0.0)
    chart.add(
        f'<rect x="{chart.left}" y="{y:.1f}" width="{width:.1f}" height="{BAR}" rx="2" '
        f'fill="{colour}"><title>{_E(tip)}</title></rect>'
    )


def _cost_chart(report: Report) -> str:
    groups = report.chart_groups
    top = max((g.cost_usd or 0.0) for g in groups)
    decimals = _decimals(_nice(top)[1])
    chart = _Chart(
        ident="cost",
        title="Cost per group",
        desc="Horizontal bars: the summed cost in US dollars of each group's requests.",
        labels=[g.label for g in groups],
        by=report.by,
        top=top,
        x_label="cost (USD)",
        tick=lambda v: f"${v:.{decimals}f}",
    )
    for i, g in enumerate(groups):
        if g.cost_usd is None:
            chart.text_end(i, 0, "no cost known", cls="value muted")
            continue
        _bar(chart, i, g.cost_usd, PALETTE[0], f"{g.label}: {_money(g.cost_usd)}")
        chart.text_end(i, g.cost_usd, _money(g.cost_usd))
    return chart.render()


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion p over n trials."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _accuracy_chart(report: Report) -> str:
    groups = report.chart_groups
    chart = _Chart(
        ident="accuracy",
        title="Accuracy per group",
        desc=(
            f"Horizontal bars: the share of rows whose {report.answer} equals "
            f"{report.reference}, in percent, with 95% confidence intervals."
        ),
        labels=[g.label for g in groups],
        by=report.by,
        top=100,
        x_label="accuracy (%) · whiskers: 95% Wilson interval",
        tick=lambda v: f"{v:.0f}%",
    )
    for i, g in enumerate(groups):
        if g.accuracy is None:
            chart.text_end(i, 0, "no reference")
            continue
        text = f"{g.accuracy * 100:.1f}% (n={g.accuracy_n})"
        _bar(chart, i, g.accuracy * 100, PALETTE[2], f"{g.label}: {text}")
        low, high = _wilson(g.accuracy, g.accuracy_n)
        x1, x2, y = chart.x(low * 100), chart.x(high * 100), chart.y(i)
        chart.add(
            f'<path d="M{x1:.1f} {y:.1f}H{x2:.1f}M{x1:.1f} {y - 5:.1f}V{y + 5:.1f}'
            f'M{x2:.1f} {y - 5:.1f}V{y + 5:.1f}" stroke="#1f2328" stroke-width="1.5" '
            'fill="none"/>'
        )
        chart.text_end(i, max(high * 100, g.accuracy * 100), text)
    return chart.render()


def _latency_chart(report: Report) -> str:
    groups = report.chart_groups
    stats: list[tuple[float, ...] | None] = []
    for g in groups:
        values = report.latencies.get(g.label, [])
        stats.append(tuple(np.percentile(values, [5, 25, 50, 75, 95])) if values else None)
    top = max((s[4] for s in stats if s), default=0.0)
    decimals = _decimals(_nice(top)[1])
    chart = _Chart(
        ident="latency",
        title="Latency distribution per group",
        desc=(
            "Box plots of the latency in seconds of each group's ok requests: box from the "
            "25th to the 75th percentile, line at the median, whiskers to the 5th and 95th."
        ),
        labels=[g.label for g in groups],
        by=report.by,
        top=top,
        x_label="latency (s) · box: 25th–75th percentile, line: median, whiskers: 5th–95th",
        tick=lambda v: f"{v:.{decimals}f}",
        right=190,
    )
    for i, (g, s) in enumerate(zip(groups, stats)):
        if s is None:
            chart.text_end(i, 0, "no latencies")
            continue
        p5, p25, p50, p75, p95 = (chart.x(v) for v in s)
        y = chart.y(i)
        chart.add(
            f"<g><title>{_E(g.label)}: p50 {_seconds(g.latency_p50)} s, "
            f"p95 {_seconds(g.latency_p95)} s</title>"
            f'<path d="M{p5:.1f} {y:.1f}H{p25:.1f}M{p75:.1f} {y:.1f}H{p95:.1f}'
            f'M{p5:.1f} {y - 5:.1f}V{y + 5:.1f}M{p95:.1f} {y - 5:.1f}V{y + 5:.1f}" '
            'stroke="#1f2328" stroke-width="1.5" fill="none"/>'
            f'<rect x="{p25:.1f}" y="{y - BAR / 2:.1f}" width="{max(p75 - p25, 1):.1f}" '
            f'height="{BAR}" fill="{PALETTE[5]}" stroke="{PALETTE[0]}" stroke-width="1.5"/>'
            f'<path d="M{p50:.1f} {y - BAR / 2:.1f}V{y + BAR / 2:.1f}" stroke="#1f2328" '
            'stroke-width="2.5"/></g>'
        )
        text = f"p50 {_seconds(g.latency_p50)} s · p95 {_seconds(g.latency_p95)} s"
        chart.text_end(i, s[4], text)
    return chart.render()


def _errors_chart(report: Report) -> str:
    groups = report.chart_groups
    kinds = list(report.total.errors_by_type)
    colours = {k: PALETTE[(i + 1) % len(PALETTE)] for i, k in enumerate(kinds)}
    chart = _Chart(
        ident="errors",
        title="Errors by type per group",
        desc="Stacked horizontal bars: the number of error rows of each group, by error type.",
        labels=[g.label for g in groups],
        by=report.by,
        top=max(g.errors for g in groups),
        x_label="error rows (count)",
        tick=_num,
        legend=[(k, colours[k]) for k in kinds],
    )
    for i, g in enumerate(groups):
        start = 0
        y = chart.y(i) - BAR / 2
        for kind in kinds:
            n = g.errors_by_type.get(kind, 0)
            if not n:
                continue
            x1, x2 = chart.x(start), chart.x(start + n)
            chart.add(
                f'<rect x="{x1:.1f}" y="{y:.1f}" width="{x2 - x1:.1f}" height="{BAR}" '
                f'fill="{colours[kind]}" stroke="#fff" stroke-width="0.5">'
                f"<title>{_E(g.label)}: {_E(kind)} {n}</title></rect>"
            )
            start += n
        share = f" ({g.errors / g.requests * 100:.1f}%)" if g.requests else ""
        chart.text_end(i, g.errors, f"{g.errors}{share}")
    return chart.render()


def _tiles(report: Report) -> str:
    t = report.total
    share = f"{t.errors / t.requests * 100:.1f}% of requests" if t.requests else ""
    tiles = [
        ("requests", f"{t.requests:,}", ""),
        ("errors", f"{t.errors:,}", share),
        ("cost", _money(t.cost_usd), ""),
        ("latency p50 / p95", f"{_seconds(t.latency_p50)} / {_seconds(t.latency_p95)} s", ""),
    ]
    if report.reference is not None:
        acc = "-" if t.accuracy is None else f"{t.accuracy * 100:.1f}%"
        tiles.append(("accuracy", acc, f"of {t.accuracy_n:,} rows"))
    return (
        '<div class="tiles">'
        + "".join(
            f'<div class="tile"><span>{_E(name)}</span><b>{_E(value)}</b>'
            + (f'<small class="none">{_E(note)}</small>' if note else "")
            + "</div>"
            for name, value, note in tiles
        )
        + "</div>"
    )


def _html_table(report: Report) -> str:
    header, rows = _table(report, number=lambda n: f"{n:,}")
    n_keys = max(len(report.by), 1)

    def cls(i: int) -> str:
        return "" if i < n_keys else ' class="n"'

    head = "".join(f'<th scope="col"{cls(i)}>{_E(c)}</th>' for i, c in enumerate(header))
    body = [
        "<tr>" + "".join(f"<td{cls(i)}>{_E(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    ]
    foot, body = body[-1], body[:-1]
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody><tfoot>{foot}</tfoot></table></div>"
    )


def _section(title: str, content: str, caption: str = "") -> str:
    cap = f"<figcaption>{_E(caption)}</figcaption>" if caption else ""
    return f"<section><h2>{_E(title)}</h2><figure>{content}{cap}</figure></section>"


def render_html(report: Report, *, generated: datetime | None = None) -> str:
    """One self-contained HTML page (inline CSS and SVG, no script, nothing fetched): the
    summary table and charts of cost, accuracy (with a reference), latency and errors.
    `generated` (default now, UTC) is the date shown."""
    when = (generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M %Z").strip()
    t = report.total
    meta = [f"Generated {when}", f"{t.requests:,} requests"]
    if report.by:
        meta.append(f"grouped by {', '.join(report.by)}")
    if report.reference is not None:
        meta.append(f"accuracy: {report.answer} vs {report.reference} (stripped, case-insensitive)")
    sections = [_section("Summary", _html_table(report))]
    if any(g.cost_usd is not None for g in report.chart_groups):
        sections.append(_section("Cost", _cost_chart(report)))
    else:
        note = '<p class="none">No cost known (price the rows with --prices).</p>'
        sections.append(_section("Cost", note))
    if report.reference is not None:
        caption = (
            f"Rows whose {report.answer} equals {report.reference}, over rows with a "
            "reference; an error row counts as wrong."
        )
        sections.append(_section("Accuracy", _accuracy_chart(report), caption))
    if any(report.latencies.get(g.label) for g in report.chart_groups):
        caption = "Ok requests sent to the API (rows reused from the cache have no latency)."
        sections.append(_section("Latency", _latency_chart(report), caption))
    else:
        sections.append(_section("Latency", '<p class="none">No latencies.</p>'))
    if t.errors:
        sections.append(_section("Errors", _errors_chart(report)))
    else:
        sections.append(_section("Errors", '<p class="none">No errors.</p>'))
    title = f"batcher report: {report.source}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_E(title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            "<main>",
            f"<h1>{_E(title)}</h1>",
            f'<p class="meta">{_E(" · ".join(meta))}</p>',
            _tiles(report),
            *sections,
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )
