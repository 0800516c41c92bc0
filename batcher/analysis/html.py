"""The report as one self-contained HTML page: tiles, a table and inline SVG charts (cost,
accuracy with Wilson intervals, latency, errors); inline CSS, no script, no network."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import numpy as np

from batcher.analysis.report import Report, report_table
from batcher.analysis.text import in_ms, money, seconds

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
        _bar(chart, i, g.cost_usd, PALETTE[0], f"{g.label}: {money(g.cost_usd)}")
        chart.text_end(i, g.cost_usd, money(g.cost_usd))
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
        text = f"{g.accuracy * 100:.1f}% (n={g.scored})"
        _bar(chart, i, g.accuracy * 100, PALETTE[2], f"{g.label}: {text}")
        low, high = _wilson(g.accuracy, g.scored)
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
    # the axis in milliseconds when every p95 is shown in them (`seconds`: under 10 ms)
    scale, unit, units = (1000.0, "ms", "milliseconds") if in_ms(top) else (1.0, "s", "seconds")
    decimals = _decimals(_nice(top * scale)[1])
    chart = _Chart(
        ident="latency",
        title="Latency distribution per group",
        desc=(
            f"Box plots of the latency in {units} of each group's ok requests: box from the "
            "25th to the 75th percentile, line at the median, whiskers to the 5th and 95th."
        ),
        labels=[g.label for g in groups],
        by=report.by,
        top=top * scale,
        x_label=f"latency ({unit}) · box: 25th–75th percentile, line: median, whiskers: 5th–95th",
        tick=lambda v: f"{v:.{decimals}f}",
        right=190,
    )
    for i, (g, s) in enumerate(zip(groups, stats)):
        if s is None:
            chart.text_end(i, 0, "no latencies")
            continue
        p5, p25, p50, p75, p95 = (chart.x(v * scale) for v in s)
        y = chart.y(i)
        chart.add(
            f"<g><title>{_E(g.label)}: p50 {seconds(g.latency_p50)}, "
            f"p95 {seconds(g.latency_p95)}</title>"
            f'<path d="M{p5:.1f} {y:.1f}H{p25:.1f}M{p75:.1f} {y:.1f}H{p95:.1f}'
            f'M{p5:.1f} {y - 5:.1f}V{y + 5:.1f}M{p95:.1f} {y - 5:.1f}V{y + 5:.1f}" '
            'stroke="#1f2328" stroke-width="1.5" fill="none"/>'
            f'<rect x="{p25:.1f}" y="{y - BAR / 2:.1f}" width="{max(p75 - p25, 1):.1f}" '
            f'height="{BAR}" fill="{PALETTE[5]}" stroke="{PALETTE[0]}" stroke-width="1.5"/>'
            f'<path d="M{p50:.1f} {y - BAR / 2:.1f}V{y + BAR / 2:.1f}" stroke="#1f2328" '
            'stroke-width="2.5"/></g>'
        )
        text = f"p50 {seconds(g.latency_p50)} · p95 {seconds(g.latency_p95)}"
        chart.text_end(i, s[4] * scale, text)
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
        ("cost", money(t.cost_usd), ""),
        ("latency p50 / p95", f"{seconds(t.latency_p50)} / {seconds(t.latency_p95)}", ""),
    ]
    if report.reference is not None:
        acc = "-" if t.accuracy is None else f"{t.accuracy * 100:.1f}%"
        tiles.append(("accuracy", acc, f"of {t.scored:,} rows"))
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
    header, rows = report_table(report, number=lambda n: f"{n:,}")
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
