"""A deterministic, OpenAI-compatible mock server for tests, demos and benchmarks.

Replies are derived from the request body alone (same body, same reply), so runs against
the mock are reproducible. Faults come from two places:

* directives in a message, ``[[mock:KIND]]`` or ``[[mock:KINDxN]]`` (the first N requests
  carrying that message to that model fail with KIND: retries of the body, and re-asks that
  extend the conversation, share the count), with optional ``:retry=SECONDS`` for retry
  headers;
* ``MockConfig.fail_rate``: a seeded random share of attempts fails with a kind drawn
  from ``MockConfig.faults``.

A body with ``"stream": true`` is answered as Server-Sent Events (``text/event-stream``):
the same reply as the non-streamed request, as ``chat.completion.chunk`` deltas of a few words,
a finish chunk, a usage chunk (only with ``stream_options.include_usage``) and ``data: [DONE]``;
with ``usage_style="octen"`` as Octen's typed chunks (``search_done``, ``content``, ``finish``,
``usage``). Error kinds answer a plain JSON error before any stream; ``cutstream`` sends half
the chunks and closes the connection (half the body, for a non-streamed request).

Order of checks for ``POST /v1/chat/completions``: API key (401), body (400, unknown
model 404), concurrency (429), requests per minute (429), directives, random faults.
The rpm window holds every request the rpm check admitted (its arrival time), whatever
fault is injected afterwards; requests rejected before or by the limits never count and
never use up a directive.

Token counts: ``prompt_tokens = max(1, chars // 4)`` where chars is the length of every
message's text content (string contents and the ``text`` of content parts), with no
per-message overhead; ``completion_tokens = max(1, len(reply text) // 4)`` (plus the
reasoning tokens for the ``reasoning`` fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import random
import re
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "FAULT_KINDS",
    "MODELS",
    "LoggedRequest",
    "MockConfig",
    "MockServer",
    "MockServerThread",
    "create_app",
    "go_duration",
    "instance_for_schema",
    "serve",
]

MODELS = (
    "mock-1",
    "mock-2",
    "openai/gpt-5.5",
    "anthropic/claude-opus-4.8",
    "google/gemini-3.5-flash",
)

# Fault kinds that are a plain error status with a style-dependent body.
_ERROR_KINDS: dict[str, tuple[int, str, str, str | None]] = {
    "400": (
        400,
        "Bad request (injected by the mock server)",
        "invalid_request_error",
        "bad_request",
    ),
    "401": (401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    "403": (403, "Permission denied", "permission_error", "permission_denied"),
    "404": (404, "The model `{model}` does not exist", "invalid_request_error", "model_not_found"),
    "408": (408, "Request timed out", "timeout_error", "request_timeout"),
    "409": (409, "Conflict with a concurrent request", "conflict_error", "conflict"),
    "413": (413, "Request entity too large", "invalid_request_error", "request_too_large"),
    "422": (422, "Unprocessable entity", "invalid_request_error", "unprocessable_entity"),
    "429": (429, "Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    "quota": (
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    ),
    "500": (
        500,
        "The server had an error while processing your request.",
        "server_error",
        "internal_error",
    ),
    "502": (502, "Bad gateway", "server_error", "bad_gateway"),
    "503": (
        503,
        "The server is overloaded or not ready yet.",
        "server_error",
        "service_unavailable",
    ),
    "504": (504, "Gateway timeout", "server_error", "gateway_timeout"),
    "529": (529, "Overloaded", "overloaded_error", "overloaded"),
}
# Kinds answered with status 200 and a (possibly broken) completion.
_REPLY_KINDS = frozenset(
    {
        "truncated",
        "empty",
        "nochoices",
        "nousage",
        "badjson",
        "length",
        "invalid_utf8",
        "refusal",
        "toolcall",
        "reasoning",
        # structured-output faults: the reply breaks the requested JSON in a known way
        "fenced",  # the JSON inside a Markdown code fence
        "prose",  # the JSON with prose before and after
        "notjson",  # plain text instead of JSON
        "badschema",  # a JSON object missing one of its properties
    }
)
# Kinds handled by the slow path (they wait or write a stream).
_ACTION_KINDS = frozenset({"drop", "hang", "huge", "drip", "cutstream"})
FAULT_KINDS = frozenset(_ERROR_KINDS) | _REPLY_KINDS | _ACTION_KINDS | {"balance", "html"}

_STYLES = ("openai", "octen")
_WINDOW = 60.0
_HUGE_BYTES = 100 * 1024 * 1024
_HUGE_CHUNK = 1024 * 1024
_DRIP_INTERVAL = 1.0
_JSON = "application/json"
_JSON_HEADERS = {"Content-Type": _JSON}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_SSE_DONE = b"data: [DONE]\n\n"
_WORDS_PER_DELTA = 3
_UNPARSEABLE = object()
_DIRECTIVE_MARK = b"[[mock:"
_DIRECTIVE_RE = re.compile(r"\[\[mock:([A-Za-z0-9_]+?)(?:x(\d+))?((?::[A-Za-z_]+=[^\]:]*)*)\]\]")
_WORDS = (
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
_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_BAD_JSON = b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {'
_UTF8_MARK = "@@INVALID_UTF8@@"
_REFUSAL = "I can't help with that."
_SEARCH_WARNING = "search results are synthetic (batcher mock server)"


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class MockConfig:
    """How the mock server behaves. All randomness is seeded by `seed`."""

    latency: float = 0.0
    jitter: float = 0.0
    fail_rate: float = 0.0
    faults: tuple[str, ...] = ("429", "500", "502", "503", "drop")
    rpm: int | None = None
    max_concurrency: int | None = None
    api_key: str | None = None
    error_style: str = "openai"
    usage_style: str = "openai"
    ratelimit_headers: bool = False
    hang_seconds: float = 3600.0
    seed: int = 0
    log_path: str | None = None

    def __post_init__(self) -> None:
        """Reject settings that cannot work (ValueError); store `faults` as a tuple."""
        object.__setattr__(self, "faults", tuple(self.faults))
        if self.latency < 0 or self.jitter < 0 or self.hang_seconds < 0:
            raise ValueError("latency, jitter and hang_seconds must be >= 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        unknown = [k for k in self.faults if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds: {', '.join(unknown)}")
        if self.fail_rate > 0 and not self.faults:
            raise ValueError("fail_rate > 0 needs at least one fault kind")
        for name in ("rpm", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.error_style not in _STYLES or self.usage_style not in _STYLES:
            raise ValueError(f"error_style and usage_style must be one of {', '.join(_STYLES)}")


DEFAULT_CONFIG = MockConfig()


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One POST the server received (`t`: arrival) and the status it answered.

    `status` is 0 when no status line was sent: `drop`, a `hang` still waiting or cut
    short, or any reply cancelled by a client disconnect or server stop.
    """

    t: float
    model: str | None
    request_key: str
    status: int
    fault: str | None
    auth: str | None
    body: dict | None


