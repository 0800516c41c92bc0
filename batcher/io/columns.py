"""The columns of results: the Arrow schemas of parts and of OUT, and results as Arrow.

A part holds every field of a result plus its key (`_row`, `model`, `_variant`, `sample`)
and when it was known (`_done_at`); OUT holds the documented output columns in `Layout`'s
order, with the `param_<key>` columns of a sweep, the typed schema columns and the input's
kept columns. `to_arrow` is the same for a library caller's results (`batcher.to_arrow`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from batcher.errors import UsageError
from batcher.structured.columns import arrow_fields
from batcher.types import DETAILS, Result

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("model", pa.string()),
        ("status", pa.string()),
        ("content", pa.string()),
        ("finish_reason", pa.string()),
        ("refusal", pa.string()),
        ("reasoning", pa.string()),
        ("tool_calls", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        *((name, pa.int64()) for name in DETAILS),
        ("cost_usd", pa.float64()),
        ("latency_s", pa.float64()),
        ("attempts", pa.int32()),
        ("http_status", pa.int32()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("response_id", pa.string()),
        ("response_model", pa.string()),
        ("created", pa.timestamp("ms", tz="UTC")),
        ("request_hash", pa.string()),
        ("search_results", pa.string()),
        ("warning", pa.string()),
        ("cached", pa.bool_()),
    ]
)


# A result's key is (_row, model, _variant, sample): the model by name, so a model list
# edited between runs does not shuffle earlier results; _variant is the --sweep combination.
KEY_SCHEMA = pa.schema([("_row", pa.int64()), ("_variant", pa.int32()), ("sample", pa.int32())])


KEY_NAMES = ("_row", "model", "_variant", "sample")


# Parts also record when each result was known, for `batcher status`.
# Structured output (--schema / --json) adds these, then one typed column per property.
STRUCTURED_SCHEMA = pa.schema([("reasks", pa.int32()), ("parsed", pa.string())])


STREAM_FIELD = pa.field("ttft_s", pa.float64())  # --stream adds it after latency_s
MODE_FIELD = pa.field("mode", pa.string())  # --mode batch adds it last: "batch" or "online"


PART_SCHEMA = pa.schema(
    [
        *KEY_SCHEMA,
        *OUTPUT_SCHEMA,
        STREAM_FIELD,
        *STRUCTURED_SCHEMA,
        ("_done_at", pa.float64()),
        MODE_FIELD,
    ]
)


OUTPUT_NAMES = frozenset(OUTPUT_SCHEMA.names) | {"sample"} | frozenset(STRUCTURED_SCHEMA.names)


def result_columns(results: Iterable[Result]) -> dict[str, list[Any]]:
    """Results as lists of column values, in PART_SCHEMA order."""
    cols: dict[str, list[Any]] = {name: [] for name in PART_SCHEMA.names}
    for r in results:
        reply, usage = r.reply, r.usage
        cols["_row"].append(r.row_index)
        cols["sample"].append(r.sample)
        cols["_variant"].append(r.variant)
        cols["id"].append(r.id)
        cols["model"].append(r.model)
        cols["status"].append(r.status.value)
        cols["prompt_tokens"].append(usage.prompt_tokens)
        cols["completion_tokens"].append(usage.completion_tokens)
        cols["total_tokens"].append(usage.total_tokens)
        for name in DETAILS:
            cols[name].append(getattr(usage, name))
        cols["cost_usd"].append(usage.cost_usd)
        cols["latency_s"].append(r.latency_s)
        cols["ttft_s"].append(r.ttft_s)
        cols["attempts"].append(r.attempts)
        cols["http_status"].append(r.http_status)
        cols["error_type"].append(r.error_type)
        cols["error_message"].append(r.error_message)
        cols["request_hash"].append(r.request_hash)
        cols["cached"].append(r.cached)
        cols["reasks"].append(r.reasks)
        cols["parsed"].append(None if r.parsed is None else orjson.dumps(r.parsed).decode())
        cols["_done_at"].append(r.finished_at)
        cols["mode"].append(r.mode)
        if reply is None:
            for name in REPLY_FIELDS:
                cols[name].append(None)
            continue
        cols["content"].append(reply.content)
        cols["finish_reason"].append(reply.finish_reason)
        cols["refusal"].append(reply.refusal)
        cols["reasoning"].append(reply.reasoning)
        cols["tool_calls"].append(reply.tool_calls)
        cols["response_id"].append(reply.response_id)
        cols["response_model"].append(reply.response_model)
        cols["created"].append(reply.created)
        cols["search_results"].append(reply.search_results)
        cols["warning"].append(reply.warning)
    return cols


REPLY_FIELDS = (
    "content",
    "finish_reason",
    "refusal",
    "reasoning",
    "tool_calls",
    "response_id",
    "response_model",
    "created",
    "search_results",
    "warning",
)


def results_table(results: Iterable[Result]) -> pa.Table:
    cols = result_columns(results)
    arrays = [pa.array(cols[f.name], type=_value_type(f.type)).cast(f.type) for f in PART_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=PART_SCHEMA)


def _value_type(t: pa.DataType) -> pa.DataType:
    """The type of the Python values: `created` holds unix seconds."""
    return pa.timestamp("s", tz="UTC") if pa.types.is_timestamp(t) else t


@dataclass(frozen=True)
class Layout:
    """The columns of OUT: results, structured output, typed schema columns, input columns."""

    input_schema: pa.Schema | None = None
    with_sample: bool = False
    structured: bool = False
    streamed: bool = False
    batched: bool = False  # --mode batch: the `mode` column
    typed: tuple[tuple[str, str, pa.DataType], ...] = ()  # (property, column, type)
    params: tuple[tuple[str, pa.DataType, tuple], ...] = ()  # param_<key>, type, grid values

    def input_name(self, name: str) -> str:
        return f"input_{name}" if name in OUTPUT_NAMES else name

    def schema(self) -> pa.Schema:
        fields = list(OUTPUT_SCHEMA)
        if self.streamed:
            fields.insert(fields.index(OUTPUT_SCHEMA.field("latency_s")) + 1, STREAM_FIELD)
        if self.batched:
            fields.append(MODE_FIELD)
        if self.with_sample:
            fields.insert(2, pa.field("sample", pa.int32()))
        at = 3 if self.with_sample else 2
        fields[at:at] = [pa.field(name, kind) for name, kind, _ in self.params]
        if self.structured:
            fields += list(STRUCTURED_SCHEMA)
            fields += [pa.field(column, kind) for _, column, kind in self.typed]
        for f in self.input_schema or []:
            fields.append(pa.field(self.input_name(f.name), f.type))
        return pa.schema(fields)


def param_column(key: str, values: tuple) -> tuple[str, pa.DataType, tuple]:
    """The `param_<key>` column of a swept body key, typed from its values."""
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        kind = pa.bool_()
    elif kinds == {int}:
        kind = pa.int64()
    elif kinds <= {int, float}:
        kind, values = pa.float64(), tuple(float(v) for v in values)
    elif kinds == {str}:
        kind = pa.string()
    else:  # lists, objects, mixtures: JSON text
        kind = pa.string()
        values = tuple(json.dumps(v, sort_keys=True) for v in values)
    return f"param_{key}", kind, values


PUBLIC_NAMES = (*OUTPUT_SCHEMA.names, "sample", "ttft_s", *STRUCTURED_SCHEMA.names)


def to_arrow(results: Iterable[Result]) -> pa.Table:
    """Results as an Arrow table of the documented output columns (README, Output): `id`,
    `model`, `status`, ..., `sample`, `ttft_s`, `reasks`, `parsed`; no private `_` columns.
    `.to_batches()` gives record batches, `.to_pandas()` a DataFrame."""
    return results_table(results).select(list(PUBLIC_NAMES))


def kept_columns(keep: str | tuple[str, ...], schema: pa.Schema) -> list[str] | None:
    """The input columns `--keep-columns` names (all, none or a list), checked; None: none."""
    names = list(schema.names)
    if keep == "all":
        return names or None
    if keep == "none":
        return None
    missing = [c for c in keep if c not in names]
    if missing:
        raise UsageError(
            f"--keep-columns: no input column '{missing[0]}' (columns: {', '.join(names)})"
        )
    return list(keep)


def output_layout(
    *,
    kept: pa.Schema | None,
    samples: int,
    streamed: bool,
    sweep: Sequence[tuple[str, Sequence[Any]]],
    grid: Sequence[Mapping[str, Any]],
    structured: bool,
    schema: dict | None,
    batched: bool = False,
) -> Layout:
    """The columns of a job's OUT: `kept` input columns, a `sample` column with more than one
    sample, `ttft_s` when streamed, a `param_<key>` column per swept key, and with a reply
    schema its typed columns."""
    taken = set(OUTPUT_NAMES) | set(kept.names if kept is not None else ())
    return Layout(
        input_schema=kept,
        with_sample=samples > 1,
        streamed=streamed,
        batched=batched,
        params=tuple(param_column(key, tuple(combo[key] for combo in grid)) for key, _ in sweep),
        structured=structured,
        typed=tuple(arrow_fields(schema, taken)) if schema is not None else (),
    )


class _NoPandas:
    """A meta-path finder for which pandas does not exist (see `skip_pandas_probe`)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def skip_pandas_probe() -> None:
    """pyarrow imports pandas (0.4 s of CPU) the first time it converts a Python value, only
    to ask whether the value is a pandas object; batcher's never are, and batcher never uses
    pandas. Let that first probe find no pandas. For the console command only (a process of
    its own): pyarrow still imports pandas where it needs it (`to_pandas`)."""
    if "pandas" in sys.modules:
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)
