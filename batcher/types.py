"""The typed values that flow between stages: `Request` in, `Result` out.

They are values: nothing changes one after it is made. They are not `frozen=True` all the
same, because a frozen dataclass sets every field through `object.__setattr__`, and these are
made several times per request (5 us a request at thousands of requests a second)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson


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


# Errors every other request of the job would meet too (a bad key, an exhausted quota, an
# unknown model): they stop a job early, and a rerun sends those rows again once fixed.
JOB_FATAL = frozenset(
    e.value
    for e in (
        ErrorType.AUTH_ERROR,
        ErrorType.PERMISSION_DENIED,
        ErrorType.QUOTA_EXHAUSTED,
        ErrorType.NOT_FOUND,
    )
)


# Tokens a reply is taken to use, for limits and budgets, when the request sets no bound.
COMPLETION_ALLOWANCE = 256


@dataclass(slots=True)
class Request:
    """One chat-completions request: an input row sent to one model (and sample).

    `payload` is the body as sent, serialised once: canonical JSON (keys sorted at every
    level), the same bytes the request hash is taken over. `Request.chat` builds one for a
    library caller; the job's rows become requests in `batcher.io.rows`."""

    row_index: int  # 0-based position of the row in the input
    row_id: str
    model: str
    model_index: int  # position of the model in the job's model list
    payload: bytes  # the body, model included, as canonical JSON
    request_hash: str  # SHA-256 of the canonical body and the base URL (see `request_hash`)
    est_prompt_tokens: int  # characters / 4
    max_tokens: int | None  # the completion bound in the body, if any
    sample: int = 0
    bad_input: str | None = None  # set (and never sent) under --on-bad-row skip
    variant: int = 0  # position of its parameter combination in the --sweep grid
    cache_prefix: str | None = None  # key of its first 1,024 tokens (`cache_prefix`)

    @property
    def body(self) -> dict[str, Any]:
        """The body as a dict (decoded from the payload on each call)."""
        return orjson.loads(self.payload) if self.payload else {}

    @property
    def completion_bound(self) -> int:
        """The completion tokens this request may use: its max_tokens, else the allowance."""
        return self.max_tokens or COMPLETION_ALLOWANCE

    @property
    def key(self) -> tuple[int, str, int, int]:
        """What identifies its result: row, model, parameter combination, sample."""
        return (self.row_index, self.model, self.variant, self.sample)

    @classmethod
    def chat(
        cls,
        model: str,
        messages: list[dict[str, Any]],
        *,
        id: str | None = None,
        index: int = 0,
        sample: int = 0,
        base_url: str = "",
        **params: Any,
    ) -> Request:
        """A request for `model` with `messages` and any other body keys (`temperature=0`,
        `max_tokens=100`, `response_format=...`): hashed, its prompt tokens estimated.
        `id` defaults to the row `index`; `base_url` enters the hash as it does for a job."""
        body = {"model": model, "messages": messages, **params}
        payload = canonical_json(body)
        return cls(
            row_index=index,
            row_id=str(index) if id is None else id,
            model=model,
            model_index=0,
            payload=payload,
            request_hash=request_hash(payload, base_url, sample=sample),
            est_prompt_tokens=estimate_tokens(messages),
            max_tokens=max_tokens_of(body),
            sample=sample,
        )


