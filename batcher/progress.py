"""What a running job tells its progress callback (the CLI's bar, a notebook's own)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from batcher.prices import PriceTable, usage_cost
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
    cost_usd: float | None = None  # of this run's results so far; None: nothing priced


ProgressCallback = Callable[[Progress], None]


@dataclass
class Counts:
    """What this run has finished so far, for progress."""

    total: int
    prices: PriceTable | None = None
    done: int = 0
    ok: int = 0
    prompt: int = 0
    completion: int = 0
    cost: float | None = None  # None until a result has a known cost

    def add(self, batch: list[Result]) -> None:
        self.done += len(batch)
        for result in batch:
            usage = result.usage
            self.ok += result.ok
            self.prompt += usage.prompt_tokens or 0
            self.completion += usage.completion_tokens or 0
            if result.cached or not (usage.known or usage.cost_usd is not None):
                continue  # nothing billed again, or what is unknown
            price = self.prices.get(result.model) if self.prices is not None else None
            cost = usage_cost(price, usage, batch=result.mode == "batch")
            if cost is not None:
                self.cost = (self.cost or 0.0) + cost

    def progress(self, note: str | None) -> Progress:
        return Progress(
            self.done,
            self.total,
            self.ok,
            self.done - self.ok,
            self.prompt,
            self.completion,
            note,
            self.cost,
        )


class ProgressBar:
    """A tqdm bar fed with `Progress` values: on stderr, or, with `notebook`, tqdm's
    notebook widget where there is one (tqdm.auto: Jupyter with ipywidgets), else text."""

    def __init__(self, notebook: bool = False) -> None:
        if notebook:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm

        self._bar = tqdm(total=None, unit="req", file=sys.stderr, dynamic_ncols=True)

    def update(self, p: Progress) -> None:
        self._bar.total = p.total
        self._bar.n = p.done
        tokens = p.prompt_tokens + p.completion_tokens
        extra: dict[str, str] = {"cost": f"${p.cost_usd:.4f}"} if p.cost_usd is not None else {}
        if p.note:
            extra["note"] = p.note
        self._bar.set_postfix(ok=p.ok, err=p.errors, tok=tokens, **extra, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
