"""The mock server's settings (`MockConfig`), checked when built."""

from __future__ import annotations

from dataclasses import dataclass

from batcher.mock.faults import FAULT_KINDS

_STYLES = ("openai", "octen")


@dataclass(frozen=True)
class MockConfig:
    """How the mock server behaves. All randomness is seeded by `seed`."""

    latency: float = 0.0
    jitter: float = 0.0
    fail_rate: float = 0.0
    faults: tuple[str, ...] = ("429", "500", "502", "503", "drop")
    rpm: int | None = None
    max_concurrency: int | None = None
    api_key: str | None = None
    error_style: str = "openai"
    usage_style: str = "openai"
    ratelimit_headers: bool = False
    hang_seconds: float = 3600.0
    seed: int = 0
    log_path: str | None = None

    def __post_init__(self) -> None:
        """Reject settings that cannot work (ValueError); store `faults` as a tuple."""
        object.__setattr__(self, "faults", tuple(self.faults))
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
        if self.error_style not in _STYLES or self.usage_style not in _STYLES:
            raise ValueError(f"error_style and usage_style must be one of {', '.join(_STYLES)}")


DEFAULT_CONFIG = MockConfig()
