"""The plan of each attempt: the checks in order (key, body, model, concurrency, rpm), then its
fault, and the answer they give, as a ready response or an action for the slow path."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from batcher.mock.config import MockConfig
from batcher.mock.faults import (
    ACTION_KINDS,
    DIRECTIVE_MARK,
    ERROR_KINDS,
    REPLY_KINDS,
    Directive,
    FaultPicker,
    error_body,
    fault_error,
    parse_directives,
    retry_headers,
)
from batcher.mock.limits import RpmWindow
from batcher.mock.log import LoggedRequest
from batcher.mock.prompt_cache import PromptCache
from batcher.mock.replies import (
    Req,
    completion,
    json_response,
    reply_fault_response,
    stream_events,
    text_of,
)

_UNPARSEABLE = object()
_EMPTY_KEY = hashlib.sha256(b"").hexdigest()  # the request key of a body too large to read


class Plan:
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


def authenticate(headers: Mapping[str, str], api_key: str | None) -> tuple[str | None, bool]:
    """(how a key came: "bearer" | "x-api-key" | None, whether it is accepted)."""
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


class Planner:
    """Plans each attempt; owns the rpm window, the fault picker and the in-flight count."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.window = RpmWindow(config.rpm, config.rpm_window, config.rpm_schedule)
        self.faults = FaultPicker(config.seed, config.fail_rate, config.faults)
        self.prompt_cache = PromptCache(config.cache_window)
        self.in_flight = 0  # admitted attempts being answered on the slow path
        style = config.error_style
        self.unauthorized = error_body(style, 401, *ERROR_KINDS["401"][1:])
        self.concurrency_body = error_body(
            style,
            429,
            "concurrency limit exceeded",
            "rate_limit_error",
            "concurrency_limit_exceeded",
        )

    def reset(self) -> None:
        """Forget the rpm window and directive counts; restart the fault stream."""
        self.window.clear()
        self.faults.reset()
        self.prompt_cache.clear()

    def decide(
        self, headers: Mapping[str, str], raw: bytes, t: float, *, limited: bool = True
    ) -> Plan:
        """Run the checks in order and return the plan for this attempt (no awaits).

        `limited=False` (a Batch API line) skips the concurrency and rpm limits."""
        cfg = self.config
        try:
            body = orjson.loads(raw)
            key = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            body, key = _UNPARSEABLE, hashlib.sha256(raw).hexdigest()
        auth, auth_ok = authenticate(headers, cfg.api_key)
        req = Req(t, body, key, auth)
        if not auth_ok:
            return self.error_plan(req, 401, self.unauthorized)
        if body is _UNPARSEABLE:
            return self.invalid_plan(req, "We could not parse the JSON body of your request.")
        reason = _invalid_reason(body)
        directives: list[Directive] = []
        if reason is None:
            req.texts = [text_of(m.get("content")) for m in body["messages"]]
            try:
                directives = parse_directives(req.texts) if DIRECTIVE_MARK in raw else []
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            return self.invalid_plan(req, reason)
        if req.model == "unknown-model" or req.model.startswith("missing/"):
            status, data, _ = fault_error(cfg.error_style, "404", req.model)
            return self.error_plan(req, status, data)
        return self.limited_plan(req, directives, limited)

    def too_large(self, headers: Mapping[str, str], t: float) -> Plan:
        """413 for a body beyond the server's size cap (logged without a body)."""
        auth, _ = authenticate(headers, self.config.api_key)
        entry = LoggedRequest(t, None, _EMPTY_KEY, 413, None, auth, None)
        _status, message, etype, code = ERROR_KINDS["413"]
        data = error_body(self.config.error_style, 413, message, etype, code)
        return Plan(entry, json_response(413, data))

    def error_plan(
        self,
        req: Req,
        status: int,
        data: bytes,
        fault: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Plan:
        """A plan answering an error body."""
        return Plan(_entry(req, status, fault), json_response(status, data, headers))

    def invalid_plan(self, req: Req, message: str) -> Plan:
        """A 400 invalid_request_error plan."""
        data = error_body(self.config.error_style, 400, message, "invalid_request_error", None)
        return self.error_plan(req, 400, data)

    def limited_plan(self, req: Req, directives: list[Directive], limited: bool = True) -> Plan:
        """Apply max_concurrency and rpm, then faults; admitted requests enter the window."""
        cfg = self.config
        if limited and cfg.max_concurrency is not None and self.in_flight >= cfg.max_concurrency:
            return self.error_plan(req, 429, self.concurrency_body, "concurrency")
        headers: dict[str, str] | None = None
        if limited and cfg.rpm is not None:
            if not self.window.admit(req.t):
                return self.rpm_plan(req)
            if cfg.ratelimit_style == "headers":
                headers = self.window.headers(req.t)
        fault, retry = self.faults.pick(req.model, req.texts, directives)
        if fault is None or fault in REPLY_KINDS or fault in ACTION_KINDS:  # the model ran
            req.cache = self.prompt_cache.use(req.model, req.texts, req.t, cfg.latency)
        plan = self.fault_plan(req, fault, retry, headers)
        plan.admitted = True
        return plan

    def rpm_plan(self, req: Req) -> Plan:
        """429 for a request beyond the rpm window, with retry-after."""
        now, style = req.t, self.config.ratelimit_style
        rpm = self.window.rpm_at(now)
        wait = self.window.wait(now)
        message = (
            f"Rate limit reached for requests per min (RPM): Limit {rpm}, Used {rpm}, "
            f"Requested 1. Please try again in {math.ceil(wait)}s."
        )
        data = error_body(self.config.error_style, 429, message, "requests", "rate_limit_exceeded")
        headers: dict[str, str] = {}
        if style == "retry-after-ms":
            headers.update(retry_headers(wait))
        elif style != "bare":
            headers["retry-after"] = str(max(1, math.ceil(wait)))
        if style in ("retry-after-ms", "headers"):
            headers.update(self.window.headers(now))
        return self.error_plan(req, 429, data, "rpm", headers)

    def fault_plan(
        self,
        req: Req,
        fault: str | None,
        retry: float | str | None,
        headers: dict[str, str] | None,
    ) -> Plan:
        """The plan for an admitted request with `fault` (None: a normal reply)."""
        style = self.config.usage_style
        if req.body.get("stream") is True and (
            fault is None or fault in REPLY_KINDS or fault in ACTION_KINDS
        ):
            return self.stream_plan(req, fault, headers)
        if fault is None:
            data = orjson.dumps(completion(req, None, style))
            return Plan(_entry(req, 200, None), json_response(200, data, headers))
        if fault in REPLY_KINDS:
            return Plan(_entry(req, 200, fault), reply_fault_response(req, fault, style))
        if fault in ACTION_KINDS:
            data = b"" if fault == "drop" else orjson.dumps(completion(req, None, style))
            response = json_response(200, data, headers) if fault == "hang" else None
            status = 200 if fault in ("huge", "drip", "cutstream") else 0
            return Plan(_entry(req, status, fault), response, fault, data)
        status, data, ctype = fault_error(self.config.error_style, fault, req.model)
        extra = dict(headers or {})
        if retry == "random" and fault == "429":
            extra.update({"retry-after-ms": "50", "retry-after": "1"})
        elif isinstance(retry, float):
            extra.update(retry_headers(retry))
        extra["Content-Type"] = ctype
        return Plan(
            _entry(req, status, fault), web.Response(status=status, body=data, headers=extra)
        )

    def stream_plan(self, req: Req, fault: str | None, headers: dict[str, str] | None) -> Plan:
        """The plan of a `"stream": true` request (always the slow path)."""
        kind = fault if fault in REPLY_KINDS else None
        status = 0 if fault in ("drop", "hang") else 200
        action = fault if fault in ACTION_KINDS else "stream"
        plan = Plan(_entry(req, status, fault), None, action)
        plan.events = stream_events(req, kind, self.config.usage_style)
        plan.headers = headers
        return plan


def _entry(req: Req, status: int, fault: str | None) -> LoggedRequest:
    """The log entry of `req`."""
    body = req.body if isinstance(req.body, dict) else None
    return LoggedRequest(req.t, req.model, req.key, status, fault, req.auth, body)


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
