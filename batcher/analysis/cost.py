"""Prices, per-row cost and cost reports.

- `PriceTable`: list prices in USD per million tokens, from the packaged `prices.toml`, then
  the file named by `BATCHER_PRICES`, then `--prices FILE`. A model without a price has an
  unknown cost (None / null), never $0.
- `row_cost` / `price_table`: the cost of one row / every row of an output table; the
  server's own `usage.cost` wins when it sent one.
- `cost_groups` with `render_cost`, `cost_csv` and `cost_json`: cost and tokens per group.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batcher.errors import UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "PRICE_KEYS",
    "CostGroup",
    "Price",
    "PriceTable",
    "cost_csv",
    "cost_groups",
    "cost_json",
    "price_table",
    "render_cost",
    "row_cost",
    "with_costs",
]

REQUIRED_KEYS = ("input_per_million", "output_per_million")
PRICE_KEYS = (*REQUIRED_KEYS, "cached_input_per_million", "reasoning_per_million")
PACKAGED = "batcher/prices.toml"  # how the packaged file is named in messages
NEVER_SENT = ("not_sent", "bad_input")  # error types of rows that were never sent
UNPRICED_HINT = "(cost left empty; add them with --prices FILE)"


@dataclass(frozen=True, slots=True)
class Price:
    """A model's list price in USD per million tokens."""

    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None = None  # None: cached tokens at the input rate
    reasoning_per_million: float | None = None  # None: reasoning tokens at the output rate

    @property
    def cached_rate(self) -> float:
        c = self.cached_input_per_million
        return self.input_per_million if c is None else c

    @property
    def reasoning_rate(self) -> float:
        r = self.reasoning_per_million
        return self.output_per_million if r is None else r


