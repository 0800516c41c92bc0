"""What a running job tells its progress callback (the CLI's bar, a notebook's own)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from batcher.types import Result

PROGRESS_INTERVAL = 0.2  # seconds between progress callbacks


@dataclass(frozen=True, slots=True)
class Progress:
    """Handed to the progress callback a few times a second."""

    done: int
    total: int
    ok: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    note: str | None = (
        None  # "paused 42 s: x-ratelimit-remaining-requests is 0", "~590 rpm from 429s"
    )


ProgressCallback = Callable[[Progress], None]


@dataclass
class Counts:
    """What this run has finished so far, for progress."""

    total: int
    done: int = 0
    ok: int = 0
    prompt: int = 0
    completion: int = 0

    def add(self, batch: list[Result]) -> None:
        self.done += len(batch)
        for result in batch:
            self.ok += result.ok
            self.prompt += result.usage.prompt_tokens or 0
            self.completion += result.usage.completion_tokens or 0

    def progress(self, note: str | None) -> Progress:
        return Progress(
            self.done, self.total, self.ok, self.done - self.ok, self.prompt, self.completion, note
        )
