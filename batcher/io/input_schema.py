"""The input's own columns as Arrow: their schema, inferred over the whole input
(`SchemaBuilder`), and a batch of rows as a table of exactly that schema (`rows_table`), so
they can be kept next to the results in OUT."""

from __future__ import annotations

import json
import os
from typing import Any

import orjson
import pyarrow as pa

from batcher.io.inputs import RowBatch, read_batches

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_NULL, _BOOL, _INT, _FLOAT, _STR, _OTHER = 1, 2, 4, 8, 16, 32
_BITS = {type(None): _NULL, bool: _BOOL, int: _INT, float: _FLOAT, str: _STR}


class SchemaBuilder:
    """Infers the Arrow schema of the input's columns, in first-seen order, batch by batch.

    Parquet: the file's own schema. JSONL/CSV, per column from the value types seen (nulls
    aside): only bool -> bool; only int -> int64; int and float, or float -> float64; only
    str, or only nulls -> string; anything else (lists, objects, mixes) -> string, holding
    compact JSON for the values that are not strings. CSV values are strings, so CSV columns
    are strings. Unreadable rows have no columns.
    """

    def __init__(self) -> None:
        self._masks: dict[str, int] = {}
        self._fixed: pa.Schema | None = None

    def add(self, batch: RowBatch) -> None:
        if batch.arrow is not None:
            if self._fixed is None:
                self._fixed = batch.arrow.schema
            return
        masks = self._masks
        for row in batch.rows:
            for name, value in row.items():
                bit = _BITS.get(type(value), _OTHER)
                if bit == _INT and not INT64_MIN <= value <= INT64_MAX:
                    bit = _OTHER
                masks[name] = masks.get(name, 0) | bit

    def schema(self) -> pa.Schema:
        if self._fixed is not None:
            return self._fixed
        return pa.schema([(name, _arrow_type(mask)) for name, mask in self._masks.items()])


def _arrow_type(mask: int) -> pa.DataType:
    mask &= ~_NULL
    if mask == _BOOL:
        return pa.bool_()
    if mask == _INT:
        return pa.int64()
    if mask in (_FLOAT, _INT | _FLOAT):
        return pa.float64()
    return pa.string()


def input_schema(path: str | os.PathLike[str], *, limit: int | None = None) -> pa.Schema:
    """The inferred schema of the input's own columns (one pass over the file)."""
    builder = SchemaBuilder()
    for batch in read_batches(path, limit=limit):
        builder.add(batch)
    return builder.schema()


def rows_table(batch: RowBatch, schema: pa.Schema) -> pa.Table:
    """The batch's rows as a table of exactly `schema` (from `SchemaBuilder`), values
    converted as its rules say; unreadable rows and values that do not fit become null."""
    if batch.arrow is not None and batch.arrow.schema.equals(schema):
        return pa.Table.from_batches([batch.arrow])
    arrays = []
    for f in schema:
        values = [None if i in batch.bad else row.get(f.name) for i, row in enumerate(batch.rows)]
        arrays.append(pa.array(_convert(values, f.type), type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _convert(values: list[Any], kind: pa.DataType) -> list[Any]:
    if kind == pa.string():
        return [v if v is None or type(v) is str else compact_json(v) for v in values]
    if kind == pa.int64():
        return [v if type(v) is int and INT64_MIN <= v <= INT64_MAX else None for v in values]
    if kind == pa.float64():
        return [float(v) if type(v) in (int, float) else None for v in values]
    if kind == pa.bool_():
        return [v if type(v) is bool else None for v in values]
    return values


def compact_json(value: Any) -> str:
    """Compact JSON text of a value; odd types (bytes, Decimal) as their str()."""
    try:
        return orjson.dumps(value, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):  # nested over 254 levels, ints over 64 bits
        pass
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (RecursionError, TypeError, ValueError):
        return _deep_json(value)


def _deep_json(value: Any) -> str:
    """Compact JSON without recursion, for values nested deeper than the stack allows."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            out.append(item)
        elif isinstance(item, dict):
            stack.append(_Text("}"))
            for j, (key, sub) in enumerate(reversed(list(item.items()))):
                stack.append(sub)
                stack.append(_Text(json.dumps(str(key), ensure_ascii=False) + ":"))
                if j < len(item) - 1:
                    stack.append(_Text(","))
            stack.append(_Text("{"))
        elif isinstance(item, (list, tuple)):
            stack.append(_Text("]"))
            for j, sub in enumerate(reversed(item)):
                stack.append(sub)
                if j < len(item) - 1:
                    stack.append(_Text(","))
            stack.append(_Text("["))
        else:
            out.append(json.dumps(item, ensure_ascii=False, default=str))
    return "".join(out)


class _Text(str):
    """Already-encoded JSON text on the `_deep_json` stack."""
