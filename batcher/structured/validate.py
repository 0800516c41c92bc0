"""Checking a structured reply: lenient JSON extraction (a fence, prose around one object),
validation against the schema, and the re-ask message that tells the model what to fix.

Pure and per reply: each schema is compiled once (`Validators`), with a fast path for the
common keywords (`batcher.structured.fast`) and jsonschema's verdict and wording otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from batcher.errors import json_kind, one_line
from batcher.structured.fast import fast_checker

if TYPE_CHECKING:  # jsonschema itself is imported only by jobs with a schema (~50 ms)
    from jsonschema.exceptions import ValidationError

MAX_PROBLEMS = 5  # schema errors listed in one problem
_MESSAGE_CHARS = 300  # one schema error's message at most
_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_SIGNIFICANT = re.compile(r'[{}"\\]')  # the characters the brace scanner looks at


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
            first_error = first_error or f"invalid JSON: {one_line(exc.msg)} at line {line}"
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
            self._fast = fast_checker(schema, cls)

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
        line = f"{error.json_path}: {one_line(error.message, _MESSAGE_CHARS)}"
        if line not in lines:
            lines.append(line)
    shown = "; ".join(lines[:MAX_PROBLEMS])
    more = len(lines) - MAX_PROBLEMS
    return f"{shown}; and {more} more" if more > 0 else shown


class Validators:
    """The validator a request's own `response_format` calls for, built once per format.

    json_schema -> its schema; json_object -> any object; anything else -> None (plain text).
    """

    def __init__(self) -> None:
        self._by_format: dict[bytes, ReplyValidator | None] = {}

    def of(self, payload: bytes) -> ReplyValidator | None:
        """The validator of a request's payload (its `response_format`), or None."""
        if b'"response_format"' not in payload:  # plain text: nothing to decode
            return None
        fmt = orjson.loads(payload).get("response_format")
        if not isinstance(fmt, dict):
            return None
        key = orjson.dumps(fmt, option=orjson.OPT_SORT_KEYS)
        if key not in self._by_format:
            self._by_format[key] = _validator_for(fmt)
        return self._by_format[key]


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
