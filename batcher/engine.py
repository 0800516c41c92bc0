"""The async request engine: requests in, results out, bounded and cancellable.

`Engine.run` is a library function over an iterator (or async iterator) of `Request`s that
yields a `Result` per request sent, in completion order. It knows nothing of files, click or
progress bars, so the same function can run over a Ray Data partition.

Shape: one producer pulls requests into a small bounded queue; a fixed pool of workers takes
them one at a time; each attempt waits for the rate limiter and then for a concurrency slot,
so a request waiting to retry never holds a slot. One aiohttp session serves all of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import orjson

from batcher.budget import Budget
from batcher.client import Attempt, Client
from batcher.errors import AttemptError
from batcher.limits import ConcurrencyLimit, RateLimiter
from batcher.providers import Endpoint
from batcher.retry import RetryPolicy, with_retries
from batcher.structured import ReplyValidator, Validators
from batcher.types import ErrorType, Request, Result, Status, Usage

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
    max_body_bytes: int = 64 * 1024 * 1024
    completion_allowance: int = 256  # tokens charged for a reply when a request has no max_tokens
    reask: int = 2  # re-asks of a structured reply that is not valid JSON or breaks its schema


class ResultSource(Protocol):
    """Results known without sending (the response cache)."""

    def get(self, request: Request) -> Result | None: ...


class _Stopped(Exception):
    """The job stopped before this request was sent."""


_DONE = object()


class Engine:
    """Sends requests with bounded concurrency, rate limits and retries."""

    def __init__(
        self,
        endpoint: Endpoint,
        settings: EngineSettings | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        known: ResultSource | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._known = known
        self._budget = budget
        self.settings = settings or EngineSettings()
        self._session = session
        self._limiter = RateLimiter(self.settings.rpm, self.settings.tpm)
        self._model_limiters = {
            model: RateLimiter(limits.rpm, limits.tpm)
            for model, limits in self.settings.model_limits.items()
        }
        self._cap = ConcurrencyLimit(self.settings.concurrency)
        self._validators = Validators()
        self._client: Client | None = None
        self._fatal_streak = 0
        self.stop_reason: str | None = None
        self.sent = 0  # HTTP attempts made

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    @property
    def in_flight(self) -> int:
        return self._cap.in_flight

    def stop(self, reason: str) -> None:
        """Send nothing new; requests in flight finish, the rest are left unsent."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("stopping: %s", reason)

    async def run(
        self, requests: Iterable[Request] | AsyncIterable[Request]
    ) -> AsyncIterator[Result]:
        """Yield one `Result` per request sent, as each finishes (not in input order)."""
        own_session = self._session is None
        session = self._session or new_session(self.settings)
        self._client = Client(
            session,
            self.endpoint,
            timeout=self.settings.timeout,
            max_body_bytes=self.settings.max_body_bytes,
        )
        workers = self.settings.concurrency + max(4, self.settings.concurrency // 4)
        todo: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=2 * workers)
        done: asyncio.Queue[object] = asyncio.Queue(maxsize=4 * workers)
        failure: list[BaseException] = []
        remaining = [workers]

        async def produce() -> None:
            try:
                if isinstance(requests, AsyncIterable):
                    async for request in requests:
                        if self.stopping:
                            break
                        await todo.put(request)
                else:
                    for request in requests:
                        if self.stopping:
                            break
                        await todo.put(request)
            except Exception as exc:  # e.g. an input error found while streaming
                failure.append(exc)
                self.stop("the request stream failed")
            # End markers only on a normal finish: cancelled, nobody is left to read them.
            for _ in range(workers):
                await todo.put(None)

        async def work() -> None:
            try:
                while (request := await todo.get()) is not None:
                    if self.stopping:
                        continue
                    result = await self._process(request)
                    if result is not None:
                        await done.put(result)
            except Exception as exc:  # a bug: surface it instead of hiding it
                failure.append(exc)
                self.stop("internal error")
                while await todo.get() is not None:  # keep the producer from blocking
                    pass
            remaining[0] -= 1
            if remaining[0] == 0:
                await done.put(_DONE)

        tasks = [asyncio.ensure_future(produce())]
        tasks += [asyncio.ensure_future(work()) for _ in range(workers)]
        try:
            while (item := await done.get()) is not _DONE:
                yield item  # type: ignore[misc]
            if failure:
                raise failure[0]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if own_session:
                await session.close()

    async def _process(self, request: Request) -> Result | None:
        if request.bad_input is not None:
            return error_result(request, ErrorType.BAD_INPUT.value, request.bad_input)
        if self._known is not None and (known := self._reuse(request)) is not None:
            return known
        charge = request.est_prompt_tokens + (
            request.max_tokens or self.settings.completion_allowance
        )
        limiters = [self._limiter]
        if request.model in self._model_limiters:
            limiters.append(self._model_limiters[request.model])
        reserved = 0.0
        if self._budget is not None:
            amount = await self._budget.reserve(request)
            if amount is None:
                self.stop(self._budget.message())
                return None
            reserved = amount
        result = None
        try:
            result = await self._attempts(request, charge, limiters)
        finally:
            if self._budget is not None:
                self._budget.settle(reserved, result)
        return result

    def _reuse(self, request: Request) -> Result | None:
        """A known result (the cache), checked like a fresh reply when output is structured."""
        known = self._known.get(request)  # type: ignore[union-attr]
        validator = self._validators.get(request.body)
        if known is None or validator is None or known.reply is None:
            return known
        check = validator.check(known.reply.content, known.reply.finish_reason)
        return None if check.problem is not None else dataclasses.replace(known, parsed=check.value)

    async def _attempts(
        self, request: Request, charge: int, limiters: list[RateLimiter]
    ) -> Result | None:
        try:
            attempt, made = await self._complete(request.body, charge, limiters)
            validator = self._validators.get(request.body)
            if validator is None or attempt.reply is None:
                result = to_result(request, attempt, made)
            else:
                result = await self._validated(request, attempt, made, validator, charge, limiters)
        except _Stopped:
            return None
        self._track(attempt.error)
        return result

    async def _complete(
        self, body: dict, charge: int, limiters: list[RateLimiter]
    ) -> tuple[Attempt, int]:
        """One request to its end: the first attempt, then retries while they may help."""
        data = orjson.dumps(body)

        async def send() -> Attempt:
            return await self._send(data, charge, limiters)

        first = await send()
        return await with_retries(send, first, self.settings.retry)

    async def _validated(
        self,
        request: Request,
        attempt: Attempt,
        made: int,
        validator: ReplyValidator,
        charge: int,
        limiters: list[RateLimiter],
    ) -> Result:
        """Check a structured reply; re-ask with the problem until it is valid or --reask
        runs out. Every reply is billed, so usage sums over all of them."""
        messages = list(request.body["messages"])
        usage = Usage()
        reasks = 0
        while True:
            reply = attempt.reply
            assert reply is not None
            usage = usage + reply.usage
            check = validator.check(reply.content, reply.finish_reason)
            if check.problem is None:
                return to_result(
                    request, attempt, made, usage=usage, reasks=reasks, parsed=check.value
                )
            if reasks >= self.settings.reask:
                return to_result(
                    request, attempt, made, usage=usage, reasks=reasks, invalid=check.problem
                )
            reasks += 1
            messages += [
                {"role": "assistant", "content": reply.content or ""},
                validator.reask_message(check),
            ]
            retry, more = await self._complete(
                {**request.body, "messages": messages}, charge, limiters
            )
            made += more
            if retry.reply is None:  # the re-ask itself failed: the row ends in that error
                return to_result(request, retry, made, usage=usage, reasks=reasks)
            attempt = retry

    async def _send(self, data: bytes, charge: int, limiters: list[RateLimiter]) -> Attempt:
        for limiter in limiters:
            await limiter.acquire(charge)
        if self.stopping:
            for limiter in limiters:
                limiter.settle(charge, 0)
            raise _Stopped
        await self._cap.acquire()
        try:
            if self.stopping:
                raise _Stopped
            self.sent += 1
            attempt = await self._client.post(data)  # type: ignore[union-attr]
        finally:
            self._cap.release()
        self._learn(attempt, charge, limiters)
        return attempt

    def _learn(self, attempt: Attempt, charge: int, limiters: list[RateLimiter]) -> None:
        """Feed what the reply said back into the limits."""
        error = attempt.error
        for limiter in limiters:
            if attempt.headers is not None:
                limiter.observe(attempt.headers, self._cap.in_flight)
            if attempt.reply is not None:
                limiter.settle(charge, attempt.reply.usage.total_tokens or charge)
            elif error is not None and error.error_type == ErrorType.RATE_LIMITED:
                limiter.settle(charge, 0)
        if attempt.reply is not None:
            self._cap.on_success()
        elif error is not None and error.concurrency:
            self._cap.shrink()
        elif error is not None and error.error_type == ErrorType.RATE_LIMITED:
            wait = error.retry_after if error.retry_after is not None else 1.0
            self._limiter.pause(min(wait, self.settings.retry.max_wait))

    def _track(self, error: AttemptError | None) -> None:
        """Stop the job when errors say every request will fail (bad key, no quota)."""
        if error is None:
            self._fatal_streak = 0
            return
        if not error.job_fatal:
            return
        self._fatal_streak += 1
        if self._fatal_streak >= self.settings.stop_after_fatal:
            status = f"HTTP {error.http_status} " if error.http_status else ""
            self.stop(
                f"{self._fatal_streak} requests in a row failed with {status}{error.error_type}"
                f" ({error.message})"
            )


