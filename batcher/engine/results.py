"""A request's outcome as its output row: the last attempt (and, for structured output, its
checks) turned into a `Result`."""

from __future__ import annotations

import time

from batcher.engine.http import Attempt
from batcher.types import ErrorType, Request, Result, Status, Usage


def to_result(
    request: Request,
    attempt: Attempt,
    attempts: int,
    *,
    usage: Usage | None = None,
    reasks: int = 0,
    parsed: dict | None = None,
    invalid: str | None = None,
) -> Result:
    """The output row for a request's last attempt: ok, `invalid_output` (answered but never
    valid: the last raw reply is kept) or the attempt's error."""
    reply, error = attempt.reply, attempt.error
    common = {
        "attempts": attempts,
        "latency_s": attempt.latency_s,
        "ttft_s": attempt.ttft_s,
        "reasks": reasks,
        "finished_at": time.time(),
    }
    if reply is not None:
        return Result.of(
            request,
            Status.OK if invalid is None else Status.ERROR,
            http_status=attempt.http_status,
            reply=reply,
            usage=usage if usage is not None else reply.usage,
            parsed=parsed if invalid is None else None,
            error_type=None if invalid is None else ErrorType.INVALID_OUTPUT.value,
            error_message=invalid,
            **common,
        )
    assert error is not None
    return Result.of(
        request,
        Status.ERROR,
        http_status=attempt.http_status or error.http_status,
        usage=usage if usage is not None else Usage(),
        error_type=error.error_type,
        error_message=error.message,
        **common,
    )


def error_result(request: Request, error_type: str, message: str) -> Result:
    """An error row for a request that was never sent (a bad input row)."""
    return Result.of(
        request, Status.ERROR, error_type=error_type, error_message=message, finished_at=time.time()
    )
