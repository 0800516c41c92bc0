"""Provider JSON into our values: replies, usage and error bodies.

Pure functions, no I/O: `parse_reply` turns a status, headers and body into a `Reply` or
raises the `AttemptError` they stand for (`batcher.engine.stream` does the same for a
streamed reply). Raw provider JSON is read here and there only; the HTTP boundary
(`batcher.engine.http`) hands them bytes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from batcher.errors import AttemptError, FatalError, RetryableError
from batcher.types import JOB_FATAL, UNKNOWN_USAGE, ErrorType, Reply, Usage

log = logging.getLogger(__name__)

MAX_MESSAGE = 500  # characters of a server's error message kept in error_message


MAX_COUNT = 2**53  # token counts beyond this are nonsense (and would overflow int64 sums)


RETRYABLE_STATUS = {
    408: ErrorType.TIMEOUT,
    409: ErrorType.SERVER_ERROR,
    429: ErrorType.RATE_LIMITED,
    500: ErrorType.SERVER_ERROR,
    502: ErrorType.SERVER_ERROR,
    503: ErrorType.SERVER_ERROR,
    504: ErrorType.SERVER_ERROR,
    529: ErrorType.SERVER_ERROR,
}


FATAL_STATUS = {
    400: ErrorType.BAD_REQUEST,
    401: ErrorType.AUTH_ERROR,
    403: ErrorType.PERMISSION_DENIED,
    404: ErrorType.NOT_FOUND,
    413: ErrorType.BAD_REQUEST,
    422: ErrorType.BAD_REQUEST,
}


QUOTA_WORDS = (
    "insufficient_quota",
    "quota",
    "balance",
    "billing",
    "credit",
    "spend limit",
    "spending limit",
    "payment",
)


def too_large(cap: int) -> AttemptError:
    return FatalError(ErrorType.RESPONSE_TOO_LARGE, f"reply larger than {cap // 2**20} MiB")


def parse_reply(status: int, headers: Mapping[str, str], body: bytes) -> Reply:
    """A `Reply` from a 200, else raise the `AttemptError` the status and body call for.

    A 200 that is rejected (no choices, invalid UTF-8) was billed all the same: its error
    carries the usage the body states, or unknown usage."""
    if status != 200:
        raise status_error(status, headers, body)
    if not body:
        raise RetryableError(ErrorType.BAD_RESPONSE, "empty reply body", http_status=status)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = RetryableError(
            ErrorType.BAD_RESPONSE, f"reply is not valid JSON: {exc.msg}", http_status=status
        )
        raise _billed(error, _lenient(body)) from None
    if not isinstance(data, dict) or "choices" not in data:
        if error_payload(data) is not None:  # some gateways answer 200 with an error body
            raise status_error(status, headers, body, data)
        error = RetryableError(ErrorType.BAD_RESPONSE, "reply has no 'choices'", http_status=status)
        raise _billed(error, data)
    try:
        return completion(data, status)
    except AttemptError as error:
        raise _billed(error, data) from None


def _lenient(body: bytes) -> Any:
    """A body that orjson refused, read leniently (bad UTF-8 replaced), for its usage alone."""
    try:
        return orjson.loads(body.decode("utf-8", "replace"))
    except orjson.JSONDecodeError:
        return None


def _billed(error: AttemptError, data: Any) -> AttemptError:
    error.usage = usage_of(data) if isinstance(data, dict) else UNKNOWN_USAGE
    return error


def completion(data: dict[str, Any], status: int) -> Reply:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RetryableError(ErrorType.BAD_RESPONSE, "reply has no choices", http_status=status)
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise RetryableError(ErrorType.BAD_RESPONSE, "choice has no message", http_status=status)
    tool_calls = message.get("tool_calls")
    return Reply(
        content=text_of(message.get("content")),
        finish_reason=str_or_none(choice.get("finish_reason")),
        refusal=str_or_none(message.get("refusal")),
        reasoning=str_or_none(message.get("reasoning") or message.get("reasoning_content")),
        tool_calls=json_or_none(tool_calls) if tool_calls else None,
        usage=usage_of(data),
        response_id=str_or_none(data.get("id") or data.get("request_id")),
        response_model=str_or_none(data.get("model")),
        created=unix_seconds(data.get("created")),
        search_results=json_or_none(data.get("search_results")),
        warning=warning_of(data.get("warning")),
    )


def usage_of(data: dict[str, Any]) -> Usage:
    """The usage of a billed reply: `usage`, or Octen's `meta.usage`. Counts it does not
    state, or states as nonsense (text, NaN, negative, past 2**53), are unknown (None); so
    is a negative or non-numeric `cost`. Nonsense is warned of once per field.

    The details come from OpenAI's `prompt_tokens_details` / `completion_tokens_details`
    (or `input_tokens_details` / `output_tokens_details`), Octen's top-level
    `reasoning_tokens` and `num_search_queries`, and Anthropic's `cache_read_input_tokens`,
    `cache_creation_input_tokens` and `server_tool_use.web_search_requests` as gateways pass
    them on. Anthropic's own `input_tokens` leave the cache out: `prompt_tokens` is always
    every input token, cached and written ones included."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        meta = data.get("meta")
        usage = meta.get("usage") if isinstance(meta, dict) else None
    if not isinstance(usage, dict):
        return UNKNOWN_USAGE
    ins = _details(usage, "prompt_tokens_details", "input_tokens_details")
    outs = _details(usage, "completion_tokens_details", "output_tokens_details")
    prompt = count(usage, "prompt_tokens", "input_tokens")
    completion_ = count(usage, "completion_tokens", "output_tokens")
    cached = count(ins, "cached_tokens")
    read = count(usage, "cache_read_input_tokens")
    written = count(ins, "cache_write_tokens", "cache_creation_input_tokens")
    if written is None:
        written = count(usage, "cache_creation_input_tokens")
    anthropic = "prompt_tokens" not in usage and not ins and (read, written) != (None, None)
    if anthropic and prompt is not None:  # input_tokens: the uncached part alone
        prompt += (read or 0) + (written or 0)
    if cached is None:
        cached = read
    total = count(usage, "total_tokens")
    if (total is None or anthropic) and prompt is not None and completion_ is not None:
        total = prompt + completion_
    reasoning = count(outs, "reasoning_tokens")
    if reasoning is None:
        reasoning = count(usage, "reasoning_tokens")
    searches = count(usage, "num_search_queries")
    if searches is None:
        searches = count(_details(usage, "server_tool_use"), "web_search_requests")
    audio = [count(ins, "audio_tokens"), count(outs, "audio_tokens")]
    audio_tokens = None if audio == [None, None] else sum(a or 0 for a in audio)
    cost = usage.get("cost")
    if cost is not None:
        ok = isinstance(cost, (int, float)) and not isinstance(cost, bool)
        if ok and math.isfinite(cost) and cost >= 0:
            cost = float(cost)
        else:
            _nonsense("cost", cost)
            cost = None
    return Usage(
        prompt, completion_, total, cost, cached, written, reasoning, searches, audio_tokens
    )


