"""Structured output: a JSON Schema for the reply, lenient parsing, validation, re-ask
messages, and the typed Arrow columns the parsed objects become.

Everything here is pure (no I/O except `load_schema`) and runs once per reply, so the
validator is compiled once and the column builders make one `pa.array` call per column.

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
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson
import pyarrow as pa

from batcher.errors import InputError
from batcher.io.inputs import json_kind

if TYPE_CHECKING:  # jsonschema itself is imported only by jobs with a schema (~50 ms)
    from jsonschema.exceptions import ValidationError

__all__ = [
    "JSON_OBJECT",
    "JSON_TEXT",
    "LENGTH_PROBLEM",
    "Check",
    "ReplyValidator",
    "arrow_fields",
    "extract_json",
    "load_schema",
    "parsed_json",
    "response_format",
    "typed_columns",
]

JSON_OBJECT = {"type": "json_object"}
JSON_TEXT = pa.large_string()  # the Arrow type of a column holding compact JSON text

MAX_PROBLEMS = 5  # schema errors listed in one problem
_MESSAGE_CHARS = 300  # one schema error's message at most
_NAME_CHARS = 64  # OpenAI's limit for json_schema.name
_OUT_PREFIX = "out_"
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

_NAME_JUNK = re.compile(r"[^a-zA-Z0-9_-]+")
_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_SIGNIFICANT = re.compile(r'[{}"\\]')  # the characters the brace scanner looks at
_IDENTIFIER = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*")  # as in jsonschema's json_path
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})  # values, not schemas
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})


# --- the schema file and the request ----------------------------------------------------


def load_schema(path: str | os.PathLike[str]) -> dict:
    """The JSON Schema in `path`, checked; any problem is one InputError line naming the file."""
    source = os.fspath(path)
    schema = _read_json(path, source)
    if not isinstance(schema, dict):
        raise InputError(f"{source}: expected a JSON object, got {json_kind(schema)}")
    _check_schema(schema, source)
    if schema.get("type") != "object":
        raise InputError(f"{source}: the schema must describe an object (type: object)")
    _check_refs(schema, source)
    return schema


def _read_json(path: str | os.PathLike[str], source: str) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{source}: is a directory, not a file") from None
    except PermissionError:
        raise InputError(f"{source}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read: {_one_line(exc.strerror or str(exc))}") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    if not data.strip():
        raise InputError(f"{source}: the file is empty")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("str is not valid UTF-8"):
            raise InputError(f"{source}: invalid UTF-8") from None
        reason = f"{_one_line(exc.msg)} at line {exc.lineno}"
        raise InputError(f"{source}: invalid JSON: {reason}") from None


def _check_schema(schema: dict, source: str) -> None:
    """Raise unless `schema` is valid against its draft's meta-schema."""
    from jsonschema.exceptions import best_match
    from jsonschema.validators import Draft202012Validator, validator_for

    draft = schema.get("$schema")
    cls = validator_for(schema, default=None) if isinstance(draft, str) else None
    if draft is None:
        cls = Draft202012Validator
    elif cls is None:
        raise InputError(
            f"{source}: unknown $schema {draft!r} (name a JSON Schema draft, "
            "e.g. https://json-schema.org/draft/2020-12/schema, or leave it out)"
        )
    meta = cls(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER)  # checks regex patterns
    error = best_match(meta.iter_errors(schema))
    if error is not None:
        message = _one_line(error.message, 200)
        raise InputError(f"{source}: invalid JSON Schema: {message} (at {error.json_path})")


def _check_refs(schema: dict, source: str) -> None:
    """Raise unless every `$ref` is local and resolves (jsonschema would fail per reply)."""
    for ref, where in _refs(schema, "$"):
        if not ref.startswith("#"):
            raise InputError(
                f"{source}: only local $ref values (#/...) are supported, not {ref!r} (at {where})"
            )
        if _pointer(schema, ref) is None:
            raise InputError(f"{source}: $ref {ref!r} does not resolve (at {where})")