def canonical_json(body: Mapping[str, Any]) -> bytes:
    """A body as canonical JSON: keys sorted at every level (TypeError if not JSON)."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def request_hash(payload: bytes, base_url: str, *, sample: int = 0) -> str:
    """SHA-256 hex of `{"base_url": ..., "body": ..., "sample": k}` as canonical JSON (the
    sample only when k > 0: samples of one body are distinct keys, sample 0 keeps the
    one-sample hash), spliced from the payload rather than serialised again."""
    head = b'{"base_url":' + orjson.dumps(base_url.rstrip("/")) + b',"body":'
    tail = b',"sample":%d}' % sample if sample else b"}"
    return hashlib.sha256(head + payload + tail).hexdigest()


def estimate_tokens(messages: Any) -> int:
    """Prompt tokens, roughly: characters of text / 4, at least 1."""
    chars = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                chars += len(text) if isinstance(text, str) else 0
    return max(1, chars // 4)


CACHEABLE_TOKENS = 1024  # the shortest prefix OpenAI and Anthropic cache (estimated tokens)


def cache_prefix(messages: Any) -> str | None:
    """A key of the prompt's first `CACHEABLE_TOKENS`: prompts with the same key share a
    prefix a provider can cache. None for a shorter prompt, or content that is not text."""
    keys = prefix_keys(messages, (CACHEABLE_TOKENS,))
    return keys[0][0] if keys else None


def prefix_keys(messages: Any, levels: Sequence[int]) -> list[tuple[str, int]]:
    """For each of the ascending token counts in `levels` the prompt reaches, a key of its
    first that many tokens (roles and texts, in order; 4 characters a token, as
    `estimate_tokens` counts) and the index of the message where they end. [] for content
    that is not text (an image or audio part: where its tokens fall is unknown)."""
    digest = hashlib.blake2b(digest_size=8)
    out: list[tuple[str, int]] = []
    fed, want = 0, [n * 4 for n in levels]
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, dict)]
            if not all(isinstance(t, str) for t in texts):
                return []
            content = "".join(texts)
        if not isinstance(content, str):
            return []
        digest.update(f"{message.get('role')}\x1f".encode())
        while want and fed + len(content) >= want[0]:
            cut = want.pop(0) - fed
            done = digest.copy()
            done.update(content[:cut].encode())
            out.append((done.hexdigest(), i))
        digest.update(content.encode() + b"\x1e")
        fed += len(content)
        if not want:
            break
    return out


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    """The completion bound of a body: `max_tokens`, else `max_completion_tokens`."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if type(value) is int:
            return value
    return None


@dataclass(slots=True)
class Usage:
    """What requests were billed: tokens, and the server's own cost when it said.

    `Usage()` is nothing billed (zero tokens). A billed reply that did not say (or said
    nonsense) has None counts: unknown, never a made-up 0. The details are parts of the
    counts (cached and cache-write tokens of the prompt tokens, reasoning and audio tokens
    of theirs) or extra (search queries), None unless the server stated them."""

    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    total_tokens: int | None = 0
    cost_usd: float | None = None
    cached_tokens: int | None = None  # prompt tokens read from the provider's prompt cache
    cache_write_tokens: int | None = None  # prompt tokens written to it (Anthropic bills them)
    reasoning_tokens: int | None = None  # completion tokens spent reasoning (hidden)
    search_queries: int | None = None  # web searches the server ran (Octen bills them)
    audio_tokens: int | None = None  # prompt and completion tokens of audio

    @property
    def known(self) -> bool:
        return self.prompt_tokens is not None and self.completion_tokens is not None

    @staticmethod
    def total(billed: Sequence[Usage]) -> Usage:
        """The usage of several billed replies (a row's retries and re-asks): counts unknown
        when any reply's is, the server's cost only when every reply sent one."""
        if not billed:
            return Usage()
        if len(billed) == 1:
            return billed[0]
        costs = [u.cost_usd for u in billed]
        return Usage(
            *(_sum([getattr(u, name) for u in billed]) for name in _COUNTS[:3]),
            None if None in costs else sum(costs),  # type: ignore[arg-type]
            *(_sum([getattr(u, name) for u in billed]) for name in _COUNTS[3:]),
        )


_COUNTS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "search_queries",
    "audio_tokens",
)
DETAILS = _COUNTS[3:]  # the usage details, in the order of their output columns


UNKNOWN_USAGE = Usage(None, None, None, None)  # billed, but the reply did not say how much


def _sum(values: list[int | None]) -> int | None:
    return None if None in values else sum(values)  # type: ignore[arg-type]


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
    mode: str = "online"  # how it was obtained: online, or through a Batch API ("batch")

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @classmethod
    def of(cls, request: Request, status: Status, **fields: Any) -> Result:
        """The result of `request`: its key and fingerprint copied, then `fields`."""
        return cls(
            row_index=request.row_index,
            model_index=request.model_index,
            sample=request.sample,
            variant=request.variant,
            id=request.row_id,
            model=request.model,
            status=status,
            request_hash=request.request_hash or None,
            **fields,
        )


def describe_limit(name: str, value: tuple[float, str]) -> str:
    """A learned limit in words: ("rpm", (600.0, "429s")) -> "600 rpm from 429s"."""
    per_minute, source = value
    return f"{per_minute:,.0f} {name} from {source}"


def describe_learned(learned: Mapping[str, Mapping[str, tuple[float, str]]]) -> str | None:
    """What was learned per model, for the progress bar: "~590 rpm from 429s" (the model
    named when there are several), or None."""
    parts = [
        ", ".join(
            f"{'' if len(learned) == 1 else model + ' '}~{describe_limit(name, value)}"
            for name, value in limits.items()
        )
        for model, limits in learned.items()
    ]
    return "; ".join(parts) if parts else None
