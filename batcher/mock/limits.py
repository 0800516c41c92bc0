"""The mock's requests-per-minute limit: a sliding window of admitted arrivals, its
`x-ratelimit-*` headers and the Go-style durations they use."""

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
    """The arrival times of the requests admitted within the last `_WINDOW` seconds."""

    def __init__(self, rpm: int | None) -> None:
        self.rpm = rpm
        self.arrivals: deque[float] = deque()

    def clear(self) -> None:
        """Forget every arrival."""
        self.arrivals.clear()

    def admit(self, now: float) -> bool:
        """Let arrivals older than the window go; admit `now` (True) unless `rpm` are left."""
        arrivals = self.arrivals
        while arrivals and now - arrivals[0] >= _WINDOW:
            arrivals.popleft()
        if self.rpm is not None and len(arrivals) >= self.rpm:
            return False
        arrivals.append(now)
        return True

    def wait(self, now: float) -> float:
        """Seconds until the oldest arrival leaves the window (the window must not be empty)."""
        return self.arrivals[0] + _WINDOW - now

    def headers(self, now: float) -> dict[str, str]:
        """x-ratelimit-* headers for the current window."""
        rpm = self.rpm or 0
        reset = self.wait(now) if self.arrivals else 0.0
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(max(0, rpm - len(self.arrivals))),
            "x-ratelimit-reset-requests": go_duration(reset),
        }
