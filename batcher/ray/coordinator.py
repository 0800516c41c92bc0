"""One place for what every actor of a job shares: its rate limits, what 429s taught, its
pauses and its early stop.

`Coordinator` runs as one small Ray actor per job (no CPU of its own). Actors do not ask it
for every request: `ClusterLimits`, inside each actor, leases permits a few at a time, each
with the moment it may be used, so the job's requests go out spaced at its limit across
every actor. Each lease also carries what the actor met since its last one (replies and
429s, job-fatal errors, attempts made), and comes back with the pauses and the stop reason
every actor must know of:

    actor ─ lease(model, want, tokens, report) ─► Coordinator ─► permits, pauses, stop

The limit of a model is the least of the user's (`--rpm`, `--tpm`, per model) and the rate
its 429s show: the coordinator feeds every actor's replies to one `RateFinder` per model,
as a single run feeds its own, so the rate found is the job's, not a share guessed per actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batcher.engine.adaptive import RateFinder
from batcher.engine.http import Attempt
from batcher.engine.limits import about_tokens, is_rate_429
from batcher.errors import AttemptError
from batcher.types import describe_limit

# Permits go at 97% of the job's limit: a single run goes at 99%, but requests from several
# actors meet more jitter on their way (event loops busy with Ray's own work, more hops),
# and a server counting over a second turns a few late ones into 429s.
SPACED = 0.97
LEASE_SECONDS = 0.25  # a lease holds about this much of the job's rate
SYNC_SECONDS = 0.5  # an actor with nothing to lease still reports this often
# A permit more than this late is dropped: used late, it would go out with the next one (a
# burst the limit never allowed). Waiting requests take theirs early, so only an idle
# actor's permits go.
LATE = 0.005
MAX_PAUSE = 60.0
NOTE = 5.0  # seconds: a pause longer than this is in the note


@dataclass(slots=True)
class Report:
    """What an actor met since its last lease. Times are Unix times."""

    sent: int = 0  # HTTP attempts made
    # per reply: model, when it came, when its request went (None: not a 429), the pause a
    # 429 asked for
    replies: list[tuple[str, float, float | None, float]] = field(default_factory=list)
    answers: list[bool] = field(default_factory=list)  # job-fatal (True) or worked, in order
    last_fatal: str = ""  # the last job-fatal error, in words


@dataclass(frozen=True, slots=True)
class Lease:
    """Permits: the moment each may be used; the job's pauses and stop. Moments are Unix
    times, as every node's clock tells them (a lease's time on the way is not in them)."""

    times: tuple[float, ...]
    pauses: Mapping[str, float]  # model: the Unix time it is held back until
    stop_reason: str | None


class _Spacing:
    """A rate as a schedule: the next moment a unit may go (GCRA, a burst of one)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / (per_second * SPACED)
        self.next = 0.0


class Coordinator:
    """The job's shared limits, pauses, early stop and counts (one per job, a Ray actor
    taking one call at a time).

    `rpm`/`tpm` hold for the whole endpoint, `model_limits` per model; `learned` (per model,
    as `learned()` gives it) starts each model's finder where an earlier run left it;
    `stop_after_fatal` job-fatal errors in a row, over every actor, stop the job."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        model_limits: Mapping[str, tuple[float | None, float | None]],
        stop_after_fatal: int,
        learned: Mapping[str, Mapping[str, tuple[float, str]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._endpoint = self._spacings(rpm, tpm)
        self._user = dict(model_limits)
        self._models: dict[str, list[tuple[_Spacing, bool]]] = {}  # model: (spacing, tokens?)
        self._finders: dict[str, RateFinder] = {}  # model: requests a second its 429s show
        self._found_next: dict[str, float] = {}  # model: when the rate found lets one go
        self._learned = {m: x["rpm"][0] for m, x in (learned or {}).items() if "rpm" in x}
        self._paused: dict[str, tuple[float, str]] = {}  # model: until, why
        self.stop_after_fatal = stop_after_fatal
        self.stop_reason: str | None = None
        self.streak = 0
        self.sent = 0

    @staticmethod
    def _spacings(rpm: float | None, tpm: float | None) -> list[tuple[_Spacing, bool]]:
        return [(_Spacing(r / 60.0), tokens) for r, tokens in ((rpm, False), (tpm, True)) if r]

    def lease(self, model: str, want: int, tokens: int, report: Report) -> Lease:
        """Up to `want` permits for requests of `tokens` tokens to `model`, after `report`."""
        self._hear(report)
        now = self._clock()
        if self.stop_reason is not None:
            return Lease((), {}, self.stop_reason)
        rates = self._endpoint + self._of(model)
        found = self._finder(model).rate(now)
        if found is not None:
            rates = [*rates, (_Spacing(found), False)]
            rates[-1][0].next = self._found_next.get(model, 0.0)
        start = max(now, self._until(model))
        per_second = min((1.0 / (s.interval * (tokens if t else 1)) for s, t in rates), default=0)
        fits = math.ceil(per_second * LEASE_SECONDS) if per_second else want
        times = []
        for _ in range(max(1, min(want, fits))):
            at = max([start, *(s.next for s, _ in rates)])
            for spacing, is_tokens in rates:
                spacing.next = at + spacing.interval * (tokens if is_tokens else 1)
            times.append(at)
        if found is not None:
            self._found_next[model] = rates[-1][0].next
        return Lease(tuple(times), self._pauses(now), None)

    def sync(self, report: Report) -> Lease:
        """Report without asking for permits; the job's pauses and stop."""
        self._hear(report)
        return Lease((), self._pauses(self._clock()), self.stop_reason)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def status(self) -> tuple[int, str | None, str | None, dict]:
        """Attempts made, the note for the progress bar, the stop reason, what was learned."""
        return self.sent, self.note(), self.stop_reason, self.learned()

    def note(self) -> str | None:
        """ "paused 42 s: <why>" while a long pause holds, else the rates learned."""
        now = self._clock()
        until, why = max(self._paused.values(), default=(0.0, ""))
        if until - now > NOTE:
            return f"paused {until - now:.0f} s: {why}"
        learned = self.learned()
        parts = [
            ", ".join(
                f"{'' if len(learned) == 1 else model + ' '}~{describe_limit(name, value)}"
                for name, value in limits.items()
            )
            for model, limits in learned.items()
        ]
        return "; ".join(parts) if parts else None

    def learned(self) -> dict[str, dict[str, tuple[float, str]]]:
        """The rate per minute each model's 429s showed: {"gpt-x": {"rpm": (600.0, "429s")}}."""
        return {
            model: {"rpm": (finder.found * 60, "429s")}
            for model, finder in self._finders.items()
            if finder.found is not None
        }

    def _of(self, model: str) -> list[tuple[_Spacing, bool]]:
        if model not in self._models:
            self._models[model] = self._spacings(*self._user.get(model, (None, None)))
        return self._models[model]

    def _finder(self, model: str) -> RateFinder:
        if model not in self._finders:
            start = self._learned.get(model)
            now = self._clock()
            self._finders[model] = RateFinder(None if start is None else start / 60, now)
        return self._finders[model]

    def _hear(self, report: Report) -> None:
        self.sent += report.sent
        for model, at, sent_at, pause in sorted(report.replies, key=lambda r: r[1]):
            finder = self._finder(model)
            if sent_at is None:
                finder.success(at)
                continue
            _, flood = finder.throttled(at, sent_at)
            if flood:  # most replies are 429s: every actor holds the model back a while
                until = at + min(MAX_PAUSE, pause)
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


