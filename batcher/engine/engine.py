"""The request engine: requests in, results out, bounded, rate-limited, retried, cancellable.

`Engine` is configuration only: an endpoint and its settings. Each run (`engine.start`,
`engine.run`, `engine.run_batches`) keeps its state in an `EngineRun` of its own (client,
limits, budget, early stop), so two runs on one Engine, or one Engine per Ray actor, never
share anything but the settings. A run knows nothing of files, click or progress bars.

A request's way through a run, one concern at a time:

    bad input ─► error row              (never sent)
    known     ─► the cached result      (engine.cache, checked by engine.reask)
    budget    ─► reserve the worst case (engine.budget), or stop the run
    attempts  ─► limits, one POST, learn from the reply (engine.limits, engine.rates,
                 engine.adaptive, engine.http)
    retries   ─► while they may help: soon while the server is healthy, a trickle once it
                 is failing (engine.retry)
    structured─► validate, re-ask       (engine.reask)
    outcome   ─► the row; job-fatal errors in a row stop the run (`FatalStreak`)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from batcher.engine.budget import Budget
from batcher.engine.http import Attempt, Client, new_session
from batcher.engine.limits import Limits
from batcher.engine.pool import Pool
from batcher.engine.reask import known_result, validated
from batcher.engine.results import error_result, to_result
from batcher.engine.retry import Health, RetryPolicy, with_retries
from batcher.errors import AttemptError
from batcher.providers import Endpoint
from batcher.structured.validate import Validators
from batcher.types import ErrorType, Request, Result, Usage, canonical_json

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelLimits:
    rpm: float | None = None
    tpm: float | None = None


@dataclass(frozen=True, slots=True)
class EngineSettings:
    concurrency: int = 32
    timeout: float = 120.0  # per attempt, connecting to last byte
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rpm: float | None = None  # for the whole endpoint
    tpm: float | None = None
    model_limits: Mapping[str, ModelLimits] = field(default_factory=dict)
    stop_after_fatal: int = 20  # job-fatal errors in a row (bad key, no quota) that stop the job
    outage_seconds: float = 120.0  # no reply at all for this long (every attempt failing): stop
    # A reply's size at most; None: 64 MiB, less at high concurrency so that every reply in
    # flight together stays within 1 GiB (1 MiB each at least).
    max_body_bytes: int | None = None
    reask: int = 2  # re-asks of a structured reply that is not valid JSON or breaks its schema


class ResultSource(Protocol):
    """Results known without sending (the response cache)."""

    def get(self, request: Request) -> Result | None: ...


class SharedLimits(Protocol):
    """Limits one run shares with runs elsewhere (the Ray actors of one job): the rate
    limits of the whole job, its pauses, its early stop and its count of attempts."""

    def bind(self, stop: Callable[[str], None]) -> None:
        """`stop(reason)` is how the shared side stops this run (another run saw a bad key)."""

    def open(self) -> None:
        """Let every request waiting for a permit through (this run stops)."""

    async def acquire(self, model: str, charge: int) -> None:
        """Wait for the job's permit to send a request of `charge` tokens to `model`."""

    def heard(self, model: str, attempt: Attempt, charge: int, held: tuple[float, str]) -> None:
        """What an attempt of `charge` tokens met (a reply, a 429, limit headers), and the
        pause (seconds, why) its headers asked of this run (0: none)."""

    def answered(self, error: AttemptError | None) -> None:
        """A request's last error, or None: it worked (for the job's early stop)."""


Requests = Iterable[Request] | AsyncIterable[Request]