def new_session(settings: EngineSettings) -> aiohttp.ClientSession:
    """One session for the job, its pool sized to the concurrency."""
    connector = aiohttp.TCPConnector(
        limit=settings.concurrency, limit_per_host=0, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(connector=connector, raise_for_status=False)


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
    """The output row for a request's last attempt (and, for structured output, its checks)."""
    reply, error = attempt.reply, attempt.error
    common = {
        "row_index": request.row_index,
        "model_index": request.model_index,
        "sample": request.sample,
        "variant": request.variant,
        "id": request.row_id,
        "model": request.model,
        "request_hash": request.request_hash,
        "attempts": attempts,
        "latency_s": attempt.latency_s,
        "ttft_s": attempt.ttft_s,
        "reasks": reasks,
        "finished_at": time.time(),
    }
    if reply is not None and invalid is None:
        return Result(
            status=Status.OK,
            http_status=attempt.http_status,
            reply=reply,
            usage=usage or reply.usage,
            parsed=parsed,
            **common,
        )
    if reply is not None:  # answered, but never valid: keep the last raw reply
        return Result(
            status=Status.ERROR,
            http_status=attempt.http_status,
            reply=reply,
            usage=usage or reply.usage,
            error_type=ErrorType.INVALID_OUTPUT.value,
            error_message=invalid,
            **common,
        )
    assert error is not None
    return Result(
        status=Status.ERROR,
        http_status=attempt.http_status or error.http_status,
        usage=usage or Usage(),
        error_type=error.error_type,
        error_message=error.message,
        **common,
    )


def error_result(request: Request, error_type: str, message: str) -> Result:
    return Result(
        row_index=request.row_index,
        model_index=request.model_index,
        sample=request.sample,
        variant=request.variant,
        id=request.row_id,
        model=request.model,
        status=Status.ERROR,
        request_hash=request.request_hash or None,
        error_type=error_type,
        error_message=message,
        finished_at=time.time(),
    )
