"""The one aggregator: totals per group over a table of results.

`group_totals(table, by)` counts requests, ok and errors (by type), sums tokens and the
known cost, counts the rows whose cost is unknown (and names their models), collects the
latencies of ok rows that were really sent, and scores accuracy against a reference column.
The job summary, `batcher cost`, `batcher report` and `batcher status` all read these
figures; `Totals` merge (`+=`), so a job's summary adds them up window by window.

Costs are the table's `cost_usd` as it is: price the rows first (`analysis.cost.with_costs`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batcher.analysis.text import key_text
from batcher.errors import UsageError
from batcher.io.output import KEY as METADATA_KEY
from batcher.types import DETAILS

UNKNOWN_ERROR = "unknown"  # error_type of an error row that has none
_TMP = "__totals_"  # prefix of the working columns


class Latencies:
    """Latencies in seconds: every value while there are at most `EXACT` (percentiles
    exact, linearly interpolated), then a histogram of 1%-wide log buckets from 1 ms
    (percentiles within 1%, memory flat however long the job)."""

    EXACT = 100_000
    BASE = 1.01
    FLOOR = 0.001

    def __init__(self, values: Any = ()) -> None:
        self.values: np.ndarray | None = np.asarray(values, dtype=float)
        self.buckets: Counter[int] = Counter()
        self.n = int(self.values.size)
        self._settle()

    def __iadd__(self, other: Latencies) -> Latencies:
        self.n += other.n
        if self.values is not None and other.values is not None:
            self.values = np.concatenate([self.values, other.values])
        else:
            self.buckets.update(other.buckets)
            if other.values is not None:
                self.buckets.update(_bucket(other.values))
            if self.values is not None:
                self.buckets.update(_bucket(self.values))
                self.values = None
        self._settle()
        return self

    def percentile(self, q: float) -> float | None:
        """The q-quantile (0..1), or None without values."""
        if not self.n:
            return None
        if self.values is not None:
            return float(np.percentile(self.values, q * 100))
        rank, seen = max(1, math.ceil(q * self.n)), 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                return self.FLOOR * self.BASE ** max(0.0, b - 0.5) if b else self.FLOOR
        return None

    def sample(self, cap: int) -> list[float]:
        """Sorted latencies; above `cap` values, `cap` evenly spaced order statistics."""
        if self.values is not None:
            array = np.sort(self.values)
        else:
            edges = sorted(self.buckets)
            array = np.repeat(
                [self.FLOOR * self.BASE ** max(0.0, b - 0.5) for b in edges],
                [self.buckets[b] for b in edges],
            )
        if array.size > cap:
            array = array[np.linspace(0, array.size - 1, cap).round().astype(int)]
        return array.tolist()

    def _settle(self) -> None:
        if self.values is not None and self.values.size > self.EXACT:
            self.buckets.update(_bucket(self.values))
            self.values = None


def _bucket(values: np.ndarray) -> Counter[int]:
    scaled = np.maximum(values, Latencies.FLOOR) / Latencies.FLOOR
    index = np.where(
        values <= Latencies.FLOOR, 0, (np.log(scaled) / math.log(Latencies.BASE)).astype(int) + 1
    )
    return Counter(dict(zip(*np.unique(index, return_counts=True))))


@dataclass
class Totals:
    """The figures of one group of result rows (the whole table when its key is {})."""

    key: dict[str, Any] = field(default_factory=dict)  # e.g. {"model": "m1"}
    requests: int = 0
    ok: int = 0
    errors_by_type: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None  # the sum of the known costs; None when none is known
    unpriced: int = 0  # rows whose cost is unknown (so cost_usd is a partial sum)
    unpriced_models: set[str] = field(default_factory=set)  # of those rows, with no price
    unknown_usage: int = 0  # billed rows whose usage the server did not say (tokens partial)
    details: dict[str, int] = field(default_factory=dict)  # usage details some row stated
    cache_base: int = 0  # the prompt tokens of the rows that stated their cached tokens
    split: dict[str, float] = field(default_factory=dict)  # cost by part (`cost_split`)
    latencies: Latencies = field(default_factory=Latencies)  # ok rows really sent
    scored: int = 0  # rows with a non-empty reference (accuracy)
    correct: int = 0

    @property
    def errors(self) -> int:
        return self.requests - self.ok

    @property
    def label(self) -> str:
        """How reports name the group: "total", "m1", "m1, temperature=0.7"."""
        return group_label(self.key)

    @property
    def latency_p50(self) -> float | None:
        return self.latencies.percentile(0.5)

    @property
    def latency_p95(self) -> float | None:
        return self.latencies.percentile(0.95)

    @property
    def cache_hit_rate(self) -> float | None:
        """Cached tokens over the prompt tokens of the rows that said how many were cached."""
        cached = self.details.get("cached_tokens")
        return cached / self.cache_base if cached is not None and self.cache_base else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None

    def __iadd__(self, other: Totals) -> Totals:
        self.requests += other.requests
        self.ok += other.ok
        self.errors_by_type.update(other.errors_by_type)
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        if other.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + other.cost_usd
        self.unpriced += other.unpriced
        self.unpriced_models |= other.unpriced_models
        self.unknown_usage += other.unknown_usage
        for name, value in other.details.items():
            self.details[name] = self.details.get(name, 0) + value
        self.cache_base += other.cache_base
        for name, value in other.split.items():
            self.split[name] = self.split.get(name, 0.0) + value
        self.latencies += other.latencies
        self.scored += other.scored
        self.correct += other.correct
        return self


def group_totals(
    table: pa.Table,
    by: Sequence[str] = (),
    *,
    reference: str | None = None,
    answer: str | None = None,
    sort: bool = True,
    order: Mapping[str, Sequence[Any]] | None = None,
    split: Mapping[str, pa.Array] | None = None,
) -> list[Totals]:
    """The totals of each group of `by` values (sorted by key, nulls last; else in order of
    first appearance). `by=()` gives one group, the whole table, also when it is empty.

    `order` sorts the named key columns by another order than their values': a column's
    values in the order listed, then the values not listed in order of first appearance
    (`{"model": []}` is first appearance alone). The key columns keep their priority in `by`.

    With `reference`, a row with a non-empty reference is scored: correct when it is ok and
    its `answer` column equals the reference, compared as strings stripped of surrounding
    whitespace and lower-cased.

    `split` (`analysis.cost.cost_split`'s) is summed per group into `Totals.split`."""
    by = list(dict.fromkeys(by))
    for name in by:
        if name not in table.column_names:
            raise UsageError(f"--by: no column {name!r} (columns: {', '.join(table.column_names)})")
    if "status" not in table.column_names:
        raise UsageError("not a batcher output table: no column status")
    work = _work_columns(table, reference, answer)
    for name, values in (split or {}).items():
        work[f"split_{name}"] = values
        work[f"split_{name}_n"] = pc.is_valid(values).cast(pa.int64())
    types = sorted(work.pop("types"))
    keys = {name: decoded(table[name]) for name in by}
    if not by:
        keys = {_TMP + "all": pa.array(np.zeros(table.num_rows, np.int8))}
    data = pa.table({**keys, **{_TMP + k: v for k, v in work.items()}})
    sums = [c for c in data.column_names if c.startswith(_TMP) and c not in keys]
    sums = [c for c in sums if c not in (_TMP + "latency", _TMP + "model")]
    aggregations = [(c, "sum") for c in sums] + [(_TMP + "ok", "count"), (_TMP + "cost", "count")]
    aggregations.append((_TMP + "latency", "list"))
    if _TMP + "model" in data.column_names:  # rows without a cost but with tokens: no price
        aggregations.append((_TMP + "unpriced_model", "distinct"))
        no_price = pc.and_(
            pc.invert(data[_TMP + "known"].cast(pa.bool_())),
            pc.invert(data[_TMP + "unknown_usage"].cast(pa.bool_())),
        )
        data = data.append_column(
            _TMP + "unpriced_model", pc.if_else(no_price, data[_TMP + "model"], None)
        )
    names = list(keys)
    try:
        agg = data.group_by(names, use_threads=False).aggregate(aggregations)
        if sort:
            ranked = [k for k in names if order and k in order]
            for k in ranked:
                agg = agg.append_column(_TMP + "rank_" + k, ranks(agg[k], order[k]))
            keys = [(_TMP + "rank_" + k if k in ranked else k, "ascending") for k in names]
            agg = agg.take(pc.sort_indices(agg, sort_keys=keys))
            agg = agg.drop_columns([_TMP + "rank_" + k for k in ranked])
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        kinds = ", ".join(f"{k} ({table.schema.field(k).type})" for k in names)
        raise UsageError(f"--by: cannot group by {kinds}") from exc
    if not by and agg.num_rows == 0:
        return [Totals()]
    out = []
    lists = agg[_TMP + "latency_list"]
    models = agg[_TMP + "unpriced_model_distinct"] if _TMP + "model" in data.column_names else None
    rows = agg.drop_columns([c for c in agg.column_names if c.endswith(("_list", "_distinct"))])
    for i, row in enumerate(rows.to_pylist()):

        def total(name: str, row: dict = row) -> int:
            return row.get(f"{_TMP}{name}_sum") or 0

        def stated(names: Sequence[str], prefix: str, row: dict = row) -> dict[str, Any]:
            return {n: row[f"{_TMP}{prefix}{n}_sum"] for n in names if total(f"{prefix}{n}_n")}

        latencies = pc.drop_null(lists[i].values).to_numpy(zero_copy_only=False)
        unpriced = set(models[i].as_py() or ()) - {None} if models is not None else set()
        out.append(
            Totals(
                key={k: row[k] for k in by},
                requests=row[_TMP + "ok_count"],
                ok=total("ok"),
                errors_by_type=_most_first(
                    {t: total(f"e{j}") for j, t in enumerate(types) if total(f"e{j}")}
                ),
                prompt_tokens=total("prompt"),
                completion_tokens=total("completion"),
                total_tokens=total("total"),
                cost_usd=row[_TMP + "cost_sum"] if row[_TMP + "cost_count"] else None,
                unpriced=row[_TMP + "ok_count"] - total("known"),
                unpriced_models=unpriced,
                unknown_usage=total("unknown_usage"),
                details=stated(DETAILS, ""),
                cache_base=total("cache_base"),
                split=stated(list(split or ()), "split_"),
                latencies=Latencies(latencies[~np.isnan(latencies)]),
                scored=total("scored"),
                correct=total("correct"),
            )
        )
    return out


def ranks(column: pa.ChunkedArray, listed: Sequence[Any]) -> pa.ChunkedArray:
    """Each value's place: its index in `listed`, else after them all in order of the
    value's first appearance (the row order of an aggregation without threads)."""
    later = pc.add(pc.index_in(column, value_set=pc.unique(column)).cast(pa.int64()), len(listed))
    try:
        found = pc.index_in(column, value_set=pa.array(list(listed), column.type))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
        return later  # the listed values are not of the column's type: none is listed
    return pc.coalesce(found.cast(pa.int64()), later)


def model_order(table: pa.Table) -> list[str]:
    """The run's models in the order -m gave them, from the job metadata a batcher OUT
    carries in its footer (its `settings`' `models`; a top-level `models` list, as the job
    folder's job.json has, first); [] for a table without it (a plain Parquet file, a
    running job's parts) or when -m named none."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    try:
        meta = json.loads(raw) if raw else {}
        models = meta.get("models") or (meta.get("settings") or {}).get("models") or []
    except (ValueError, AttributeError):
        return []
    return [m for m in models if isinstance(m, str)] if isinstance(models, list) else []


def _most_first(counts: dict[str, int]) -> Counter[str]:
    return Counter(dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))


def group_label(key: dict[str, Any]) -> str:
    """A group's display label: "total" for {}, the bare value for one key column, else
    "m1, temperature=0.7" (model bare, other columns as name=value without "param_")."""
    if not key:
        return "total"
    if len(key) == 1:
        return key_text(next(iter(key.values())))
    parts = []
    for name, value in key.items():
        if name == "model":
            parts.append(key_text(value))
        else:
            parts.append(f"{name.removeprefix('param_')}={key_text(value)}")
    return ", ".join(parts)


def _work_columns(table: pa.Table, reference: str | None, answer: str | None) -> dict[str, Any]:
    """The per-row values the groups sum (and `types`: the error types present)."""
    ok = pc.equal(text(table["status"]), "ok").fill_null(False)
    cost = optional(table, "cost_usd", pa.float64())
    prompt = optional(table, "prompt_tokens", pa.int64())
    cached = optional(table, "cached", pa.bool_()).fill_null(False)
    work: dict[str, Any] = {
        "ok": ok.cast(pa.int64()),
        "known": pc.is_valid(cost).cast(pa.int64()),
        "unknown_usage": pc.and_(pc.is_null(prompt), pc.invert(cached)).cast(pa.int64()),
        "prompt": prompt.fill_null(0),
        "completion": optional(table, "completion_tokens", pa.int64()).fill_null(0),
        "total": optional(table, "total_tokens", pa.int64()).fill_null(0),
        "cost": cost,
    }
    for name in DETAILS:
        values = optional(table, name, pa.int64())
        work[name] = values.fill_null(0)
        work[f"{name}_n"] = pc.is_valid(values).cast(pa.int64())
    stated = pc.is_valid(optional(table, "cached_tokens", pa.int64()))
    work["cache_base"] = pc.if_else(stated, work["prompt"], 0)
    if "model" in table.column_names:
        work["model"] = text(table["model"])
    fresh = pc.invert(optional(table, "cached", pa.bool_()).fill_null(False))
    latency = optional(table, "latency_s", pa.float64())
    work["latency"] = pc.if_else(pc.and_(ok, fresh), latency, None)
    if reference is not None and answer is not None:
        expected = normalised(table[reference])
        scored = pc.not_equal(expected, "").fill_null(False)
        same = pc.equal(normalised(table[answer]), expected).fill_null(False)
        work["scored"] = scored.cast(pa.int64())
        work["correct"] = pc.and_(pc.and_(scored, ok), same).cast(pa.int64())
    kind = text(optional(table, "error_type", pa.string())).fill_null(UNKNOWN_ERROR)
    error_type = pc.if_else(ok, pa.scalar(None, pa.string()), kind)
    types = sorted(t for t in pc.unique(error_type).to_pylist() if t is not None)
    for i, t in enumerate(types):
        work[f"e{i}"] = pc.equal(error_type, t).fill_null(False).cast(pa.int64())
    work["types"] = types
    return work


def decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as strings (dictionary-decoded; other types cast, else Python's str)."""
    column = decoded(column)
    if column.type == pa.string():
        return column
    try:
        return column.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        values = [None if v is None else str(v) for v in column.to_pylist()]
        return pa.chunked_array([pa.array(values, pa.string())])


def normalised(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Strings stripped of surrounding whitespace and lower-cased, for comparing answers."""
    return pc.utf8_lower(pc.utf8_trim_whitespace(text(column)))


def optional(table: pa.Table, name: str, kind: pa.DataType) -> pa.ChunkedArray:
    """A column cast to `kind`, or nulls when the table has none."""
    if name in table.column_names:
        return decoded(table[name]).cast(kind)
    return pa.chunked_array([pa.nulls(table.num_rows, kind)])
