"""Client-side rate limits and an adaptive concurrency cap.

`RateLimiter` spreads requests and tokens evenly with GCRA (virtual scheduling): each budget
keeps a theoretical arrival time `tat`, the moment everything charged so far is paid off at
the configured rate. A request may start once its cost fits in a burst tolerance of one
second's budget (at least one unit) above `tat`; a request dearer than that waits until the
budget is clear and leaves the excess as debt that delays the next ones. The budgets start,
and restart after every pause, with no burst credit, so the first minute is as smooth as any.
Any 60 s window then holds at most `limit + max(one second's budget, the dearest request)`:
within 5% for requests (at least one unit of burst is needed, so below 60 rpm it is exact) and
for tokens as long as no single request costs more than 5% of the tpm.

Waiters queue in FIFO order and only the head of the queue sleeps, until its own computed
start time (or until a refund lets it go sooner), then hands over to the next: no polling, no
charge for a request that is cancelled before it may go.

`ConcurrencyLimit` is an in-flight cap with AIMD: it shrinks by a quarter when the server
says "too many concurrent requests" and grows by one after `limit` successes.

`Limits` holds all of them for one run of the engine and learns from every reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batcher.engine.http import Attempt

__all__ = ["ConcurrencyLimit", "Limits", "RateLimiter", "parse_duration"]

log = logging.getLogger(__name__)

_NEVER = float("-inf")
_EPSILON = 1e-9  # seconds: a start this close counts as due (float rounding, timer slop)
_MAX_RESET = 86_400.0  # reset headers beyond a day are taken for nonsense (an epoch?) and ignored
_UNITS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ms|us|µs|μs|ns|h|m|s)"  # "ms" before "m"
_PART = re.compile(f"({_NUMBER})({_UNIT})")
_DURATION = re.compile(f"(?:{_NUMBER}{_UNIT})+")


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration ("1h2m3.5s", "6m0s", "12ms") or a plain number of
    seconds ("20", "0.5"); None if unparseable, negative or not finite."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        if not _DURATION.fullmatch(text):
            return None
        return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))
    return value if math.isfinite(value) and value >= 0 else None


def _number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _reset(text: str | None) -> float | None:
    value = parse_duration(text) if text is not None else None
    return value if value is not None and value <= _MAX_RESET else None


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Budget:
    """One per-minute budget as GCRA; `tat` is when all that was charged is paid off."""

    __slots__ = ("burst", "interval", "tat")

    def __init__(self, per_minute: float) -> None:
        self.interval = 60.0 / per_minute  # seconds per unit
        self.burst = max(1.0, per_minute / 60.0)  # units that may go at once: one second's
        self.tat = _NEVER

    def _slack(self, cost: float) -> float:
        return (self.burst - min(cost, self.burst)) * self.interval

    def start(self, cost: float, floor: float) -> float:
        """The earliest time a request of `cost` fits (a cost above the burst: budget clear)."""
        return max(self.tat - self._slack(cost), floor)

    def charge(self, cost: float, now: float, floor: float) -> None:
        # Credit never exceeds the burst (clamp at `now`) and is zero at `floor`.
        self.tat = max(self.tat, floor + self._slack(cost), now) + cost * self.interval


def _budget(name: str, per_minute: float | None) -> _Budget | None:
    if per_minute is None:
        return None
    if not (math.isfinite(per_minute) and per_minute > 0):
        raise ValueError(f"{name} must be a positive number, not {per_minute!r}")
    return _Budget(per_minute)


class _Waiter:
    __slots__ = ("wake",)

    def __init__(self, wake: asyncio.Future[None]) -> None:
        self.wake = wake


class RateLimiter:
    """Requests-per-minute and tokens-per-minute budgets shared by all workers talking to one
    endpoint (or one model), plus a pause that a 429 sets.

    `clock` defaults to the running loop's `time()` and `sleep` to the loop's own timers (what
    `asyncio.sleep` uses); both are looked up on first use, never at construction.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._requests = _budget("rpm", rpm)
        self._tokens = _budget("tpm", tpm)
        self._clock = clock
        self._sleep = sleep
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused_until = _NEVER
        self._floor = _NEVER  # no burst credit at this time: first use, end of a pause
        self._fresh = True
        self._limited = rpm is not None or tpm is not None  # False: the hot path applies
        self._waiters: deque[_Waiter] = deque()
        self._avg_tokens = 0.0  # running mean of charges, for observe()

    @property
    def paused_until(self) -> float:
        """Clock time before which no acquire returns (-inf if never paused)."""
        return self._paused_until

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request and `tokens` fit both budgets and no pause is in force, then
        charge them. FIFO: earlier callers go first. A cancelled call charges nothing."""
        if tokens > 0:
            avg = self._avg_tokens
            self._avg_tokens = avg + 0.1 * (tokens - avg) if avg else float(tokens)
        if not self._limited:
            return
        if not self._waiters:
            now = self._now()
            if self._start(tokens, now) <= now + _EPSILON:
                self._charge(tokens, now)
                return
        await self._wait(tokens)

    def settle(self, charged: int, actual: int) -> None:
        """Correct the token budget once real usage is known (refund or extra charge)."""
        budget = self._tokens
        if budget is None or actual == charged:
            return
        budget.tat += (actual - charged) * budget.interval
        if actual < charged and self._waiters:
            _wake(self._waiters[0].wake)  # the head may go sooner: let it recompute

    def pause(self, seconds: float) -> None:
        """No acquire returns before now + `seconds`, waiting callers included; extends, never
        shortens, a pause in force. Budgets restart after it with no burst credit."""
        if not (seconds > 0 and math.isfinite(seconds)):
            return
        until = self._now() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._floor = max(self._floor, until)
            self._limited = True

    def observe(self, headers: Mapping[str, str], in_flight: int = 0) -> tuple[float, str]:
        """How long to pause before the server would answer 429, from OpenAI-style headers,
        and why (0 and "" when there is no need).

        Until `x-ratelimit-reset-requests` when `x-ratelimit-remaining-requests` <=
        `in_flight` (the requests already sent will use them up), and until
        `x-ratelimit-reset-tokens` when `x-ratelimit-remaining-tokens` is below
        `(in_flight + 1)` mean charges (those in flight plus the next one). `headers` must
        look keys up case-insensitively or hold them in lower case. Unparseable values, and
        resets over a day, are ignored.
        """
        requests = headers.get("x-ratelimit-remaining-requests")
        tokens = headers.get("x-ratelimit-remaining-tokens")
        if requests is None and tokens is None:  # most servers: nothing to learn
            return 0.0, ""
        wait, why = 0.0, ""
        remaining = _number(requests)
        if remaining is not None and remaining <= in_flight:
            wait = _reset(headers.get("x-ratelimit-reset-requests")) or 0.0
            why = f"x-ratelimit-remaining-requests is {requests}" if wait > 0 else ""
        remaining = _number(tokens)
        if remaining is not None and remaining < max(1.0, (in_flight + 1) * self._avg_tokens):
            reset = _reset(headers.get("x-ratelimit-reset-tokens")) or 0.0
            if reset > wait:
                wait, why = reset, f"x-ratelimit-remaining-tokens is {tokens}"
        return wait, why

    def now(self) -> float:
        """The limiter's clock."""
        return self._now()

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def _start(self, tokens: int, now: float) -> float:
        """The earliest time this request may start."""
        if self._fresh:  # first use: start without burst credit
            self._fresh = False
            self._floor = max(self._floor, now)
        start = self._paused_until
        if self._requests is not None:
            start = max(start, self._requests.start(1, self._floor))
        if self._tokens is not None and tokens > 0:
            start = max(start, self._tokens.start(tokens, self._floor))
        return start

    def _charge(self, tokens: int, now: float) -> None:
        if self._requests is not None:
            self._requests.charge(1, now, self._floor)
        if self._tokens is not None and tokens > 0:
            self._tokens.charge(tokens, now, self._floor)
        if self._requests is None and self._tokens is None and len(self._waiters) <= 1:
            self._limited = False  # a pause without budgets is over: back to the hot path

    async def _wait(self, tokens: int) -> None:
        loop = asyncio.get_running_loop()
        me = _Waiter(loop.create_future())
        waiters = self._waiters
        waiters.append(me)
        try:
            while waiters[0] is not me:  # the one ahead wakes us when it leaves
                await me.wake
                me.wake = loop.create_future()
            while True:
                now = self._now()
                start = self._start(tokens, now)
                if start <= now + _EPSILON:
                    self._charge(tokens, now)
                    return
                me.wake = loop.create_future()
                timer: asyncio.Handle | asyncio.Task[None]
                if self._sleep is None:
                    timer = loop.call_later(start - now, _wake, me.wake)
                else:
                    timer = loop.create_task(self._alarm(start - now, me.wake))
                try:
                    await me.wake  # the alarm, or a refund; then recompute
                finally:
                    timer.cancel()
        finally:
            if waiters[0] is me:
                waiters.popleft()
                if waiters:
                    _wake(waiters[0].wake)
            else:
                waiters.remove(me)

    async def _alarm(self, delay: float, fut: asyncio.Future[None]) -> None:
        await self._sleep(delay)  # type: ignore[misc]
        _wake(fut)


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

    A pause (a 429's retry-after, rate-limit headers saying the budget is used up) lasts
    `max_pause` at most, and one of more than `NOTE` seconds is said on the log and in
    `pause_note` (the progress bar shows it)."""

    NOTE = 5.0  # seconds: a pause longer than this is said

    def __init__(
        self,
        *,
        concurrency: int,
        rpm: float | None = None,
        tpm: float | None = None,
        model_limits: Mapping[str, tuple[float | None, float | None]] | None = None,
        max_pause: float = 60.0,
    ) -> None:
        self.endpoint = RateLimiter(rpm, tpm)
        self.cap = ConcurrencyLimit(concurrency)
        self.pause_reason = ""
        self._max_pause = max_pause
        self._own = {m: RateLimiter(r, t) for m, (r, t) in (model_limits or {}).items()}
        self._for: dict[str, list[RateLimiter]] = {}

    def of(self, model: str) -> list[RateLimiter]:
        """The rate limiters a request to `model` goes through: the endpoint's, its own."""
        limiters = self._for.get(model)
        if limiters is None:
            limiters = [self.endpoint, *([self._own[model]] if model in self._own else [])]
            self._for[model] = limiters
        return limiters

    async def acquire(self, model: str, charge: int) -> list[RateLimiter]:
        """Wait until a request of `charge` tokens to `model` may start; its limiters."""
        limiters = self.of(model)
        for limiter in limiters:
            await limiter.acquire(charge)
        return limiters

    @staticmethod
    def refund(limiters: list[RateLimiter], charge: int) -> None:
        """A request that was let through but not sent gives its tokens back."""
        for limiter in limiters:
            limiter.settle(charge, 0)

    def learn(self, limiters: list[RateLimiter], attempt: Attempt, charge: int) -> None:
        """Feed what a reply said back into the limits: rate-limit headers, the tokens it
        really used, and a 429 (a pause for everyone, or a smaller cap when it was about
        requests in flight)."""
        error, reply = attempt.error, attempt.reply
        for limiter in limiters:
            if attempt.headers is not None:
                wait, why = limiter.observe(attempt.headers, self.cap.in_flight)
                if wait > 0:
                    self.pause(limiter, wait, why)
            if reply is not None:
                limiter.settle(charge, reply.usage.total_tokens or charge)
            elif error is not None and error.error_type == "rate_limited":
                limiter.settle(charge, 0)
        if reply is not None:
            self.cap.on_success()
        elif error is not None and error.concurrency:
            self.cap.shrink()
        elif error is not None and error.error_type == "rate_limited":
            if error.retry_after is not None:
                self.pause(self.endpoint, error.retry_after, "a 429 said retry-after")
            else:
                self.pause(self.endpoint, 1.0, "a 429 without retry-after")

    def pause(self, limiter: RateLimiter, seconds: float, why: str) -> None:
        """Pause new requests through `limiter` (at most `max_pause`); say a long pause."""
        seconds = min(seconds, self._max_pause)
        longer = limiter.paused_until < limiter.now() + seconds - 1.0
        limiter.pause(seconds)
        if seconds > self.NOTE and longer:
            self.pause_reason = why
            log.warning("pausing new requests for %.0f s: %s", seconds, why)

    def pause_note(self) -> str | None:
        """ "paused 42 s: <why>" while a long pause is in force, else None."""
        left = self.endpoint.paused_until - self.endpoint.now()
        return f"paused {left:.0f} s: {self.pause_reason}" if left > self.NOTE else None