class ClusterLimits:
    """An actor's side of the `Coordinator` (the engine's `SharedLimits`): permits leased a
    few at a time, reports batched onto the next lease or a sync twice a second."""

    def __init__(self, coordinator: Any, want: int) -> None:
        self._coordinator = coordinator  # a Ray actor handle: `.method.remote(...)` awaits
        self._want = want
        self._slots: dict[str, deque[float]] = {}  # model: loop times permits may be used
        self._low: dict[str, int] = {}  # model: permits left when the next lease is asked for
        self._leasing: dict[str, asyncio.Future[None]] = {}
        self._held: dict[str, float] = {}  # model: loop time it is held back until
        self._report = Report()
        self._stop: Callable[[str], None] | None = None
        self._open = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None

    def bind(self, stop: Callable[[str], None]) -> None:
        self._stop = stop

    def open(self) -> None:
        """Let every waiting request through (the run stops)."""
        self._open.set()

    async def acquire(self, model: str, charge: int) -> None:
        loop = asyncio.get_running_loop()
        if self._syncer is None:
            self._syncer = asyncio.ensure_future(self._sync_forever())
        while not self._open.is_set():
            slots = self._slots.setdefault(model, deque())
            now = loop.time()
            while slots and slots[0] < now - LATE:  # a permit nobody used in time: gone
                slots.popleft()
            if len(slots) <= self._low.get(model, 0) and model not in self._leasing:
                self._leasing[model] = asyncio.ensure_future(self._lease(model, charge))
            if not slots:
                await asyncio.shield(self._leasing[model])
                continue
            at = max(slots.popleft(), self._held.get(model, 0.0))
            if at > now:
                await self._sleep(at - now)
            return

    def heard(self, model: str, attempt: Attempt) -> None:
        report = self._report
        report.sent += 1
        error, now = attempt.error, time.time()
        if attempt.reply is not None:
            report.replies.append((model, now, None, 0.0))
        elif error is not None and is_rate_429(error) and not about_tokens(error):
            pause = 1.0 if error.retry_after is None else error.retry_after
            report.replies.append((model, now, now - attempt.latency_s, pause))

    def answered(self, error: AttemptError | None) -> None:
        if error is None:
            self._report.answers.append(False)
        elif error.job_fatal:
            self._report.answers.append(True)
            status = f"HTTP {error.http_status} " if error.http_status else ""
            self._report.last_fatal = f"{status}{error.error_type} ({error.message})"

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
                await self._send(None, 0, 0)

    async def _send(self, model: str | None, want: int, tokens: int) -> None:
        report, self._report = self._report, Report()
        if model is None:
            lease = await self._coordinator.sync.remote(report)
        else:
            lease = await self._coordinator.lease.remote(model, want, tokens, report)
        self._take(lease, model)

    def _take(self, lease: Lease, model: str | None) -> None:
        to_loop = asyncio.get_running_loop().time() - time.time()  # Unix time to loop time
        for held, until in lease.pauses.items():
            until += to_loop
            if until > self._held.get(held, 0.0) + 0.5:
                self._held[held] = until
                self._slots.pop(held, None)  # permits from before the pause: lease anew
        if model is not None:
            self._slots.setdefault(model, deque()).extend(t + to_loop for t in lease.times)
            self._low[model] = len(lease.times) // 2  # lease again with half of these left
        if lease.stop_reason is not None:
            self._open.set()
            if self._stop is not None:
                self._stop(lease.stop_reason)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
            await asyncio.wait_for(self._open.wait(), seconds)
