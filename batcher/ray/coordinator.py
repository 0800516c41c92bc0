"""One place for what every actor of a job shares: its rate limits, what replies teach
about them, its pauses and its early stop.

`Coordinator` runs as one small Ray actor per job (no CPU of its own, one call at a time).
Actors do not ask it for every request: `ClusterLimits`, inside each actor, leases permits
a few at a time, each with the moment it may be used, so the job's requests go out spaced
at its limits across every actor. Each lease also carries what the actor met since its last
one (replies, 429s, limits stated by headers, tokens used beyond what was leased, job-fatal
errors), and comes back with the pauses and the stop reason every actor must know of:

    actor ─ lease(model, want, tokens, report) ─► Coordinator ─► permits, pauses, stop

A model's limits are the user's (`--rpm`, `--tpm`, per model), those its replies' headers
state, and the rates its 429s show: the coordinator feeds every actor's replies to one pair
of `RateFinder`s per model (requests, tokens), as a single run feeds its own, so what is
found is the job's rate, not a share guessed per actor. Permit moments are Unix times: the
nodes' clocks are taken to agree (NTP) to a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batcher.engine.adaptive import RateFinder
from batcher.engine.http import Attempt
from batcher.engine.limits import about_tokens, is_rate_429
from batcher.engine.rates import stated_limits
from batcher.errors import AttemptError
from batcher.ray.budget import BudgetPool
from batcher.types import describe_learned

log = logging.getLogger(__name__)

# Permits go at 97% of the job's limit: a single run goes at 99%, but requests from several
# actors meet more jitter on their way (event loops busy with Ray's own work, more hops),
# and a server counting over a second turns a few late ones into 429s.
SPACED = 0.97
LEASE_SECONDS = 0.25  # a lease holds about this much of the job's rate (or, unlimited, time)
SYNC_SECONDS = 0.5  # an actor with nothing to lease still reports this often
# A permit more than this late is dropped: used late, it would go out with the next one (a
# burst the limit never allowed). Waiting requests take theirs early, so only an idle
# actor's permits go; a permit already due when its lease arrives is used at once.
LATE = 0.005
NOTE = 5.0  # seconds: a pause longer than this is in the note


@dataclass(slots=True)
class Report:
    """What an actor met since its last lease. Times are Unix times."""

    # per reply: model, when it came, when its request went (None: not a 429), the pause a
    # 429 asked for, the tokens it used, whether a 429 was about tokens
    replies: list[tuple[str, float, float | None, float, int, bool]] = field(default_factory=list)
    owed: dict[str, int] = field(default_factory=dict)  # model: tokens used beyond the leased
    stated: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    held: dict[str, tuple[float, str]] = field(default_factory=dict)  # model: until, why
    answers: list[bool] = field(default_factory=list)  # job-fatal (True) or worked, in order
    last_fatal: str = ""  # the last job-fatal error, in words


@dataclass(frozen=True, slots=True)
class Lease:
    """Permits: the Unix time each may be used (and the tokens each holds), or, with
    `free`, no limit at all for a while; the job's pauses and stop."""

    times: tuple[float, ...]
    tokens: int
    pauses: Mapping[str, float]  # model: the Unix time it is held back until
    stop_reason: str | None
    free: bool = False


class _Spacing:
    """A rate as a schedule: the next moment a unit may go (GCRA, a burst of one)."""

    def __init__(self, per_second: float, tokens: bool) -> None:
        self.interval = 1.0 / (per_second * SPACED)
        self.tokens = tokens
        self.next = 0.0

    def cost(self, tokens: int) -> float:
        """Seconds of this schedule one request of `tokens` takes."""
        return self.interval * (tokens if self.tokens else 1)


class _Rates:
    """The limits of one scope (the endpoint, a model) as schedules, by name."""

    def __init__(self) -> None:
        self.spacings: dict[str, _Spacing] = {}

    def set(self, name: str, per_minute: float | None, tokens: bool) -> None:
        if not per_minute:
            self.spacings.pop(name, None)
            return
        spacing = self.spacings.get(name)
        if spacing is None:
            self.spacings[name] = _Spacing(per_minute / 60.0, tokens)
        else:
            spacing.interval = 1.0 / (per_minute / 60.0 * SPACED)

    def owe(self, tokens: int, now: float) -> None:
        """Tokens used beyond (or, negative, short of) what was leased: the token schedules
        move on (or back, never before now)."""
        for spacing in self.spacings.values():
            if not spacing.tokens:
                continue
            if tokens > 0:
                spacing.next = max(now, spacing.next) + spacing.cost(tokens)
            else:
                spacing.next = max(now, spacing.next + spacing.cost(tokens))