def _refs(node: Any, where: str) -> list[tuple[str, str]]:
    """(ref, JSON path of the schema holding it) for every `$ref` under `node`."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.append((node["$ref"], where))
        for key, value in node.items():
            path = _json_path(where, key)
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                for name, sub in value.items():
                    found += _refs(sub, _json_path(path, name))
            elif key not in _DATA_KEYWORDS:
                found += _refs(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _refs(value, f"{where}[{i}]")
    return found


def _json_path(where: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{where}.{key}"
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"{where}['{escaped}']"


def _pointer(root: dict, ref: str) -> Any:
    """The schema a local `$ref` ("#", "#/$defs/x") points to, or None."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None  # an $anchor: not followed here
    node: Any = root
    for raw in ref[2:].split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def response_format(schema: dict, name: str) -> dict:
    """The `response_format` body value asking for `schema` in strict mode."""
    clean = _NAME_JUNK.sub("_", name).strip("_")[:_NAME_CHARS] or "response"
    return {"type": "json_schema", "json_schema": {"name": clean, "schema": schema, "strict": True}}


# --- parsing a reply --------------------------------------------------------------------


def extract_json(text: str) -> Any:
    """The JSON value in a reply: the whole text, a single fenced block, or the one balanced
    `{...}` object within prose. ValueError with a short reason when none or several."""
    text = text.strip().lstrip("\ufeff")
    if not text:
        raise ValueError("the reply is empty")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    if "```" in text:
        fences = _FENCE.findall(text)
        if len(fences) == 1:
            try:
                return orjson.loads(fences[0])
            except orjson.JSONDecodeError:
                pass
    return _object_in_prose(text)


def _object_in_prose(text: str) -> dict:
    spans, closed = _object_spans(text)
    objects: list[dict] = []
    first_error = None
    for start, end in spans:
        try:
            objects.append(orjson.loads(text[start:end]))
        except orjson.JSONDecodeError as exc:
            line = text.count("\n", 0, start) + exc.lineno
            first_error = first_error or f"invalid JSON: {_one_line(exc.msg)} at line {line}"
    if not closed:
        what = "an incomplete JSON object" if not objects else "a JSON object and an incomplete one"
        raise ValueError(f"found {what} (a '{{' is never closed)")
    if len(objects) == 1:
        return objects[0]
    if objects:
        raise ValueError(f"found {len(objects)} JSON objects")
    raise ValueError(first_error or "no JSON object found")


def _object_spans(text: str) -> tuple[list[tuple[int, int]], bool]:
    """The outermost balanced `{...}` spans (braces in JSON strings do not count), and
    whether every `{` was closed."""
    spans: list[tuple[int, int]] = []
    depth = start = pos = 0
    in_string = False
    search = _SIGNIFICANT.search
    while (m := search(text, pos)) is not None:
        ch, i = m.group(), m.start()
        pos = i + 1
        if in_string:
            if ch == "\\":
                pos = i + 2
            elif ch == '"':
                in_string = False
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
        elif ch == '"' and depth:
            in_string = True
    return spans, depth == 0


# --- checking a reply -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """The verdict on one reply: the valid object, or the problem to tell the model."""

    value: dict | None  # the parsed, valid object; None when there is a problem
    problem: str | None  # one paragraph for the model; None when valid
    kind: str | None  # "not_json" | "schema" | "length" | None

    @property
    def ok(self) -> bool:
        return self.problem is None


LENGTH_PROBLEM = (
    "the reply was cut off because it reached the max_tokens limit before the JSON object "
    "was complete"
)


