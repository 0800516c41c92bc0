"""The cost of an output table: every row priced at once, and cost per group.

- `price_table` / `with_costs`: `cost_usd` for every row, vectorised; the server's own
  `usage.cost` wins when it sent one, a model without a price has an unknown cost (null).
- `cost_groups` with `render_cost`, `cost_csv` and `cost_json`: cost and tokens per group.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batcher.analysis.text import (
    DETAIL_HEADERS,
    SPLIT_HEADERS,
    aligned,
    cache_line,
    detail_columns,
    jsonable,
    key_text,
    money,
)
from batcher.analysis.totals import Totals, group_totals, model_order
from batcher.errors import UsageError
from batcher.io.jobdir import JobDir
from batcher.prices import UNPRICED_HINT, PriceTable
from batcher.types import DETAILS

__all__ = [
    "cost_csv",
    "cost_dict",
    "cost_groups",
    "cost_json",
    "cost_split",
    "price_table",
    "render_cost",
    "with_costs",
]

NEVER_SENT = ("not_sent", "bad_input")  # error types of rows that were never sent


# --- Cost of rows -----------------------------------------------------------------------------


def _require(table: pa.Table, names: Iterable[str]) -> None:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise UsageError(f"not a batcher output table: no column {', '.join(missing)}")


def _strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.cast(pa.string()) if column.type != pa.string() else column


def _int_column(table: pa.Table, name: str) -> pa.ChunkedArray | None:
    """An optional usage-detail column (`cached_tokens`, ...) when integer, nulls as 0."""
    if name not in table.column_names or not pa.types.is_integer(table[name].type):
        return None
    return table[name].fill_null(0)


PARTS = ("input", "cached_input", "cache_write", "output", "reasoning", "search")


def _parts(table: pa.Table, prices: PriceTable) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per row, the tokens (searches) of each part of the bill and their rates: the prompt
    tokens split into uncached, cached and written, the completion tokens into output and
    reasoning, as in `row_cost`."""
    _require(table, ("model", "prompt_tokens", "completion_tokens"))
    model = _strings(table["model"])
    names = [m for m in pc.unique(model).to_pylist() if m is not None]
    found = [prices.get(m) for m in names]
    index = pc.index_in(model, value_set=pa.array(names, pa.string()))

    def rate(attr: str) -> pa.ChunkedArray:
        values = [None if p is None else getattr(p, attr) for p in found]
        return pc.take(pa.array(values, pa.float64()), index)

    def detail(name: str) -> Any:
        column = _int_column(table, name)
        return 0.0 if column is None else column.cast(pa.float64())

    prompt = table["prompt_tokens"].cast(pa.float64())
    completion = table["completion_tokens"].cast(pa.float64())
    cached = pc.min_element_wise(detail("cached_tokens"), prompt)
    written = pc.min_element_wise(detail("cache_write_tokens"), pc.subtract(prompt, cached))
    reasoning = pc.min_element_wise(detail("reasoning_tokens"), completion)
    tokens = {
        "input": pc.subtract(pc.subtract(prompt, cached), written),
        "cached_input": cached,
        "cache_write": written,
        "output": pc.subtract(completion, reasoning),
        "reasoning": reasoning,
        "search": detail("search_queries"),
    }
    rates = {
        "input": rate("input_per_million"),
        "cached_input": rate("cached_rate"),
        "cache_write": rate("write_rate"),
        "output": rate("output_per_million"),
        "reasoning": rate("reasoning_rate"),
        "search": rate("per_search"),
    }
    if "mode" in table.column_names:  # --mode batch: each rate at the batch price
        batch = pc.equal(_strings(table["mode"]), "batch").fill_null(False)
        factor = pc.if_else(batch, rate("batch_factor"), 1.0)
        rates = {part: pc.multiply(r, factor) for part, r in rates.items()}
    return tokens, rates