@dataclass(frozen=True, slots=True)
class _Directive:
    kind: str
    count: int | None  # None: every attempt
    retry: float | None


# ------------------------------------------------------------------- JSON schema values


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
        target = _resolve_ref(root, ref)
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


def _resolve_ref(root: dict, ref: str) -> Any:
    """The target of a local JSON-pointer `$ref` ("#/$defs/X"), or None."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _deref(root: dict, node: Any) -> dict:
    """`node` with a top-level `$ref` followed once; non-dicts become {}."""
    if isinstance(node, dict) and isinstance(node.get("$ref"), str):
        target = _resolve_ref(root, node["$ref"])
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
    "email": lambda r: f"{r.choice(_WORDS)}@example.com",
    "uri": lambda r: f"https://example.com/{r.choice(_WORDS)}",
    "url": lambda r: f"https://example.com/{r.choice(_WORDS)}",
    "uuid": lambda r: str(uuid.UUID(int=r.getrandbits(128), version=4)),
}


def _string_value(node: dict, root: dict, rng: random.Random, depth: int) -> str:
    """Two words (or a `format`-shaped value), padded or cut to min/maxLength."""
    fmt = node.get("format")
    make = _FORMATS.get(fmt) if isinstance(fmt, str) else None
    value = make(rng) if make else f"{rng.choice(_WORDS)} {rng.choice(_WORDS)}"
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


# ------------------------------------------------------------------------ reply pieces


def go_duration(seconds: float) -> str:
    """A Go-style duration at millisecond precision: "250ms", "1s", "1.5s", "6m0s"."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _text_of(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _invalid_reason(body: Any) -> str | None:
    """Why `body` is not a usable chat-completions request, or None."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' is required and must be a non-empty string."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' is required and must be a non-empty list."
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"'messages.{i}' must be an object with a string 'role'."
        if not isinstance(message.get("content"), (str, list, type(None))):
            return f"'messages.{i}.content' must be a string, a list of parts or null."
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (type(value) is not int or value < 1):
            return f"'{name}' must be an integer >= 1."
    return _invalid_response_format(body.get("response_format"))


def _invalid_response_format(fmt: Any) -> str | None:
    """Why `response_format` is unusable, or None."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        return "'response_format.type' must be one of 'text', 'json_object', 'json_schema'."
    if fmt["type"] == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
        return "'response_format.json_schema' must be an object."
    return None


def _parse_directives(texts: list[str]) -> list[_Directive]:
    """The `[[mock:KIND[xN][:retry=S]]]` directives in order; ValueError when malformed."""
    found = []
    for text in texts:
        if "[[mock:" not in text:
            continue
        for kind, count, params in _DIRECTIVE_RE.findall(text):
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown mock fault '{kind}' in a [[mock:...]] directive")
            retry = None
            for param in params.split(":")[1:]:
                name, _, value = param.partition("=")
                if name == "retry":
                    try:
                        retry = float(value)
                    except ValueError:
                        raise ValueError(f"bad retry value '{value}' in [[mock:...]]") from None
            found.append(_Directive(kind, int(count) if count else None, retry))
    return found


def _retry_headers(seconds: float) -> dict[str, str]:
    """`retry-after-ms` (integer ms) and `retry-after` (whole seconds, rounded up, >= 1)."""
    return {
        "retry-after-ms": str(max(0, round(seconds * 1000))),
        "retry-after": str(max(1, math.ceil(seconds))),
    }


def _error_body(style: str, status: int, message: str, etype: str, code: str | None) -> bytes:
    """An error body in the OpenAI or the Octen shape."""
    if style == "octen":
        return orjson.dumps({"code": status, "msg": message, "data": {}, "meta": {}})
    return orjson.dumps({"error": {"message": message, "type": etype, "code": code}})