def _details(usage: dict[str, Any], *names: str) -> dict[str, Any]:
    """The first of `names` that is a dict in `usage` ({} when none is)."""
    for name in names:
        value = usage.get(name)
        if isinstance(value, dict):
            return value
    return {}


def status_error(
    status: int, headers: Mapping[str, str], body: bytes, data: Any = None
) -> AttemptError:
    """The error an HTTP error status (or an error body) stands for."""
    if data is None:
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None
    payload = error_payload(data)
    message = error_message(payload, body, status)
    code = error_code(payload)
    wait = retry_after(headers)
    lowered = f"{code} {message}".lower()
    may_be_quota = status in (200, 402, 403, 429)
    if status == 200:  # an error body on a 200: judge it by its own numeric code if any
        first = code.split(" ", 1)[0]
        status = int(first) if first.isdigit() else 500
    rate_wording = any(
        w in lowered for w in ("per minute", "per second", "rate limit", "rate_limit")
    )
    if (
        may_be_quota
        and wait is None
        and not rate_wording
        and any(w in lowered for w in QUOTA_WORDS)
    ):
        return FatalError(ErrorType.QUOTA_EXHAUSTED, message, http_status=status, job_fatal=True)
    if status == 429 and "concurren" in lowered:
        return RetryableError(
            ErrorType.RATE_LIMITED,
            message,
            http_status=status,
            retry_after=wait,
            concurrency=True,
        )
    if status in RETRYABLE_STATUS:
        kind = RETRYABLE_STATUS[status]
        return RetryableError(kind, message, http_status=status, retry_after=wait)
    if status in FATAL_STATUS:
        kind = FATAL_STATUS[status]
        return FatalError(kind, message, http_status=status, job_fatal=kind.value in JOB_FATAL)
    if 300 <= status < 400:
        location = headers.get("Location", "?")
        message = f"redirect to {location} not followed (check --base-url)"
        return FatalError(ErrorType.HTTP_ERROR, message, http_status=status, job_fatal=True)
    if status >= 500:
        return RetryableError(ErrorType.SERVER_ERROR, message, http_status=status, retry_after=wait)
    return FatalError(ErrorType.HTTP_ERROR, message, http_status=status)


