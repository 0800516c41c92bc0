"""The limits of one run: the rate limiters of the endpoint and of each model, and an
adaptive concurrency cap.

`ConcurrencyLimit` is an in-flight cap with AIMD: it shrinks by a quarter when the server
says "too many concurrent requests" and grows by one after `limit` successes.

`Limits` holds all of them for one run of the engine and learns from every reply: the
limits headers state, the rate found from 429s (`engine.rates`, `engine.adaptive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

from batcher.engine.rates import RateLimiter
from batcher.types import describe_learned

if TYPE_CHECKING:
    from batcher.engine.http import Attempt
    from batcher.errors import AttemptError

__all__ = ["ConcurrencyLimit", "Limits"]

log = logging.getLogger(__name__)


class ConcurrencyLimit:
    """An in-flight cap that can shrink when the server says "too many concurrent requests"
    and grows back slowly (AIMD). Usable as `async with cap:`."""

    def __init__(self, limit: int, *, minimum: int = 1) -> None:
        if limit < 1 or not 1 <= minimum <= limit:
            raise ValueError(f"need 1 <= minimum ({minimum}) <= limit ({limit})")
        self._maximum = limit
        self._minimum = minimum
        self._limit = limit
        self._in_flight = 0
        self._peak = 0  # most in flight since the limit last changed
        self._successes = 0
        self._cooldown = 0  # releases still due from the requests in flight at the last shrink
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self) -> None:
        """Wait for a slot (FIFO). A cancelled call holds no slot."""
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # release() counts us in flight before waking us
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled before it could run
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        if self._in_flight <= 0:
            raise ValueError("release() without acquire()")
        self._in_flight -= 1
        if self._cooldown:
            self._cooldown -= 1
        self._grant()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def shrink(self) -> None:
        """Multiplicative decrease: limit = max(minimum, floor(0.75 * min(limit, peak))), where
        peak is the most in flight since the limit last changed. Call it after releasing the
        failed request's slot. Further shrinks are ignored until every request in flight now
        has been released: one burst of errors shrinks once."""
        if self._cooldown:
            return
        base = min(self._limit, max(self._peak, 1))
        self._limit = max(self._minimum, min(self._limit, math.floor(base * 0.75)))
        self._cooldown = self._in_flight + 1  # +1: the last of them shrinks after its release
        self._successes = 0
        self._peak = self._in_flight

    def on_success(self) -> None:
        """Additive increase: +1 after `limit` successes since the last change, up to the
        configured limit."""
        self._successes += 1
        if self._successes >= self._limit and self._limit < self._maximum:
            self._limit += 1
            self._successes = 0
            self._peak = self._in_flight
            self._grant()

    def _grant(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self._in_flight += 1
                self._peak = max(self._peak, self._in_flight)


class Limits:
    """The limits of one run: requests and tokens per minute for the whole endpoint and per
    model, and the adaptive in-flight cap, all fed back from every reply (`learn`).

    The endpoint's limiter holds the user's `--rpm` / `--tpm`; each model's own limiter holds
    the user's limits for that model and what is learned about it: the limits its replies'
    headers state, and the rate found from its 429s (`RateFinder`), never above the user's.
    A 429 holds back its own request only (the retry waits); new requests to its model
    pause only when 429s flood the replies, for the 429's retry-after or a second.

    A pause lasts `max_pause` at most, and one of more than `NOTE` seconds is said on the log
    and in `pause_note` (the progress bar shows it).

    With `learning=False` the limits a server states and the rates its 429s show are left to
    someone else (the job's coordinator on Ray, which hears every actor's replies)."""

    NOTE = 5.0  # seconds: a pause longer than this is said

    def __init__(
        self,
        *,
        concurrency: int,
        rpm: float | None = None,
        tpm: float | None = None,
        model_limits: Mapping[str, tuple[float | None, float | None]] | None = None,
        max_pause: float = 60.0,
        learning: bool = True,
    ) -> None:
        self.endpoint = RateLimiter(rpm, tpm)
        self.learning = learning
        self.cap = ConcurrencyLimit(concurrency)
        self.pause_reason = ""
        self._max_pause = max_pause
        self._user = dict(model_limits or {})
        self._own: dict[str, RateLimiter] = {}
        self._for: dict[str, list[RateLimiter]] = {}
        self._seen: set[str] = set()  # models this run sent to

    def of(self, model: str) -> list[RateLimiter]:
        """The rate limiters a request to `model` goes through: the endpoint's, its own."""
        limiters = self._for.get(model)
        if limiters is None:
            own = self._own[model] = RateLimiter(*self._user.get(model, (None, None)))
            limiters = self._for[model] = [self.endpoint, own]
        return limiters

    async def acquire(self, model: str, charge: int) -> list[RateLimiter]:
        """Wait until a request of `charge` tokens to `model` may start; its limiters."""
        limiters = self.of(model)
        for limiter in limiters:
            await limiter.acquire(charge)
        return limiters

    def open(self) -> None:
        """Let every request waiting for a rate limit through at once (the run stops)."""
        for limiter in [self.endpoint, *self._own.values()]:
            limiter.open()

    @staticmethod
    def paused(limiters: list[RateLimiter]) -> bool:
        """Whether a pause holds any of `limiters` now."""
        return any(limiter.paused_until > limiter.now() for limiter in limiters)

    @staticmethod
    def refund(limiters: list[RateLimiter], charge: int) -> None:
        """A request that was let through but not sent gives its tokens back."""
        for limiter in limiters:
            limiter.settle(charge, 0)

    def learn(self, model: str, attempt: Attempt, charge: int) -> tuple[float, str]:
        """Feed what a reply said back into the limits: rate-limit headers, the tokens it
        really used, and a 429 (a sign of a rate limit, or a smaller cap when it was about
        requests in flight). Returns the pause its remaining-budget headers asked for (0 and
        "" for none), and why."""
        error, reply = attempt.error, attempt.reply
        self._seen.add(model)
        limiters = self.of(model)
        own = limiters[-1]
        wait, why = 0.0, ""
        if attempt.headers is not None:
            wait, why = own.observe(attempt.headers, self.cap.in_flight)
            if wait > 0:
                self.pause(own, wait, why)
            if self.learning:
                own.hear(attempt.headers)
        if reply is not None:
            used = reply.usage.total_tokens or charge
            for limiter in limiters:
                limiter.settle(charge, used)
            own.succeeded(used)
            self.cap.on_success()
            return wait, why
        if error is None:
            return wait, why
        if error.concurrency:
            self.cap.shrink()
        elif is_rate_429(error):
            for limiter in limiters:
                limiter.settle(charge, 0)
            if not self.learning:
                return wait, why
            tokens = about_tokens(error)
            pause = min(self._max_pause, 1.0 if error.retry_after is None else error.retry_after)
            if own.throttled(own.now() - attempt.latency_s, tokens, pause):
                self.said(pause, f"most requests to {model} got 429s")
        return wait, why

    def pause(self, limiter: RateLimiter, seconds: float, why: str) -> None:
        """Pause new requests through `limiter` (at most `max_pause`); say a long pause."""
        seconds = min(seconds, self._max_pause)
        longer = limiter.paused_until < limiter.now() + seconds - 1.0
        limiter.pause(seconds)
        if longer:
            self.said(seconds, why)

    def said(self, seconds: float, why: str) -> None:
        """Say a pause of more than `NOTE` seconds on the log and in the progress note."""
        if seconds > self.NOTE:
            self.pause_reason = why
            log.warning("pausing new requests for %.0f s: %s", seconds, why)

    def pause_note(self) -> str | None:
        """ "paused 42 s: <why>" while a long pause is in force, else None."""
        now = self.endpoint.now()
        until = max([self.endpoint.paused_until, *(x.paused_until for x in self._own.values())])
        left = until - now
        return f"paused {left:.0f} s: {self.pause_reason}" if left > self.NOTE else None

    def note(self) -> str | None:
        """What the progress bar says of the limits: a long pause in force, else the rates
        learned ("~590 rpm from 429s"), else None."""
        paused = self.pause_note()
        if paused is not None:
            return paused
        return describe_learned(self.learned())

    def learned(self) -> dict[str, dict[str, tuple[float, str]]]:
        """What was learned per model this run sent to: {"gpt-x": {"rpm": (600.0, "429s")}}."""
        out = {}
        for model, limiter in self._own.items():
            learned = limiter.learned() if model in self._seen else None
            if learned:
                out[model] = learned
        return out

    def resume(self, learned: Mapping[str, Mapping[str, tuple[float, str]]]) -> None:
        """Start each model where an earlier run's `learned` left it."""
        for model, limits in learned.items():
            self.of(model)[-1].resume(limits)


def is_rate_429(error: AttemptError) -> bool:
    """A 429 (or 529) about a rate limit, not an exhausted quota."""
    return error.http_status in (429, 529) and error.error_type != "quota_exhausted"


def about_tokens(error: AttemptError) -> bool:
    """Whether a rate 429 is about tokens a minute rather than requests."""
    return any(w in error.message.lower() for w in ("token", "tpm"))