def price_table(table: pa.Table, prices: PriceTable, *, keep_server_cost: bool = True) -> pa.Array:
    """`cost_usd` (float64) for every row of an output table, vectorised.

    Per row, first match wins: a `cached` row (reused from the response cache) costs 0.0;
    with `keep_server_cost`, a non-null `cost_usd` stays; a row never sent (`error_type`
    not_sent or bad_input), or billed no tokens at all, costs 0.0; else tokens x prices as in
    `row_cost`, null for a model without a price, a row whose usage is unknown, or a row
    with searches and no search price. The usage-detail columns (`cached_tokens`,
    `cache_write_tokens`, `reasoning_tokens`, `search_queries`) are used when present."""
    tokens, rates = _parts(table, prices)
    # the same sum, in the same order, as row_cost: the two agree to the last bit
    total = pc.multiply(tokens["input"], rates["input"])
    for part in PARTS[1:-1]:
        total = pc.add(total, pc.multiply(tokens[part], rates[part]))
    cost = pc.add(pc.divide(total, 1e6), _search_cost(tokens["search"], rates["search"]))
    return _settled(table, cost, keep_server_cost)


def _search_cost(searches: Any, rate: pa.ChunkedArray) -> Any:
    """What the searches cost: 0.0 without any, unknown (null) without a search price."""
    if isinstance(searches, float):
        return searches
    return pc.if_else(pc.greater(searches, 0), pc.multiply(searches, rate), 0.0)


def _settled(table: pa.Table, cost: Any, keep_server_cost: bool) -> pa.Array:
    """`cost` with the rows that cost nothing at 0.0 and the server's own costs kept."""
    nothing = pc.and_(pc.equal(table["prompt_tokens"], 0), pc.equal(table["completion_tokens"], 0))
    cost = pc.if_else(nothing.fill_null(False), 0.0, cost)
    if "error_type" in table.column_names:
        never = pc.is_in(_strings(table["error_type"]), value_set=pa.array(NEVER_SENT))
        cost = pc.if_else(never.fill_null(False), 0.0, cost)
    if keep_server_cost and "cost_usd" in table.column_names:
        cost = pc.coalesce(table["cost_usd"].cast(pa.float64()), cost)
    if "cached" in table.column_names:
        cost = pc.if_else(table["cached"].fill_null(False), 0.0, cost)
    if isinstance(cost, pa.ChunkedArray):
        cost = cost.combine_chunks()
    return cost


def cost_split(table: pa.Table, prices: PriceTable) -> dict[str, pa.ChunkedArray]:
    """Per row, what each part of the bill (`PARTS`) cost at list prices, and `saved`: what
    the cached input tokens would have cost more at the input rate. Null for a row that
    tokens x prices cannot price (no price, usage unknown) or that was reused from the
    response cache. A row whose server sent its own cost is split at list prices too."""
    tokens, rates = _parts(table, prices)
    priced = pc.is_valid(price_table(table, prices, keep_server_cost=False))
    if "cached" in table.column_names:
        priced = pc.and_(priced, pc.invert(table["cached"].fill_null(False)))

    def only_priced(values: Any) -> Any:
        return pc.if_else(priced, values, pa.scalar(None, pa.float64()))

    split = {
        part: only_priced(pc.divide(pc.multiply(tokens[part], rates[part]), 1e6))
        for part in PARTS[:-1]
    }
    split["search"] = only_priced(_search_cost(tokens["search"], rates["search"]))
    saved = pc.multiply(tokens["cached_input"], pc.subtract(rates["input"], rates["cached_input"]))
    split["saved"] = only_priced(pc.divide(saved, 1e6))
    return split


def with_costs(table: pa.Table, prices: PriceTable, *, keep_server_cost: bool = True) -> pa.Table:
    """`table` with its `cost_usd` column replaced (or added) by `price_table`'s."""
    cost = price_table(table, prices, keep_server_cost=keep_server_cost)
    if "cost_usd" in table.column_names:
        i = table.column_names.index("cost_usd")
        return table.set_column(i, pa.field("cost_usd", pa.float64()), cost)
    return table.append_column(pa.field("cost_usd", pa.float64()), cost)


# --- Groups -----------------------------------------------------------------------------------


def cost_groups(
    table: pa.Table, by: Sequence[str] = ("model",), prices: PriceTable | None = None
) -> tuple[list[Totals], Totals]:
    """Per-group totals of an output table (models in the run's order, other keys sorted,
    nulls last) and the grand total; with `prices`, each with its `cost_split`.

    The costs summed are the table's `cost_usd` column as it is: run `with_costs` first to
    price the rows. A row counts as ok when its status is "ok" and as an error otherwise."""
    _require(table, ("status", "prompt_tokens", "completion_tokens", "total_tokens"))
    split = cost_split(table, prices) if prices is not None else None
    order = {"model": model_order(table)} if "model" in by else None
    groups = group_totals(table, by, order=order, split=split) if by else []
    (total,) = group_totals(table, (), split=split)
    return groups, total


