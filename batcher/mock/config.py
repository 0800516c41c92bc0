"""The mock server's settings (`MockConfig`), checked when built."""

from __future__ import annotations

from dataclasses import dataclass

from batcher.mock.faults import FAULT_KINDS, parse_batch_fault

_STYLES = ("openai", "octen")
USAGE_STYLES = (*_STYLES, "anthropic")  # anthropic: its usage keys passed on by a gateway
# How 429s for the rpm limit (and other replies) carry rate-limit headers:
# retry-after     429s say `retry-after` (whole seconds), nothing else does
# retry-after-ms  429s say `retry-after-ms`, `retry-after` and x-ratelimit-* (limit, remaining)
# headers         every reply says x-ratelimit-*, 429s `retry-after` too (OpenAI)
# bare            429s carry no header at all (Octen)
RATELIMIT_STYLES = ("retry-after", "retry-after-ms", "headers", "bare")


@dataclass(frozen=True)
class MockConfig:
    """How the mock server behaves. All randomness is seeded by `seed`."""

    latency: float = 0.0
    jitter: float = 0.0
    fail_rate: float = 0.0
    faults: tuple[str, ...] = ("429", "500", "502", "503", "drop")
    rpm: int | None = None
    rpm_window: float | None = None  # seconds the rpm is enforced over (None: a minute)
    rpm_schedule: tuple[tuple[float, int], ...] = ()  # (seconds after the first request, rpm)
    max_concurrency: int | None = None
    api_key: str | None = None
    error_style: str = "openai"
    usage_style: str = "openai"
    ratelimit_style: str = "retry-after"
    hang_seconds: float = 3600.0
    cache_window: float = 300.0  # seconds a prompt prefix stays cached after its last use
    batch_step: float = 1.0  # seconds each Batch API phase takes (validating, ...)
    batch_faults: tuple[str, ...] = ()  # the i-th for the i-th batch (`mock.batches`)
    batch_max_requests: int = 50_000  # requests in one batch file, at most
    batch_max_bytes: int = 200 * 1024 * 1024  # size of one batch file, at most
    seed: int = 0
    log_path: str | None = None

    def __post_init__(self) -> None:
        """Reject settings that cannot work (ValueError); store `faults` as a tuple."""
        object.__setattr__(self, "faults", tuple(self.faults))
        object.__setattr__(self, "batch_faults", tuple(self.batch_faults))
        for spec in self.batch_faults:
            parse_batch_fault(spec)
        if self.batch_step < 0 or self.batch_max_requests < 1 or self.batch_max_bytes < 1:
            raise ValueError("batch_step must be >= 0, batch_max_requests and _bytes >= 1")
        if self.latency < 0 or self.jitter < 0 or self.hang_seconds < 0:
            raise ValueError("latency, jitter and hang_seconds must be >= 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        unknown = [k for k in self.faults if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds: {', '.join(unknown)}")
        if self.fail_rate > 0 and not self.faults:
            raise ValueError("fail_rate > 0 needs at least one fault kind")
        for name in ("rpm", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        object.__setattr__(self, "rpm_schedule", tuple(tuple(x) for x in self.rpm_schedule))
        if self.rpm_window is not None and not self.rpm_window > 0:
            raise ValueError("rpm_window must be > 0")
        if any(after < 0 or rpm < 1 for after, rpm in self.rpm_schedule):
            raise ValueError("rpm_schedule needs (seconds >= 0, rpm >= 1) pairs")
        if self.rpm_schedule and self.rpm is None:
            raise ValueError("rpm_schedule needs rpm (the limit before the first change)")
        if self.ratelimit_style not in RATELIMIT_STYLES:
            raise ValueError(f"ratelimit_style must be one of {', '.join(RATELIMIT_STYLES)}")
        if self.error_style not in _STYLES:
            raise ValueError(f"error_style must be one of {', '.join(_STYLES)}")
        if self.usage_style not in USAGE_STYLES:
            raise ValueError(f"usage_style must be one of {', '.join(USAGE_STYLES)}")
        if self.cache_window < 0:
            raise ValueError("cache_window must be >= 0")


DEFAULT_CONFIG = MockConfig()