def _fault_error(style: str, kind: str, model: str | None) -> tuple[int, bytes, str]:
    """(status, body, content type) for an error kind: a status, quota, balance or html."""
    if kind == "html":
        return 502, _HTML_502, "text/html"
    if kind == "balance":
        return 403, _error_body("octen", 403, "insufficient balance", "", None), _JSON
    status, message, etype, code = _ERROR_KINDS[kind]
    if kind == "404":
        message = message.format(model=model)
    if kind == "529" and style == "openai":
        body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return status, orjson.dumps(body), _JSON
    return status, _error_body(style, status, message, etype, code), _JSON


def _json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    """A response with a JSON content type and optional extra headers."""
    if headers:
        return web.Response(status=status, body=body, headers={**_JSON_HEADERS, **headers})
    return web.Response(status=status, body=body, headers=_JSON_HEADERS)


def _drop(request: web.BaseRequest) -> web.Response:
    """Close the connection without replying; the returned response is never sent."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=204)


@lru_cache(maxsize=1)
def _huge_chunk() -> bytes:
    """One megabyte of filler for the `huge` fault."""
    return b"x" * _HUGE_CHUNK


# -------------------------------------------------------------------------- the request


class _Req:
    """One parsed POST: body, key, texts and how it authenticated.

    `reply_key` (and `digest`) pick the reply: the key of the body without `stream` and
    `stream_options`, so a streamed request gets the same reply as the plain one.
    """

    __slots__ = ("auth", "body", "digest", "key", "model", "reply_key", "t", "texts")

    def __init__(self, t: float, body: Any, key: str, auth: str | None) -> None:
        self.t = t
        self.body = body
        self.key = key
        self.auth = auth
        ok = isinstance(body, dict)
        self.reply_key = key
        if ok and ("stream" in body or "stream_options" in body):
            plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            self.reply_key = hashlib.sha256(
                orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)
            ).hexdigest()
        self.digest = bytes.fromhex(self.reply_key)
        self.model = body.get("model") if ok and isinstance(body.get("model"), str) else None
        self.texts: list[str] = []

    def last_user_text(self) -> str:
        """The text of the last user message (else of the last message)."""
        messages = self.body["messages"]
        for message, text in zip(reversed(messages), reversed(self.texts)):
            if message.get("role") == "user":
                return text
        return self.texts[-1]


class _Plan:
    """What to answer: a ready response or an action, and the log entry to record."""

    __slots__ = ("action", "admitted", "data", "entry", "events", "headers", "response")

    def __init__(
        self,
        entry: LoggedRequest,
        response: web.StreamResponse | None,
        action: str | None = None,
        data: bytes = b"",
    ) -> None:
        self.entry = entry
        self.response = response
        self.action = action
        self.data = data  # the body a `drip` or `cutstream` writes
        self.admitted = False
        self.events: list[bytes] | None = None  # the SSE events of a streamed reply
        self.headers: dict[str, str] | None = None  # extra headers of a streamed reply


def _reply_text(req: _Req) -> str:
    """The deterministic reply text: the prompt's start plus words picked by the hash."""
    snippet = req.last_user_text()[:60].replace("\n", " ")
    digest = req.digest
    words = " ".join(_WORDS[digest[i] % len(_WORDS)] for i in range(4))
    return f"Mock reply to: {snippet} ({words})"


