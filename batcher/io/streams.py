"""Inputs that can be read only once (standard input, a FIFO, `<(...)`): copied to a file
once, so the checking pass and assembly read them like any file.

The copy runs in a daemon thread of its own: a FIFO with no writer blocks its open
forever, and a Ctrl-C must still end the wait (and the process).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from batcher.errors import InputError, os_problem, show_path
from batcher.io.inputs import MAGIC, READ_BUFFER, InputFile

STDIN = "-"


def is_stream(path: str | os.PathLike[str]) -> bool:
    """Whether the input can be read only once: standard input ("-"), a FIFO, `<(...)`."""
    if os.fspath(path) == STDIN:
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode) and not stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False  # the reader says what is wrong


def spool_stream(path: str | os.PathLike[str], folder: Path, fmt: str | None) -> InputFile:
    """Copy an input that can be read only once into `folder`, once, so that it can be read
    as often as a file (blocking: run it in a thread that a Ctrl-C may leave behind)."""
    shown = "-" if os.fspath(path) == STDIN else show_path(path)
    tmp = folder / ".input.tmp"
    try:
        source = sys.stdin.buffer if os.fspath(path) == STDIN else open(path, "rb")  # noqa: SIM115
        with source, open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, READ_BUFFER)
        with open(tmp, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise InputError(f"{shown}: {os_problem(exc)}") from None
    compression = next((c for magic, c in MAGIC.items() if head.startswith(magic)), None)
    kind = fmt or ("parquet" if head == b"PAR1" else "jsonl")
    suffix = {"gzip": ".gz", "zstd": ".zst", "bz2": ".bz2"}.get(compression or "", "")
    target = folder / f"input.{kind}{suffix}"
    os.replace(tmp, target)
    return InputFile(target, kind, compression, shown)


def in_daemon_thread(future: asyncio.Future, fn: Callable, *args: object) -> None:
    """Run `fn(*args)` in a daemon thread, its outcome into `future` (unless cancelled): a
    thread blocked on a FIFO with no writer never keeps the process from exiting."""
    loop = future.get_loop()

    def settle(outcome: object, failed: bool) -> None:
        if not future.done():
            if failed:
                future.set_exception(outcome)  # type: ignore[arg-type]
            else:
                future.set_result(outcome)

    def run() -> None:
        try:
            outcome, failed = fn(*args), False
        except BaseException as exc:
            outcome, failed = exc, True
        loop.call_soon_threadsafe(settle, outcome, failed)

    threading.Thread(target=run, name="batcher-input", daemon=True).start()
