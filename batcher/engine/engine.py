"""The async request engine: requests in, results out, bounded and cancellable.

`Engine.run` is a library function over an iterator (or async iterator) of `Request`s that
yields a `Result` per request sent, in completion order. It knows nothing of files, click or
progress bars, so the same function can run over a Ray Data partition.

Shape: `concurrency` workers read the requests themselves (an async iterator goes through a
small queue filled by a producer task). Each attempt waits for the rate limiter and then for
a concurrency slot; a request waiting to retry holds no slot, and a stand-in worker takes
new requests meanwhile. Results go to the consumer in batches (`run_batches`), or one by one
(`run`). One aiohttp session serves all of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import orjson

from batcher.engine.budget import Budget
from batcher.engine.http import Attempt, Client
from batcher.engine.limits import ConcurrencyLimit, RateLimiter
from batcher.engine.retry import RetryPolicy, with_retries
from batcher.errors import AttemptError
from batcher.providers import Endpoint
from batcher.structured.validate import ReplyValidator, Validators
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


_END = object()  # the request stream is exhausted


def _taker(
    requests: Iterable[Request] | AsyncIterable[Request],
    failed: Callable[[BaseException, str], None],
    tasks: list[asyncio.Future],
) -> Callable[[], Awaitable[Request | None]]:
    """`await take()` gives the next request, or None once there are no more (or the
    stream failed: `failed` is told). A plain iterator is read by the workers themselves;
    an async one through a small queue filled by a producer task."""
    if not isinstance(requests, AsyncIterable):
        iterator = iter(requests)
        exhausted = False

        async def take_next() -> Request | None:
            nonlocal exhausted
            if exhausted:
                return None
            try:
                request = next(iterator, None)
            except Exception as exc:  # e.g. an input error found while streaming
                request = None
                failed(exc, "the request stream failed")
            exhausted = request is None
            return request

        return take_next

    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)

    async def produce() -> None:
        try:
            async for request in requests:
                await queue.put(request)
        except Exception as exc:
            failed(exc, "the request stream failed")
        await queue.put(_END)

    async def take_queued() -> Request | None:
        item = await queue.get()
        if item is _END:
            queue.put_nowait(_END)  # for the next worker (the producer is done: room left)
            return None
        return item  # type: ignore[return-value]

    tasks.append(asyncio.ensure_future(produce()))
    return take_queued


class _Outbox:
    """Finished results on their way to the consumer, taken a batch at a time. Workers wait
    while it holds `limit` results (a slow consumer slows the job, it does not fill memory)."""

    def __init__(self, limit: int) -> None:
        self._items: list[Result] = []
        self._limit = limit
        self._closed = False
        self._reader: asyncio.Future[None] | None = None
        self._writers: list[asyncio.Future[None]] = []

    @property
    def full(self) -> bool:
        return len(self._items) >= self._limit

    def add(self, result: Result) -> None:
        self._items.append(result)
        self._wake_reader()

    def close(self) -> None:
        self._closed = True
        self._wake_reader()

    async def drained(self) -> None:
        while self.full and not self._closed:
            waiter = asyncio.get_running_loop().create_future()
            self._writers.append(waiter)
            await waiter

    async def take(self) -> list[Result]:
        """Every result so far (waiting for one); an empty list once closed and empty."""
        while not self._items and not self._closed:
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader
        items, self._items = self._items, []
        writers, self._writers = self._writers, []
        for waiter in writers:
            if not waiter.done():
                waiter.set_result(None)
        return items

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)


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
        self._limiters: dict[str, list[RateLimiter]] = {}  # per model: endpoint (+ model)
        self._cap = ConcurrencyLimit(self.settings.concurrency)
        self._backoff: Callable[[float], Awaitable[None]] = asyncio.sleep
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
        async for batch in self.run_batches(requests):
            for result in batch:
                yield result

    async def run_batches(
        self, requests: Iterable[Request] | AsyncIterable[Request]
    ) -> AsyncIterator[list[Result]]:
        """Like `run`, but yield the results finished since the last batch as a list: one
        hand-over per batch instead of one per result (what a high-rate consumer wants)."""
        own_session = self._session is None
        session = self._session or new_session(self.settings, self.endpoint.headers())
        self._client = Client(
            session,
            self.endpoint,
            timeout=self.settings.timeout,
            max_body_bytes=self.settings.max_body_bytes,
            session_has_headers=own_session,
        )
        concurrency = self.settings.concurrency
        outbox = _Outbox(limit=4 * concurrency)
        failure: list[BaseException] = []
        tasks: list[asyncio.Future] = []
        surplus = [0]  # workers to retire: requests that backed off are back
        live = [0]

        def failed(exc: BaseException, reason: str) -> None:
            failure.append(exc)
            self.stop(reason)

        take = _taker(requests, failed, tasks)

        async def work() -> None:
            try:
                while not self.stopping and (request := await take()) is not None:
                    result = await self._process(request)
                    if result is not None:
                        outbox.add(result)
                        if outbox.full:
                            await outbox.drained()
                    if surplus[0] and not self.stopping:  # its stand-in carries on
                        surplus[0] -= 1
                        break
            except Exception as exc:  # a bug: surface it instead of hiding it
                failed(exc, "internal error")
            live[0] -= 1
            if live[0] == 0:
                outbox.close()

        def spawn() -> None:
            live[0] += 1
            tasks.append(asyncio.ensure_future(work()))

        async def backoff(seconds: float) -> None:
            """A request waiting to retry holds no slot, and no worker either: a stand-in
            takes new requests meanwhile, so `concurrency` stay in flight."""
            if self.stopping:
                await asyncio.sleep(seconds)
                return
            spawn()
            try:
                await asyncio.sleep(seconds)
            finally:
                surplus[0] += 1  # the next worker to finish a request leaves

        self._backoff = backoff
        for _ in range(concurrency):
            spawn()
        try:
            while batch := await outbox.take():
                yield batch
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
        limiters = self._limiters_for(request.model)
        reserved = 0.0
        if self._budget is not None:
            amount = await self._budget.reserve(request)
            if amount is None:
                self.stop(self._budget.message())
                return None
            reserved = amount
        result = None
        try:
            attempt, made = await self._complete(request.body, charge, limiters)
            validator = self._validators.get(request.body)
            if validator is None or attempt.reply is None:
                result = to_result(request, attempt, made)
            else:
                result = await self._validated(request, attempt, made, validator, charge, limiters)
            self._track(attempt.error)
        except _Stopped:
            pass
        finally:
            if self._budget is not None:
                self._budget.settle(reserved, result)
        return result

    def _limiters_for(self, model: str) -> list[RateLimiter]:
        limiters = self._limiters.get(model)
        if limiters is None:
            limiters = [self._limiter]
            if model in self._model_limiters:
                limiters.append(self._model_limiters[model])
            self._limiters[model] = limiters
        return limiters

    def _reuse(self, request: Request) -> Result | None:
        """A known result (the cache), checked like a fresh reply when output is structured."""
        known = self._known.get(request)  # type: ignore[union-attr]
        validator = self._validators.get(request.body)
        if known is None or validator is None or known.reply is None:
            return known
        check = validator.check(known.reply.content, known.reply.finish_reason)
        return None if check.problem is not None else dataclasses.replace(known, parsed=check.value)

    async def _complete(
        self, body: dict, charge: int, limiters: list[RateLimiter]
    ) -> tuple[Attempt, int]:
        """One request to its end: the first attempt, then retries while they may help."""
        data = orjson.dumps(body)
        first = await self._send(data, charge, limiters)
        if first.error is None:
            return first, 1
        return await self._retry(data, first, charge, limiters)

    async def _retry(
        self, data: bytes, first: Attempt, charge: int, limiters: list[RateLimiter]
    ) -> tuple[Attempt, int]:
        """Retries after a failed first attempt (the success path never comes here)."""

        async def send() -> Attempt:
            return await self._send(data, charge, limiters)

        return await with_retries(send, first, self.settings.retry, sleep=self._backoff)

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


def new_session(
    settings: EngineSettings, headers: Mapping[str, str] | None = None
) -> aiohttp.ClientSession:
    """One session for the job, its pool sized to the concurrency; `headers` go with every
    request (cheaper as the session's defaults than merged into each request)."""
    connector = aiohttp.TCPConnector(
        limit=settings.concurrency, limit_per_host=0, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(connector=connector, headers=headers, raise_for_status=False)


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
