"""Deterministic values: the mock's word list and JSON values valid against a JSON Schema
(`instance_for_schema`), drawn from a seed so the same request gets the same value."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from batcher.structured.schema import pointer

WORDS = (
    "amber",
    "basalt",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "granite",
    "harbor",
    "indigo",
    "juniper",
    "kelp",
    "lagoon",
    "meadow",
    "nimbus",
    "obsidian",
    "prairie",
    "quartz",
    "river",
    "sierra",
    "tundra",
    "umber",
    "valley",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
    "aurora",
    "breeze",
    "canyon",
    "dune",
    "estuary",
    "forest",
)


def instance_for_schema(schema: Any, seed_bytes: bytes) -> Any:
    """A value valid against `schema`, chosen deterministically from `seed_bytes`.

    Handles object/string/integer/number/boolean/null/array, enum, const, anyOf/oneOf
    (first branch), allOf (merged), local `$ref`s and type lists (first non-null type).
    `pattern` and `format` are not checked; unknown constructs give a string.
    """
    rng = random.Random(bytes(seed_bytes))
    root = schema if isinstance(schema, dict) else {}
    return _instance(schema, root, rng, 0)


_SHALLOW_DEPTH = 8  # deeper than this: only required properties and minItems items
_MAX_DEPTH = 40  # recursion guard for self-referencing schemas


def _instance(node: Any, root: dict, rng: random.Random, depth: int) -> Any:
    """Dispatch on the schema keywords of `node`."""
    if not isinstance(node, dict):
        return None if node is False else "mock"
    if depth > _MAX_DEPTH:
        return None
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = pointer(root, ref)
        if isinstance(target, dict):
            return _instance(target, root, rng, depth + 1)
    if "const" in node:
        return node["const"]
    enum = node.get("enum")
    if isinstance(enum, list) and enum:
        return enum[rng.randrange(len(enum))]
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and options:
            rest = {k: v for k, v in node.items() if k != key}
            return _instance(_merge(rest, _deref(root, options[0])), root, rng, depth + 1)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged = {k: v for k, v in node.items() if k != "allOf"}
        for sub in all_of:
            merged = _merge(merged, _deref(root, sub))
        return _instance(merged, root, rng, depth + 1)
    builder = _BUILDERS.get(_schema_type(node), _string_value)
    return builder(node, root, rng, depth)


def _deref(root: dict, node: Any) -> dict:
    """`node` with a top-level `$ref` followed once; non-dicts become {}."""
    if isinstance(node, dict) and isinstance(node.get("$ref"), str):
        target = pointer(root, node["$ref"])
        if isinstance(target, dict):
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _merge(target, rest)
    return node if isinstance(node, dict) else {}


def _merge(base: dict, extra: dict) -> dict:
    """Shallow merge of two schemas: properties merged, required united."""
    out = dict(base)
    for key, value in extra.items():
        if key == "properties" and isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        elif key == "required" and isinstance(out.get(key), list) and isinstance(value, list):
            out[key] = out[key] + [r for r in value if r not in out[key]]
        else:
            out[key] = value
    return out


def _schema_type(node: dict) -> str:
    """The JSON type to generate: the declared one (first non-null) or an inferred one."""
    declared = node.get("type")
    if isinstance(declared, str):
        return declared
    if isinstance(declared, list) and declared:
        names = [t for t in declared if isinstance(t, str)]
        non_null = [t for t in names if t != "null"]
        return non_null[0] if non_null else "null"
    if any(k in node for k in ("properties", "required", "additionalProperties")):
        return "object"
    if any(k in node for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in node for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return "string"


def _num(value: Any) -> float | None:
    """`value` when it is a real number (not a bool), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def _bounds(node: dict) -> tuple[float | None, bool, float | None, bool]:
    """(low, low exclusive, high, high exclusive) from draft-4 and draft-6+ keywords."""
    lo, hi = _num(node.get("minimum")), _num(node.get("maximum"))
    lo_ex = hi_ex = False
    ex_min, ex_max = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if ex_min is True:
        lo_ex = lo is not None
    elif _num(ex_min) is not None and (lo is None or ex_min >= lo):
        lo, lo_ex = ex_min, True
    if ex_max is True:
        hi_ex = hi is not None
    elif _num(ex_max) is not None and (hi is None or ex_max <= hi):
        hi, hi_ex = ex_max, True
    return lo, lo_ex, hi, hi_ex


def _fill_range(lo: float | None, hi: float | None) -> tuple[float, float]:
    """Open ends of a range get a width of 100."""
    if lo is None and hi is None:
        return 0, 100
    if lo is None:
        return hi - 100, hi
    if hi is None:
        return lo, lo + 100
    return lo, hi


def _integer_value(node: dict, root: dict, rng: random.Random, depth: int) -> int:
    """An integer inside the bounds (and a multiple of `multipleOf` when possible)."""
    lo, lo_ex, hi, hi_ex = _bounds(node)
    lo_i = None if lo is None else (math.floor(lo) + 1 if lo_ex else math.ceil(lo))
    hi_i = None if hi is None else (math.ceil(hi) - 1 if hi_ex else math.floor(hi))
    lo_i, hi_i = _fill_range(lo_i, hi_i)
    if hi_i < lo_i:
        return int(lo_i)
    step = _num(node.get("multipleOf"))
    if step and step > 0 and float(step).is_integer():
        k_lo, k_hi = math.ceil(lo_i / step), math.floor(hi_i / step)
        if k_lo <= k_hi:
            return int(rng.randint(k_lo, k_hi) * step)
    return rng.randint(int(lo_i), int(hi_i))


