"""The retry policy: what is retried, how long to wait, when to give up.

One declarative tenacity policy, built fresh for each request that needs a second attempt
(a shared `AsyncRetrying` is not safe across coroutines). The first attempt runs outside
tenacity, so the success path costs nothing. Attempts return an `Attempt` value rather than
raising, so the policy retries on results; `CancelledError` is never retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from batcher.engine.http import Attempt


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 6  # attempts after the first
    initial_wait: float = 1.0
    max_wait: float = 60.0  # cap on backoff and on a server's retry-after


def should_retry(attempt: Attempt) -> bool:
    return attempt.error is not None and attempt.error.retryable


def make_wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    """Exponential backoff with jitter, unless the server said how long (capped)."""
    backoff = wait_exponential(multiplier=policy.initial_wait, max=policy.max_wait) + wait_random(
        0, policy.initial_wait
    )

    def wait(state: RetryCallState) -> float:
        attempt = state.outcome.result() if state.outcome else None
        error = attempt.error if isinstance(attempt, Attempt) else None
        if error is not None and error.retry_after is not None:
            return min(error.retry_after, policy.max_wait)
        if error is not None and error.concurrency:
            return min(0.25 * state.attempt_number, policy.max_wait)
        return backoff(state)

    return wait


async def with_retries(
    send: Callable[[], Awaitable[Attempt]],
    first: Attempt,
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> tuple[Attempt, int]:
    """Retry after a failed `first` attempt; return the last attempt and the attempts made."""
    if not should_retry(first) or policy.max_retries <= 0:
        return first, 1
    replay = [first]  # tenacity's first call hands back the attempt already made
    made = 1

    async def attempt() -> Attempt:
        nonlocal made
        if replay:
            return replay.pop()
        made += 1
        return await send()

    extra = {"sleep": sleep} if sleep is not None else {}
    retrying = AsyncRetrying(
        stop=stop_after_attempt(1 + policy.max_retries),
        wait=make_wait(policy),
        retry=retry_if_result(should_retry),
        retry_error_callback=lambda state: state.outcome.result(),
        reraise=True,
        **extra,
    )
    return await retrying(attempt), made
