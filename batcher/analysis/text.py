"""The wording shared by the text tables of `cost`, `report`, `status` and `estimate`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def money(cost: float | None) -> str:
    """A cost as shown: "$1.2345", or "-" when it is unknown."""
    return "-" if cost is None else f"${cost:.4f}"


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