def _reply_content(req: _Req) -> str:
    """The message content, shaped by `response_format`."""
    fmt = req.body.get("response_format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_object":
            return orjson.dumps({"answer": _reply_text(req)}).decode()
        if kind == "json_schema":
            schema = fmt["json_schema"].get("schema")
            if isinstance(schema, dict):
                return orjson.dumps(instance_for_schema(schema, req.digest)).decode()
            return orjson.dumps({"answer": _reply_text(req)}).decode()
    return _reply_text(req)


def _wants_search(body: dict) -> bool:
    """True when the body asks for Octen web search (`octen_search` flag or tool)."""
    if body.get("octen_search") is True:
        return True
    tools = body.get("tools")
    if not isinstance(tools, list):
        return False
    for tool in tools:
        if isinstance(tool, dict):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if "octen_search" in (tool.get("type"), name):
                return True
    return False


def _search_results(req: _Req) -> list[dict[str, str]]:
    """Two deterministic, synthetic search results for the prompt."""
    topic = req.last_user_text()[:40].replace("\n", " ")
    return [
        {
            "title": f"Mock result {i + 1}: {topic}",
            "url": f"https://example.com/mock/{req.reply_key[i * 8 : i * 8 + 8]}",
            "snippet": f"{_WORDS[req.digest[8 + i] % len(_WORDS)]} facts about {topic}",
        }
        for i in range(2)
    ]


def _completion(req: _Req, fault: str | None, usage_style: str) -> dict[str, Any]:
    """The completion object for `req`, altered by a 200-status fault kind."""
    body = req.body
    content: str | None = _reply_content(req)
    finish = "stop"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and len(content) > limit * 4:
        content, finish = content[: limit * 4], "length"
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    completion_text = content
    reasoning_tokens = 0
    if fault is not None:
        completion_text, finish, reasoning_tokens = _alter_message(req, fault, message, finish)
    prompt_tokens = max(1, sum(len(t) for t in req.texts) // 4)
    completion_tokens = max(1, len(completion_text) // 4) + reasoning_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    search = _wants_search(body)
    rid = "chatcmpl-mock-" + req.reply_key[:12]
    out: dict[str, Any] = {
        "request_id" if usage_style == "octen" else "id": rid,
        "object": "chat.completion",
        "created": int(req.t),
        "model": req.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage_style == "octen":
        usage["reasoning_tokens"] = reasoning_tokens
        usage["num_search_queries"] = 1 if search else 0
        out["meta"] = {} if fault == "nousage" else {"usage": usage}
    elif fault != "nousage":
        if reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        out["usage"] = usage
    if search:
        out["search_results"] = _search_results(req)
        out["warning"] = _SEARCH_WARNING
    if fault == "nochoices":
        out["choices"] = []
    return out


def _alter_message(req: _Req, fault: str, message: dict, finish: str) -> tuple[str, str, int]:
    """Apply a message-level fault in place; (billed text, finish_reason, reasoning tokens)."""
    content = message["content"] or ""
    if fault == "length":
        message["content"] = content = content[: max(1, len(content) // 2)]
        return content, "length", 0
    if fault == "refusal":
        message["content"], message["refusal"] = None, _REFUSAL
        return _REFUSAL, "stop", 0
    if fault == "toolcall":
        arguments = json.dumps({"q": req.last_user_text()[:40]})
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": "call_mock_" + req.reply_key[:12],
                "type": "function",
                "function": {"name": "lookup", "arguments": arguments},
            }
        ]
        return arguments, "tool_calls", 0
    if fault == "reasoning":
        reasoning = "Mock reasoning: the user asked about " + req.last_user_text()[:60]
        message["reasoning_content"] = reasoning
        return content, finish, max(1, len(reasoning) // 4)
    if fault == "invalid_utf8":
        message["content"] = content = _UTF8_MARK + content
    if fault in _STRUCTURED_FAULTS:
        message["content"] = content = _STRUCTURED_FAULTS[fault](content)
    return content, finish, 0


def _drop_first_property(content: str) -> str:
    try:
        value = json.loads(content)
    except ValueError:
        return "{" + content
    if isinstance(value, dict) and value:
        value.pop(next(iter(value)))
    return json.dumps(value)


_STRUCTURED_FAULTS: dict[str, Callable[[str], str]] = {
    "fenced": lambda c: f"```json\n{c}\n```",
    "prose": lambda c: f"Sure! Here is the JSON you asked for:\n{c}\nLet me know if you need more.",
    "notjson": lambda c: "I think this one is positive, mostly about quality.",
    "badschema": _drop_first_property,
}


def _reply_fault_response(req: _Req, fault: str, style: str) -> web.Response:
    """The 200-status response of a reply-level fault kind."""
    if fault == "empty":
        return web.Response(status=200, body=b"", headers=_JSON_HEADERS)
    if fault == "badjson":
        return web.Response(status=200, body=_BAD_JSON, headers=_JSON_HEADERS)
    data = orjson.dumps(_completion(req, fault, style))
    if fault == "truncated":
        data = data[: len(data) // 2]
    elif fault == "invalid_utf8":
        data = data.replace(_UTF8_MARK.encode(), b"bad bytes \xff\xfe\xfd here: ", 1)
    return web.Response(status=200, body=data, headers=_JSON_HEADERS)


# ------------------------------------------------------------------------ streamed replies


def _pieces(text: str | None, words: int) -> list[str]:
    """`text` in pieces of `words` words (whitespace kept: the pieces join back to `text`)."""
    if not text:
        return []
    tokens = re.split(r"(?<=\s)(?=\S)", text)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]


def _sse(chunk: dict[str, Any]) -> bytes:
    """One `data: <json>` event."""
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _stream_events(req: _Req, fault: str | None, style: str) -> list[bytes]:
    """The SSE events of the reply to `req` (the non-streamed reply, cut into deltas)."""
    if fault == "empty":
        return [_SSE_DONE]
    data = _completion(req, fault, style)
    octen = style == "octen"
    base = {
        "request_id" if octen else "id": data.get("request_id") or data.get("id"),
        "object": "chat.completion.chunk",
        "created": data["created"],
        "model": data["model"],
    }
    choices = data["choices"]
    message = choices[0]["message"] if choices else {}
    finish = choices[0]["finish_reason"] if choices else None
    usage = data.get("meta", {}).get("usage") if octen else data.get("usage")
    options = req.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True

    def delta(d: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        extra = {"type": "content"} if octen else {}
        choice = {"index": 0, "delta": d, "finish_reason": finish_reason}
        return {**base, **extra, "choices": [choice]}

    chunks: list[dict[str, Any]] = []
    search = {k: data[k] for k in ("search_results", "warning") if k in data}
    if octen and search:
        chunks.append({**base, "type": "search_done", **search})
    if choices and not octen:
        content = message.get("content")
        first = delta({"role": "assistant", "content": "" if content is not None else None})
        chunks.append({**first, **search})
    for piece in _pieces(message.get("reasoning_content"), _WORDS_PER_DELTA):
        chunks.append(delta({"reasoning_content": piece}))
    for piece in _pieces(message.get("content"), _WORDS_PER_DELTA):
        chunks.append(
            {**base, "type": "content", "content": piece} if octen else delta({"content": piece})
        )
    for piece in _pieces(message.get("refusal"), _WORDS_PER_DELTA):
        chunks.append(delta({"refusal": piece}))
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call["function"]
        head = {"index": i, "id": call["id"], "type": call["type"]}
        head["function"] = {"name": function["name"], "arguments": ""}
        chunks.append(delta({"tool_calls": [head]}))
        for piece in _pieces(function["arguments"], 1):
            chunks.append(delta({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    if choices:
        if octen:
            chunks.append({**base, "type": "finish", "finish_reason": finish})
        else:
            chunks.append(delta({}, finish))
    elif not octen and search:
        chunks.append({**base, "choices": [], **search})
    if usage is not None and (octen or include_usage):
        chunks.append(
            {**base, "type": "usage", "usage": usage}
            if octen
            else {**base, "choices": [], "usage": usage}
        )
    events = [_sse(c) for c in chunks]
    if fault == "badjson":
        events.insert(len(events) // 2, b"data: " + _BAD_JSON + b"\n\n")
    elif fault == "invalid_utf8":
        bad = b"bad bytes \xff\xfe\xfd here: "
        events = [e.replace(_UTF8_MARK.encode(), bad, 1) for e in events]
    if fault == "truncated":  # the body ends cleanly, half-way and without [DONE]
        return events[: max(1, len(events) // 2)]
    return [*events, _SSE_DONE]


# ------------------------------------------------------------------------------- state


class _State:
    """Everything the handlers share: config, log, counters, limits and random streams."""

    def __init__(self, config: MockConfig, keep_log: bool) -> None:
        self.config = config
        self.keep_log = keep_log
        self.log: list[LoggedRequest] = []
        self.counters: dict[str, list[int]] = {}
        self.window: deque[float] = deque()
        self.in_flight = 0
        self.rng = random.Random(config.seed)
        self.jitter_rng = random.Random(f"jitter:{config.seed}")
        self.closing = asyncio.Event()
        self.clock: Callable[[], float] = time.time
        self.log_file: Any = None
        self.delays = config.latency > 0 or config.jitter > 0
        style = config.error_style
        self.unauthorized = _error_body(style, 401, *_ERROR_KINDS["401"][1:])
        self.concurrency_body = _error_body(
            style,
            429,
            "concurrency limit exceeded",
            "rate_limit_error",
            "concurrency_limit_exceeded",
        )

    def reset(self) -> None:
        """Forget the log, attempt counters and rpm window; restart the random streams."""
        self.log.clear()
        self.counters.clear()
        self.window.clear()
        self.rng.seed(self.config.seed)
        self.jitter_rng.seed(f"jitter:{self.config.seed}")

    def record(self, entry: LoggedRequest, final: bool = True) -> int:
        """Append `entry` to the log (and the log file when final); its index or -1."""
        index = -1
        if self.keep_log:
            self.log.append(entry)
            index = len(self.log) - 1
        if final and self.config.log_path:
            self.write_line(entry)
        return index

    def settle(self, index: int, entry: LoggedRequest, status: int) -> None:
        """Replace a pending entry with its final status and write its log-file line."""
        final = entry if entry.status == status else replace(entry, status=status)
        if final is not entry and 0 <= index < len(self.log) and self.log[index] is entry:
            self.log[index] = final
        if self.config.log_path:
            self.write_line(final)

    def write_line(self, entry: LoggedRequest) -> None:
        """Append one JSON line to `log_path` (no body, no headers) and flush it."""
        if self.log_file is None:
            self.log_file = open(self.config.log_path, "ab")  # noqa: SIM115
        line = {
            "t": entry.t,
            "model": entry.model,
            "request_key": entry.request_key,
            "status": entry.status,
            "fault": entry.fault,
            "auth": entry.auth,
        }
        self.log_file.write(orjson.dumps(line) + b"\n")
        self.log_file.flush()

    def close_log_file(self) -> None:
        """Close the log file if it was opened."""
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def delay(self) -> float:
        """Latency plus seeded jitter for one reply."""
        jitter = self.config.jitter
        return self.config.latency + (self.jitter_rng.uniform(0, jitter) if jitter else 0.0)

    async def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when the server started shutting down meanwhile."""
        if self.closing.is_set():
            return True
        try:
            await asyncio.wait_for(self.closing.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    def ratelimit_headers(self, now: float) -> dict[str, str]:
        """x-ratelimit-* headers for the current rpm window."""
        rpm = self.config.rpm or 0
        reset = self.window[0] + _WINDOW - now if self.window else 0.0
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(max(0, rpm - len(self.window))),
            "x-ratelimit-reset-requests": go_duration(reset),
        }

    # -- deciding what to answer ---------------------------------------------------

    def decide(self, request: web.BaseRequest, raw: bytes, t: float) -> _Plan:
        """Run the checks in order and return the plan for this attempt (no awaits)."""
        cfg = self.config
        try:
            body = orjson.loads(raw)
            key = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            body, key = _UNPARSEABLE, hashlib.sha256(raw).hexdigest()
        auth, auth_ok = _auth(request, cfg.api_key)
        req = _Req(t, body, key, auth)
        if not auth_ok:
            return self.error_plan(req, 401, self.unauthorized)
        if body is _UNPARSEABLE:
            return self.invalid_plan(req, "We could not parse the JSON body of your request.")
        reason = _invalid_reason(body)
        directives: list[_Directive] = []
        if reason is None:
            req.texts = [_text_of(m.get("content")) for m in body["messages"]]
            try:
                directives = _parse_directives(req.texts) if _DIRECTIVE_MARK in raw else []
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            return self.invalid_plan(req, reason)
        if req.model == "unknown-model" or req.model.startswith("missing/"):
            status, data, _ = _fault_error(cfg.error_style, "404", req.model)
            return self.error_plan(req, status, data)
        return self.limited_plan(req, directives)

    def error_plan(
        self,
        req: _Req,
        status: int,
        data: bytes,
        fault: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Plan:
        """A plan answering an error body."""
        return _Plan(self.entry(req, status, fault), _json_response(status, data, headers))

    def invalid_plan(self, req: _Req, message: str) -> _Plan:
        """A 400 invalid_request_error plan."""
        data = _error_body(self.config.error_style, 400, message, "invalid_request_error", None)
        return self.error_plan(req, 400, data)

    def entry(self, req: _Req, status: int, fault: str | None) -> LoggedRequest:
        """The log entry of `req`."""
        body = req.body if isinstance(req.body, dict) else None
        return LoggedRequest(req.t, req.model, req.key, status, fault, req.auth, body)

    def limited_plan(self, req: _Req, directives: list[_Directive]) -> _Plan:
        """Apply max_concurrency and rpm, then faults; admitted requests enter the window."""
        cfg = self.config
        if cfg.max_concurrency is not None and self.in_flight >= cfg.max_concurrency:
            return self.error_plan(req, 429, self.concurrency_body, "concurrency")
        headers: dict[str, str] | None = None
        if cfg.rpm is not None:
            window, now = self.window, req.t
            while window and now - window[0] >= _WINDOW:
                window.popleft()
            if len(window) >= cfg.rpm:
                return self.rpm_plan(req)
            window.append(now)
            if cfg.ratelimit_headers:
                headers = self.ratelimit_headers(now)
        fault, retry = self.pick_fault(req, directives)
        plan = self.fault_plan(req, fault, retry, headers)
        plan.admitted = True
        return plan

    def rpm_plan(self, req: _Req) -> _Plan:
        """429 for a request beyond the rpm window, with retry-after."""
        rpm, now = self.config.rpm, req.t
        wait = self.window[0] + _WINDOW - now
        message = (
            f"Rate limit reached for requests per min (RPM): Limit {rpm}, Used {rpm}, "
            f"Requested 1. Please try again in {math.ceil(wait)}s."
        )
        data = _error_body(self.config.error_style, 429, message, "requests", "rate_limit_exceeded")
        headers = {"retry-after": str(max(1, math.ceil(wait)))}
        if self.config.ratelimit_headers:
            headers.update(self.ratelimit_headers(now))
        return self.error_plan(req, 429, data, "rpm", headers)

    def pick_fault(self, req: _Req, directives: list[_Directive]) -> tuple[str | None, Any]:
        """(fault kind, retry seconds or "random") from directives, then from fail_rate."""
        if directives:
            carriers = [t for t in req.texts if _DIRECTIVE_MARK.decode() in t]
            key = "\0".join([req.model or "", *carriers])
            used = self.counters.setdefault(key, [0] * len(directives))
            for i, directive in enumerate(directives):
                if directive.count is None or used[i] < directive.count:
                    used[i] += 1
                    return directive.kind, directive.retry
        cfg = self.config
        if cfg.fail_rate > 0 and self.rng.random() < cfg.fail_rate:
            return cfg.faults[self.rng.randrange(len(cfg.faults))], "random"
        return None, None

    def fault_plan(
        self, req: _Req, fault: str | None, retry: Any, headers: dict[str, str] | None
    ) -> _Plan:
        """The plan for an admitted request with `fault` (None: a normal reply)."""
        style = self.config.usage_style
        if req.body.get("stream") is True and (
            fault is None or fault in _REPLY_KINDS or fault in _ACTION_KINDS
        ):
            return self.stream_plan(req, fault, headers)
        if fault is None:
            data = orjson.dumps(_completion(req, None, style))
            return _Plan(self.entry(req, 200, None), _json_response(200, data, headers))
        if fault in _REPLY_KINDS:
            return _Plan(self.entry(req, 200, fault), _reply_fault_response(req, fault, style))
        if fault in _ACTION_KINDS:
            data = b"" if fault == "drop" else orjson.dumps(_completion(req, None, style))
            response = _json_response(200, data, headers) if fault == "hang" else None
            status = 200 if fault in ("huge", "drip", "cutstream") else 0
            return _Plan(self.entry(req, status, fault), response, fault, data)
        status, data, ctype = _fault_error(self.config.error_style, fault, req.model)
        extra = dict(headers or {})
        if retry == "random" and fault == "429":
            extra.update({"retry-after-ms": "50", "retry-after": "1"})
        elif isinstance(retry, float):
            extra.update(_retry_headers(retry))
        extra["Content-Type"] = ctype
        return _Plan(
            self.entry(req, status, fault), web.Response(status=status, body=data, headers=extra)
        )

    def stream_plan(self, req: _Req, fault: str | None, headers: dict[str, str] | None) -> _Plan:
        """The plan of a `"stream": true` request (always the slow path)."""
        kind = fault if fault in _REPLY_KINDS else None
        status = 0 if fault in ("drop", "hang") else 200
        action = fault if fault in _ACTION_KINDS else "stream"
        plan = _Plan(self.entry(req, status, fault), None, action)
        plan.events = _stream_events(req, kind, self.config.usage_style)
        plan.headers = headers
        return plan


def _auth(request: web.BaseRequest, api_key: str | None) -> tuple[str | None, bool]:
    """(how a key came: "bearer" | "x-api-key" | None, whether it is accepted)."""
    headers = request.headers
    bearer = headers.get("Authorization")
    if bearer is not None:
        scheme, _, token = bearer.partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else None
    x_key = headers.get("x-api-key")
    if not api_key:
        return ("bearer" if bearer else "x-api-key" if x_key else None), True
    expected = api_key.encode()
    if bearer and hmac.compare_digest(bearer.encode(), expected):
        return "bearer", True
    if x_key and hmac.compare_digest(x_key.encode(), expected):
        return "x-api-key", True
    return ("bearer" if bearer else "x-api-key" if x_key else None), False


# ---------------------------------------------------------------------------- handlers


async def _respond_slow(state: _State, request: web.BaseRequest, plan: _Plan) -> Any:
    """Answer a plan that waits (latency, hang) or streams (huge, drip), or drops."""
    entry = plan.entry
    index = state.record(entry, final=False)
    status = 0
    if plan.admitted:
        state.in_flight += 1
    try:
        if state.delays and await state.wait(state.delay()):
            return _drop(request)
        action = plan.action
        if action == "drop":
            return _drop(request)
        if action == "hang" and await state.wait(state.config.hang_seconds):
            return _drop(request)
        if plan.events is not None:
            status = 200
            if action == "huge":
                return await _write_huge_events(state, request, entry.model)
            return await _write_events(state, request, plan, action)
        if action == "cutstream":
            status = 200
            return await _write_cut(request, plan.data)
        if action in ("huge", "drip"):
            status = 200
            if action == "huge":
                return await _write_huge(state, request, entry.model)
            return await _write_drip(state, request, plan.data)
        status = entry.status if action is None else 200
        return plan.response
    finally:
        if plan.admitted:
            state.in_flight -= 1
        state.settle(index, entry, status)


async def _write_huge(state: _State, request: web.BaseRequest, model: str | None) -> Any:
    """Stream a ~100 MB completion in 1 MB chunks; stop when the client goes away."""
    head = (
        orjson.dumps({"id": "chatcmpl-mock-huge", "object": "chat.completion", "model": model})[:-1]
        + b',"choices":[{"index":0,"message":{"role":"assistant","content":"'
    )
    tail = b'"},"finish_reason":"stop"}]}'
    chunk = _huge_chunk()
    count = max(1, (_HUGE_BYTES - len(head) - len(tail)) // len(chunk))
    response = web.StreamResponse(status=200, headers=_JSON_HEADERS)
    response.content_length = len(head) + count * len(chunk) + len(tail)
    try:
        await response.prepare(request)
        await response.write(head)
        for _ in range(count):
            if state.closing.is_set():
                return _drop(request)
            await response.write(chunk)
        await response.write(tail)
    except ConnectionError:
        pass
    return response


async def _write_drip(state: _State, request: web.BaseRequest, data: bytes) -> Any:
    """Write a completion one byte per second; stop when the client or server goes away."""
    response = web.StreamResponse(status=200, headers=_JSON_HEADERS)
    response.content_length = len(data)
    try:
        await response.prepare(request)
        for i in range(len(data)):
            await response.write(data[i : i + 1])
            if await state.wait(_DRIP_INTERVAL):
                return _drop(request)
    except ConnectionError:
        pass
    return response


async def _write_events(
    state: _State, request: web.BaseRequest, plan: _Plan, action: str | None
) -> Any:
    """Write a streamed reply (one event a second for `drip`; half, then close, for `cutstream`)."""
    events = plan.events or []
    if action == "cutstream":
        events = events[: len(events) // 2]
    interval = _DRIP_INTERVAL if action == "drip" else 0.0
    response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **(plan.headers or {})})
    try:
        await response.prepare(request)
        for event in events:
            await response.write(event)
            if state.closing.is_set() or (interval and await state.wait(interval)):
                return _drop(request)
    except ConnectionError:
        return response
    if action == "cutstream":
        return _drop(request)
    return response


async def _write_huge_events(state: _State, request: web.BaseRequest, model: str | None) -> Any:
    """Stream ~100 MB of 1 MB content deltas; stop when the client or server goes away."""
    base = {"id": "chatcmpl-mock-huge", "object": "chat.completion.chunk", "model": model}
    chunk = {**base, "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
    event = _sse(chunk).replace(b'"content":"x"', b'"content":"' + _huge_chunk() + b'"', 1)
    finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    try:
        await response.prepare(request)
        for _ in range(_HUGE_BYTES // len(event)):
            if state.closing.is_set():
                return _drop(request)
            await response.write(event)
        await response.write(_sse(finish) + _SSE_DONE)
    except ConnectionError:
        pass
    return response


async def _write_cut(request: web.BaseRequest, data: bytes) -> Any:
    """Announce the whole body, write half of it and close the connection (`cutstream`)."""
    response = web.StreamResponse(status=200, headers=_JSON_HEADERS)
    response.content_length = len(data)
    try:
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
    except ConnectionError:
        return response
    return _drop(request)


def _chat_handler(state: _State) -> Callable[[web.Request], Any]:
    """The POST /chat/completions handler bound to `state`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        """Decide synchronously; only waiting or streaming answers take the slow path."""
        t = state.clock()
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(state, request, t)
        plan = state.decide(request, raw, t)
        if plan.action is None and not state.delays:
            state.record(plan.entry)
            return plan.response  # type: ignore[return-value]
        return await _respond_slow(state, request, plan)

    return handle


def _too_large(state: _State, request: web.Request, t: float) -> web.Response:
    """413 for a body beyond the server's size cap (logged without a body)."""
    auth, _ = _auth(request, state.config.api_key)
    key = hashlib.sha256(b"").hexdigest()
    state.record(LoggedRequest(t, None, key, 413, None, auth, None))
    _status, message, etype, code = _ERROR_KINDS["413"]
    return _json_response(413, _error_body(state.config.error_style, 413, message, etype, code))


def _models_handler(state: _State) -> Callable[[web.Request], Any]:
    """The GET /models handler (needs the API key when one is configured)."""
    data = orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "id": m,
                    "object": "model",
                    "created": 1_700_000_000,
                    "owned_by": m.split("/")[0] if "/" in m else "mock",
                }
                for m in MODELS
            ],
        }
    )

    async def handle(request: web.Request) -> web.Response:
        if not _auth(request, state.config.api_key)[1]:
            return _json_response(401, state.unauthorized)
        return _json_response(200, data)

    return handle


async def _health(request: web.Request) -> web.Response:
    """GET /health."""
    return _json_response(200, b'{"ok":true}')


def _not_found_handler(state: _State) -> Callable[[web.Request], Any]:
    """Any other route: 404 in the configured error style."""

    async def handle(request: web.Request) -> web.Response:
        message = f"Invalid URL ({request.method} {request.path})"
        data = _error_body(state.config.error_style, 404, message, "invalid_request_error", None)
        return _json_response(404, data)

    return handle


_STATE = web.AppKey("batcher_mock_state", _State)


def create_app(config: MockConfig = DEFAULT_CONFIG, *, keep_log: bool = True) -> web.Application:
    """The mock API as an aiohttp application (state reachable for MockServer).

    `keep_log=False` keeps no in-memory log (for long-running servers); `log_path` still works.
    """
    state = _State(config, keep_log)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_STATE] = state
    chat = _chat_handler(state)
    models = _models_handler(state)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/models", models)
    app.router.add_get("/health", _health)
    app.router.add_route("*", "/{tail:.*}", _not_found_handler(state))

    async def on_shutdown(app: web.Application) -> None:
        """Wake handlers that wait (hang, drip, latency) so shutdown is quick."""
        state.closing.set()

    async def on_cleanup(app: web.Application) -> None:
        """Close the log file."""
        state.close_log_file()

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


# ----------------------------------------------------------------------------- servers


def _url(host: str, port: int) -> str:
    """The base URL clients use ("/v1" included)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


class MockServer:
    """The mock API on the current event loop; an async context manager."""

    def __init__(
        self,
        config: MockConfig = DEFAULT_CONFIG,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep_log: bool = True,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.url = ""
        self.app = create_app(config, keep_log=keep_log)
        self._state = self.app[_STATE]
        self._runner: web.AppRunner | None = None

    @property
    def log(self) -> list[LoggedRequest]:
        """Every POST received so far (`t` is the arrival time)."""
        return self._state.log

    def reset(self) -> None:
        """Clear the log and attempt counters (also the rpm window and random streams)."""
        self._state.reset()

    async def start(self) -> None:
        """Listen on host:port (port 0: any free port); sets `port` and `url`."""
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        await runner.setup()
        try:
            # A backlog for a thousand clients connecting at once (aiohttp's default, 128,
            # drops the rest of the SYNs: a second's retransmit for each of them).
            await web.TCPSite(runner, self.host, self.port, backlog=4096).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        self.url = _url(self.host, self.port)

    async def close(self) -> None:
        """Stop listening, end waiting handlers and close connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._state.closing.set()
            await runner.cleanup()

    async def __aenter__(self) -> MockServer:
        """Start and return the server."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the server."""
        await self.close()


class MockServerThread:
    """The mock API on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(
        self,
        config: MockConfig = DEFAULT_CONFIG,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep_log: bool = True,
    ) -> None:
        self.server = MockServer(config, host, port, keep_log=keep_log)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL ("http://127.0.0.1:PORT/v1"), valid once started."""
        return self.server.url

    @property
    def port(self) -> int:
        """The port listened on, valid once started."""
        return self.server.port

    @property
    def log(self) -> list[LoggedRequest]:
        """Every POST received so far (appended from the server thread)."""
        return self.server.log

    def reset(self) -> None:
        """Clear the log and attempt counters."""
        self.server.reset()

    def start(self) -> None:
        """Start the thread and wait until the server listens (errors re-raised here)."""
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(ready),), name="batcher-mockserver", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error

    async def _main(self, ready: threading.Event) -> None:
        """Run the server until `stop()`."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            ready.set()
            return
        ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    def stop(self) -> None:
        """Stop the server and join the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        thread.join()

    def __enter__(self) -> MockServerThread:
        """Start and return the server."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server and join its thread."""
        self.stop()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else the default one."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _serve(
    config: MockConfig, host: str, port: int, ready: Callable[[str], None] | None
) -> None:
    """Run a server until SIGINT/SIGTERM (or cancellation)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # Windows or not the main thread: KeyboardInterrupt still works
    server = MockServer(config, host, port, keep_log=False)
    try:
        await server.start()
        if ready is not None:
            ready(server.url)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.close()


def serve(
    config: MockConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Run the mock API until KeyboardInterrupt or SIGTERM (blocking; uvloop if available).

    `ready(url)` is called once the server listens. No in-memory log is kept.
    """
    loop = _new_event_loop()
    main = loop.create_task(_serve(config, host, port, ready))
    try:
        loop.run_until_complete(main)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
                    loop.run_until_complete(main)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