class ReplyValidator:
    """Checks replies against a schema (compiled once), or only for a JSON object when the
    schema is None (json_object mode). The schema should come from `load_schema`."""

    __slots__ = ("_fast", "_validator", "schema")

    def __init__(self, schema: dict | None) -> None:
        self.schema = schema
        self._validator = self._fast = None
        if schema is not None:
            from jsonschema.validators import Draft202012Validator, validator_for

            cls = validator_for(schema, default=Draft202012Validator)
            self._validator = cls(schema)
            self._fast = _fast_checker(schema, cls)

    def check(self, content: str | None, finish_reason: str | None) -> Check:
        """The parsed object if `content` is one that follows the schema, else the problem."""
        if finish_reason == "length":
            return Check(None, LENGTH_PROBLEM, "length")
        if not content or content.isspace():
            return Check(None, "the reply is empty", "not_json")
        try:
            value = extract_json(content)
        except ValueError as exc:
            return Check(None, str(exc), "not_json")
        if not isinstance(value, dict):
            return Check(None, f"expected a JSON object, got {json_kind(value)}", "not_json")
        if self._validator is not None and (self._fast is None or not self._fast(value)):
            problem = _schema_problem(list(self._validator.iter_errors(value)))
            if problem is not None:
                return Check(None, problem, "schema")
        return Check(value, None, None)

    def reask_message(self, check: Check) -> dict:
        """The user message that asks the model to answer again after `check`'s problem."""
        if check.problem is None:
            raise ValueError("the reply was valid: nothing to ask again")
        what = "a JSON object that follows the schema" if self.schema else "a JSON object"
        if check.kind == "length":
            content = (
                f"Your previous reply was cut off: {check.problem}. Reply again with only {what}, "
                "and answer more briefly so that it fits."
            )
        else:
            content = (
                f"Your previous reply was not valid: {check.problem}. Reply again with only {what}."
            )
        return {"role": "user", "content": content}


def _schema_problem(errors: list[ValidationError]) -> str | None:
    """Up to MAX_PROBLEMS errors as "$.path: message", joined; None when there are none."""
    if not errors:
        return None
    from jsonschema.exceptions import best_match

    lines: list[str] = []
    for error in errors:
        error = best_match([error])  # the most specific error within an anyOf/oneOf
        line = f"{error.json_path}: {_one_line(error.message, _MESSAGE_CHARS)}"
        if line not in lines:
            lines.append(line)
    shown = "; ".join(lines[:MAX_PROBLEMS])
    more = len(lines) - MAX_PROBLEMS
    return f"{shown}; and {more} more" if more > 0 else shown


# --- the fast path of validation -------------------------------------------------------
#
# jsonschema takes ~50 µs for a small object. For schemas made only of the common keywords
# below, a checker of plain closures says "valid" in a few µs. It is conservative: True only
# when jsonschema would find no error; on False (or any other keyword) jsonschema decides and
# words the problem, so the verdicts and messages are always jsonschema's.

Predicate = Callable[[Any], bool]

