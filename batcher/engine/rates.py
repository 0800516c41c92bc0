"""Client-side rate limits: requests and tokens per minute, for one endpoint or one model.

`RateLimiter` spreads requests and tokens evenly with GCRA (virtual scheduling): each budget
keeps a theoretical arrival time `tat`, the moment everything charged so far is paid off at
its rate. Requests are spaced: each starts an interval after the one before, in real time,
so a timer that fires late never lets two go closer (a server counting over one second
would see one too many), and 1% under the limit, for jitter on the way to the server. A
request's tokens may start once they fit in a burst tolerance of one second's budget above
`tat`; a request dearer than that waits until the budget is clear and leaves the excess as
debt that delays the next ones. The budgets start, and restart after every pause, with no
burst credit, so the first minute is as smooth as any. Any 60 s window then holds at most
`limit` requests and `limit + max(one second's budget, the dearest request)` tokens: within
5% as long as no single request costs more than 5% of the tpm.

A budget's rate is the lowest of the user's ceiling, the limit the server's headers state
and the rate a `RateFinder` found from its 429s, recomputed as that rate moves.

Waiters queue in FIFO order and only the head of the queue sleeps, until its own computed
start time (or until a refund lets it go sooner), then hands over to the next: no polling, no
charge for a request that is cancelled before it may go.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from batcher.engine.adaptive import RateFinder

__all__ = ["RateLimiter", "parse_duration"]

_NEVER = float("-inf")
SPACED = 0.99  # spaced requests go at 99% of their limit
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
    """Seconds until a reset: a duration, or a moment (RFC 3339, as Anthropic sends)."""
    value = parse_duration(text) if text is not None else None
    if value is None and text is not None and "T" in text:
        try:
            moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
            value = max(0.0, moment.timestamp() - time.time())
        except ValueError:
            value = None
    return value if value is not None and value <= _MAX_RESET else None


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Budget:
    """One per-minute budget as GCRA; `tat` is when all that was charged is paid off."""

    __slots__ = ("burst", "interval", "spaced", "tat")

    def __init__(self, per_minute: float, *, spaced: bool = False) -> None:
        self.interval = self.burst = 0.0
        self.spaced = spaced  # no burst: every unit an interval after the last, in real time
        self.set(per_minute)
        self.tat = _NEVER

    def set(self, per_minute: float) -> None:
        # seconds per unit; spaced requests go 1% under the limit, so that jitter on the way
        # never brings two closer than a server counting over a second allows
        self.interval = 60.0 / (per_minute * (SPACED if self.spaced else 1.0))
        # units that may go at once: one second's, or one when spaced
        self.burst = 1.0 if self.spaced else max(1.0, per_minute / 60.0)

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
    return _Budget(per_minute, spaced=name == "rpm")


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
        # What is learned, per kind (requests, tokens): the user's ceiling, the limit headers
        # say (per minute), and the rate found from 429s.
        self._ceiling = (rpm, tpm)
        self._heard: list[float | None] = [None, None]
        self.finders = (RateFinder(), RateFinder())  # units a second
        self._following = False  # a finder found a rate: the budgets follow its curve
        self._open = False  # see open()

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
        if not self._limited or self._open:
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
        style = "x-ratelimit-{}-{}"
        requests = headers.get("x-ratelimit-remaining-requests")
        tokens = headers.get("x-ratelimit-remaining-tokens")
        if requests is None and tokens is None:
            style = "anthropic-ratelimit-{1}-{0}"
            requests = headers.get("anthropic-ratelimit-requests-remaining")
            tokens = headers.get("anthropic-ratelimit-tokens-remaining")
            if requests is None and tokens is None:  # most servers: nothing to learn
                return 0.0, ""
        wait, why = 0.0, ""
        remaining = _number(requests)
        if remaining is not None and remaining <= in_flight:
            wait = _reset(headers.get(style.format("reset", "requests"))) or 0.0
            why = f"{style.format('remaining', 'requests')} is {requests}" if wait > 0 else ""
        remaining = _number(tokens)
        if remaining is not None and remaining < max(1.0, (in_flight + 1) * self._avg_tokens):
            reset = _reset(headers.get(style.format("reset", "tokens"))) or 0.0
            if reset > wait:
                wait, why = reset, f"{style.format('remaining', 'tokens')} is {tokens}"
        return wait, why

    def hear(self, headers: Mapping[str, str]) -> None:
        """Take the limits a reply's headers state (`x-ratelimit-limit-requests` / `-tokens`,
        Anthropic's `anthropic-ratelimit-*-limit`) as budgets, below the user's ceiling."""
        values = stated_limits(headers)
        if values == (None, None):  # most servers: nothing to hear
            return
        changed = False
        for kind, limit in enumerate(values):
            if limit is not None and limit != self._heard[kind]:
                self._heard[kind] = limit
                changed = True
        if changed:
            self._refresh(self._now())

    def succeeded(self, tokens: int) -> None:
        """A reply that was not throttled, which used `tokens`."""
        now = self._now()
        requests, token_finder = self.finders
        requests.success(now)
        if tokens > 0:
            token_finder.success(now, tokens)

    def throttled(self, sent_at: float, tokens: bool, pause: float) -> bool:
        """A 429 about rate (about tokens when `tokens`) for a request sent at `sent_at`:
        lower the rate when it is a sign of a limit. When 429s flood the replies, pause
        `pause` seconds (the rate found starts after it) and return True."""
        now = self._now()
        finder = self.finders[tokens]
        cut, flood = finder.throttled(now, sent_at)
        if flood:
            self.pause(pause)
            finder.restart(self._paused_until)
        if cut or flood:
            self._following = finder.found is not None or self._following
            self._refresh(now)
        return flood

    def learned(self) -> dict[str, tuple[float, str]]:
        """The limits learned so far, per minute, and from what: {"rpm": (600.0, "429s")}."""
        out: dict[str, tuple[float, str]] = {}
        for kind, name in enumerate(("rpm", "tpm")):
            found = self.finders[kind].found
            heard = self._heard[kind]
            if found is not None and (heard is None or found * 60 < heard):
                out[name] = (found * 60, "429s")
            elif heard is not None:
                out[name] = (heard, "headers")
        return out

    def resume(self, learned: Mapping[str, tuple[float, str]]) -> None:
        """Start from what an earlier run learned (see `learned`)."""
        now = self._now()
        for kind, name in enumerate(("rpm", "tpm")):
            if name not in learned:
                continue
            per_minute, source = learned[name]
            if source == "headers":
                self._heard[kind] = per_minute
            else:
                self.finders = tuple(  # type: ignore[assignment]
                    RateFinder(per_minute / 60, now) if k == kind else f
                    for k, f in enumerate(self.finders)
                )
                self._following = True
        self._refresh(now)

    def rate(self, kind: int) -> float | None:
        """The rate per minute now in force for requests (0) or tokens (1), before the 1%
        that spaced requests keep under it."""
        budget = (self._requests, self._tokens)[kind]
        if budget is None:
            return None
        return 60.0 / budget.interval / (SPACED if budget.spaced else 1.0)

    def _refresh(self, now: float) -> None:
        """Budgets at the lowest of the ceiling, the headers' limit and the rate found."""
        for kind in (0, 1):
            found = self.finders[kind].rate(now)
            rates = [
                r
                for r in (self._ceiling[kind], self._heard[kind], found and found * 60)
                if r is not None
            ]
            if not rates:
                continue
            rate = max(min(rates), 1.0)  # one a minute at least
            budget = self._requests if kind == 0 else self._tokens
            if budget is None:
                budget = _Budget(rate, spaced=kind == 0)
                if kind == 0:
                    self._requests = budget
                else:
                    self._tokens = budget
                self._floor = max(self._floor, now)  # a new budget starts with no credit
                self._limited = True
            else:
                budget.set(rate)

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
        if self._following:
            self._refresh(now)
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
            while not self._open:
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

    def open(self) -> None:
        """Let every waiting and later caller through at once, charging nothing (the run is
        stopping: they only come to find it so)."""
        self._open = True
        for waiter in self._waiters:
            _wake(waiter.wake)

    async def _alarm(self, delay: float, fut: asyncio.Future[None]) -> None:
        await self._sleep(delay)  # type: ignore[misc]
        _wake(fut)


def stated_limits(headers: Mapping[str, str]) -> tuple[float | None, float | None]:
    """The requests and tokens a minute a reply's headers state (`x-ratelimit-limit-*`,
    Anthropic's `anthropic-ratelimit-*-limit`), None where they state none."""
    get = headers.get
    values = (
        get("x-ratelimit-limit-requests") or get("anthropic-ratelimit-requests-limit"),
        get("x-ratelimit-limit-tokens") or get("anthropic-ratelimit-tokens-limit"),
    )
    if values == (None, None):
        return None, None
    limits = [_number(value) for value in values]
    return tuple(x if x is not None and x > 0 else None for x in limits)  # type: ignore[return-value]