def cost_dict(g: Totals) -> dict[str, Any]:
    """One group as `batcher cost --json` shows it."""
    return {
        "key": {k: jsonable(v) for k, v in g.key.items()},
        "requests": g.requests,
        "ok": g.ok,
        "errors": g.errors,
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.total_tokens,
        **{name: g.details.get(name) for name in DETAILS},
        "cost_usd": g.cost_usd,
        **{f"cost_{part}_usd": g.split.get(part) for part in PARTS},
        "cache_hit_rate": g.cache_hit_rate,
        "saved_by_cache_usd": g.split.get("saved"),
        "unpriced_requests": g.unpriced,
        "unpriced_models": sorted(g.unpriced_models),
    }


def render_cost(groups: Sequence[Totals], total: Totals, by: Sequence[str]) -> list[str]:
    """An aligned text table, one line per group and a total line; then, when some rows have
    no cost, the line naming the models without a price. An `unpriced` column (rows without
    a cost) shows only when there are such rows."""
    show_unpriced = total.unpriced > 0
    details, parts = detail_columns(total)
    labels = list(by) or [""]
    header = [*labels, "requests", "ok", "errors", "tokens in", "tokens out"]
    header += [DETAIL_HEADERS[n] for n in details]
    header += [*(SPLIT_HEADERS[p] for p in parts), "cost"]
    if show_unpriced:
        header.append("unpriced")

    def cells(labels_: list[str], g: Totals) -> list[str]:
        out = [*labels_, str(g.requests), str(g.ok), str(g.errors)]
        out += [str(g.prompt_tokens), str(g.completion_tokens)]
        out += [str(g.details[n]) if n in g.details else "-" for n in details]
        out += [*(money(g.split.get(p)) for p in parts), money(g.cost_usd)]
        if show_unpriced:
            out.append(str(g.unpriced))
        return out

    rows = [header]
    rows += [cells([key_text(g.key.get(k)) for k in by], g) for g in groups]
    rows.append(cells(["total"] + [""] * (len(labels) - 1), total))
    lines = aligned(rows, left=len(labels))
    if (cache := cache_line(total)) is not None:
        lines.append(cache)
    if total.unpriced_models:
        lines.append(f"no price for: {', '.join(sorted(total.unpriced_models))} {UNPRICED_HINT}")
    return lines


CSV_FIELDS = (
    "requests",
    "ok",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    *DETAILS,
    "cost_usd",
    *(f"cost_{part}_usd" for part in PARTS),
    "cache_hit_rate",
    "saved_by_cache_usd",
    "unpriced_requests",
)


def cost_csv(groups: Sequence[Totals], total: Totals, by: Sequence[str]) -> str:
    """CSV: a header, one line per group, then the total (its first key column says "total",
    the other key columns are empty). A null key or unknown cost is an empty cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*by, *CSV_FIELDS])

    def values(g: Totals) -> list[Any]:
        d = cost_dict(g)
        return ["" if d[f] is None else d[f] for f in CSV_FIELDS]

    for g in groups:
        w.writerow([_csv_key(g.key.get(k)) for k in by] + values(g))
    w.writerow((["total"] + [""] * (len(by) - 1) if by else []) + values(total))
    return buf.getvalue()


def _csv_key(value: Any) -> Any:
    v = jsonable(value)
    return "" if v is None else v


def cost_json(groups: Sequence[Totals], total: Totals, by: Sequence[str]) -> dict:
    """A JSON-ready dict: `by`, `groups`, `total` and `unpriced_models`."""
    return {
        "by": list(by),
        "groups": [cost_dict(g) for g in groups],
        "total": cost_dict(total),
        "unpriced_models": sorted(total.unpriced_models),
    }


def spent_usd(job_dir: JobDir, prices: PriceTable) -> float:
    """What the results in a job folder cost (every billed result, retried ones included)."""
    spent = 0.0
    columns = ["model", "prompt_tokens", "completion_tokens", "cost_usd", "error_type", "cached"]
    for part in job_dir.healthy_parts():
        table = with_costs(pq.ParquetFile(part).read(columns=columns), prices)
        spent += pc.sum(table.column("cost_usd")).as_py() or 0.0
    return spent
