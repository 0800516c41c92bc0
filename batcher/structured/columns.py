"""The typed Arrow columns that parsed structured replies become, one per top-level property.

Arrow types of `arrow_fields` (per top-level property, recursively):

| JSON Schema | Arrow |
| --- | --- |
| `string` | `string` |
| `string` with an `enum` of strings (or an `enum` of strings alone) | `dictionary<int32, string>` |
| `integer`, `number`, `boolean` | `int64`, `float64`, `bool` |
| `array` whose `items` map to a type | `list<item type>` |
| `object` with `properties` (no extra `additionalProperties`) | `struct` of the properties |
| `[T, "null"]`, `anyOf`/`oneOf` of T and `{"type": "null"}` | T's type (every column is nullable) |
| local `$ref` (`#/$defs/...`, `#/definitions/...`) | the referenced schema's type |
| anything else: no type, several types, free-form objects and arrays, recursion | `JSON_TEXT` |

`JSON_TEXT` (`large_string`) holds compact JSON text: *every* value of such a column is
JSON-encoded (a string value `abc` is stored as `"abc"`), and JSON null stays null. It is a
distinct Arrow type so that `typed_columns` knows which columns to encode, also inside structs
and lists; Parquet readers (pandas, polars, DuckDB) see it as an ordinary string column.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from typing import Any

import orjson
import pyarrow as pa

from batcher.structured.schema import pointer

JSON_TEXT = pa.large_string()  # the Arrow type of a column holding compact JSON text
_OUT_PREFIX = "out_"
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


Field = tuple[str, str, pa.DataType]  # (property name, output column name, Arrow type)


class _Recursion(Exception):
    """A $ref met again inside its own expansion; caught where it was first expanded."""

    def __init__(self, ref: str) -> None:
        super().__init__(ref)
        self.ref = ref


def arrow_fields(schema: dict, taken: Collection[str] = ()) -> list[Field]:
    """One (property, column, Arrow type) per top-level property, in the schema's order; a
    column named like one in `taken` gets the prefix "out_" (again, until it is free)."""
    node = _resolve(schema, schema)
    properties = node.get("properties") if isinstance(node, dict) else None
    if not isinstance(properties, dict):
        return []
    used = set(taken)
    fields: list[Field] = []
    for name, sub in properties.items():
        column = name
        while column in used:
            column = _OUT_PREFIX + column
        used.add(column)
        fields.append((name, column, _arrow_type(sub, schema, ())))
    return fields


def _arrow_type(node: Any, root: dict, stack: tuple[str, ...]) -> pa.DataType:
    """The Arrow type of one schema; JSON_TEXT when it is not pinned down."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not isinstance(ref, str):
        return _arrow_type_of(node, root, stack)
    if ref in stack:
        raise _Recursion(ref)
    target = pointer(root, ref) if ref.startswith("#") else None
    if target is None:
        return JSON_TEXT
    try:
        return _arrow_type(target, root, (*stack, ref))
    except _Recursion as exc:
        if exc.ref != ref:
            raise
        return JSON_TEXT


def _resolve(node: Any, root: dict) -> Any:
    """`node` with its local `$ref`s followed (a cycle stops at the first repeat)."""
    seen: set[str] = set()
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"] not in seen:
        seen.add(node["$ref"])
        node = pointer(root, node["$ref"])
    return node


def _arrow_type_of(node: Any, root: dict, stack: tuple[str, ...]) -> pa.DataType:
    if not isinstance(node, dict):
        return JSON_TEXT  # a boolean schema
    for key in ("anyOf", "oneOf"):
        if key in node:
            return _union_type(node[key], root, stack)
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
        return _arrow_type(node["allOf"][0], root, stack)
    kind = _single_type(node.get("type"))
    if kind is None:
        return _DICTIONARY if _string_enum(node) else JSON_TEXT
    if kind == "string":
        return _DICTIONARY if _string_enum(node) else pa.string()
    if kind == "array":
        return _array_type(node, root, stack)
    if kind == "object":
        return _struct_type(node, root, stack)
    return _SCALARS.get(kind, JSON_TEXT)


