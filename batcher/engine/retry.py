"""The retry policy: what is retried, how long to wait, when to give up, and how a failing
server is spared.

One declarative tenacity policy, built fresh for each request that needs a second attempt
(a shared `AsyncRetrying` is not safe across coroutines). The first attempt runs outside
tenacity, so the success path costs nothing. Attempts return an `Attempt` value rather than
raising, so the policy retries on results; `CancelledError` is never retried.

How long a retry waits depends on the server as a whole (`Health`), not only on the row's
attempt number: while most attempts succeed, a transient failure is retried soon, with
jitter; backoff grows with the attempt number only while the server as a whole is failing.
A server's retry-after is honoured (capped). A retry quota in the style of botocore's
standard mode spends `COST` per retry (`TIMEOUT_COST` after a timeout or a dropped
connection; nothing after a 429, which the limits answer) and earns one back per first-try
success, the cost back per successful retry; once it runs dry, every attempt, new or retry,
waits for a probe slot, one a second, until one succeeds: a server that is really failing
sees a trickle, not a stampede. `--max-retries` stays the cap per row.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
)

from batcher.engine.http import Attempt

CAPACITY = 500  # the retry quota, full
COST = 5  # a retry
TIMEOUT_COST = 10  # a retry after a timeout or a dropped connection
REOPEN = 10 * COST  # a probe that succeeds refills the quota this far
PROBE = 1.0  # seconds between attempts while the quota is dry
QUICK = 0.1  # seconds: the retry wait while the server is healthy (x 0.5..1.5)
FAILING = 0.5  # share of recent attempts failing above which the server is failing
_ALPHA = 0.05  # weight of one attempt in that share (about the last 20 count)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 6  # attempts after the first
    initial_wait: float = 1.0  # the first backoff while the server is failing
    max_wait: float = 60.0  # cap on backoff and on a server's retry-after


def should_retry(attempt: Attempt) -> bool:
    return attempt.error is not None and attempt.error.retryable


class Health:
    """The server's health, shared by every request of a run: the share of recent attempts
    that failed, and the retry quota."""

    def __init__(self, policy: RetryPolicy, *, seed: int | None = None) -> None:
        self.policy = policy
        self.quota = CAPACITY
        self.failing_share = 0.0
        self._next_probe = 0.0
        self._random = random.Random(seed)

    @property
    def failing(self) -> bool:
        return self.failing_share > FAILING

    @property
    def dry(self) -> bool:
        """The quota cannot pay for a retry: attempts go one a second."""
        return self.quota < COST

    def record(self, attempt: Attempt, retried: bool) -> None:
        """An attempt's outcome; `retried`: it was a retry (`refund` pays its cost back)."""
        error = attempt.error
        failed = error is not None and error.retryable and error.http_status != 429
        self.failing_share += _ALPHA * (failed - self.failing_share)
        if error is None:
            if self.dry:
                self.quota = max(self.quota, REOPEN)  # a probe got through: the server is back
            if not retried:
                self.refund(1)

    def spend(self, failed: Attempt) -> int:
        """A retry of `failed` is about to go: take its cost from the quota (a 429's retry
        costs nothing: the rate and concurrency limits answer those); the cost taken."""
        cost = 0 if failed.http_status == 429 else _cost(failed)
        taken = min(cost, self.quota)
        self.quota -= taken
        return taken

    def refund(self, amount: int) -> None:
        """A retry that succeeded pays back what it took; a first attempt one."""
        self.quota = min(CAPACITY, self.quota + amount)

    async def gate(self, nap: Callable[[float], Awaitable[None]], stopping: Callable[[], bool]):
        """Return at once while the quota holds; once dry, when this attempt's probe slot
        comes (or the run stops)."""
        while self.dry and not stopping():
            now = asyncio.get_running_loop().time()
            if now >= self._next_probe:
                self._next_probe = now + PROBE
                return
            await nap(self._next_probe - now)

    def backoff(self, attempt_number: int) -> float:
        """The wait before retry `attempt_number` (1: the first retry) of a transient failure."""
        jitter = 0.5 + self._random.random()
        if not self.failing:
            return QUICK * jitter
        policy = self.policy
        return min(policy.max_wait, policy.initial_wait * 2 ** (attempt_number - 1)) * jitter


def _cost(attempt: Attempt) -> int:
    error = attempt.error
    slow = error is not None and error.error_type in ("timeout", "connection_error")
    return TIMEOUT_COST if slow else COST


def make_wait(policy: RetryPolicy, health: Health) -> Callable[[RetryCallState], float]:
    """The server's retry-after when it gave one (capped), a short wait for "too many in
    flight", else the health's backoff."""

    def wait(state: RetryCallState) -> float:
        attempt = state.outcome.result() if state.outcome else None
        error = attempt.error if isinstance(attempt, Attempt) else None
        if error is not None and error.retry_after is not None:
            return min(error.retry_after, policy.max_wait)
        if error is not None and error.concurrency:
            return min(0.25 * state.attempt_number, policy.max_wait)
        return health.backoff(state.attempt_number)

    return wait


async def with_retries(
    send: Callable[[], Awaitable[Attempt]],
    first: Attempt,
    policy: RetryPolicy,
    health: Health,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> tuple[Attempt, int]:
    """Retry after a failed `first` attempt; return the last attempt and the attempts made."""
    if not should_retry(first) or policy.max_retries <= 0:
        return first, 1
    replay = [first]  # tenacity's first call hands back the attempt already made
    made = 1
    last = first

    async def attempt() -> Attempt:
        nonlocal made, last
        if replay:
            return replay.pop()
        made += 1
        taken = health.spend(last)
        last = await send()
        if last.error is None:
            health.refund(taken)
        return last

    extra = {"sleep": sleep} if sleep is not None else {}
    retrying = AsyncRetrying(
        stop=stop_after_attempt(1 + policy.max_retries),
        wait=make_wait(policy, health),
        retry=retry_if_result(should_retry),
        retry_error_callback=lambda state: state.outcome.result(),
        reraise=True,
        **extra,
    )
    return await retrying(attempt), made
