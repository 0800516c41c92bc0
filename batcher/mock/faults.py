"""The mock's faults: their kinds, `[[mock:...]]` directives, error bodies, retry headers and
the choice of each attempt's fault (directive counters, then the seeded `fail_rate` draw)."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import orjson

# Fault kinds that are a plain error status with a style-dependent body:
# kind -> (status, message, OpenAI error type, OpenAI error code).
ERROR_KINDS: dict[str, tuple[int, str, str, str | None]] = {
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
REPLY_KINDS = frozenset(
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
ACTION_KINDS = frozenset({"drop", "hang", "huge", "drip", "cutstream"})
FAULT_KINDS = frozenset(ERROR_KINDS) | REPLY_KINDS | ACTION_KINDS | {"balance", "html"}

JSON = "application/json"
DIRECTIVE_MARK = b"[[mock:"  # a body without it carries no directive
_MARK = DIRECTIVE_MARK.decode()
_DIRECTIVE_RE = re.compile(r"\[\[mock:([A-Za-z0-9_]+?)(?:x(\d+))?((?::[A-Za-z_]+=[^\]:]*)*)\]\]")
_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass(frozen=True, slots=True)
class Directive:
    """One `[[mock:KIND[xN][:retry=S]]]` directive."""

    kind: str
    count: int | None  # None: every attempt
    retry: float | None


def parse_directives(texts: list[str]) -> list[Directive]:
    """The `[[mock:KIND[xN][:retry=S]]]` directives in order; ValueError when malformed."""
    found = []
    for text in texts:
        if _MARK not in text:
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
            found.append(Directive(kind, int(count) if count else None, retry))
    return found


class FaultPicker:
    """The fault of each admitted attempt: its directives first, then the `fail_rate` draw.

    Directive counts are shared by every attempt whose model and directive-carrying texts
    match; the random draw uses one `random.Random(seed)` stream for the whole server.
    """

    def __init__(self, seed: int, fail_rate: float, kinds: tuple[str, ...]) -> None:
        self.seed = seed
        self.fail_rate = fail_rate
        self.kinds = kinds
        self.counters: dict[str, list[int]] = {}
        self.rng = random.Random(seed)

    def reset(self) -> None:
        """Forget the directive counts and restart the random stream."""
        self.counters.clear()
        self.rng.seed(self.seed)

    def pick(
        self, model: str | None, texts: list[str], directives: list[Directive]
    ) -> tuple[str | None, float | str | None]:
        """(fault kind, retry seconds or "random") from directives, then from fail_rate."""
        if directives:
            carriers = [t for t in texts if _MARK in t]
            key = "\0".join([model or "", *carriers])
            used = self.counters.setdefault(key, [0] * len(directives))
            for i, directive in enumerate(directives):
                if directive.count is None or used[i] < directive.count:
                    used[i] += 1
                    return directive.kind, directive.retry
        if self.fail_rate > 0 and self.rng.random() < self.fail_rate:
            return self.kinds[self.rng.randrange(len(self.kinds))], "random"
        return None, None


def retry_headers(seconds: float) -> dict[str, str]:
    """`retry-after-ms` (integer ms) and `retry-after` (whole seconds, rounded up, >= 1)."""
    return {
        "retry-after-ms": str(max(0, round(seconds * 1000))),
        "retry-after": str(max(1, math.ceil(seconds))),
    }


def error_body(style: str, status: int, message: str, etype: str, code: str | None) -> bytes:
    """An error body in the OpenAI or the Octen shape."""
    if style == "octen":
        return orjson.dumps({"code": status, "msg": message, "data": {}, "meta": {}})
    return orjson.dumps({"error": {"message": message, "type": etype, "code": code}})


def fault_error(style: str, kind: str, model: str | None) -> tuple[int, bytes, str]:
    """(status, body, content type) for an error kind: a status, quota, balance or html."""
    if kind == "html":
        return 502, _HTML_502, "text/html"
    if kind == "balance":
        return 403, error_body("octen", 403, "insufficient balance", "", None), JSON
    status, message, etype, code = ERROR_KINDS[kind]
    if kind == "404":
        message = message.format(model=model)
    if kind == "529" and style == "openai":
        body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return status, orjson.dumps(body), JSON
    return status, error_body(style, status, message, etype, code), JSON


# Batch-level faults of the mock's Batch API (`mock.batches`): expire:K, finalizing[:S], ...
BATCH_FAULTS = ("none", "expire", "invalid", "no_output", "finalizing", "gone")


def parse_batch_fault(spec: str) -> tuple[str, float | None]:
    """("expire", 5.0) from "expire:5"; ValueError for an unknown kind or a bad number."""
    kind, _, arg = spec.partition(":")
    if kind not in BATCH_FAULTS:
        raise ValueError(f"unknown batch fault {spec!r} (one of {', '.join(BATCH_FAULTS)})")
    if not arg:
        if kind == "expire":
            raise ValueError("batch fault expire needs a line count: expire:K")
        return kind, None
    if kind not in ("expire", "finalizing"):
        raise ValueError(f"batch fault {kind} takes no argument")
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"batch fault {spec!r}: {arg!r} is not a number") from None
    if not value >= 0 or (kind == "expire" and value != int(value)):
        raise ValueError(f"batch fault {spec!r}: needs a count or seconds >= 0")
    return kind, value
