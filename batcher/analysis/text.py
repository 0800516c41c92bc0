"""The wording shared by the text tables of `cost`, `report`, `status` and `estimate`, the
HTML report and the end-of-job summary: costs, latencies, group keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def money(cost: float | None) -> str:
    """A cost as shown: "$1.2345", or "-" when it is unknown."""
    return "-" if cost is None else f"${cost:.4f}"


MS_BELOW = 0.01  # latencies shorter than this (10 ms) are shown in milliseconds


def in_ms(value: float) -> bool:
    """Whether `seconds` shows a latency in milliseconds: under 10 ms once rounded to
    0.1 ms (0.00996 s would read "10.0 ms"; it is "0.01 s")."""
    return round(value * 1000, 1) < MS_BELOW * 1000


def seconds(value: float | None) -> str:
    """A latency (in seconds) as shown to people: "4.2 ms" under 10 ms, else "1.25 s" (two
    decimals); "-" when it is unknown. JSON keeps the raw seconds."""
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if in_ms(value) else f"{value:.2f} s"


def duration(seconds: float) -> str:
    """A duration as shown to people: "4.2s", "45s", "3m 10s", "2h 05m"."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def key_text(value: Any) -> str:
    """A group's key value as shown: "(none)" for null."""
    return "(none)" if value is None else str(value)


def jsonable(value: Any) -> Any:
    """A key value for JSON: plain values as they are, dates in ISO form, the rest as text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def aligned(rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Rows of cells as lines, columns padded to one width: the first `left` columns
    left-aligned (labels), the rest right-aligned (figures)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


# The usage-detail columns a text table adds when some group has any, with their headers.
DETAIL_HEADERS = {
    "cached_tokens": "cached",
    "reasoning_tokens": "reasoning",
    "search_queries": "searches",
}
# The parts of the bill it then shows, with theirs (input and output always).
SPLIT_HEADERS = {
    "input": "$ input",
    "cached_input": "$ cached",
    "cache_write": "$ cache write",
    "output": "$ output",
    "reasoning": "$ reasoning",
    "search": "$ search",
}


def detail_columns(total: Any) -> tuple[list[str], list[str]]:
    """The usage details (`Totals.details`) and bill parts (`Totals.split`) a table shows
    for `total`: none when nothing but input and output was billed, else each that is not
    zero over the whole table, with input and output."""
    details = [n for n in DETAIL_HEADERS if total.details.get(n)]
    if not details and not total.details.get("cache_write_tokens"):
        return [], []
    parts = [p for p in SPLIT_HEADERS if p in total.split]
    return details, [p for p in parts if p in ("input", "output") or total.split[p]]


def cache_line(total: Any) -> str | None:
    """ "cache: 41.2% of input tokens cached (1,234 of 2,995), saved $0.0123" when some
    prompt tokens were cached, else None."""
    rate, cached = total.cache_hit_rate, total.details.get("cached_tokens")
    if not cached or rate is None:
        return None
    line = f"cache: {rate * 100:.1f}% of input tokens cached ({cached:,} of {total.cache_base:,})"
    saved = total.split.get("saved")
    return line + (f", saved {money(saved)}" if saved is not None else "")
