"""Helpers of the reliability suite: real `python -m batcher` subprocesses, their peak memory,
small aiohttp servers for what the mock cannot play, and output readers.

Not a conftest: `tests/conftest.py` is imported as the module `conftest` (tests/ has no
`__init__.py`), and a second conftest.py without a package would replace it in `sys.modules`
for every test module collected after it. The fixtures `api`, `make_api` and `cli` of the
top-level conftest reach these tests anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow.parquet as pq
from aiohttp import web

MB = 1024 * 1024


def rows(n: int, prefix: str = "r", text: str = "question number {i}") -> list[dict]:
    """n prompt rows with ids prefix0..prefix{n-1}."""
    return [{"id": f"{prefix}{i}", "prompt": text.format(i=i)} for i in range(n)]


def write_jsonl(path: Path, items: Iterable[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without API keys or BATCHER_* options, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("BATCHER_")
    }
    env.update(extra)
    return env


@dataclass
class Ran:
    """A finished `python -m batcher ...` subprocess."""

    code: int
    out: bytes
    err: bytes
    seconds: float
    max_rss_mb: float  # peak resident set (exact with measure_rss=True, see _RSS_WRAPPER)

    @property
    def stdout(self) -> str:
        return self.out.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")


# Runs argv[2:] and writes the child's own peak RSS (KiB) to argv[1]. Needed because Linux
# counts in a child's ru_maxrss the peak RSS of the process it was forked from (the old mm's
# high-water mark at exec): started straight from pytest, after tests that held a few
# hundred MB, a 150 MB batcher reports over 500 MB. The wrapper itself is small.
_RSS_WRAPPER = """
import os, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda s, _frame: child.send_signal(s))
_, status, usage = os.wait4(child.pid, 0)
child.returncode = code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(code if code >= 0 else 128 - code)
"""


_RUN_BATCHER = """
import runpy
runpy.run_module("batcher", run_name="__main__", alter_sys=True)
"""


class Batcher:
    """`python -m batcher ARGS` in a subprocess; stdout and stderr go to temporary files.

    With `measure_rss`, it runs under a small wrapper that reports its peak RSS; with
    `prelude`, that Python code runs first in the same process (to inject a fault)."""

    def __init__(
        self,
        *args: object,
        env: dict[str, str] | None = None,
        measure_rss: bool = False,
        prelude: str | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    ) -> None:
        # closed in wait(), after the process is reaped
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        start = ["-m", "batcher"] if prelude is None else ["-c", prelude + _RUN_BATCHER]
        command = [sys.executable, *start, *map(str, args)]
        self._rss_file: str | None = None
        if measure_rss:
            fd, self._rss_file = tempfile.mkstemp(prefix="batcher-rss-")
            os.close(fd)
            command = [sys.executable, "-c", _RSS_WRAPPER, self._rss_file, *command]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            command,
            stdin=stdin,
            stdout=self._out,
            stderr=self._err,
            env=clean_env() if env is None else env,
        )
        self.pid = self.proc.pid

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 120.0) -> Ran:
        """Reap the process (killed after `timeout` seconds: an AssertionError) with its own
        rusage, so the peak RSS is this process's, whatever other tests ran before."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                os.wait4(self.pid, 0)
                self.proc.returncode = -signal.SIGKILL
                self._close()
                raise AssertionError(f"batcher did not finish within {timeout:.0f}s")
            time.sleep(0.01)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - self.started
        self._out.seek(0)
        self._err.seek(0)
        out, err = self._out.read(), self._err.read()
        peak_kib = usage.ru_maxrss
        if self._rss_file is not None:
            peak_kib = int(Path(self._rss_file).read_text() or 0)
        self._close()
        return Ran(self.proc.returncode, out, err, seconds, peak_kib / 1024)

    def _close(self) -> None:
        self._out.close()
        self._err.close()
        if self._rss_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._rss_file)


def run_batcher(
    *args: object,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    measure_rss: bool = False,
    prelude: str | None = None,
) -> Ran:
    """Run `python -m batcher ARGS` to its end."""
    return Batcher(*args, env=env, measure_rss=measure_rss, prelude=prelude).wait(timeout)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def like(text: str, expected: str) -> bool:
    """Whether `text` is `expected`, each "..." in it standing for some words on one line: the
    words of orjson or pyarrow, which the versions pyproject allows put differently."""
    pattern = ".+".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, text) is not None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AppThread:
    """An aiohttp app on 127.0.0.1 (any free port) on its own loop in a daemon thread.

    `routes` maps a path to a POST handler; `url` is "http://127.0.0.1:PORT". Stopped (and its
    connections closed) on exit, so nothing is left for the garbage collector to warn about."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AppThread:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(ready),), name="reliability-app", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * MB)
        for path, handler in self.routes.items():
            app.router.add_route("*", path, handler)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
        except BaseException as exc:
            self._error = exc
            ready.set()
            await runner.cleanup()
            return
        ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)


def run_args(data: Path, out: Path, url: str, model: str = "m") -> tuple[object, ...]:
    """`run DATA -o OUT --base-url URL -m MODEL`: the start of most jobs these tests run."""
    return ("run", data, "-o", out, "--base-url", url, "-m", model)
