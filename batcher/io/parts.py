"""Results made durable: the job's part writer.

Finished results are buffered and written as parts of the job folder at least every
`flush_rows` results or `flush_seconds` seconds, by one thread of the writer's own, in order,
while results keep coming. A batch handed to the thread is written even when the job is
cancelled meanwhile (a second Ctrl-C).

A write that fails (a full disk, an I/O error, too many open files) is noticed when it
fails: `on_failure` is told at once (the job stops sending), its results are kept in memory,
and leaving the writer tries to save them again a few times. What still cannot be saved is a
`StorageError` that says how many results are saved and how many will be sent again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from batcher.errors import StorageError, one_line
from batcher.io.columns import results_table
from batcher.io.jobdir import JobDir, write_atomic
from batcher.types import Result

RETRY_WAITS = (0.5, 1.0, 2.0, 4.0)  # seconds between the last tries of a failed write


class PartWriter:
    """Buffers results and writes them as atomic, durable parts. Use as `async with`."""

    def __init__(
        self,
        job_dir: JobDir,
        *,
        flush_rows: int,
        flush_seconds: float,
        on_flush: Callable[[list[Result]], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.job_dir = job_dir
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.on_flush = on_flush
        self.on_failure = on_failure
        self.saved = 0  # results this run made durable
        self.row_ranges: dict[str, tuple[int, int]] = {}  # part name -> lowest, highest _row
        self.failure: OSError | None = None  # the first write that failed
        self._next = job_dir.next_part_number()
        self._buffer: list[Result] = []
        self._unsaved: list[Result] = []  # results of failed writes, for the last tries
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batcher-parts")
        self._writes: deque[asyncio.Future[None]] = deque()
        self._last_flush = 0.0
        self._ticker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PartWriter:
        self._last_flush = asyncio.get_running_loop().time()
        self._ticker = asyncio.ensure_future(self._tick())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._ticker is not None
        self._ticker.cancel()
        try:  # a second Ctrl-C stops these waits, not the writes
            await asyncio.gather(self._ticker, return_exceptions=True)
            await asyncio.shield(asyncio.gather(*self._writes, return_exceptions=True))
        finally:
            self._thread.shutdown(wait=True)  # every batch handed over is on disk, or failed
            if self._buffer and self.on_flush is not None:
                self.on_flush(self._buffer)
            rest = self._unsaved + self._buffer
            self._unsaved, self._buffer = [], []
            if rest:  # synchronously: a second Ctrl-C cannot cut it short
                await self._save_last(rest)

    async def add(self, results: list[Result]) -> None:
        self._buffer.extend(results)
        if len(self._buffer) >= self.flush_rows:
            await self.flush()

    async def flush(self) -> None:
        """Hand the buffered results to the thread; wait only when two writes are queued."""
        loop = asyncio.get_running_loop()
        self._last_flush = loop.time()
        if self.failure is not None or not self._buffer:
            return  # after a failed write, results wait for the last tries
        batch, self._buffer = self._buffer, []
        if self.on_flush is not None:
            self.on_flush(batch)
        writes = self._writes
        while writes and writes[0].done():
            writes.popleft()
        future = loop.run_in_executor(self._thread, self._write, batch, self._take_path())
        future.add_done_callback(functools.partial(self._written, batch))
        writes.append(future)
        if len(writes) > 2:
            await asyncio.shield(asyncio.wait([writes[0]]))

    def _written(self, batch: list[Result], future: asyncio.Future[None]) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is None:
            self.saved += len(batch)
            return
        self._unsaved += batch
        if self.failure is None:
            self.failure = exc if isinstance(exc, OSError) else OSError(str(exc))
            if self.on_failure is not None:
                self.on_failure(
                    f"cannot save results: {write_problem(self.failure)}; "
                    f"{remedy(self.failure)} to send the rest"
                )

    async def _save_last(self, rest: list[Result]) -> None:
        """Write what is left; after a failure, try again a few times before giving up."""
        waits = RETRY_WAITS if self.failure is not None else ()
        for wait in (0.0, *waits):
            if wait:
                try:
                    await asyncio.sleep(wait)
                except asyncio.CancelledError:
                    break
            try:
                self._write(rest, self._take_path())
            except OSError as exc:
                self.failure = self.failure or exc
                continue
            self.saved += len(rest)
            return
        assert self.failure is not None
        kept = f" ({self.saved} saved by this run)" if self.job_dir.exists() else ""
        raise StorageError(
            f"{write_problem(self.failure)} writing results to {self.job_dir.path}: {len(rest)} "
            f"finished results could not be saved and will be sent again{kept}; "
            f"{remedy(self.failure)}"
        )

    async def _tick(self) -> None:
        """Flush on time even while no result arrives (a slow or hung request)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, self._last_flush + self.flush_seconds - loop.time()))
            if loop.time() - self._last_flush >= self.flush_seconds:
                await self.flush()

    def _take_path(self) -> Path:
        path = self.job_dir.part_path(self._next)
        self._next += 1
        return path

    def _write(self, batch: list[Result], path: Path) -> None:
        try:
            write_atomic(results_table(batch), path)
        except OSError:
            path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
            raise
        rows = [r.row_index for r in batch]
        self.row_ranges[path.name] = (min(rows), max(rows))


def write_problem(exc: OSError) -> str:
    """A write failure in a few words: "disk full", "too many open files", ..."""
    code = errno_of(exc)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if code in (errno.EMFILE, errno.ENFILE):
        return "too many open files"
    if code is not None:
        return os.strerror(code).lower()
    return one_line(exc.strerror or str(exc) or type(exc).__name__).lower()


def remedy(exc: OSError) -> str:
    """What to do about a write failure: "free space and run the same command again", ..."""
    code = errno_of(exc)
    if code in (errno.EMFILE, errno.ENFILE):
        fix = "raise `ulimit -n` or lower -c,"
    elif code == errno.ENOENT:
        fix = "its folder was removed while the job ran: make it again,"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable"
    else:
        fix = "free space"
    return f"{fix} and run the same command again"


def errno_of(exc: OSError) -> int | None:
    """The error number of an OSError, also of pyarrow's, which has it only in its text."""
    if exc.errno is not None:
        return exc.errno
    found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def saving(path: Path, state: str) -> Iterator[None]:
    """A write that fails for want of disk (or any OS reason) as a one-line StorageError."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"{write_problem(exc)} writing {path}: {state}; {remedy(exc)}") from None
