"""The engine as a library: requests in, results out, against the mock server on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import request

from batcher.engine.engine import Engine, EngineSettings, ModelLimits
from batcher.engine.retry import RetryPolicy
from batcher.mock import MockConfig, MockServer
from batcher.providers import Endpoint

FAST_RETRY = RetryPolicy(max_retries=4, initial_wait=0.01, max_wait=2.0)


async def collect(server: MockServer, requests, key: str | None = None, **settings):
    """Run the requests to the end; the run (its counters) and its results in row order."""
    settings.setdefault("retry", FAST_RETRY)
    engine = Engine(Endpoint(server.url, "bearer", key), EngineSettings(**settings))
    run = engine.start(requests)
    results = [r async for batch in run for r in batch]
    return run, sorted(results, key=lambda r: r.row_index)


def run(coro):
    return asyncio.run(coro)


def test_every_request_gets_one_ok_result():
    async def main():
        async with MockServer() as server:
            engine, results = await collect(
                server, [request(i) for i in range(200)], concurrency=16
            )
            return engine, results, len(server.log)

    engine, results, seen = run(main())
    assert [r.row_index for r in results] == list(range(200))
    assert all(r.ok and r.attempts == 1 and r.http_status == 200 for r in results)
    assert results[0].reply.content.startswith("Mock reply to: prompt 0")
    assert results[0].usage.total_tokens == (
        results[0].usage.prompt_tokens + results[0].usage.completion_tokens
    )
    assert seen == engine.sent == 200


def test_async_iterator_of_requests():
    async def gen():
        for i in range(5):
            yield request(i)

    async def main():
        async with MockServer() as server:
            return (await collect(server, gen()))[1]

    assert len(run(main())) == 5


@pytest.mark.parametrize(
    "kind",
    [
        "500",
        "502",
        "503",
        "504",
        "529",
        "408",
        "drop",
        "truncated",
        "html",
        "empty",
        "nochoices",
        "badjson",
        "429",
    ],
)
def test_retryable_faults_end_ok(kind):
    async def main():
        async with MockServer() as server:
            _, results = await collect(server, [request(0, f"x [[mock:{kind}x2]]")])
            return results[0], [e.status for e in server.log]

    result, statuses = run(main())
    assert result.ok, result.error_message
    assert result.attempts == 3
    assert len(statuses) == 3


def test_a_request_backing_off_holds_no_worker():
    """Eight requests wait 1 s to retry; the other 40 do not wait for them: stand-in
    workers keep `concurrency` requests in flight meanwhile."""

    async def main():
        async with MockServer(MockConfig(latency=0.02)) as server:
            slow = [request(i, f"p{i} [[mock:500x1:retry=1]]") for i in range(8)]
            fast = [request(i) for i in range(8, 48)]
            _, results = await collect(server, slow + fast, concurrency=4)
            return results, list(server.log)

    results, log = run(main())
    assert all(r.ok for r in results) and len(results) == 48
    assert [r.attempts for r in results[:8]] == [2] * 8
    slow_arrivals = sorted(e.t for e in log if "[[mock:" in str(e.body))
    retried_at = slow_arrivals[8]  # the first retry (each slow request came twice)
    fast_before = [e for e in log if "[[mock:" not in str(e.body) and e.t < retried_at]
    assert len(fast_before) == 40  # all sent during the 1 s the first four waited


def test_retry_after_is_honoured_and_pauses_everyone():
    async def main():
        async with MockServer() as server:
            start = time.monotonic()
            _, results = await collect(
                server,
                [request(0, "a [[mock:429x1:retry=0.5]]"), request(1, "b")],
                concurrency=1,
            )
            return results, time.monotonic() - start, sorted(e.t for e in server.log)

    results, elapsed, times = run(main())
    assert [r.attempts for r in results] == [2, 1]
    assert elapsed >= 0.5
    assert times[-1] - times[0] >= 0.45  # the retry waited for retry-after-ms


def test_timeout_then_ok():
    async def main():
        async with MockServer(MockConfig(hang_seconds=30)) as server:
            _, results = await collect(server, [request(0, "slow [[mock:hangx1]]")], timeout=0.3)
            return results[0]

    result = run(main())
    assert result.ok and result.attempts == 2


@pytest.mark.parametrize(
    "kind, error_type, status",
    [
        ("400", "bad_request", 400),
        ("413", "bad_request", 413),
        ("422", "bad_request", 422),
        ("404", "not_found", 404),
        ("403", "permission_denied", 403),
        ("quota", "quota_exhausted", 429),
        ("balance", "quota_exhausted", 403),
    ],
)
def test_fatal_errors_are_not_retried(kind, error_type, status):
    async def main():
        async with MockServer() as server:
            _, results = await collect(server, [request(0, f"x [[mock:{kind}]]")])
            return results[0], len(server.log)

    result, seen = run(main())
    assert (result.status.value, result.error_type, result.http_status) == (
        "error",
        error_type,
        status,
    )
    assert result.attempts == 1 and seen == 1
    assert result.error_message


def test_retries_run_out_into_an_error_row():
    async def main():
        async with MockServer() as server:
            _, results = await collect(
                server,
                [request(0, "x [[mock:503]]")],
                retry=RetryPolicy(max_retries=2, initial_wait=0.01),
            )
            return results[0], len(server.log)

    result, seen = run(main())
    assert (result.error_type, result.attempts, seen) == ("server_error", 3, 3)


def test_bad_key_stops_the_job_after_twenty():
    async def main():
        async with MockServer(MockConfig(api_key="right-key")) as server:
            engine, results = await collect(
                server, [request(i) for i in range(500)], key="wrong-key", concurrency=4
            )
            return engine, results, len(server.log)

    engine, results, seen = run(main())
    assert all(r.error_type == "auth_error" and r.attempts == 1 for r in results)
    assert 20 <= len(results) <= 24  # the stop plus what was already in flight
    assert seen == len(results)
    assert "auth_error" in engine.stop_reason and "Incorrect API key" in engine.stop_reason


def test_key_goes_in_the_chosen_header():
    async def main():
        async with MockServer(MockConfig(api_key="k-123")) as server:
            for style in ("bearer", "x-api-key"):
                engine = Engine(Endpoint(server.url, style, "k-123"), EngineSettings())
                results = [r async for r in engine.run([request(0)])]
                assert results[0].ok
            return [e.auth for e in server.log]

    assert run(main()) == ["bearer", "x-api-key"]


def test_rpm_holds_over_the_servers_own_clock():
    async def main():
        async with MockServer() as server:
            await collect(server, [request(i) for i in range(40)], rpm=1200, concurrency=8)
            return sorted(e.t for e in server.log)

    times = run(main())
    # 1,200 rpm = one request every 50 ms: 40 requests need about 39 intervals (~1.95 s),
    # minus at most one second's burst allowance (20 requests).
    assert len(times) == 40
    span = times[-1] - times[0]
    assert 0.9 <= span <= 3.0
    for i in range(len(times)):
        in_window = sum(1 for t in times[i:] if t - times[i] < 1.0)
        assert in_window <= 21 + 1


def test_per_model_limits():
    async def main():
        async with MockServer() as server:
            reqs = [request(i, model="slow/m" if i % 2 else "fast/m") for i in range(20)]
            await collect(server, reqs, model_limits={"slow/m": ModelLimits(rpm=600)})
            slow = sorted(e.t for e in server.log if e.model == "slow/m")
            return slow

    slow = run(main())
    assert len(slow) == 10
    assert slow[-1] - slow[0] >= 0.8  # 10 requests at 10/s


def test_concurrency_is_bounded():
    async def main():
        config = MockConfig(latency=0.05, max_concurrency=8)
        async with MockServer(config) as server:
            _, results = await collect(server, [request(i) for i in range(64)], concurrency=8)
            return results, [e.status for e in server.log]

    results, statuses = run(main())
    assert all(r.ok for r in results)
    assert 429 not in statuses


def test_concurrency_429_lowers_in_flight():
    async def main():
        config = MockConfig(latency=0.05, max_concurrency=6)
        async with MockServer(config) as server:
            engine, results = await collect(
                server, [request(i) for i in range(120)], concurrency=24
            )
            return engine, results, [e.status for e in server.log]

    engine, results, statuses = run(main())
    assert all(r.ok for r in results)
    rejected = statuses.count(429)
    assert rejected < 120  # the cap came down instead of hammering
    assert engine.concurrency < 24


def test_stop_leaves_the_rest_unsent():
    async def main():
        async with MockServer(MockConfig(latency=0.05)) as server:
            engine = Engine(Endpoint(server.url, "bearer", None), EngineSettings(concurrency=4))
            run = engine.start([request(i) for i in range(100)])
            got = []
            async for batch in run:
                got += batch
                if len(got) >= 10:
                    run.stop("test")
            return got, len(server.log)

    got, seen = run(main())
    # what was already finished (a batch of up to 4) and what was in flight (4) still ends
    assert 10 <= len(got) <= 18
    assert seen == len(got)


def test_two_runs_on_one_engine_share_nothing_but_the_settings():
    async def main():
        async with MockServer(MockConfig(latency=0.02)) as server:
            engine = Engine(Endpoint(server.url, "bearer", None), EngineSettings(concurrency=3))
            first = engine.start([request(i) for i in range(30)])
            second = engine.start([request(i, model="mock-2") for i in range(100, 120)])

            async def drain(run, stop_after=None):
                got = []
                async for batch in run:
                    got += batch
                    if stop_after is not None and len(got) >= stop_after:
                        run.stop("enough")
                return got

            a, b = await asyncio.gather(drain(first), drain(second, stop_after=5))
            return first, second, a, b

    first, second, a, b = run(main())
    assert sorted(r.row_index for r in a) == list(range(30))  # the other run's stop: not here
    assert first.stop_reason is None and first.sent == 30
    assert second.stop_reason == "enough" and 5 <= len(b) < 20
    assert second.sent == len(b)
    assert {r.model for r in a} == {"mock-1"} and {r.model for r in b} == {"mock-2"}
