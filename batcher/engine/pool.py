"""The worker pool: `concurrency` workers over a request stream, results out in batches.

Each worker takes the next request itself (a plain iterator is read in place; an async one
through a small queue filled by a producer task), processes it, and puts its result in the
outbox, which the consumer empties a batch at a time. A request waiting to retry holds no
worker: `backoff` starts a stand-in that takes new requests meanwhile, and the next worker
to finish a request retires, so `concurrency` requests stay in flight. Backoff sleeps (`nap`)
end at once when the run stops (`wake`). Every task belongs to the pool and is cancelled when
the consumer stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable

from batcher.types import Request, Result

_END = object()  # the request stream is exhausted
WAITING_PER_SLOT = 4  # requests that may wait to retry at once, per concurrency slot

Process = Callable[[Request], Awaitable["Result | None"]]


class Pool:
    """Runs `process` over requests with `concurrency` workers. `stopping()` says when to
    take no new request; `failed(exc, reason)` hears of a failed stream or a bug."""

    def __init__(
        self,
        process: Process,
        concurrency: int,
        *,
        stopping: Callable[[], bool],
        failed: Callable[[BaseException, str], None],
    ) -> None:
        self._process = process
        self._concurrency = concurrency
        self._stopping = stopping
        self._failed = failed
        self._outbox = _Outbox(limit=4 * concurrency)
        self._tasks: list[asyncio.Future[None]] = []
        self._surplus = 0  # workers to retire: requests that backed off are back
        self._live = 0
        self._waiting = 0  # requests backing off that a stand-in took over from
        self._take: Callable[[], Awaitable[Request | None]] | None = None
        self._woken: asyncio.Event | None = None

    async def batches(
        self, requests: Iterable[Request] | AsyncIterable[Request]
    ) -> AsyncIterator[list[Result]]:
        """The results finished since the last batch, until every request is done."""
        self._take = self._taker(requests)
        for _ in range(self._concurrency):
            self._spawn()
        try:
            while batch := await self._outbox.take():
                yield batch
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def wake(self) -> None:
        """End every `nap` now and from now on (the run is stopping)."""
        if self._woken is None:
            self._woken = asyncio.Event()
        self._woken.set()

    async def nap(self, seconds: float) -> None:
        """Sleep `seconds`, or until `wake`."""
        if self._woken is None:
            self._woken = asyncio.Event()
        if not self._woken.is_set():
            with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
                await asyncio.wait_for(self._woken.wait(), seconds)

    async def backoff(self, seconds: float) -> None:
        """Sleep before a retry holding no worker: a stand-in takes new requests meanwhile.
        At most 4 x `concurrency` requests wait so at once; past that a request waits in its
        worker (when every request fails, the input is not pulled in, a request at a time)."""
        if self._stopping() or self._waiting >= WAITING_PER_SLOT * self._concurrency:
            await self.nap(seconds)
            return
        self._waiting += 1
        self._spawn()
        try:
            await self.nap(seconds)
        finally:
            self._waiting -= 1
            self._surplus += 1  # the next worker to finish a request leaves

    def _spawn(self) -> None:
        self._live += 1
        self._tasks.append(asyncio.ensure_future(self._work()))

    async def _work(self) -> None:
        outbox = self._outbox
        assert self._take is not None
        try:
            while not self._stopping() and (request := await self._take()) is not None:
                result = await self._process(request)
                if result is not None:
                    outbox.add(result)
                    if outbox.full:
                        await outbox.drained()
                if self._surplus and not self._stopping():  # its stand-in carries on
                    self._surplus -= 1
                    break
        except Exception as exc:  # a bug: surface it instead of hiding it
            self._failed(exc, "internal error")
        self._live -= 1
        if self._live == 0:
            outbox.close()

    def _taker(
        self, requests: Iterable[Request] | AsyncIterable[Request]
    ) -> Callable[[], Awaitable[Request | None]]:
        """`await take()` gives the next request, or None once there are no more (or the
        stream failed)."""
        failed = self._failed
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

        self._tasks.append(asyncio.ensure_future(produce()))
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
