"""The mock's requests-per-minute limit: a sliding window of admitted arrivals (over a minute
or a shorter span, at a rpm that may change on a schedule), its `x-ratelimit-*` headers and
the Go-style durations they use."""

from __future__ import annotations

from collections import deque

_WINDOW = 60.0  # seconds; read at use time, so tests can shrink it with monkeypatch


def go_duration(seconds: float) -> str:
    """A Go-style duration at millisecond precision: "250ms", "1s", "1.5s", "6m0s"."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class RpmWindow:
    """The arrival times of the requests admitted within the last window.

    `rpm` requests a minute, enforced over `window` seconds as real servers do (600 rpm over
    1 s: 10 in any second); without `window`, `rpm` requests per `_WINDOW` seconds. `schedule`
    changes the rpm as time goes on: (seconds after the first request, rpm) pairs."""

    def __init__(
        self,
        rpm: int | None,
        window: float | None = None,
        schedule: tuple[tuple[float, int], ...] = (),
    ) -> None:
        self.rpm = rpm
        self.window = window
        self.schedule = tuple(sorted(schedule))
        self.arrivals: deque[float] = deque()
        self.start: float | None = None

    def clear(self) -> None:
        """Forget every arrival (and when the schedule started)."""
        self.arrivals.clear()
        self.start = None

    def rpm_at(self, now: float) -> int | None:
        """The rpm in force at `now`."""
        if self.start is None:
            self.start = now
        rpm = self.rpm
        for after, value in self.schedule:
            if now - self.start >= after:
                rpm = value
        return rpm

    def _span(self) -> float:
        return self.window if self.window is not None else _WINDOW

    def _capacity(self, rpm: int) -> int:
        if self.window is None:
            return rpm
        return max(1, int(rpm * self.window / 60.0 + 1e-9))

    def admit(self, now: float) -> bool:
        """Let arrivals older than the window go; admit `now` (True) unless none are left."""
        arrivals, span = self.arrivals, self._span()
        while arrivals and now - arrivals[0] >= span:
            arrivals.popleft()
        rpm = self.rpm_at(now)
        if rpm is not None and len(arrivals) >= self._capacity(rpm):
            return False
        arrivals.append(now)
        return True

    def wait(self, now: float) -> float:
        """Seconds until one more request fits: until the arrival that many back from the
        newest leaves the window (the window must not be empty)."""
        arrivals = self.arrivals
        rpm = self.rpm_at(now)
        over = len(arrivals) - self._capacity(rpm) if rpm is not None else 0
        return arrivals[max(0, over)] + self._span() - now

    def headers(self, now: float) -> dict[str, str]:
        """x-ratelimit-* headers for the current window: the limit a minute, what is left of
        it at the window's pace, and when the oldest arrival leaves."""
        rpm = self.rpm_at(now) or 0
        left = max(0, self._capacity(rpm) - len(self.arrivals)) if rpm else 0
        if self.window is not None:
            left = int(left * 60.0 / self.window)
        reset = self.wait(now) if self.arrivals else 0.0
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(left),
            "x-ratelimit-reset-requests": go_duration(reset),
        }