_DICTIONARY = pa.dictionary(pa.int32(), pa.string())
_SCALARS = {"integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}


def _single_type(kind: Any) -> str | None:
    """ "T" for `"T"`, `["T"]` and `["T", "null"]` (either order); otherwise None."""
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        kind = rest[0] if len(rest) == 1 and len(kind) <= 2 else None
    return kind if isinstance(kind, str) and kind != "null" else None


def _string_enum(node: dict) -> bool:
    values = node.get("enum")
    if not isinstance(values, list):
        return False
    values = [v for v in values if v is not None]
    return bool(values) and all(isinstance(v, str) for v in values)


def _union_type(branches: Any, root: dict, stack: tuple[str, ...]) -> pa.DataType:
    """anyOf/oneOf: the branches' one type, ignoring `{"type": "null"}` branches."""
    if not isinstance(branches, list):
        return JSON_TEXT
    types = {_arrow_type(b, root, stack) for b in branches if not _is_null_schema(b)}
    return types.pop() if len(types) == 1 else JSON_TEXT


def _is_null_schema(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "null"


def _array_type(node: dict, root: dict, stack: tuple[str, ...]) -> pa.DataType:
    items = node.get("items")
    if not isinstance(items, dict) or "prefixItems" in node:
        return JSON_TEXT
    item = _arrow_type(items, root, stack)
    return JSON_TEXT if item == JSON_TEXT else pa.list_(item)


def _struct_type(node: dict, root: dict, stack: tuple[str, ...]) -> pa.DataType:
    properties = node.get("properties")
    extra = node.get("additionalProperties", False) is not False or "patternProperties" in node
    if not isinstance(properties, dict) or not properties or extra:
        return JSON_TEXT
    return pa.struct([(name, _arrow_type(sub, root, stack)) for name, sub in properties.items()])


# --- typed columns ----------------------------------------------------------------------


def typed_columns(values: Sequence[dict | None], fields: Sequence[Field]) -> dict[str, pa.Array]:
    """The output columns for a batch of parsed objects (None: the row failed, null
    everywhere); a value that does not fit its column's type is null."""
    columns: dict[str, pa.Array] = {}
    for name, column, kind in fields:
        raw = [None if v is None else v.get(name) for v in values]
        columns[column] = pa.array(_column_fitter(kind)(raw), type=kind)
    return columns


def parsed_json(value: dict | None) -> str | None:
    """Compact JSON of a whole parsed object (the `parsed` column), None stays None."""
    return None if value is None else _dumps(value)


def _column_fitter(kind: pa.DataType) -> Callable[[list], list]:
    """A function fitting a list of values to `kind`: one comprehension for scalar types."""
    if kind == JSON_TEXT:
        return lambda xs: [None if x is None else _dumps(x) for x in xs]
    if kind == pa.string() or kind == _DICTIONARY:
        return lambda xs: [x if type(x) is str else None for x in xs]
    if kind == pa.int64():
        return lambda xs: [
            x if type(x) is int and _I64_MIN <= x <= _I64_MAX else _fit_int(x) for x in xs
        ]
    if kind == pa.float64():
        return lambda xs: [x if type(x) is float else _fit_float(x) for x in xs]
    if kind == pa.bool_():
        return lambda xs: [x if x is True or x is False else None for x in xs]
    fit = _fitter(kind)
    return lambda xs: [fit(x) for x in xs]


def _fitter(kind: pa.DataType) -> Callable[[Any], Any]:
    """A function fitting one value to `kind` (None when it does not fit)."""
    if kind == JSON_TEXT:
        return _fit_json
    if kind == pa.string() or kind == _DICTIONARY:
        return _fit_str
    if kind == pa.int64():
        return _fit_int
    if kind == pa.float64():
        return _fit_float
    if kind == pa.bool_():
        return _fit_bool
    if pa.types.is_list(kind):
        return _list_fitter(_column_fitter(kind.value_type))
    if pa.types.is_struct(kind):
        return _struct_fitter([(f.name, _fitter(f.type)) for f in kind])
    raise TypeError(f"no column builder for Arrow type {kind}")


def _list_fitter(fit_all: Callable[[list], list]) -> Callable[[Any], Any]:
    return lambda x: fit_all(x) if type(x) is list else None


def _struct_fitter(children: list[tuple[str, Callable[[Any], Any]]]) -> Callable[[Any], Any]:
    def fit(x: Any) -> dict | None:
        return {name: f(x.get(name)) for name, f in children} if type(x) is dict else None

    return fit


def _fit_json(x: Any) -> str | None:
    return None if x is None else _dumps(x)


def _fit_str(x: Any) -> str | None:
    return x if type(x) is str else None


def _fit_bool(x: Any) -> bool | None:
    return x if x is True or x is False else None


def _fit_int(x: Any) -> int | None:
    if type(x) is float and x.is_integer():
        x = int(x)
    return x if type(x) is int and _I64_MIN <= x <= _I64_MAX else None


def _fit_float(x: Any) -> float | None:
    if type(x) is float:
        return x
    if type(x) is int:
        try:
            return float(x)
        except OverflowError:
            return None
    return None


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an int beyond 64 bits, which orjson does not write
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