class Engine:
    """Sends requests to one endpoint with bounded concurrency, rate limits and retries."""

    def __init__(
        self,
        endpoint: Endpoint,
        settings: EngineSettings | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings or EngineSettings()
        self.session = session  # None: each run opens (and closes) a session of its own

    def start(
        self,
        requests: Requests,
        *,
        known: ResultSource | None = None,
        budget: Budget | None = None,
        learned: Mapping[str, Mapping[str, tuple[float, str]]] | None = None,
        shared: SharedLimits | None = None,
    ) -> EngineRun:
        """A run over `requests`: iterate it for batches of results; `stop()` ends it.
        `learned`: the limits an earlier run learned (`EngineRun.learned()`), to start from;
        `shared`: limits this run shares with others (`batcher.ray`)."""
        run = EngineRun(self, requests, known=known, budget=budget, shared=shared)
        run.resume(learned or {})
        return run

    async def run(self, requests: Requests, **options) -> AsyncIterator[Result]:
        """Yield one `Result` per request sent, as each finishes (not in input order)."""
        async for batch in self.run_batches(requests, **options):
            for result in batch:
                yield result

    async def run_batches(self, requests: Requests, **options) -> AsyncIterator[list[Result]]:
        """Like `run`, but yield the results finished since the last batch as a list: one
        hand-over per batch instead of one per result (what a high-rate consumer wants)."""
        run = self.start(requests, **options)
        try:
            async for batch in run:
                yield batch
        finally:
            await run.aclose()


class _Stopped(Exception):
    """The run stopped before this request was sent."""


class EngineRun:
    """One run of an Engine: its own client, limits, budget and early-stop state."""

    def __init__(
        self,
        engine: Engine,
        requests: Requests,
        *,
        known: ResultSource | None,
        budget: Budget | None,
        shared: SharedLimits | None = None,
    ) -> None:
        settings = engine.settings
        self.settings = settings
        self.stop_reason: str | None = None
        self.sent = 0  # HTTP attempts made
        self._engine = engine
        self._requests = requests
        self._known = known
        self._budget = budget
        self._shared = shared
        if shared is not None:
            shared.bind(self.stop)
        self._failure: list[BaseException] = []
        self._limits = Limits(
            concurrency=settings.concurrency,
            rpm=settings.rpm,
            tpm=settings.tpm,
            model_limits={m: (x.rpm, x.tpm) for m, x in settings.model_limits.items()},
            max_pause=settings.retry.max_wait,
            learning=shared is None,  # shared limits learn from every run's replies
        )
        self._health = Health(settings.retry)
        self._streak = FatalStreak(settings.stop_after_fatal)
        self._outage = Outage(settings.outage_seconds)
        self._validators = Validators()
        self._pool = Pool(
            self._process, settings.concurrency, stopping=self._stopping, failed=self._fail
        )
        self._client: Client | None = None
        self._learned: Mapping[str, Mapping[str, tuple[float, str]]] = {}
        self._batches: AsyncIterator[list[Result]] | None = None

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    @property
    def in_flight(self) -> int:
        return self._limits.cap.in_flight

    def note(self) -> str | None:
        """ "paused 42 s: <why>" while a long pause holds new requests back, else the rates
        learned ("~590 rpm from 429s"), else None."""
        return self._limits.note()

    def learned(self) -> dict[str, dict[str, tuple[float, str]]]:
        """The rate limits learned per model, per minute and from what:
        {"gpt-x": {"rpm": (600.0, "429s"), "tpm": (30000.0, "headers")}}."""
        return self._limits.learned()

    def resume(self, learned: Mapping[str, Mapping[str, tuple[float, str]]]) -> None:
        """Start each model at the limits an earlier run learned (when the run starts)."""
        self._learned = learned

    @property
    def concurrency(self) -> int:
        """Requests in flight at most now (lowered by "too many concurrent" 429s)."""
        return self._limits.cap.limit

    def stop(self, reason: str) -> None:
        """Send nothing new; requests in flight finish, the rest are left unsent."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("stopping: %s", reason)
            self._pool.wake()  # requests waiting to retry or for a rate: no longer
            self._limits.open()
            if self._shared is not None:
                self._shared.open()

    def __aiter__(self) -> AsyncIterator[list[Result]]:
        if self._batches is None:
            self._batches = self._run()
        return self._batches

    async def aclose(self) -> None:
        if self._batches is not None:
            await self._batches.aclose()  # type: ignore[attr-defined]

    async def _run(self) -> AsyncIterator[list[Result]]:
        engine = self._engine
        own_session = engine.session is None
        session = engine.session or new_session(
            self.settings.concurrency, engine.endpoint.headers()
        )
        self._client = Client(
            session,
            engine.endpoint,
            timeout=self.settings.timeout,
            max_body_bytes=self.settings.max_body_bytes or reply_cap(self.settings.concurrency),
            session_has_headers=own_session,
        )
        self._limits.resume(self._learned)
        try:
            async for batch in self._pool.batches(self._requests):
                yield batch
            if self._failure:
                raise self._failure[0]
        finally:
            if own_session:
                await session.close()

    def _stopping(self) -> bool:
        return self.stop_reason is not None

    def _fail(self, exc: BaseException, reason: str) -> None:
        self._failure.append(exc)
        self.stop(reason)

    # --- one request ---------------------------------------------------------------------

    async def _process(self, request: Request) -> Result | None:
        if request.bad_input is not None:
            return error_result(request, ErrorType.BAD_INPUT.value, request.bad_input)
        if self._known is not None:
            known = known_result(self._known, self._validators, request)
            if known is not None:
                return known
        budget = self._budget
        reserved = 0
        if budget is not None:
            amount = await budget.reserve(request)
            if amount is None:
                self.stop(budget.message())
                return None
            reserved = amount
        result = None
        try:
            result = await self._answer(request)
        except _Stopped:
            pass
        finally:
            if budget is not None:
                budget.settle(reserved, result)
        return result

    async def _answer(self, request: Request) -> Result:
        """Send a request to its end (retries, re-asks) and track job-fatal errors."""
        charge = request.est_prompt_tokens + request.completion_bound
        billed: list[Usage] = []  # every billed reply of this row: retries and re-asks too
        attempt, made = await self._complete(request.model, request.payload, charge, billed)
        validator = self._validators.of(request.payload)
        if validator is None or attempt.reply is None:
            result = to_result(request, attempt, made, usage=Usage.total(billed))
        else:

            async def complete(body: dict) -> tuple[Attempt, int]:
                return await self._complete(request.model, canonical_json(body), charge, billed)

            result = await validated(
                request, attempt, made, validator, complete, self.settings.reask, billed
            )
        reason = self._streak.track(attempt.error)
        if reason is not None:
            self.stop(reason)
        if self._shared is not None:
            self._shared.answered(attempt.error)
        return result

    async def _complete(
        self, model: str, payload: bytes, charge: int, billed: list[Usage]
    ) -> tuple[Attempt, int]:
        """One body to its end: the first attempt, then retries while they may help. What
        each attempt was billed goes to `billed`."""
        first = await self._attempt(model, payload, charge, billed)
        if first.error is None:
            return first, 1

        async def again() -> Attempt:
            return await self._attempt(model, payload, charge, billed, retry=True)

        return await with_retries(
            again, first, self.settings.retry, self._health, sleep=self._pool.backoff
        )

    async def _attempt(
        self, model: str, payload: bytes, charge: int, billed: list[Usage], retry: bool = False
    ) -> Attempt:
        """One HTTP attempt within the limits and the server's health, which then learn from
        its reply."""
        if self.stopping:
            raise _Stopped
        health = self._health
        if health.dry:  # the server has been failing: one attempt a second
            await health.gate(self._pool.nap, self._stopping)
            if self.stopping:
                raise _Stopped
        limits, shared = self._limits, self._shared
        while True:
            limiters = await limits.acquire(model, charge)
            if self.stopping:
                limits.refund(limiters, charge)
                raise _Stopped
            await limits.cap.acquire()
            if shared is not None:  # last, in a slot: a permit taken goes out at once
                try:
                    await shared.acquire(model, charge)
                except BaseException:  # cancelled while waiting: the slot is not taken
                    limits.cap.release()
                    limits.refund(limiters, charge)
                    raise
            if not limits.paused(limiters):
                break
            # A flood of 429s paused the model while this request waited for a slot.
            limits.cap.release()
            limits.refund(limiters, charge)
        try:
            if self.stopping:
                raise _Stopped
            self.sent += 1
            attempt = await self._client.post(payload)  # type: ignore[union-attr]
        finally:
            limits.cap.release()
        held = limits.learn(model, attempt, charge)
        if shared is not None:
            shared.heard(model, attempt, charge, held)
        health.record(attempt, retry)
        if (usage := attempt.billed) is not None:
            billed.append(usage)
        reason = self._outage.track(attempt)
        if reason is not None:
            self.stop(reason)
        return attempt


def reply_cap(concurrency: int) -> int:
    """The largest reply taken at this concurrency: 64 MiB, within 1 GiB for all at once."""
    return max(MIB, min(64 * MIB, GIB // concurrency))


MIB, GIB = 2**20, 2**30


class Outage:
    """Notices a server that answers nothing: when every attempt for `seconds` (and at
    least `attempts` of them) failed to get any HTTP reply or got a 5xx, the run should stop
    and say so, as for a bad key; a rerun resumes once the server is back."""

    def __init__(self, seconds: float, attempts: int = 20) -> None:
        self.seconds = seconds
        self.attempts = attempts
        self.failures = 0
        self.since: float | None = None  # when the failures began

    def track(self, attempt: Attempt) -> str | None:
        error = attempt.error
        down = error is not None and (
            error.error_type in ("connection_error", "timeout") or (error.http_status or 0) >= 500
        )
        if not down:
            self.failures, self.since = 0, None
            return None
        now = asyncio.get_running_loop().time()
        if self.since is None:
            self.since = now
        self.failures += 1
        if self.failures < self.attempts or now - self.since < self.seconds:
            return None
        assert error is not None
        return (
            f"the server gave no usable reply for {now - self.since:.0f} s "
            f"({self.failures} attempts in a row failed, the last: {error.message}); "
            "run the same command again once it is back"
        )


class FatalStreak:
    """Counts job-fatal errors in a row (a bad key, an exhausted quota): after `limit`, every
    other request would fail the same way, and the run should stop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def track(self, error: AttemptError | None) -> str | None:
        """Count a request's last error (None: it worked); the reason to stop, if any."""
        if error is None:
            self.count = 0
            return None
        if not error.job_fatal:
            return None
        self.count += 1
        if self.count < self.limit:
            return None
        status = f"HTTP {error.http_status} " if error.http_status else ""
        what = f"{status}{error.error_type} ({error.message})"
        return f"{self.count} requests in a row failed with {what}"