_FAST_DRAFTS = frozenset(
    {"Draft6Validator", "Draft7Validator", "Draft201909Validator", "Draft202012Validator"}
)  # by name: jsonschema is imported lazily
_NO_OPS = frozenset({"format"})  # jsonschema asserts no format without a format checker
_JSON_TYPES = {
    "string": (str,),
    "integer": (int,),  # an integral float goes to jsonschema
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


class _Unsupported(Exception):
    """A keyword or form the fast path does not handle."""


def _fast_checker(schema: dict, cls: type) -> Predicate | None:
    """A conservative validity test for `schema`, or None when it uses other keywords."""
    if cls.__module__ != "jsonschema.validators" or cls.__name__ not in _FAST_DRAFTS:
        return None
    try:
        return _FastCompiler(schema, frozenset(cls.VALIDATORS)).compile(schema)
    except (_Unsupported, re.error, TypeError):  # TypeError: a schema load_schema would refuse
        return None


class _FastCompiler:
    def __init__(self, root: dict, keywords: frozenset[str]) -> None:
        self.root = root
        self.keywords = keywords  # the keywords jsonschema acts on; it ignores any other
        self.refs: dict[str, Predicate] = {}

    def compile(self, node: Any) -> Predicate:
        if node is True or node is False:
            return _always if node else _never
        if not isinstance(node, dict) or (node is not self.root and "$id" in node):
            raise _Unsupported
        tests = [self.keyword(key, value, node) for key, value in node.items() if self._acts(key)]
        return _all_of([t for t in tests if t is not _always])

    def _acts(self, key: str) -> bool:
        return key in self.keywords and key not in _NO_OPS

    def keyword(self, key: str, value: Any, node: dict) -> Predicate:
        build = _KEYWORD_BUILDERS.get(key)
        if build is None:
            raise _Unsupported(key)
        return build(self, value, node)

    def ref(self, ref: Any) -> Predicate:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _Unsupported("$ref")
        if ref not in self.refs:
            cell: list[Predicate] = []
            self.refs[ref] = lambda x: cell[0](x)  # late-bound: refs may recurse
            target = _pointer(self.root, ref)
            if target is None:
                raise _Unsupported("$ref")
            cell.append(self.compile(target))
        return self.refs[ref]


def _always(x: Any) -> bool:
    return True


def _never(x: Any) -> bool:
    return False


def _all_of(tests: list[Predicate]) -> Predicate:
    if not tests:
        return _always
    if len(tests) == 1:
        return tests[0]

    return lambda x: all(test(x) for test in tests)


def _type_test(c: _FastCompiler, kind: Any, node: dict) -> Predicate:
    kinds = kind if isinstance(kind, list) else [kind]
    if not all(isinstance(k, str) and k in _JSON_TYPES for k in kinds):
        raise _Unsupported("type")
    allowed = frozenset(t for k in kinds for t in _JSON_TYPES[k])
    return lambda x: type(x) in allowed


def _enum_test(c: _FastCompiler, values: Any, node: dict) -> Predicate:
    strings = frozenset(v for v in values if isinstance(v, str))
    others = [v for v in values if not isinstance(v, str)]
    if not others:
        return lambda x: type(x) is str and x in strings
    return lambda x: x in strings if type(x) is str else _in_others(x, others)


def _const_test(c: _FastCompiler, value: Any, node: dict) -> Predicate:
    return _enum_test(c, [value], node)


def _in_others(x: Any, others: list[Any]) -> bool:
    """jsonschema's equality for scalars (True is not 1); containers go to jsonschema."""
    if x is None or x is True or x is False:
        return any(v is x for v in others)
    if type(x) is int or type(x) is float:
        return any(type(v) in (int, float) and v == x for v in others)
    return False


def _properties_test(c: _FastCompiler, properties: dict, node: dict) -> Predicate:
    tests = {name: c.compile(sub) for name, sub in properties.items()}
    extra = node.get("additionalProperties", True)
    if "patternProperties" in node:
        raise _Unsupported("patternProperties")
    other = None if extra is True else c.compile(extra) if extra is not False else False

    def check(x: Any) -> bool:
        if not isinstance(x, dict):
            return True
        for key, value in x.items():
            test = tests.get(key)
            if test is not None:
                if not test(value):
                    return False
            elif other is False or (other is not None and not other(value)):
                return False
        return True

    return check


def _additional_test(c: _FastCompiler, extra: Any, node: dict) -> Predicate:
    if "properties" in node:
        return _always  # checked with the properties
    return _properties_test(c, {}, node)


def _required_test(c: _FastCompiler, names: list, node: dict) -> Predicate:
    return lambda x: not isinstance(x, dict) or all(n in x for n in names)


def _items_test(c: _FastCompiler, items: Any, node: dict) -> Predicate:
    if not isinstance(items, (dict, bool)) or "prefixItems" in node:
        raise _Unsupported("items")
    if items is False:
        return lambda x: not isinstance(x, list) or not x
    test = c.compile(items)
    return lambda x: not isinstance(x, list) or all(test(v) for v in x)


def _bound_test(kind: type | tuple[type, ...], size: Callable, compare: Callable) -> Callable:
    def build(c: _FastCompiler, limit: Any, node: dict) -> Predicate:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise _Unsupported("bound")  # e.g. draft 4's boolean exclusiveMaximum
        return lambda x: not isinstance(x, kind) or compare(size(x), limit)

    return build


def _pattern_test(c: _FastCompiler, pattern: str, node: dict) -> Predicate:
    search = re.compile(pattern).search
    return lambda x: not isinstance(x, str) or search(x) is not None


def _unique_test(c: _FastCompiler, unique: Any, node: dict) -> Predicate:
    if not unique:
        return _always
    return lambda x: not isinstance(x, list) or _distinct_strings(x)


def _distinct_strings(x: list) -> bool:
    """True when every item is a string, each once; anything else goes to jsonschema."""
    return all(type(v) is str for v in x) and len(set(x)) == len(x)


def _any_of_test(c: _FastCompiler, branches: list, node: dict) -> Predicate:
    tests = [c.compile(b) for b in branches]
    return lambda x: any(t(x) for t in tests)


def _all_of_test(c: _FastCompiler, branches: list, node: dict) -> Predicate:
    return _all_of([c.compile(b) for b in branches])


def _ref_test(c: _FastCompiler, ref: Any, node: dict) -> Predicate:
    return c.ref(ref)


def _same(x: Any) -> Any:
    return x


_NUMBER = (int, float)
_KEYWORD_BUILDERS: dict[str, Callable[[_FastCompiler, Any, dict], Predicate]] = {
    "type": _type_test,
    "enum": _enum_test,
    "const": _const_test,
    "properties": _properties_test,
    "additionalProperties": _additional_test,
    "required": _required_test,
    "items": _items_test,
    "pattern": _pattern_test,
    "uniqueItems": _unique_test,
    "anyOf": _any_of_test,
    "allOf": _all_of_test,
    "$ref": _ref_test,
    "minimum": _bound_test(_NUMBER, _same, lambda v, n: v >= n),
    "maximum": _bound_test(_NUMBER, _same, lambda v, n: v <= n),
    "exclusiveMinimum": _bound_test(_NUMBER, _same, lambda v, n: v > n),
    "exclusiveMaximum": _bound_test(_NUMBER, _same, lambda v, n: v < n),
    "minLength": _bound_test(str, len, lambda v, n: v >= n),
    "maxLength": _bound_test(str, len, lambda v, n: v <= n),
    "minItems": _bound_test(list, len, lambda v, n: v >= n),
    "maxItems": _bound_test(list, len, lambda v, n: v <= n),
    "minProperties": _bound_test(dict, len, lambda v, n: v >= n),
    "maxProperties": _bound_test(dict, len, lambda v, n: v <= n),
}


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


# --- Arrow types ------------------------------------------------------------------------

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
    target = _pointer(root, ref) if ref.startswith("#") else None
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
        node = _pointer(root, node["$ref"])
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


class Validators:
    """The validator a request's own `response_format` calls for, built once per format.

    json_schema -> its schema; json_object -> any object; anything else -> None (plain text).
    """

    def __init__(self) -> None:
        self._by_format: dict[bytes, ReplyValidator | None] = {}
        self._last: tuple[object, ReplyValidator | None] = (None, None)

    def get(self, body: Mapping[str, Any]) -> ReplyValidator | None:
        fmt = body.get("response_format")
        if not isinstance(fmt, dict):
            return None
        if fmt is self._last[0]:  # the job-level format: one object shared by every body
            return self._last[1]
        key = orjson.dumps(fmt, option=orjson.OPT_SORT_KEYS)
        if key not in self._by_format:
            self._by_format[key] = _validator_for(fmt)
        validator = self._by_format[key]
        self._last = (fmt, validator)
        return validator


def _validator_for(fmt: Mapping[str, Any]) -> ReplyValidator | None:
    kind = fmt.get("type")
    if kind == "json_object":
        return ReplyValidator(None)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        try:
            return ReplyValidator(schema if isinstance(schema, dict) else None)
        except Exception:  # a row's own broken schema: the server will judge it
            return None
    return None
