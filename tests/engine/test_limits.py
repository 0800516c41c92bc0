"""Tests of batcher.engine.limits on virtual time: an injected fake clock and sleep, or an event
loop whose clock jumps to the next timer instead of waiting for it."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import random
import selectors
import time

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from batcher.engine.limits import ConcurrencyLimit, Limits
from batcher.engine.rates import SPACED, RateLimiter, parse_duration

# -- virtual time ------------------------------------------------------------------------------


class FakeTime:
    """An injectable clock and sleep; sleeping moves the clock at once (only the head of a
    limiter's queue ever sleeps, so one sleeper at a time keeps this exact)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class _JumpSelector(selectors.DefaultSelector):
    """Never blocks: instead of waiting `timeout`, moves the loop's clock on by it."""

    def __init__(self, loop_clock: list[float]) -> None:
        super().__init__()
        self._clock = loop_clock

    def select(self, timeout: float | None = None):  # type: ignore[override]
        events = super().select(0)
        if not events and timeout:
            self._clock[0] += timeout
        elif not events and timeout is None:
            raise RuntimeError("deadlock: nothing scheduled and nothing ready")
        return events


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = [0.0]
        super().__init__(_JumpSelector(self._virtual))

    def time(self) -> float:
        return self._virtual[0]


def run_virtual(coro):
    """asyncio.run on a loop whose time() starts at 0 and jumps to the next timer."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def now() -> float:
    return asyncio.get_running_loop().time()


def max_window(starts: list[float], costs: list[float] | None = None, span: float = 60.0):
    """The most units started in any half-open window [t, t + span) (t at a start suffices)."""
    costs = costs or [1.0] * len(starts)
    sums = [0.0]
    for cost in costs:
        sums.append(sums[-1] + cost)
    best = 0.0
    for i, start in enumerate(starts):
        j = bisect.bisect_left(starts, start + span - 1e-9)
        best = max(best, sums[j] - sums[i])
    return best


async def workers(limiter: RateLimiter, costs: list[int], clock, n: int = 50) -> list[float]:
    """`n` workers acquire `costs` in turn; the start times in the order they were granted."""
    starts: list[float] = []
    queue = list(reversed(costs))

    async def work() -> None:
        while queue:
            cost = queue.pop()
            await limiter.acquire(cost)
            starts.append(clock())

    await asyncio.gather(*(work() for _ in range(n)))
    return starts


# -- rates -------------------------------------------------------------------------------------


def test_rpm_600_holds_every_window_and_the_rate() -> None:
    fake = FakeTime(1000.0)
    limiter = RateLimiter(rpm=600, clock=fake.clock, sleep=fake.sleep)
    starts = asyncio.run(workers(limiter, [0] * 2000, fake.clock))
    assert starts == sorted(starts)
    assert starts[0] == 1000.0  # the first goes at once
    assert max_window(starts) == 594  # 1% under the limit, no burst, not in the first window
    assert max_window(starts, span=1.0) == 10  # even per second
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    assert rate == pytest.approx(10.0 * SPACED, rel=1e-6)
    assert fake.sleeps and all(s == pytest.approx(0.1 / SPACED) for s in fake.sleeps)


def test_rpm_20_spaces_three_seconds() -> None:
    fake = FakeTime()
    limiter = RateLimiter(rpm=20, clock=fake.clock, sleep=fake.sleep)
    starts = asyncio.run(workers(limiter, [0] * 45, fake.clock, n=5))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([3.0 / SPACED] * 44)
    assert max_window(starts) == 20  # first 60 s window included (<= 21)
    assert sum(1 for s in starts if s < 60.0) == 20


def test_tpm_varied_costs_hold_the_window() -> None:
    fake = FakeTime()
    limiter = RateLimiter(tpm=60_000, clock=fake.clock, sleep=fake.sleep)  # 1,000 tokens/s
    rng = random.Random(7)
    costs = [rng.randint(50, 1000) for _ in range(3000)]
    starts = asyncio.run(workers(limiter, costs, fake.clock))
    granted = costs  # FIFO: granted in the order asked
    assert max_window(starts, granted) <= 60_000 + 1000  # limit + one second's burst
    assert max_window(starts, granted) >= 59_000
    duration = starts[-1] - starts[0]
    assert sum(costs[:-1]) / duration == pytest.approx(1000.0, rel=0.01)


def test_tpm_with_debt_holds_limit_plus_the_dearest_request() -> None:
    fake = FakeTime()
    limiter = RateLimiter(tpm=60_000, clock=fake.clock, sleep=fake.sleep)  # 1,000 tokens/s
    rng = random.Random(11)
    costs = [rng.choice([200, 500, 3000]) for _ in range(3000)]  # 3000: three seconds' worth
    starts = asyncio.run(workers(limiter, costs, fake.clock))
    assert 60_000 < max_window(starts, costs) <= 60_000 + 3000
    assert sum(costs[:-1]) / (starts[-1] - starts[0]) == pytest.approx(1000.0, rel=0.01)


def test_rpm_and_tpm_together_take_the_stricter() -> None:
    fake = FakeTime()
    limiter = RateLimiter(rpm=60, tpm=6000, clock=fake.clock, sleep=fake.sleep)  # 1/s, 100/s

    async def main() -> list[float]:
        starts = []
        for cost in (10, 10, 300, 10, 10):
            await limiter.acquire(cost)
            starts.append(fake.now)
        return starts

    # rpm spaces 1 s (1% more); the 300-token request is debt (> the 100-token burst): the
    # 10 tokens after it fit once its 300 are paid down to 90 left (+2.1 s), then rpm again.
    gap = 1 / SPACED
    assert asyncio.run(main()) == pytest.approx([0.0, gap, 2 * gap, 2 * gap + 2.1, 3 * gap + 2.1])


def test_cost_above_one_seconds_budget_passes_as_debt() -> None:
    fake = FakeTime()
    limiter = RateLimiter(tpm=6000, clock=fake.clock, sleep=fake.sleep)  # 100 tokens/s

    async def main() -> list[float]:
        starts = []
        for cost in (500, 100, 1000, 50):
            await limiter.acquire(cost)
            starts.append(fake.now)
        return starts

    # 500 goes at once (fresh budget) and leaves 5 s of debt; 100 fits once it is paid; 1000
    # waits for a clear budget (6 s) and leaves 10 s; 50 fits when 50 of a second's 100 are free.
    assert asyncio.run(main()) == pytest.approx([0.0, 5.0, 6.0, 15.5])


def test_settle_refund_moves_later_callers_up_exactly() -> None:
    def run(refund: bool) -> float:
        fake = FakeTime()
        limiter = RateLimiter(tpm=6000, clock=fake.clock, sleep=fake.sleep)  # 100 tokens/s

        async def main() -> float:
            await limiter.acquire(100)
            if refund:
                limiter.settle(100, 40)
            await limiter.acquire(100)
            return fake.now

        return asyncio.run(main())

    assert run(refund=False) == pytest.approx(1.0)
    assert run(refund=True) == pytest.approx(0.4)  # 60 tokens back: 0.6 s sooner


def test_settle_extra_charge_delays_and_refunds_give_no_extra_burst() -> None:
    fake = FakeTime()
    limiter = RateLimiter(tpm=6000, clock=fake.clock, sleep=fake.sleep)  # 100 tokens/s

    async def main() -> list[float]:
        starts = []
        await limiter.acquire(100)
        limiter.settle(100, 300)  # used 200 more than charged
        await limiter.acquire(100)
        starts.append(fake.now)
        limiter.settle(100, 0)
        limiter.settle(1_000_000, 0)  # a huge refund is still at most one second's credit
        fake.now += 10.0
        for _ in range(3):
            await limiter.acquire(60)
            starts.append(fake.now)
        return starts

    # After the idle time the credit is one second's 100 tokens, refunds or not: 60 go at
    # once, the next 60 wait for 20 more (0.2 s), the third for 60 more (0.6 s).
    assert asyncio.run(main()) == pytest.approx([3.0, 13.0, 13.2, 13.8])


def test_refund_wakes_a_sleeping_head() -> None:
    async def main() -> float:
        limiter = RateLimiter(tpm=6000)  # 100 tokens/s, default clock and sleep
        await limiter.acquire(100)  # t=0; the next 100 fit at t=1.0
        waiter = asyncio.ensure_future(limiter.acquire(100))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        limiter.settle(100, 40)  # now they fit at 0.4
        await waiter
        return now()

    assert run_virtual(main()) == pytest.approx(0.4)


# -- pauses and headers ------------------------------------------------------------------------


def test_pause_delays_waiting_and_new_callers_and_never_shortens() -> None:
    async def main() -> dict[str, float]:
        limiter = RateLimiter(rpm=600)  # 0.1 s apart
        starts: dict[str, float] = {}

        async def go(name: str) -> None:
            await limiter.acquire()
            starts[name] = now()

        await go("first")
        waiting = asyncio.ensure_future(go("waiting"))  # due at 0.1
        await asyncio.sleep(0.05)
        limiter.pause(2.0)
        assert limiter.paused_until == pytest.approx(2.05)
        await asyncio.sleep(0.95)  # t=1.0
        limiter.pause(0.5)  # would end at 1.5: ignored
        assert limiter.paused_until == pytest.approx(2.05)
        new = asyncio.ensure_future(go("new"))
        await asyncio.gather(waiting, new)
        await go("after")
        return starts

    starts = run_virtual(main())
    gap = 0.1 / SPACED
    expected = {"first": 0.0, "waiting": 2.05, "new": 2.05 + gap, "after": 2.05 + 2 * gap}
    assert starts == pytest.approx(expected)


def test_pause_without_budgets_then_back_to_the_fast_path() -> None:
    async def main() -> tuple[float, float]:
        limiter = RateLimiter()
        limiter.pause(2.0)
        await limiter.acquire()
        paused = now()
        for _ in range(1000):
            await limiter.acquire()
        return paused, now()

    assert run_virtual(main()) == (2.0, 2.0)


def test_observe_says_how_long_until_the_reset() -> None:
    fake = FakeTime(100.0)

    def wait(headers: dict[str, str], in_flight: int = 0) -> float:
        limiter = RateLimiter(clock=fake.clock, sleep=fake.sleep)
        seconds, why = limiter.observe(headers, in_flight)
        assert bool(why) == (seconds > 0)
        return seconds

    requests = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}
    assert wait(requests) == pytest.approx(2.0)
    assert wait({**requests, "x-ratelimit-reset-requests": "6m0s"}) == pytest.approx(360.0)
    assert wait({**requests, "x-ratelimit-remaining-requests": "5"}, 3) == 0.0
    assert wait({**requests, "x-ratelimit-remaining-requests": "5"}, 5) == pytest.approx(2.0)
    assert wait({**requests, "x-ratelimit-reset-requests": "soon"}) == 0.0
    assert wait({**requests, "x-ratelimit-remaining-requests": "many"}) == 0.0
    assert wait({"x-ratelimit-reset-requests": "2s"}) == 0.0
    assert wait({**requests, "x-ratelimit-reset-requests": "1700000000"}) == 0.0
    assert wait({}) == 0.0
    mixed_case = CIMultiDictProxy(
        CIMultiDict({"X-RateLimit-Remaining-Tokens": "0", "X-RateLimit-Reset-Tokens": "12ms"})
    )
    assert wait(mixed_case) == pytest.approx(0.012)  # type: ignore[arg-type]
    limiter = RateLimiter(clock=fake.clock, sleep=fake.sleep)
    assert limiter.observe(requests) == (2.0, "x-ratelimit-remaining-requests is 0")


def test_a_long_reset_pauses_a_minute_at_most_and_says_so(caplog) -> None:
    """x-ratelimit-remaining 0 with a reset in an hour: a pause of 60 s, said on the log and
    in the note the progress bar shows (it paused an hour, silently, before)."""
    from batcher.engine.http import Attempt

    async def main() -> tuple[float, str | None]:
        limits = Limits(concurrency=4, max_pause=60.0)
        headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3600s"}
        limits.learn("m", Attempt(0.1, 200, headers=headers), 10)
        own = limits.of("m")[-1]
        return own.paused_until - own.now(), limits.pause_note()

    with caplog.at_level(logging.WARNING, logger="batcher.engine.limits"):
        pause, note = run_virtual(main())
    assert pause == pytest.approx(60.0)
    assert note == "paused 60 s: x-ratelimit-remaining-requests is 0"
    assert [r.getMessage() for r in caplog.records] == [
        "pausing new requests for 60 s: x-ratelimit-remaining-requests is 0"
    ]


def test_observe_tokens_compares_with_the_mean_charge_in_flight() -> None:
    fake = FakeTime()
    limiter = RateLimiter(clock=fake.clock, sleep=fake.sleep)

    async def main() -> None:
        for _ in range(100):
            await limiter.acquire(1000)

    asyncio.run(main())
    tokens = {"x-ratelimit-remaining-tokens": "3500", "x-ratelimit-reset-tokens": "1.5s"}
    assert limiter.observe(tokens, in_flight=2) == (0.0, "")  # 3 x ~1000 fit
    wait, why = limiter.observe(tokens, in_flight=3)  # 4 x ~1000 do not
    assert (wait, why) == (pytest.approx(1.5), "x-ratelimit-remaining-tokens is 3500")
    later = {**tokens, "x-ratelimit-reset-tokens": "1h2m3.5s"}
    assert limiter.observe(later, in_flight=3)[0] == pytest.approx(3723.5)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("20", 20.0),
        ("0.5", 0.5),
        (" 7s ", 7.0),
        ("2m", 120.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("250us", 0.00025),
        ("100ns", 1e-7),
        ("0", 0.0),
        ("", None),
        ("soon", None),
        ("-1s", None),
        ("-3", None),
        ("1x", None),
        ("1s2", None),
        ("s", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    if seconds is None:
        assert parse_duration(text) is None
    else:
        assert parse_duration(text) == pytest.approx(seconds)


# -- the queue ---------------------------------------------------------------------------------


def test_no_limits_returns_without_suspending() -> None:
    limiter = RateLimiter()
    for _ in range(10_000):
        coro = limiter.acquire(500)
        with pytest.raises(StopIteration):
            coro.send(None)  # finished on the first step: no await, no loop, no sleep
    limiter.settle(500, 20)
    limiter.settle(500, 900)


def test_fifo_order_of_100_waiters() -> None:
    async def main() -> tuple[list[int], list[float]]:
        limiter = RateLimiter(rpm=600, tpm=60_000)
        order: list[int] = []
        starts: list[float] = []

        async def go(i: int) -> None:
            # big ones need the budget clear, small ones would fit sooner: FIFO holds them back
            await limiter.acquire(1500 if i % 10 == 3 else 10)
            order.append(i)
            starts.append(now())

        await asyncio.gather(*(go(i) for i in range(100)))
        return order, starts

    order, starts = run_virtual(main())
    assert order == list(range(100))
    assert starts == sorted(starts)
    # tokens start with no credit: t=0 leaves the budget busy until 1.0, so the first
    # 1500 (more than the 1000 burst) waits for it to clear at 1.02; its debt then holds the
    # next 10 tokens until 1.02 + 1.5 - 0.99 = 1.53.
    assert starts[:5] == pytest.approx([0.0, 0.1 / SPACED, 0.2 / SPACED, 1.02, 1.53])


def test_cancelled_waiters_charge_nothing_and_break_nothing() -> None:
    async def main() -> dict[str, float]:
        limiter = RateLimiter(rpm=60)  # 1 s apart
        starts: dict[str, float] = {}

        async def go(name: str) -> None:
            await limiter.acquire()
            starts[name] = now()

        await go("first")
        tasks = {name: asyncio.ensure_future(go(name)) for name in "abcd"}
        await asyncio.sleep(0.5)
        tasks["a"].cancel()  # the head, asleep
        tasks["c"].cancel()  # in the middle of the queue
        await asyncio.sleep(0)
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await go("later")
        return starts

    starts = run_virtual(main())
    gap = 1 / SPACED
    assert starts == pytest.approx({"first": 0.0, "b": gap, "d": 2 * gap, "later": 3 * gap})


def test_rejects_bad_limits() -> None:
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            RateLimiter(rpm=bad)
        with pytest.raises(ValueError):
            RateLimiter(tpm=bad)
    with pytest.raises(ValueError):
        ConcurrencyLimit(0)
    with pytest.raises(ValueError):
        ConcurrencyLimit(4, minimum=5)


def test_real_clock_defaults() -> None:
    async def main() -> list[float]:
        limiter = RateLimiter(rpm=1200)  # 20/s
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        starts = []

        async def go() -> None:
            for _ in range(4):
                await limiter.acquire()
                starts.append(loop.time() - t0)

        await asyncio.gather(*(go() for _ in range(10)))
        return starts

    began = time.monotonic()
    starts = asyncio.run(main())
    assert len(starts) == 40
    assert 1.9 <= starts[-1] <= 2.3  # 39 gaps of 0.05 s
    assert 1.9 <= time.monotonic() - began <= 2.5
    assert sum(1 for s in starts if s < 1.0) <= 21


# -- ConcurrencyLimit --------------------------------------------------------------------------


def test_concurrency_never_exceeds_the_limit() -> None:
    async def main() -> tuple[int, int]:
        cap = ConcurrencyLimit(10)
        rng = random.Random(3)
        peak = 0

        async def job() -> None:
            nonlocal peak
            async with cap:
                peak = max(peak, cap.in_flight)
                assert cap.in_flight <= cap.limit
                await asyncio.sleep(rng.uniform(0.1, 1.0))

        await asyncio.gather(*(job() for _ in range(50)))
        return peak, cap.in_flight

    assert run_virtual(main()) == (10, 0)


def test_shrink_once_per_burst_then_recover() -> None:
    async def main() -> None:
        cap = ConcurrencyLimit(40, minimum=5)
        for _ in range(40):
            await cap.acquire()
        cap.release()  # a "too many concurrent" reply frees its slot, then shrinks
        cap.shrink()
        assert (cap.limit, cap.in_flight) == (30, 39)
        for _ in range(39):  # the rest of the burst fails the same way
            cap.release()
            cap.shrink()
        assert (cap.limit, cap.in_flight) == (30, 0)
        for _ in range(30):  # a new request fails: 0.75 x 30 in flight
            await cap.acquire()
        cap.release()
        cap.shrink()
        assert cap.limit == 22
        for _ in range(29):
            cap.release()
        for _ in range(21):
            cap.on_success()
        assert cap.limit == 22
        cap.on_success()  # 22 successes
        assert cap.limit == 23
        for _ in range(23):
            cap.on_success()
        assert cap.limit == 24
        for _ in range(10_000):
            cap.on_success()
        assert cap.limit == 40  # never above the configured limit

    run_virtual(main())


def test_shrink_uses_the_peak_in_flight_and_stops_at_minimum() -> None:
    async def main() -> None:
        cap = ConcurrencyLimit(64, minimum=3)
        for _ in range(8):
            await cap.acquire()
        for _ in range(8):
            cap.release()
        cap.shrink()
        assert cap.limit == 6  # only 8 were ever in flight: 0.75 x 8, not 0.75 x 64
        limits = []
        for _ in range(4):  # run full, all fail, shrink
            for _ in range(cap.limit):
                await cap.acquire()
            for _ in range(cap.limit):
                cap.release()
            cap.shrink()
            limits.append(cap.limit)
        assert limits == [4, 3, 3, 3]  # 0.75 x 6, then 0.75 x 4 = 3, then the minimum

    run_virtual(main())


def test_shrink_holds_waiters_until_in_flight_drops_and_growth_wakes_them() -> None:
    async def main() -> None:
        cap = ConcurrencyLimit(4, minimum=1)
        for _ in range(4):
            await cap.acquire()
        waiters = [asyncio.ensure_future(cap.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        cap.shrink()  # peak 4 -> 3
        assert cap.limit == 3
        cap.release()  # 3 in flight: still full
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        cap.release()  # 2 in flight: one goes
        await asyncio.sleep(0)
        assert [w.done() for w in waiters] == [True, False, False]
        for _ in range(3):
            cap.on_success()  # back to 4: the next waiter goes
        await asyncio.sleep(0)
        assert (cap.limit, cap.in_flight) == (4, 4)
        assert [w.done() for w in waiters] == [True, True, False]
        waiters[2].cancel()  # a cancelled waiter holds no slot
        await asyncio.gather(waiters[2], return_exceptions=True)
        for _ in range(4):
            cap.release()
        assert cap.in_flight == 0
        with pytest.raises(ValueError):
            cap.release()

    run_virtual(main())


def test_concurrency_cancelled_after_grant_gives_the_slot_back() -> None:
    async def main() -> None:
        cap = ConcurrencyLimit(1)
        await cap.acquire()
        waiter = asyncio.ensure_future(cap.acquire())
        await asyncio.sleep(0)
        cap.release()  # hands the slot to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs
        await asyncio.gather(waiter, return_exceptions=True)
        assert cap.in_flight == 0
        await asyncio.wait_for(cap.acquire(), 1.0)
        assert cap.in_flight == 1

    run_virtual(main())


# -- learning: limit headers, Anthropic's, 429s on tokens ---------------------------------------


def test_limit_headers_set_the_budgets_below_the_users_ceiling() -> None:
    fake = FakeTime(50.0)
    limiter = RateLimiter(rpm=300, clock=fake.clock, sleep=fake.sleep)
    limiter.hear({"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "90000"})
    assert (limiter.rate(0), limiter.rate(1)) == (300.0, 90000.0)  # --rpm 300 is a ceiling
    limiter.hear({"anthropic-ratelimit-requests-limit": "50"})
    assert limiter.rate(0) == 50.0
    assert limiter.learned() == {"rpm": (50.0, "headers"), "tpm": (90000.0, "headers")}
    limiter.hear({"x-ratelimit-limit-requests": "nonsense", "x-ratelimit-limit-tokens": "-1"})
    assert (limiter.rate(0), limiter.rate(1)) == (50.0, 90000.0)


def test_anthropic_remaining_and_reset_headers_pause_until_the_reset() -> None:
    fake = FakeTime(10.0)
    limiter = RateLimiter(clock=fake.clock, sleep=fake.sleep)
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30))
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset,
    }
    wait, why = limiter.observe(headers)
    assert 28.0 <= wait <= 30.0 and why == "anthropic-ratelimit-requests-remaining is 0"


def test_429s_about_tokens_find_a_tokens_per_minute_rate() -> None:
    """Replies of 500 tokens, 10 a second, then a 429 saying tokens: a tpm budget of the
    tokens that got through (~300,000 a minute), and no requests budget."""
    fake = FakeTime(0.0)
    limiter = RateLimiter(clock=fake.clock, sleep=fake.sleep)
    for _ in range(30):
        fake.now += 0.1
        limiter.succeeded(500)
    assert limiter.throttled(fake.now - 0.01, tokens=True, pause=1.0) is False  # no flood
    assert limiter.rate(1) is None  # one 429: maybe at a window's edge
    assert limiter.throttled(fake.now - 0.01, tokens=True, pause=1.0) is False
    assert limiter.rate(0) is None
    assert limiter.rate(1) == pytest.approx(0.95 * 300_000, rel=0.1)
    [(name, (per_minute, source))] = limiter.learned().items()
    assert (name, source) == ("tpm", "429s") and per_minute == pytest.approx(300_000, rel=0.1)


def test_a_429_pauses_its_model_only_when_429s_flood_the_replies() -> None:
    from batcher.engine.http import Attempt
    from batcher.engine.replies import parse_reply
    from batcher.errors import RetryableError

    body = b'{"choices": [{"message": {"content": "ok"}}], "usage": {"total_tokens": 10}}'
    reply = parse_reply(200, {}, body)

    def throttled() -> Attempt:
        error = RetryableError("rate_limited", "Rate limit reached", http_status=429)
        return Attempt(0.01, 429, error=error)

    async def main() -> tuple[float, float]:
        limits = Limits(concurrency=8)
        own = limits.of("m")[-1]
        for _ in range(40):
            limits.learn("m", Attempt(0.01, 200, reply=reply, headers={}), 10)
        limits.learn("m", throttled(), 10)  # 1 in 41: a stray
        stray = own.paused_until
        for _ in range(8):
            limits.learn("m", throttled(), 10)
        return stray, own.paused_until - own.now()

    stray, flooded = run_virtual(main())
    assert stray == float("-inf")
    assert flooded == pytest.approx(1.0)  # no retry-after: a second


def test_open_lets_every_waiter_through_at_once_when_the_run_stops() -> None:
    async def main() -> list[float]:
        limiter = RateLimiter(rpm=1)  # one a minute: the waiters would wait minutes
        loop = asyncio.get_running_loop()
        done: list[float] = []

        async def one() -> None:
            await limiter.acquire()
            done.append(loop.time())

        start = loop.time()
        tasks = [asyncio.ensure_future(one()) for _ in range(5)]
        await asyncio.sleep(0.05)
        limiter.open()
        await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
        await limiter.acquire()  # and later callers too
        return [t - start for t in done]

    waited = asyncio.run(main())
    assert len(waited) == 5 and max(waited) < 1.0


def test_retry_quota_429s_cost_nothing_and_a_retry_pays_back_what_it_took() -> None:
    from batcher.engine.http import Attempt
    from batcher.engine.retry import CAPACITY, TIMEOUT_COST, Health, RetryPolicy
    from batcher.errors import RetryableError

    health = Health(RetryPolicy())
    rate_limited = Attempt(0.1, 429, error=RetryableError("rate_limited", "slow", http_status=429))
    assert health.spend(rate_limited) == 0
    timed_out = Attempt(0.1, None, error=RetryableError("timeout", "no reply"))
    assert health.spend(timed_out) == TIMEOUT_COST
    assert health.quota == CAPACITY - TIMEOUT_COST
    health.refund(TIMEOUT_COST)
    assert health.quota == CAPACITY