class PriceTable:
    """Prices by model name.

    `get` tries the exact name, then the name without its leading "vendor/" segments, one at
    a time: "openrouter/openai/gpt-4o" tries "openai/gpt-4o", then "gpt-4o". The packaged
    table holds the vendors' own ids ("gpt-4o"), so gateway names find them; a file may price
    a gateway name ("openai/gpt-4o") to override that for it alone."""

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices: dict[str, Price] = dict(prices or {})

    @classmethod
    def load(
        cls,
        extra: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] = os.environ,
    ) -> PriceTable:
        """The packaged prices, then `env["BATCHER_PRICES"]`, then `extra` (--prices FILE).

        A later file adds models or replaces an earlier file's table for the same model
        (the whole table: keys it leaves out are not inherited). Raises `UsageError`."""
        text = resources.files("batcher").joinpath("prices.toml").read_bytes()
        prices = _parse(text, PACKAGED)
        env_file = env.get("BATCHER_PRICES")
        if env_file:
            prices.update(_parse(_read(env_file, " (named by BATCHER_PRICES)"), env_file))
        if extra is not None:
            prices.update(_parse(_read(extra), extra))
        return cls(prices)

    def get(self, model: str) -> Price | None:
        """The price of `model`, exact name first, then without "vendor/" prefixes."""
        name = model
        while True:
            price = self._prices.get(name)
            if price is not None:
                return price
            _, slash, rest = name.partition("/")
            if not slash or not rest:
                return None
            name = rest

    def models(self) -> list[str]:
        """The priced model names, sorted."""
        return sorted(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.get(model) is not None


def _show(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    return text if text.isprintable() else repr(text)[1:-1]


def _read(path: str | os.PathLike[str], origin: str = "") -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(f"{_show(path)}: no such file{origin}") from None
    except IsADirectoryError:
        raise UsageError(f"{_show(path)}: is a folder, not a prices file{origin}") from None
    except OSError as exc:
        raise UsageError(f"{_show(path)}: cannot read: {exc.strerror}{origin}") from None


def _parse(data: bytes, path: str | os.PathLike[str]) -> dict[str, Price]:
    """The prices of one TOML file; every problem is a one-line `UsageError`."""
    where = _show(path)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{where}: invalid TOML: not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML: {exc}") from None
    out: dict[str, Price] = {}
    for model, table in doc.items():
        if not isinstance(table, dict):
            raise UsageError(
                f"{where}: {model!r} is not a model table; "
                f'write its prices under a header such as ["{model}"]'
            )
        if not model:
            raise UsageError(f"{where}: empty model name")
        out[model] = _price(table, f"{where}: model {model!r}")
    return out


def _price(table: Mapping[str, Any], where: str) -> Price:
    for key, value in table.items():
        if isinstance(value, dict):  # [gpt-4.1] is the table "gpt-4" holding a table "1"
            raise UsageError(
                f"{where}: {key!r} is a table, not a price; quote model names "
                'that hold a dot: ["gpt-4.1"]'
            )
        if key not in PRICE_KEYS:
            close = difflib.get_close_matches(key, PRICE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{where}: unknown key {key!r}{hint}")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise UsageError(f"{where}: {key} must be a number >= 0")
    missing = [key for key in REQUIRED_KEYS if key not in table]
    if missing:
        raise UsageError(f"{where}: missing {' and '.join(missing)}")
    return Price(**{key: float(value) for key, value in table.items()})


# --- Cost of rows -----------------------------------------------------------------------------


def row_cost(
    price: Price | None,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    server_cost: float | None = None,
) -> float | None:
    """The USD cost of one request: the server's `usage.cost` when given, else from tokens.

    Cached tokens are part of the prompt tokens, priced at the cached-input rate (the input
    rate without one); reasoning tokens are part of the completion tokens (as in OpenAI's
    usage details), priced at the reasoning rate (the output rate without one). None when
    there is neither a price nor a server cost."""
    if server_cost is not None:
        return server_cost
    if price is None:
        return None
    cached = min(cached_tokens, prompt_tokens)
    reasoning = min(reasoning_tokens, completion_tokens)
    total = (
        (prompt_tokens - cached) * price.input_per_million
        + cached * price.cached_rate
        + (completion_tokens - reasoning) * price.output_per_million
        + reasoning * price.reasoning_rate
    )
    return total / 1e6


def _require(table: pa.Table, names: Iterable[str]) -> None:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise UsageError(f"not a batcher output table: no column {', '.join(missing)}")


def _strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.cast(pa.string()) if column.type != pa.string() else column


def _int_column(table: pa.Table, name: str) -> pa.ChunkedArray | None:
    """An optional token-count column (`cached_tokens`, `reasoning_tokens`) when integer."""
    if name not in table.column_names or not pa.types.is_integer(table[name].type):
        return None
    return table[name].fill_null(0)


def price_table(table: pa.Table, prices: PriceTable, *, keep_server_cost: bool = True) -> pa.Array:
    """`cost_usd` (float64) for every row of an output table, vectorised.

    Per row, first match wins: a `cached` row (reused from the response cache) costs 0.0;
    with `keep_server_cost`, a non-null `cost_usd` stays; a row never sent (`error_type`
    not_sent or bad_input) costs 0.0; else tokens x prices as in `row_cost`, null for a model
    without a price. An error row that was sent but billed no tokens costs 0.0 when its model
    is priced, null otherwise. Optional integer columns `cached_tokens` and `reasoning_tokens`
    are used when the table has them."""
    _require(table, ("model", "prompt_tokens", "completion_tokens"))
    model = _strings(table["model"])
    names = [m for m in pc.unique(model).to_pylist() if m is not None]
    found = [prices.get(m) for m in names]
    index = pc.index_in(model, value_set=pa.array(names, pa.string()))

    def rate(attr: str) -> pa.ChunkedArray:
        values = [None if p is None else getattr(p, attr) for p in found]
        return pc.take(pa.array(values, pa.float64()), index)

    prompt = table["prompt_tokens"].cast(pa.float64())
    completion = table["completion_tokens"].cast(pa.float64())
    cached = _int_column(table, "cached_tokens")
    reasoning = _int_column(table, "reasoning_tokens")
    if cached is not None:
        cached = pc.min_element_wise(cached.cast(pa.float64()), prompt)
        prompt = pc.subtract(prompt, cached)
    if reasoning is not None:
        reasoning = pc.min_element_wise(reasoning.cast(pa.float64()), completion)
        completion = pc.subtract(completion, reasoning)
    # the same sum, in the same order, as row_cost: the two agree to the last bit
    total = pc.multiply(prompt, rate("input_per_million"))
    total = pc.add(total, pc.multiply(cached if cached is not None else 0.0, rate("cached_rate")))
    total = pc.add(total, pc.multiply(completion, rate("output_per_million")))
    rr = rate("reasoning_rate")
    total = pc.add(total, pc.multiply(reasoning if reasoning is not None else 0.0, rr))
    cost = pc.divide(total, 1e6)
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


def with_costs(table: pa.Table, prices: PriceTable, *, keep_server_cost: bool = True) -> pa.Table:
    """`table` with its `cost_usd` column replaced (or added) by `price_table`'s."""
    cost = price_table(table, prices, keep_server_cost=keep_server_cost)
    if "cost_usd" in table.column_names:
        i = table.column_names.index("cost_usd")
        return table.set_column(i, pa.field("cost_usd", pa.float64()), cost)
    return table.append_column(pa.field("cost_usd", pa.float64()), cost)


# --- Groups -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostGroup:
    """Requests, tokens and cost of one group of rows (the total has the key {})."""

    key: dict[str, Any]  # e.g. {"model": "x", "param_temperature": 0.7}
    requests: int
    ok: int
    errors: int  # every row not ok, those never sent (error_type not_sent) included
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None  # the sum of the known costs; None when no row's cost is known
    unpriced_requests: int  # rows whose cost is unknown (so cost_usd is a partial sum)
    unpriced_models: tuple[str, ...] = field(default=())  # the models of those rows, sorted

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": {k: _jsonable(v) for k, v in self.key.items()},
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": self.cost_usd,
            "unpriced_requests": self.unpriced_requests,
            "unpriced_models": list(self.unpriced_models),
        }


_TMP = "__batcher_"  # prefix of the working columns
_SUMS = ("ok", "known", "prompt", "completion", "total", "cost")


def cost_groups(
    table: pa.Table, by: Sequence[str] = ("model",)
) -> tuple[list[CostGroup], CostGroup]:
    """Per-group totals of an output table (sorted by key, nulls last) and the grand total.

    The costs summed are the table's `cost_usd` column as it is: run `with_costs` first to
    price the rows. A row counts as ok when its status is "ok" and as an error otherwise."""
    by = list(by)
    for name in by:
        if name not in table.column_names:
            columns = ", ".join(table.column_names)
            raise UsageError(f"--by: no column {name!r} (columns: {columns})")
    _require(table, ("status", "prompt_tokens", "completion_tokens", "total_tokens"))
    if "cost_usd" in table.column_names:
        cost = table["cost_usd"].cast(pa.float64())
    else:
        cost = pa.chunked_array([pa.nulls(table.num_rows, pa.float64())])
    work = {
        "ok": pc.equal(_strings(table["status"]), "ok").fill_null(False).cast(pa.int64()),
        "known": pc.is_valid(cost).cast(pa.int64()),
        "prompt": table["prompt_tokens"].cast(pa.int64()),
        "completion": table["completion_tokens"].cast(pa.int64()),
        "total": table["total_tokens"].cast(pa.int64()),
        "cost": cost,
    }
    columns = {name: table[name] for name in by}
    columns.update({_TMP + k: v for k, v in work.items()})
    if "model" in table.column_names and "model" not in by:
        columns[_TMP + "model"] = _strings(table["model"])
    model_col = "model" if "model" in by else _TMP + "model"
    data = pa.table(columns)
    unpriced = _unpriced_models(data, by, model_col)
    total = _group(
        {},
        table.num_rows,
        {k: pc.sum(v).as_py() for k, v in work.items()},
        unpriced.get(None, ()),
    )
    if not by:
        return [], total
    aggregations = [(_TMP + k, "sum") for k in _SUMS] + [(_TMP + "ok", "count")]
    try:
        agg = data.group_by(by, use_threads=False).aggregate(aggregations)
        # nulls sort last by default (naming null_placement warns on pyarrow >= 25)
        order = pc.sort_indices(agg, sort_keys=[(k, "ascending") for k in by])
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        kinds = ", ".join(f"{k} ({table.schema.field(k).type})" for k in by)
        raise UsageError(f"--by: cannot group by {kinds}") from exc
    groups = []
    for row in agg.take(order).to_pylist():
        key = {k: row[k] for k in by}
        sums = {k: row[f"{_TMP}{k}_sum"] for k in _SUMS}
        models = unpriced.get(tuple(key.values()), ())
        groups.append(_group(key, row[f"{_TMP}ok_count"], sums, models))
    return groups, total


def _group(
    key: dict[str, Any], requests: int, sums: Mapping[str, Any], models: Iterable[str]
) -> CostGroup:
    ok = sums["ok"] or 0
    known = sums["known"] or 0
    return CostGroup(
        key=key,
        requests=requests,
        ok=ok,
        errors=requests - ok,
        prompt_tokens=sums["prompt"] or 0,
        completion_tokens=sums["completion"] or 0,
        total_tokens=sums["total"] or 0,
        cost_usd=sums["cost"] if known else None,
        unpriced_requests=requests - known,
        unpriced_models=tuple(sorted(models)),
    )


def _unpriced_models(data: pa.Table, by: list[str], model_col: str) -> dict[Any, set[str]]:
    """Models of the rows without a cost: per group key tuple, and overall under None."""
    if model_col not in data.column_names:
        return {}
    missing = data.filter(pc.equal(data[_TMP + "known"], 0))
    keys = list(dict.fromkeys([*by, model_col]))
    out: dict[Any, set[str]] = {}
    if missing.num_rows == 0:
        return out
    try:
        distinct = missing.select(keys).group_by(keys, use_threads=False).aggregate([])
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        distinct = missing.select([model_col]).group_by([model_col]).aggregate([])
        by = []
    for row in distinct.to_pylist():
        model = row[model_col]
        if model is None:
            continue
        out.setdefault(None, set()).add(model)
        if by:
            out.setdefault(tuple(row[k] for k in by), set()).add(model)
    return out


# --- Reports ----------------------------------------------------------------------------------


def _money(cost: float | None) -> str:
    return "-" if cost is None else f"${cost:.4f}"


def _key_text(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def render_cost(groups: Sequence[CostGroup], total: CostGroup, by: Sequence[str]) -> list[str]:
    """An aligned text table, one line per group and a total line; then, when some rows have
    no cost, the line naming the models without a price. An `unpriced` column (rows without
    a cost) shows only when there are such rows."""
    show_unpriced = total.unpriced_requests > 0
    labels = list(by) or [""]
    header = [*labels, "requests", "ok", "errors", "tokens in", "tokens out", "cost"]
    if show_unpriced:
        header.append("unpriced")

    def cells(labels_: list[str], g: CostGroup) -> list[str]:
        out = [*labels_, str(g.requests), str(g.ok), str(g.errors)]
        out += [str(g.prompt_tokens), str(g.completion_tokens), _money(g.cost_usd)]
        if show_unpriced:
            out.append(str(g.unpriced_requests))
        return out

    rows = [header]
    rows += [cells([_key_text(g.key.get(k)) for k in by], g) for g in groups]
    rows.append(cells(["total"] + [""] * (len(labels) - 1), total))
    n_keys = len(labels)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for r in rows:
        parts = [
            c.ljust(w) if i < n_keys else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        ]
        lines.append("  ".join(parts).rstrip())
    if total.unpriced_models:
        lines.append(f"no price for: {', '.join(total.unpriced_models)} {UNPRICED_HINT}")
    return lines


CSV_FIELDS = (
    "requests",
    "ok",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_requests",
)


def cost_csv(groups: Sequence[CostGroup], total: CostGroup, by: Sequence[str]) -> str:
    """CSV: a header, one line per group, then the total (its first key column says "total",
    the other key columns are empty). A null key or unknown cost is an empty cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*by, *CSV_FIELDS])

    def values(g: CostGroup) -> list[Any]:
        d = g.to_dict()
        return ["" if d[f] is None else d[f] for f in CSV_FIELDS]

    for g in groups:
        w.writerow([_csv_key(g.key.get(k)) for k in by] + values(g))
    w.writerow((["total"] + [""] * (len(by) - 1) if by else []) + values(total))
    return buf.getvalue()


def _csv_key(value: Any) -> Any:
    v = _jsonable(value)
    return "" if v is None else v


def cost_json(groups: Sequence[CostGroup], total: CostGroup, by: Sequence[str]) -> dict:
    """A JSON-ready dict: `by`, `groups`, `total` and `unpriced_models`."""
    return {
        "by": list(by),
        "groups": [g.to_dict() for g in groups],
        "total": total.to_dict(),
        "unpriced_models": list(total.unpriced_models),
    }
