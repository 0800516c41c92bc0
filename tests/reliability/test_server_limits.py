"""Promise: batcher lives within a server's limits.

* `--rpm` spreads requests so a server allowing that many a minute (almost) never says 429;
* without `--rpm` a 429 with retry-after pauses every worker, so the job still finishes with
  a bounded number of 429s;
* a 429 about too many *concurrent* requests lowers the number in flight;
* a 429 saying the quota is exhausted stops the job after 20 in a row.

The mock counts its rpm limit over a 60 s window. Within a 60 s window neither pacing nor its
absence can show in a test of a few seconds (N requests under an N-a-minute limit never meet a
429, paced or not), so these tests shrink the mock's window to WINDOW seconds: `rpm=L` then
allows L requests per WINDOW seconds, which is L * 60 / WINDOW a minute.
"""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest
from reliability_support import rows, run_batcher, write_jsonl

import batcher.mock.limits

WINDOW = 3.0  # seconds: the mock's rpm window in these tests
PER_WINDOW = 60  # the mock's limit per window: 60 per 3 s = 1,200 a minute
PER_MINUTE = int(PER_WINDOW * 60 / WINDOW)
N = 120  # two windows' worth


@pytest.fixture
def limited_api(make_api, monkeypatch):
    monkeypatch.setattr(batcher.mock.limits, "_WINDOW", WINDOW)
    return make_api(rpm=PER_WINDOW)


def run_job(api, tmp_path, *extra, n=N, prompt="question number {i}"):
    data = write_jsonl(tmp_path / "in.jsonl", rows(n, text=prompt))
    out = tmp_path / "out.parquet"
    ran = run_batcher("run", data, "-o", out, "--base-url", api.url, "-m", "mock-1", *extra)
    return ran, out


def statuses(out) -> Counter:
    return Counter(pq.read_table(out).column("status").to_pylist())


def most_in_a_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_rpm_flag_stays_under_the_server_limit(limited_api, tmp_path):
    ran, out = run_job(limited_api, tmp_path, "--rpm", PER_MINUTE)
    log = list(limited_api.log)
    assert ran.code == 0, ran.stderr
    assert statuses(out) == {"ok": N}
    limited = sum(1 for e in log if e.status == 429)
    # The client's pace equals the server's, so a request at a window's very edge may meet
    # one 429 (its retry-after then costs a second): a handful at most.
    assert limited <= 5, f"{limited} 429s with --rpm {PER_MINUTE} against a {PER_MINUTE}/min server"
    # spread evenly, not in bursts: 120 requests at 20 a second take ~6 s (one second's
    # budget may go at once), and no second holds much more than its share
    per_second = PER_MINUTE / 60
    arrivals = [e.t for e in log]
    span = max(arrivals) - min(arrivals)
    assert span >= (N - per_second) / per_second * 0.9, f"sent within {span:.2f}s"
    busiest = most_in_a_window(arrivals, 1.0)
    assert busiest <= 2 * per_second, f"{busiest} requests within one second"
    print(
        f"\n--rpm {PER_MINUTE}: {N} ok, {limited} 429s, spread over {span:.1f}s, "
        f"busiest second {busiest}"
    )


def test_without_rpm_the_job_adapts_to_429s(limited_api, tmp_path):
    ran, out = run_job(limited_api, tmp_path)
    log = list(limited_api.log)
    assert ran.code == 0, ran.stderr
    assert statuses(out) == {"ok": N}
    limited = sum(1 for e in log if e.status == 429)
    attempts = pq.read_table(out).column("attempts").to_pylist()
    assert sum(attempts) == len(log)
    # Observed: 40 (one burst: the workers already past the rate limiter when the first 429
    # paused everyone, then the window clears). Without the shared pause every request beyond
    # the window's 60 would keep meeting 429s at each backoff step.
    assert limited <= N // 2, f"{limited} 429s for {N} requests"
    assert max(attempts) <= 3, f"attempts per row: {dict(Counter(attempts))}"
    print(f"\nno --rpm: {N} ok, {limited} 429s, attempts per row {dict(Counter(attempts))}")


def test_concurrency_429s_lower_the_number_in_flight(make_api, tmp_path):
    api = make_api(max_concurrency=4, latency=0.05)
    n = 200
    ran, out = run_job(api, tmp_path, "-c", "32", n=n)
    log = list(api.log)
    assert ran.code == 0, ran.stderr
    assert statuses(out) == {"ok": n}
    bounced = [e.fault == "concurrency" for e in log]
    total = sum(bounced)
    # A client that kept 32 in flight against a cap of 4 would see 28 of every 32 attempts
    # bounced, and rows would run out of retries. Observed: ~105 in all, most in the first
    # burst; afterwards AIMD probes one above the cap now and then (~1 in 7 attempts).
    assert total < n, f"{total} concurrency 429s for {n} rows"
    later = bounced[len(bounced) // 2 :]
    share = sum(later) / len(later)
    assert share < 0.4, f"{sum(later)} of the last {len(later)} attempts bounced ({share:.0%})"
    print(f"\nmax_concurrency=4, -c 32: {n} ok, {total} concurrency 429s, later share {share:.0%}")


def test_exhausted_quota_stops_the_job_early(api, tmp_path):
    n, concurrency = 300, 32
    ran, out = run_job(
        api, tmp_path, "-c", concurrency, n=n, prompt="question number {i} [[mock:quota]]"
    )
    sent = len(api.log)
    assert ran.code == 1, ran.stderr
    assert (
        "stopped early: 20 requests in a row failed with HTTP 429 quota_exhausted"
        " (You exceeded your current quota, please check your plan and billing details.)"
    ) in ran.stderr.splitlines(), ran.stderr
    assert sent <= 20 + concurrency, f"{sent} requests sent after the quota was exhausted"
    table = pq.read_table(out)
    kinds = Counter(zip(table.column("status").to_pylist(), table.column("error_type").to_pylist()))
    assert kinds == {("error", "quota_exhausted"): sent, ("error", "not_sent"): n - sent}, kinds
    assert (tmp_path / "out.parquet.batcher").is_dir(), "job directory not kept for a resume"
    print(f"\nquota: stopped after {sent} requests of {n}; {n - sent} not_sent")
