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