def error_payload(data: Any) -> dict[str, Any] | None:
    """The error object of OpenAI, Anthropic, Octen and Gemini (a list) shapes."""
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    if not isinstance(data, dict):
        return None
    inner = data.get("error")
    if isinstance(inner, dict):
        return inner
    if isinstance(inner, str):
        return {"message": inner}
    if "msg" in data and "code" in data:  # Octen
        return {"message": data.get("msg"), "code": data.get("code")}
    return None


def error_message(payload: dict[str, Any] | None, body: bytes, status: int) -> str:
    message = payload.get("message") if payload else None
    if not isinstance(message, str) or not message.strip():
        text = body[:200].decode("utf-8", "replace").strip()
        looks_html = text.lower().startswith(("<!doctype", "<html"))
        message = f"HTTP {status}" if not text or looks_html else f"HTTP {status}: {text}"
    message = " ".join(message.split())
    return message[:MAX_MESSAGE]


def error_code(payload: dict[str, Any] | None) -> str:
    if not payload:
        return ""
    parts = [payload.get(key) for key in ("code", "type", "status")]
    return " ".join(str(p) for p in parts if p is not None and p != "")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms`, else `retry-after` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def text_of(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(t for t in texts if isinstance(t, str))
    return json_or_none(content)


def warning_of(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json_or_none(value)


def json_or_none(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return None


def str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:
        return int(value)
    return None


def unix_seconds(value: Any) -> int | None:
    """`created` as unix seconds; milliseconds and nanoseconds are scaled, nonsense dropped."""
    seconds = int_or_none(value)
    while seconds is not None and seconds > 10**11:  # ms, us or ns since 1970
        seconds //= 1000
    return seconds if seconds is not None and 0 <= seconds < 10**11 else None


def count(usage: dict[str, Any], *names: str) -> int | None:
    """A token count under the first of `names` present; None when absent or nonsense."""
    for name in names:
        if name in usage:
            value = usage[name]
            break
    else:
        return None
    if isinstance(value, float) and value.is_integer() and 0 <= value < MAX_COUNT:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT:
        return value
    if value is not None:
        _nonsense(name, value)
    return None


_WARNED: set[str] = set()


def _nonsense(name: str, value: Any) -> None:
    """Warn, once per field, of a usage value that is not a count (it is taken as unknown)."""
    if name not in _WARNED:
        _WARNED.add(name)
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        log.warning("a reply's usage.%s is %s, not a count: taken as unknown", name, shown)