def _number_value(node: dict, root: dict, rng: random.Random, depth: int) -> float | int:
    """A number inside the bounds, rounded to 2 decimals when that stays inside."""
    lo, lo_ex, hi, hi_ex = _bounds(node)
    lo, hi = _fill_range(lo, hi)
    step = _num(node.get("multipleOf"))
    if step and step > 0:
        k_lo, k_hi = math.ceil(lo / step), math.floor(hi / step)
        k_lo += 1 if lo_ex and k_lo * step <= lo else 0
        k_hi -= 1 if hi_ex and k_hi * step >= hi else 0
        if k_lo <= k_hi:
            return rng.randint(k_lo, k_hi) * step
    for value in (round(lo + (hi - lo) * rng.random(), 2), (lo + hi) / 2):
        if (lo < value if lo_ex else lo <= value) and (value < hi if hi_ex else value <= hi):
            return value
    return lo


_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date-time": lambda r: f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T12:00:00Z",
    "date": lambda r: f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "time": lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z",
    "email": lambda r: f"{r.choice(WORDS)}@example.com",
    "uri": lambda r: f"https://example.com/{r.choice(WORDS)}",
    "url": lambda r: f"https://example.com/{r.choice(WORDS)}",
    "uuid": lambda r: str(uuid.UUID(int=r.getrandbits(128), version=4)),
}


def _string_value(node: dict, root: dict, rng: random.Random, depth: int) -> str:
    """Two words (or a `format`-shaped value), padded or cut to min/maxLength."""
    fmt = node.get("format")
    make = _FORMATS.get(fmt) if isinstance(fmt, str) else None
    value = make(rng) if make else f"{rng.choice(WORDS)} {rng.choice(WORDS)}"
    min_len = _num(node.get("minLength"))
    max_len = _num(node.get("maxLength"))
    if min_len is not None and len(value) < min_len:
        value += "x" * (int(min_len) - len(value))
    if max_len is not None and len(value) > max_len:
        value = value[: max(int(max_len), 0)]
    return value


def _boolean_value(node: dict, root: dict, rng: random.Random, depth: int) -> bool:
    """True or False."""
    return rng.random() < 0.5


def _null_value(node: dict, root: dict, rng: random.Random, depth: int) -> None:
    """None."""
    return None


def _array_value(node: dict, root: dict, rng: random.Random, depth: int) -> list:
    """1-3 items (within minItems/maxItems), honouring prefixItems and uniqueItems."""
    prefix = node.get("prefixItems")
    items = node.get("items")
    if isinstance(items, list):  # draft-4 tuple form
        prefix, items = items, node.get("additionalItems", {})
    prefix = prefix if isinstance(prefix, list) else []
    lo = int(_num(node.get("minItems")) or 0)
    hi = _num(node.get("maxItems"))
    low = lo if depth >= _SHALLOW_DEPTH else max(lo, 1)
    high = max(low, 3) if low <= 3 and depth < _SHALLOW_DEPTH else low
    if hi is not None:
        high = min(high, int(hi))
        low = min(low, high)
    if items is False:
        high = min(high, len(prefix))
        low = min(low, high)
    unique = node.get("uniqueItems") is True
    out: list = []
    seen: set[bytes] = set()
    for i in range(rng.randint(low, high)):
        schema = prefix[i] if i < len(prefix) else items
        schema = schema if schema is not None else {}
        value = _instance(schema, root, rng, depth + 1)
        if unique:
            mark = _unique_mark(value)
            for _ in range(8):
                if mark not in seen:
                    break
                value = _instance(schema, root, rng, depth + 1)
                mark = _unique_mark(value)
            if mark in seen and len(out) >= low:  # no new value: stop early when allowed
                break
            seen.add(mark)
        out.append(value)
    return out


def _unique_mark(value: Any) -> bytes:
    """A comparable form of `value` for uniqueItems."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _object_value(node: dict, root: dict, rng: random.Random, depth: int) -> dict:
    """Every property (only required ones when deep), then required names not declared."""
    props = node.get("properties")
    props = props if isinstance(props, dict) else {}
    required = node.get("required")
    required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
    extra = node.get("additionalProperties")
    extra_schema = extra if isinstance(extra, dict) else {"type": "string"}
    shallow = depth >= _SHALLOW_DEPTH
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if not shallow or name in required:
            out[name] = _instance(sub, root, rng, depth + 1)
    for name in required:
        if name not in out:
            out[name] = _instance(extra_schema, root, rng, depth + 1)
    min_props = int(_num(node.get("minProperties")) or 0)
    while len(out) < min_props and extra is not False:
        out[f"extra_{len(out)}"] = _instance(extra_schema, root, rng, depth + 1)
    max_props = _num(node.get("maxProperties"))
    if max_props is not None:
        for name in [n for n in out if n not in required][: max(0, len(out) - int(max_props))]:
            del out[name]
    return out


_BUILDERS: dict[str, Callable[[dict, dict, random.Random, int], Any]] = {
    "object": _object_value,
    "array": _array_value,
    "string": _string_value,
    "integer": _integer_value,
    "number": _number_value,
    "boolean": _boolean_value,
    "null": _null_value,
}
