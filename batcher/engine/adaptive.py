"""Finding a server's rate limit from its 429s, for servers whose headers do not say it.

`RateFinder` is client-side congestion control on throttling answers, after botocore's
adaptive retry mode (a rate that follows a CUBIC curve between throttles), with two changes
that keep a few stray 429s from slowing a job down:

- A 429 is a sign of a limit only while 429s are at least `SHARE` of the replies of the last
  window (two seconds at least; the span of the last 16 successes at low rates), and two at
  least. At high rates a 2% sprinkle of 429s never reaches that; at 10 requests a second two
  429s do, one at a window's edge does not.
- On a sign, the rate is set from what the server let through in that window (the success
  rate, as TCP Westwood sets its window from the delivered bandwidth; the busiest half of the
  window), not from a fixed fraction of what was sent: the rate that was found, `BETA` below.

From there the rate grows along a CUBIC curve: concave back up to the rate found within K,
nearly flat around it, then convex, to probe for more, up to `X_CAP`; a curve that got
there with no 429 starts again from what the server delivered, if that is more (a client
that sends less than its rate never inflates it). K is `LONG` requests when the same limit
is found again (few probes, few 429s), `SHORT` requests the first time, and `RECOVER`
requests while the limit found is below the highest found lately (`K_MIN` to `K_MAX`
seconds, for a cut to show in the server's window), so a limit that dropped is followed
down at once and back up within seconds. Only a 429 for a request sent after the last cut
counts: the requests already in flight then do not cut again. A flood (half the last 16
replies 429s, or the last three) also says "pause": the requests in flight and queued would
only be refused too; the curve then starts when the pause ends (`restart`). A flood that
let nothing through finds no rate.

A finder counts units: requests, or tokens for a tokens-per-minute limit.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RateFinder"]

FLOOD = 0.5  # 429s among the last 16 replies, at least, for a flood (or the last three)
SHARE = 0.04  # 429s among the window's replies, at least, for a sign of a limit
BETA = 0.95  # the rate starts again this far below the rate found
LONG = 150  # requests until the curve is back at the rate found, when it was found before
SHORT = 10  # the same, the first time a limit is found
RECOVER = 4  # the same, while the rate found is below the highest one found lately
K_MIN = 2.0  # seconds at least: two of the shortest windows a server limits over
K_MAX = 60.0  # seconds at most, however slow the rate
X_CAP = 1.5  # the curve stops rising at 1.5 K past the rate found (1 + GROW x 3.4 times it)
NEAR = 0.9  # a rate found this close to the highest is "the same limit"
GROW = 1.0  # past K, the curve rises by GROW x the rate found per K cubed
HALF_LIFE = 60.0  # seconds: the highest rate found is forgotten at this pace
_BUCKET = 0.1  # seconds per counting bucket
_SPAN = 60.0  # seconds: the longest window
_MIN_WINDOW = 2.0  # seconds: the shortest window
_SERVER_WINDOW = 1.0  # seconds: the shortest window a server limits over
_FLOOR = 1 / 60  # units a second: the rate never goes below one a minute


class RateFinder:
    """The rate (units a second) a server allows, found from its 429s; None until found."""

    def __init__(self, rate: float | None = None, now: float = 0.0) -> None:
        self._found: float | None = None  # the rate found at the last cut
        self._cut = -math.inf  # when
        self._k = 1.0  # seconds from the cut back to the rate found
        self._highest = 0.0  # the highest rate found lately, and when
        self._highest_at = -math.inf
        self._first = math.inf  # the first event seen: windows never reach before it
        n = int(_SPAN / _BUCKET) + 1
        self._ok = [0] * n  # successes per bucket
        self._units = [0.0] * n  # their units
        self._throttled = [0] * n  # 429s per bucket
        self._bucket = 0  # the absolute index of the newest bucket
        self._recent: deque[float] = deque(maxlen=16)  # the last successes' times
        self._last: deque[bool] = deque(maxlen=16)  # the last replies: was it a 429?
        self.cuts = 0
        if rate is not None:  # a rate found by an earlier run: start there, as re-found
            self._set(rate, now, near=True)
            self._highest, self._highest_at = rate, now

    @property
    def found(self) -> float | None:
        """The rate found at the last sign of a limit (None: no sign yet)."""
        return self._found

    def rate(self, now: float) -> float | None:
        """The rate to send at now: on the CUBIC curve through the rate found."""
        found = self._found
        if found is None:
            return None
        x = (now - self._cut - self._k) / self._k
        if x < 0:  # before the curve starts (a pause), at its foot: BETA x found
            return found * (1 + (1 - BETA) * max(x, -1.0) ** 3)
        if x > X_CAP:  # the curve ran its course with no 429: start one from what got through
            delivered = self._delivered(now)
            if delivered <= found:
                return found * (1 + GROW * X_CAP**3)  # app-limited: no higher
            self._set(delivered, now, near=False)
            return self.rate(now)
        return found * (1 + GROW * x**3)

    def restart(self, at: float) -> None:
        """Start the curve again at `at` (the end of a pause the last cut asked for)."""
        if self._found is not None and at > self._cut:
            self._cut = at

    def success(self, now: float, units: float = 1.0) -> None:
        """A reply that was not throttled."""
        i = self._advance(now)
        self._ok[i] += 1
        self._units[i] += units
        self._recent.append(now)
        self._last.append(False)

    def throttled(self, now: float, sent_at: float) -> tuple[bool, bool]:
        """A 429 for a request sent at `sent_at`: (whether the rate was cut, whether replies
        are flooded with 429s)."""
        i = self._advance(now)
        self._throttled[i] += 1
        window = self._window(now)
        ok, units, throttled, span = self._counts(now, window)
        replies = ok + throttled
        self._last.append(True)
        last = self._last
        flood = sum(last) >= max(3, FLOOD * len(last)) or (len(last) >= 3 and last[-2] and last[-3])
        young = now - self._first < _SERVER_WINDOW  # too soon to tell a stray from a limit
        few = throttled < max(2, SHARE * replies)  # one 429 at a window's edge is no sign
        if sent_at <= self._cut or (few and not flood) or (young and not flood):
            return False, flood
        # The window as far as it reaches back (the job may be younger), but a second at
        # least when flooded: no server limits over less.
        span = min(span, now - self._first)
        if flood:
            span = max(span, _SERVER_WINDOW)
        span = max(span, 1e-3)
        if flood and ok == 0:  # nothing got through: no rate to find, only a pause
            return False, flood
        found = max(units / span, _FLOOR)
        if not flood and span >= 0.9 * _MIN_WINDOW:  # the busiest half, not the average
            found = max(found, self._peak(window / 2))
        highest = self._highest * 0.5 ** ((now - self._highest_at) / HALF_LIFE)
        if not flood and span >= 0.9 * _MIN_WINDOW and found >= highest:  # no guess is a record
            self._highest, self._highest_at = found, now
        requests_rate = max(ok / span, _FLOOR)
        # Found again, a window or more after the last cut (not in the same overshoot): the
        # limit is stable, probe rarely.
        again = now - self._cut >= window and 0 < highest <= found / NEAR
        near = not flood and again
        below = not flood and found < NEAR * highest  # a limit that dropped: it may come back
        self._set(found, now, near=near, requests_rate=requests_rate, below=below)
        return True, flood

    def _set(
        self,
        found: float,
        now: float,
        *,
        near: bool,
        requests_rate: float | None = None,
        below: bool = False,
    ) -> None:
        self._found = found
        self._cut = now
        requests = LONG if near else RECOVER if below else SHORT
        self._k = min(K_MAX, max(K_MIN, requests / (requests_rate or found)))
        self.cuts += 1

    def _delivered(self, now: float) -> float:
        """Units a second that got through over the last window."""
        _, units, _, span = self._counts(now, self._window(now))
        return units / max(span, 1e-3)

    def _window(self, now: float) -> float:
        recent = self._recent
        span = now - recent[0] if len(recent) == recent.maxlen else 0.0
        return min(_SPAN, max(_MIN_WINDOW, span))

    def _counts(self, now: float, window: float) -> tuple[int, float, int, float]:
        """Successes, their units and 429s over the buckets covering `window` (whole buckets
        back from the current one), and the span they cover."""
        n = len(self._ok)
        back = min(n - 1, round(window / _BUCKET))
        ok = throttled = 0
        units = 0.0
        for b in range(back + 1):
            j = (self._bucket - b) % n
            ok += self._ok[j]
            units += self._units[j]
            throttled += self._throttled[j]
        span = back * _BUCKET + (now - self._bucket * _BUCKET)
        return ok, units, throttled, span

    def _peak(self, length: float) -> float:
        """The most units a second over `length` (whole buckets, before the current one)."""
        n = len(self._ok)
        size = max(1, round(length / _BUCKET))
        units = [self._units[(self._bucket - b) % n] for b in range(1, min(n, 2 * size + 1))]
        if len(units) < size:
            return 0.0
        total = best = sum(units[:size])
        for b in range(size, len(units)):
            total += units[b] - units[b - size]
            best = max(best, total)
        return best / (size * _BUCKET)

    def _advance(self, now: float) -> int:
        """The slot of the bucket holding `now`, clearing the buckets skipped."""
        if now < self._first:
            self._first = now
        absolute = int(now / _BUCKET)
        n = len(self._ok)
        if absolute > self._bucket:
            for b in range(self._bucket + 1, min(absolute, self._bucket + n) + 1):
                j = b % n
                self._ok[j] = self._throttled[j] = 0
                self._units[j] = 0.0
            self._bucket = absolute
        return self._bucket % n
