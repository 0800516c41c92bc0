"""The one exception tree of batcher.

```
BatcherError                 anything batcher raises on purpose
├── UsageError               bad options or settings, found before anything is sent (exit 2)
├── InputError               a bad input file, row or template (exit 2); names file and line
├── StorageError             results or the output could not be written (exit 74): a full
│                            disk, an I/O error; what was saved stays, a rerun resumes
└── AttemptError             one HTTP attempt failed; carries error_type and http_status
    ├── RetryableError       worth another attempt: 408/409/429/5xx/529, drops, timeouts,
    │                        truncated or unparseable bodies; may carry the server's wait
    └── FatalError           never retried: 400/401/403/404/413/422, exhausted quota
```

The module ends with the helpers that word one-line messages (`quote`, `show_path`,
`json_kind`, `one_line`).

A failed row is data, not an exception: the engine turns an `AttemptError` into a `Result`
with `status="error"`. Messages never contain request headers, so never a key.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batcher.types import Usage


class BatcherError(Exception):
    """Base class of every error batcher raises on purpose."""


class UsageError(BatcherError):
    """Options or settings that cannot work; reported before anything is sent."""


class InputError(BatcherError):
    """A bad input file, row or template; the message names the file and the line or row."""


class StorageError(BatcherError):
    """Results or the output could not be written; what was saved before is durable."""


class AttemptError(BatcherError):
    """One HTTP attempt that did not give a usable reply."""

    retryable = False

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
        job_fatal: bool = False,
        concurrency: bool = False,
    ) -> None:
        super().__init__(message)
        self.error_type = str(getattr(error_type, "value", error_type))  # plain str, enum or not
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after
        # True when every other request will fail the same way (bad key, no quota).
        self.job_fatal = job_fatal
        # True for a 429 about too many requests in flight: the cure is fewer, not slower.
        self.concurrency = concurrency
        # What the attempt was billed, when it may have been: a reply rejected all the same
        # (a 200 without choices), or unknown usage for a reply cut short or timed out.
        self.usage: Usage | None = None

    def __repr__(self) -> str:  # never the request, never headers
        return f"{type(self).__name__}({self.error_type!r}, {self.message!r})"


class RetryableError(AttemptError):
    """Another attempt may succeed (after `retry_after` seconds when the server said so)."""

    retryable = True


class FatalError(AttemptError):
    """Another attempt would fail the same way."""


def os_problem(exc: BaseException) -> str:
    """Why a file could not be opened or read, as a message ends: "no such file", ..."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    strerror = getattr(exc, "strerror", None)
    reason = strerror.lower() if strerror else str(exc) or type(exc).__name__
    return f"cannot read: {one_line(reason)}"


def one_line(text: str, limit: int = 200) -> str:
    """`text` for a one-line message: whitespace runs as one space, cut at `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


QUOTE_CHARS = 60  # longer values are cut in messages


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """A value for a one-line message: repr-quoted, cut to `limit` characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def is_uri(path: str | os.PathLike[str]) -> bool:
    """Whether a path names a file of another filesystem: `s3://bucket/key`, `file:///x`."""
    return "://" in os.fspath(path)


def show_path(path: str | os.PathLike[str]) -> str:
    """The path as given, escaped if it holds characters that would break a line."""
    text = os.fspath(path)
    return text if text.isprintable() else repr(text)[1:-1]


def json_kind(value: object) -> str:
    """The JSON kind of a value, with an article: "an object", "a list", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, dict) else "a list"
