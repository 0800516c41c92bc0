"""RateFinder: the rate a server allows, found from its 429s (a virtual clock throughout)."""

from __future__ import annotations

import pytest

from batcher.engine.adaptive import (
    BETA,
    GROW,
    K_MIN,
    LONG,
    RECOVER,
    X_CAP,
    RateFinder,
)


def test_no_429_no_rate() -> None:
    finder = RateFinder()
    for i in range(1000):
        finder.success(i * 0.01)
    assert finder.rate(10.0) is None and finder.found is None


def test_a_flood_at_the_start_finds_the_rate_the_server_let_through() -> None:
    """-c 32 against 10 a second: 10 answered, 22 refused within 5 ms. A few 429s so young
    could be strays; three in a row are a flood: the rate found is what got through in a
    second (no server limits over less), and the flood says pause."""
    finder = RateFinder()
    for i in range(10):
        finder.success(0.001 + i * 0.0001)
    results = [finder.throttled(0.005, sent_at=0.0) for _ in range(22)]
    assert results[:2] == [(False, False)] * 2
    assert results[2] == (True, True)  # three in a row
    assert results[3:] == [(False, True)] * 19  # sent before the cut: no second cut
    assert finder.found == pytest.approx(10.0)
    assert finder.rate(0.005) == pytest.approx(BETA * 10.0)


def test_stray_429s_among_many_successes_never_cut() -> None:
    """2% 429s spread through 1,000 replies a second for 5 s: no sign of a limit."""
    finder = RateFinder()
    t = 0.0
    for i in range(5000):
        t = i * 0.001
        if i % 50 == 49:
            assert finder.throttled(t, sent_at=t - 0.005) == (False, False)
        else:
            finder.success(t)
    assert finder.found is None and finder.cuts == 0


def test_the_curve_comes_back_to_the_rate_found_then_probes_above_it() -> None:
    finder = RateFinder(rate=10.0, now=100.0)  # as an earlier run found: K of LONG requests
    k = LONG / 10.0
    assert finder.rate(100.0) == pytest.approx(BETA * 10)
    assert finder.rate(100.0 + k / 2) == pytest.approx(10 * (1 - (1 - BETA) / 8))
    assert finder.rate(100.0 + k) == pytest.approx(10.0)
    assert finder.rate(100.0 + 2 * k) == pytest.approx(10 * (1 + GROW))


def steady(finder: RateFinder, start: float, seconds: float, per_second: int) -> float:
    t = start
    for i in range(int(seconds * per_second)):
        t = start + i / per_second
        finder.success(t)
    return t


def test_a_limit_found_twice_is_probed_rarely_and_a_lower_one_quickly() -> None:
    finder = RateFinder()
    t = steady(finder, 0.0, 3.0, 10)
    assert finder.throttled(t, sent_at=t - 0.01) == (False, False)  # one: maybe an edge
    finder.success(t + 0.05)
    assert finder.throttled(t + 0.1, sent_at=t + 0.09) == (True, False)  # two of ~23: a sign
    first_k = finder._k
    assert first_k == K_MIN  # found once: short (SHORT requests, K_MIN seconds at least)
    t = steady(finder, t + 0.2, 5.0, 10)
    assert finder.throttled(t, sent_at=t - 0.01) == (False, False)
    assert finder.throttled(t + 0.01, sent_at=t) == (True, False)
    assert finder.found == pytest.approx(10.0, rel=0.1)
    assert finder._k == pytest.approx(LONG / 10.0, rel=0.1)  # found again: long
    t = steady(finder, t + 0.1, 5.0, 3)  # the limit fell to 3 a second
    # the window of 16 successes reaches back over the last 429: this one is the second
    assert finder.throttled(t, sent_at=t - 0.01) == (True, False)
    assert finder.found == pytest.approx(3.0, rel=0.3)
    assert finder._k == pytest.approx(max(K_MIN, RECOVER / finder.found))  # below the highest


def test_a_429_for_a_request_sent_before_the_cut_does_not_cut_again() -> None:
    finder = RateFinder()
    t = steady(finder, 0.0, 3.0, 10)
    assert finder.throttled(t, sent_at=t - 0.5)[0] is False
    assert finder.throttled(t, sent_at=t - 0.5)[0] is True
    assert finder.throttled(t + 0.01, sent_at=t - 0.1)[0] is False  # in flight at the cut
    assert finder.throttled(t + 0.3, sent_at=t + 0.2)[0] is True
    assert finder.cuts == 2


def test_a_long_pause_keeps_the_rate_at_the_foot_of_the_curve() -> None:
    """A flood's 30 s retry-after moves the curve's start 30 s on: meanwhile the rate is
    BETA x the rate found, never below (a negative rate once made a budget of years)."""
    finder = RateFinder(rate=10.0, now=0.0)
    finder.restart(30.0)
    assert finder.rate(1.0) == pytest.approx(BETA * 10.0)


def test_a_flood_that_let_nothing_through_finds_no_rate() -> None:
    """The first replies all 429s (the quota used up elsewhere): a pause, but no rate of one
    a minute to crawl at for an hour."""
    finder = RateFinder()
    results = [finder.throttled(2.0 + i * 0.01, sent_at=1.0) for i in range(5)]
    assert results[2:] == [(False, True)] * 3
    assert finder.found is None


def test_a_client_that_sends_less_never_inflates_its_rate() -> None:
    """No 429 for minutes while sending 2 a second under a rate found of 10: the curve stops
    at X_CAP, it does not grow without end."""
    finder = RateFinder(rate=10.0, now=0.0)
    steady(finder, 0.0, 300.0, 2)
    assert finder.rate(300.0) == pytest.approx(10.0 * (1 + GROW * X_CAP**3))


def test_a_limit_higher_than_the_curve_reaches_is_found_from_what_got_through() -> None:
    finder = RateFinder(rate=10.0, now=0.0)
    t = steady(finder, 0.0, 60.0, 60)  # the server lets 60 a second through: no 429
    finder.rate(t)
    assert finder.found == pytest.approx(60.0, rel=0.1)
