"""The reply's JSON Schema: loaded and checked once, local `$ref`s resolved, sent as a strict
`json_schema` response_format."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote

import orjson

from batcher.errors import InputError, json_kind, one_line, os_problem

JSON_OBJECT = {"type": "json_object"}
_NAME_CHARS = 64  # OpenAI's limit for json_schema.name
_NAME_JUNK = re.compile(r"[^a-zA-Z0-9_-]+")
_IDENTIFIER = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*")  # as in jsonschema's json_path
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})  # values, not schemas
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})


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
    except OSError as exc:
        raise InputError(f"{source}: {os_problem(exc)}") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    if not data.strip():
        raise InputError(f"{source}: the file is empty")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("str is not valid UTF-8"):
            raise InputError(f"{source}: invalid UTF-8") from None
        reason = f"{one_line(exc.msg)} at line {exc.lineno}"
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
        message = one_line(error.message, 200)
        raise InputError(f"{source}: invalid JSON Schema: {message} (at {error.json_path})")


def _check_refs(schema: dict, source: str) -> None:
    """Raise unless every `$ref` is local and resolves (jsonschema would fail per reply)."""
    for ref, where in _refs(schema, "$"):
        if not ref.startswith("#"):
            raise InputError(
                f"{source}: only local $ref values (#/...) are supported, not {ref!r} (at {where})"
            )
        if pointer(schema, ref) is None:
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


def pointer(root: dict, ref: str) -> Any:
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
