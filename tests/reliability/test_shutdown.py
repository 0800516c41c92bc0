"""Promise: Ctrl-C in the middle of a big job stops it quickly and cleanly, keeps everything
finished, and the same command resumes to a complete output.

The interrupted run has Python's development mode on (PYTHONDEVMODE=1: asyncio debug mode,
ResourceWarnings shown), so an unclosed session or connector, a pending task destroyed at
exit, a coroutine never awaited or any other warning would show on its stderr.
"""

from __future__ import annotations

import re
import resource
import signal
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from reliability_support import Batcher, clean_env, rows, run_batcher, wait_for, write_jsonl

from batcher.io.jobdir import JobDir

N, IN_FLIGHT, LATENCY = 3000, 1000, 3.0
# asyncio's debug mode reports callbacks slower than 0.1 s; that is timing, not a leak
SLOW_CALLBACK = re.compile(r"^Executing <.+> took \d+\.\d+ seconds$")
NEVER = (
    "Unclosed client session",
    "Unclosed connector",
    "Unclosed",
    "Task was destroyed but it is pending",
    "was never awaited",
    "Exception ignored",
    "Traceback",
    "Warning",
    "Error",
)


def durable_count(job_dir: Path) -> int:
    return sum(pq.read_metadata(part).num_rows for part in JobDir.of(job_dir).parts())


@pytest.fixture
def enough_files():
    """1,000 connections on each side: lift a low soft limit on open files for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(180)
def test_ctrl_c_with_1000_in_flight_exits_130_cleanly_and_resumes(make_api, tmp_path, enough_files):
    api = make_api(latency=LATENCY)
    data = write_jsonl(tmp_path / "in.jsonl", rows(N))
    out = tmp_path / "out.parquet"
    job_dir = tmp_path / "out.parquet.batcher"
    args = ("run", data, "-o", out, "--base-url", api.url, "-m", "mock-1", "-c", IN_FLIGHT, "-q")
    job = Batcher(*args, env=clean_env(PYTHONDEVMODE="1", PYTHONWARNINGS="default"))
    wait_for(lambda: len(api.log) >= IN_FLIGHT, timeout=60, what=f"{IN_FLIGHT} requests sent")
    time.sleep(0.3)
    at_signal = len(api.log)
    started = time.monotonic()
    job.send_signal(signal.SIGINT)
    ran = job.wait(timeout=30)
    elapsed = time.monotonic() - started

    assert ran.code == 130, ran.stderr[-2000:]
    assert elapsed < 10, f"exited {elapsed:.1f}s after Ctrl-C"
    lines = [line for line in ran.stderr.splitlines() if not SLOW_CALLBACK.match(line)]
    expected = (
        f"interrupted: finished results are saved in {job_dir}; "
        "run the same command again to resume"
    )
    assert lines == [expected], "\n".join(lines[-20:])
    for word in NEVER:
        assert word not in "\n".join(lines), word
    assert len(api.log) == at_signal, f"{len(api.log) - at_signal} requests sent after Ctrl-C"
    assert not out.exists()
    durable = durable_count(job_dir)
    # the requests in flight (at most 3 s from done) finish within the grace period
    assert durable >= 0.9 * at_signal, f"{durable} of {at_signal} sent results durable"

    before = len(api.log)
    again = run_batcher(*args, timeout=120)
    resent = len(api.log) - before
    assert again.code == 0, again.stderr
    table = pq.read_table(out, columns=["id", "status"])
    assert Counter(table.column("status").to_pylist()) == {"ok": N}
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(N)]
    assert resent == N - durable, f"the rerun sent {resent}, {N - durable} were not durable"
    sent_ok = Counter(e.request_key for e in api.log if e.status == 200)
    assert len(sent_ok) == N
    print(
        f"\nCtrl-C with {at_signal} in flight: exit 130 after {elapsed:.1f}s, {durable} durable; "
        f"rerun sent {resent} in {again.seconds:.1f}s; {N} ok"
    )
