"""`batcher show`: the first rows of an output (or of a running job's results), filtered,
as an aligned table or JSON Lines. duckdb, when installed, reads `--where`; batcher has no
query engine of its own."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batcher.analysis.text import aligned, jsonable
from batcher.analysis.totals import model_order, ranks
from batcher.errors import UsageError
from batcher.io.jobdir import read_results

WIDTH = 48  # characters a cell shows at most in the table (JSON shows everything)
DEFAULT_COLUMNS = ("id", "model", "status", "content", "error_type", "error_message")


def show(
    path: Path,
    *,
    rows: int = 20,
    columns: Sequence[str] | None = None,
    where: str | None = None,
    errors: bool = False,
) -> pa.Table:
    """The first `rows` rows of OUT (or of its job folder while the job runs), in input
    order: those in error with `errors`, those `where` (an SQL condition) holds for."""
    table = read_results(Path(path))
    if "_row" in table.column_names:  # a job folder's parts: in the order they were written
        table = table.append_column("_model", ranks(table["model"], model_order(table)))
        keys = [(n, "ascending") for n in ("_row", "_model", "_variant", "sample")]
        table = table.sort_by([k for k in keys if k[0] in table.column_names])
    table = table.select([n for n in table.column_names if not n.startswith("_")])
    if errors:
        table = table.filter(pc.equal(table.column("status"), "error"))
    if where is not None:
        table = _where(table, where)
    names = list(columns) if columns else [n for n in DEFAULT_COLUMNS if n in table.column_names]
    unknown = [n for n in names if n not in table.column_names]
    if unknown:
        raise UsageError(
            f"--columns: no column {', '.join(map(repr, unknown))} in {path} "
            f"(it has: {', '.join(table.column_names)})"
        )
    return table.select(names).slice(0, rows)


def _where(table: pa.Table, condition: str) -> pa.Table:
    try:
        import duckdb
    except ImportError:
        raise UsageError(
            "--where needs duckdb: pip install duckdb (or use --errors for the rows in error)"
        ) from None
    results = table  # noqa: F841 - duckdb reads it by its name
    try:
        found = duckdb.sql(f"select * from results where {condition}")
        # duckdb 2 calls it to_arrow_table; 1.x fetch_arrow_table
        return (getattr(found, "to_arrow_table", None) or found.fetch_arrow_table)()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(f"--where {condition!r}: {first}") from None


def render_table(table: pa.Table) -> list[str]:
    """The rows as an aligned table, long cells cut to WIDTH, line breaks shown as ⏎."""
    head = [table.column_names]
    body = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    lines = aligned(head + body, left=len(table.column_names))
    return [*lines, f"({table.num_rows} rows)"]


def render_json(table: pa.Table) -> list[str]:
    """One JSON object a row (JSON Lines, for jq)."""
    return [json.dumps(row, default=jsonable, ensure_ascii=False) for row in table.to_pylist()]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        text = json.dumps(value, default=jsonable, ensure_ascii=False)
    else:
        text = str(jsonable(value))
    text = text.replace("\r\n", "⏎").replace("\n", "⏎")
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"