class Coordinator:
    """The job's shared limits, pauses, early stop (one per job, a Ray actor).

    `rpm`/`tpm` hold for the whole endpoint, `model_limits` per model; `learned` (as
    `learned()` gives it) starts each model's finders where an earlier run left them;
    `stop_after_fatal` job-fatal errors in a row, over every actor, stop the job; a pause
    lasts `max_pause` seconds at most; `budget` (limit, spent, in pico-dollars) is the job's
    --max-cost, leased to the actors by `trade`."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        model_limits: Mapping[str, tuple[float | None, float | None]],
        stop_after_fatal: int,
        learned: Mapping[str, Mapping[str, tuple[float, str]]] | None = None,
        max_pause: float = 60.0,
        budget: tuple[int, int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._endpoint = _Rates()
        self._endpoint.set("rpm", rpm, False)
        self._endpoint.set("tpm", tpm, True)
        self._user = dict(model_limits)
        self._models: dict[str, _Rates] = {}
        self._finders: dict[str, tuple[RateFinder, RateFinder]] = {}  # requests, tokens a s
        self._stated: dict[str, tuple[float | None, float | None]] = {}
        self._resumed = {m: dict(x) for m, x in (learned or {}).items()}
        self._paused: dict[str, tuple[float, str]] = {}  # model: until, why
        self._max_pause = max_pause
        self.stop_after_fatal = stop_after_fatal
        self.stop_reason: str | None = None
        self.streak = 0
        self._budget = BudgetPool(*budget) if budget is not None else None
        if budget is not None and _restarted():  # what this run spent is gone with it
            self.stop_reason = (
                "the job's coordinator restarted, and with it what --max-cost "
                "had counted; rerun to go on (earlier results are kept)"
            )

    def lease(self, model: str, want: int, tokens: int, report: Report) -> Lease:
        """Up to `want` permits for requests of `tokens` tokens to `model`, after `report`."""
        self._hear(report)
        now = self._clock()
        if self.stop_reason is not None:
            return Lease((), 0, {}, self.stop_reason)
        spacings = [*self._endpoint.spacings.values(), *self._rates(model, now).spacings.values()]
        start = max(now, self._until(model))
        if not spacings:  # nothing limits it: free until the next look
            return Lease((start + LEASE_SECONDS,), 0, self._pauses(now), None, free=True)
        per_second = 1.0 / max(s.cost(tokens) for s in spacings)
        count = max(1, min(want, math.ceil(per_second * LEASE_SECONDS)))
        times = []
        for _ in range(count):
            at = max([start, *(s.next for s in spacings)])
            for spacing in spacings:
                spacing.next = at + spacing.cost(tokens)
            times.append(at)
        return Lease(tuple(times), tokens, self._pauses(now), None)

    def sync(self, report: Report) -> Lease:
        """Report without asking for permits; the job's pauses and stop."""
        self._hear(report)
        return Lease((), 0, self._pauses(self._clock()), self.stop_reason)

    def trade(self, actor: str, spent: int, holding: int, need: int, want: int) -> tuple:
        """The job's budget: `BudgetPool.trade`."""
        assert self._budget is not None
        return self._budget.trade(actor, spent, holding, need, want)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def status(self) -> tuple[str | None, str | None, dict]:
        """The note for the progress bar, the stop reason, what was learned."""
        return self.note(), self.stop_reason, self.learned()

    def note(self) -> str | None:
        """ "paused 42 s: <why>" while a long pause holds, else the limits learned."""
        now = self._clock()
        until, why = max(self._paused.values(), default=(0.0, ""))
        if until - now > NOTE:
            return f"paused {until - now:.0f} s: {why}"
        return describe_learned(self.learned())

    def learned(self) -> dict[str, dict[str, tuple[float, str]]]:
        """Per model, per minute and from what: {"gpt-x": {"rpm": (600.0, "429s")}}; a rate
        429s showed wins over a stated limit only when it is lower (as in `RateLimiter`)."""
        out: dict[str, dict[str, tuple[float, str]]] = {}
        for model, finders in self._finders.items():
            stated = self._stated.get(model, (None, None))
            limits = {}
            for kind, name in enumerate(("rpm", "tpm")):
                found, heard = finders[kind].found, stated[kind]
                if found is not None and (heard is None or found * 60 < heard):
                    limits[name] = (found * 60, "429s")
                elif heard is not None:
                    limits[name] = (heard, "headers")
            if limits:
                out[model] = limits
        return out

    def _rates(self, model: str, now: float) -> _Rates:
        """The model's schedules, brought up to date: the user's, the stated, the found."""
        rates = self._models.get(model)
        if rates is None:
            rates = self._models[model] = _Rates()
            user = self._user.get(model, (None, None))
            rates.set("user rpm", user[0], False)
            rates.set("user tpm", user[1], True)
        stated = self._stated.get(model, (None, None))
        rates.set("stated rpm", stated[0], False)
        rates.set("stated tpm", stated[1], True)
        for kind, finder in enumerate(self._finders_of(model)):
            found = finder.rate(now)
            rates.set(("found rpm", "found tpm")[kind], found and found * 60, bool(kind))
        return rates

    def _finders_of(self, model: str) -> tuple[RateFinder, RateFinder]:
        if model not in self._finders:
            now, earlier = self._clock(), self._resumed.get(model, {})
            self._finders[model] = tuple(  # type: ignore[assignment]
                RateFinder(value / 60 if source == "429s" else None, now)
                for value, source in (earlier.get(n, (0.0, "")) for n in ("rpm", "tpm"))
            )
        return self._finders[model]

    def _hear(self, report: Report) -> None:
        for model, stated in report.stated.items():
            self._stated[model] = stated
        now = self._clock()
        for model, (until, why) in report.held.items():
            until = min(until, now + self._max_pause)
            if until > self._until(model):
                self._paused[model] = (until, why)
        for model, owed in report.owed.items():
            self._endpoint.owe(owed, now)
            self._rates(model, now).owe(owed, now)
        for model, at, sent_at, pause, used, tokens in sorted(report.replies, key=lambda r: r[1]):
            requests, token_finder = self._finders_of(model)
            if sent_at is None:
                requests.success(at)
                if used > 0:
                    token_finder.success(at, used)
                continue
            finder = token_finder if tokens else requests
            _, flood = finder.throttled(at, sent_at)
            if flood:  # most replies are 429s: every actor holds the model back a while
                until = at + min(self._max_pause, pause)
                if until > self._until(model):
                    self._paused[model] = (until, f"most requests to {model} got 429s")
                finder.restart(until)
        for fatal in report.answers:
            self.streak = self.streak + 1 if fatal else 0
        if self.streak >= self.stop_after_fatal and self.stop_reason is None:
            self.stop_reason = f"{self.streak} requests in a row failed with {report.last_fatal}"

    def _until(self, model: str) -> float:
        paused = self._paused.get(model)
        return paused[0] if paused is not None else 0.0

    def _pauses(self, now: float) -> dict[str, float]:
        return {model: until for model, (until, _) in self._paused.items() if until > now}


