"""The typed values that flow between stages: `Request` in, `Result` out.

They are values: nothing changes one after it is made. They are not `frozen=True` all the
same, because a frozen dataclass sets every field through `object.__setattr__`, and these are
made several times per request (5 us a request at thousands of requests a second)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    OK = "ok"
    ERROR = "error"


class ErrorType(str, Enum):
    """The `error_type` column: why a row ended in error."""

    RATE_LIMITED = "rate_limited"  # 429 until retries ran out
    SERVER_ERROR = "server_error"  # 5xx, 529
    TIMEOUT = "timeout"  # no complete reply within --timeout
    CONNECTION_ERROR = "connection_error"  # refused, dropped, reset
    BAD_RESPONSE = "bad_response"  # 200 with a body that is not a usable completion
    RESPONSE_TOO_LARGE = "response_too_large"
    BAD_REQUEST = "bad_request"  # 400, 413, 422
    AUTH_ERROR = "auth_error"  # 401
    PERMISSION_DENIED = "permission_denied"  # 403
    QUOTA_EXHAUSTED = "quota_exhausted"  # insufficient_quota, balance exhausted
    NOT_FOUND = "not_found"  # 404: unknown model or endpoint
    HTTP_ERROR = "http_error"  # any other status
    BAD_INPUT = "bad_input"  # --on-bad-row skip
    NOT_SENT = "not_sent"  # the job stopped before sending this request
    INVALID_OUTPUT = "invalid_output"  # structured output that never validated


@dataclass(slots=True)
class Request:
    """One chat-completions request: an input row sent to one model (and sample)."""

    row_index: int  # 0-based position of the row in the input
    row_id: str
    model: str
    model_index: int  # position of the model in the job's model list
    body: dict[str, Any]  # the full chat-completions body, model included
    request_hash: str  # SHA-256 of the canonical body and the base URL
    est_prompt_tokens: int  # characters / 4
    max_tokens: int | None  # the completion bound in the body, if any
    sample: int = 0
    bad_input: str | None = None  # set (and never sent) under --on-bad-row skip
    variant: int = 0  # position of its parameter combination in the --sweep grid

    @property
    def key(self) -> tuple[int, str, int, int]:
        """What identifies its result: row, model, parameter combination, sample."""
        return (self.row_index, self.model, self.variant, self.sample)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None

    def __add__(self, other: Usage) -> Usage:
        if self.cost_usd is None and other.cost_usd is None:
            cost = None
        else:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            cost,
        )


@dataclass(slots=True)
class Reply:
    """A parsed, successful chat completion (one HTTP attempt)."""

    content: str | None
    finish_reason: str | None
    refusal: str | None = None
    reasoning: str | None = None
    tool_calls: str | None = None  # JSON
    usage: Usage = field(default_factory=Usage)
    response_id: str | None = None
    response_model: str | None = None
    created: int | None = None  # unix seconds
    search_results: str | None = None  # JSON (Octen)
    warning: str | None = None


@dataclass(slots=True)
class Result:
    """The output row of one request, ok or error."""

    row_index: int
    model_index: int
    sample: int
    id: str
    model: str
    status: Status
    request_hash: str | None
    attempts: int = 0
    latency_s: float | None = None
    ttft_s: float | None = None  # --stream: time to the first token of the final attempt
    http_status: int | None = None
    reply: Reply | None = None
    usage: Usage = field(default_factory=Usage)  # summed over every billed reply
    error_type: str | None = None
    error_message: str | None = None
    variant: int = 0  # position of its parameter combination in the --sweep grid
    cached: bool = False  # reused from the response cache: nothing was sent
    reasks: int = 0  # follow-up requests asking the model to fix its structured reply
    parsed: dict | None = None  # the valid structured reply
    finished_at: float | None = None  # unix time the result was known

    @property
    def ok(self) -> bool:
        return self.status is Status.OK