def _restarted() -> bool:
    """Whether this runs in a Ray actor that Ray restarted (False outside Ray)."""
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # not in a Ray actor
        return False


class ClusterLimits:
    """An actor's side of the `Coordinator` (the engine's `SharedLimits`): permits leased a
    few at a time, reports batched onto the next lease or a sync twice a second; a job-fatal
    error is told at once, and nothing more is sent until the coordinator has heard it.
    `stopped` is set once the run stops (its request stream ends on it)."""

    def __init__(self, coordinator: Any, want: int) -> None:
        self._coordinator = coordinator  # a Ray actor handle: `.method.remote(...)` awaits
        self._want = want
        # model: permits as (loop time it may be used, tokens it holds, whether it came due
        # before it arrived), and until when nothing limits the model
        self._slots: dict[str, deque[tuple[float, int, bool]]] = {}
        self._free: dict[str, float] = {}
        self._low: dict[str, int] = {}  # model: permits left when the next lease is asked for
        self._leasing: dict[str, asyncio.Future[None]] = {}
        self._held: dict[str, float] = {}  # model: loop time it is held back until
        self._report = Report()
        self._stop: Callable[[str], None] | None = None
        self.stopped = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self._telling: asyncio.Future[None] | None = None  # a job-fatal error on its way

    def bind(self, stop: Callable[[str], None]) -> None:
        self._stop = stop

    def open(self) -> None:
        """Let every waiting request through (the run stops)."""
        self.stopped.set()

    async def acquire(self, model: str, charge: int) -> None:
        loop = asyncio.get_running_loop()
        if self._syncer is None:
            self._syncer = asyncio.ensure_future(self._sync_forever())
        while not self.stopped.is_set():
            telling = self._telling
            if telling is not None and not telling.done():  # the job may stop: hear first
                with contextlib.suppress(Exception):
                    await asyncio.shield(telling)
                continue
            now = loop.time()
            slots = self._slots.setdefault(model, deque())
            while slots and slots[0][0] < now - LATE and not slots[0][2]:
                slots.popleft()  # a permit nobody used in time: gone
            free = self._free.get(model, 0.0) > now
            if not free and len(slots) <= self._low.get(model, 0) and model not in self._leasing:
                self._leasing[model] = asyncio.ensure_future(self._lease(model, charge))
            if free:
                at, leased = self._held.get(model, 0.0), charge
            elif slots:
                at, leased, _ = slots.popleft()
                at = max(at, self._held.get(model, 0.0))
            else:
                await asyncio.shield(self._leasing[model])
                continue
            if charge != leased:
                owed = self._report.owed
                owed[model] = owed.get(model, 0) + charge - leased
            if at > now:
                await self._sleep(at - now)
            return

    def heard(self, model: str, attempt: Attempt, charge: int, held: tuple[float, str]) -> None:
        report, error = self._report, attempt.error
        now = time.time()
        if held[0] > 0 and now + held[0] > report.held.get(model, (0.0, ""))[0]:
            report.held[model] = (now + held[0], held[1])  # a budget spent: every actor waits
        if attempt.headers is not None:
            stated = stated_limits(attempt.headers)
            if stated != (None, None):
                report.stated[model] = stated
        if attempt.reply is not None:
            used = attempt.reply.usage.total_tokens or charge
            report.replies.append((model, now, None, 0.0, used, False))
            if used != charge:
                report.owed[model] = report.owed.get(model, 0) + used - charge
        elif error is not None and is_rate_429(error) and not error.concurrency:
            pause = 1.0 if error.retry_after is None else error.retry_after
            sent_at = now - attempt.latency_s
            report.replies.append((model, now, sent_at, pause, 0, about_tokens(error)))
            report.owed[model] = report.owed.get(model, 0) - charge  # nothing was used

    def answered(self, error: AttemptError | None) -> None:
        if error is None:
            self._report.answers.append(False)
        elif error.job_fatal:
            self._report.answers.append(True)
            status = f"HTTP {error.http_status} " if error.http_status else ""
            self._report.last_fatal = f"{status}{error.error_type} ({error.message})"
            if self._telling is None or self._telling.done():  # at once: the job may stop
                self._telling = asyncio.ensure_future(self._send(None, 0, 0))

    async def close(self) -> None:
        """Send the last report (and stop syncing)."""
        if self._syncer is not None:
            self._syncer.cancel()
        await self._send(None, 0, 0)

    async def _lease(self, model: str, charge: int) -> None:
        try:
            await self._send(model, self._want, charge)
        finally:
            del self._leasing[model]

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            if not self._leasing:
                try:
                    await self._send(None, 0, 0)
                except Exception as exc:  # the coordinator is away a moment: report later
                    log.warning("cannot reach the job's coordinator: %s", exc)

    async def _send(self, model: str | None, want: int, tokens: int) -> None:
        report, self._report = self._report, Report()
        if model is None:
            lease = await self._coordinator.sync.remote(report)
        else:
            lease = await self._coordinator.lease.remote(model, want, tokens, report)
        self._take(lease, model)

    def _take(self, lease: Lease, model: str | None) -> None:
        now = asyncio.get_running_loop().time()
        to_loop = now - time.time()  # Unix time to loop time
        for held, until in lease.pauses.items():
            until += to_loop
            if until > self._held.get(held, 0.0) + 0.5:
                self._held[held] = until
                self._slots.pop(held, None)  # permits from before the pause: lease anew
        if model is not None and lease.free:
            self._free[model] = lease.times[0] + to_loop
        elif model is not None:
            self._free.pop(model, None)
            slots = self._slots.setdefault(model, deque())
            slots.extend((t + to_loop, lease.tokens, t + to_loop < now) for t in lease.times)
            self._low[model] = len(lease.times) // 2  # lease again with half of these left
        if lease.stop_reason is not None:
            self.stopped.set()
            if self._stop is not None:
                self._stop(lease.stop_reason)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
            await asyncio.wait_for(self.stopped.wait(), seconds)
