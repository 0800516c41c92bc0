"""What a job will cost and how long it will take, from the input scan, before sending.

Tokens: the prompt estimate is the scan's (characters / 4); a reply is `typical_reply_tokens`
(150 by default), capped by the model's max_tokens total when every request has one. The
cost range per model is prompt + typical replies (low) to prompt + max_tokens (high; unknown
without max_tokens on every request), at list prices from a `PriceTable`. Models without a
price are named in `unpriced` and left out of the totals. With the shared prefixes the
pass found (`analysis.prefixes`), each cost also comes with cache hits: the cached tokens a
warm prompt cache would give (a lower bound) at the cached-input rate. With `batch` (`--mode
batch`), each priced cost also comes at the batch price: every rate times the model's
`Price.batch_factor`, as `prices.usage_cost(..., batch=True)` bills a Batch API row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from batcher.analysis.prefixes import SharedPrefixes
from batcher.analysis.text import aligned, duration, money
from batcher.errors import UsageError
from batcher.io.check import InputScan
from batcher.prices import BATCH_DISCOUNT, UNPRICED_HINT, Price, PriceTable
from batcher.types import COMPLETION_ALLOWANCE

__all__ = ["Estimate", "ModelEstimate", "estimate", "render_estimate"]

COST_KEYS = ("cost_low", "cost_high", "cost_low_cached", "cost_high_cached")


@dataclass(frozen=True)
class ModelEstimate:
    model: str
    requests: int
    prompt_tokens: int  # estimated: characters / 4 (from the input scan)
    completion_tokens_max: int | None  # sum of max_tokens when every request has one
    completion_tokens_typical: int  # requests x typical reply tokens, capped by the max
    cost_low: float | None  # prompt + typical replies; None without a price
    cost_high: float | None  # prompt + max_tokens; None without a price or max_tokens
    cached_tokens: int | None = None  # prompt tokens a warm cache would give, at least
    cost_low_cached: float | None = None  # cost_low with those tokens at the cached rate
    cost_high_cached: float | None = None
    batch_discount: float | None = None  # --mode batch: the share off; None: unpriced or online

    @property
    def priced(self) -> bool:
        return self.cost_low is not None

    def at_batch(self, cost: float | None) -> float | None:
        """`cost` at the batch price; None when unknown or not --mode batch."""
        d = self.batch_discount
        return None if cost is None or d is None else cost * (1.0 - d)

    def to_dict(self, batch: bool = False) -> dict[str, Any]:
        """The fields; the batch ones (`batch_discount`, `cost_low_batch`, ...) with `batch`."""
        doc = asdict(self)
        del doc["batch_discount"]
        if batch:
            doc["batch_discount"] = self.batch_discount
            for key in COST_KEYS:
                doc[f"{key}_batch"] = self.at_batch(doc[key])
        return doc


@dataclass(frozen=True)
class Estimate:
    rows: int
    requests: int  # requests to send (those of bad rows are not)
    models: list[ModelEstimate]
    prompt_tokens: int
    completion_tokens_max: int | None  # None when some request has no max_tokens
    cost_low: float | None  # sum over priced models; None when no model is priced
    cost_high: float | None  # None also when a priced model has no max_tokens bound
    unpriced: list[str]  # models without a price, left out of cost_low / cost_high
    duration_s: float
    duration_basis: str  # the binding limit: "rpm 600", "tpm 200000", "concurrency ..."
    bad_rows: int = 0
    typical_reply_tokens: int = 150
    combinations: int = 1  # of the --sweep grid
    samples: int = 1
    shared: SharedPrefixes | None = None  # the prefixes rows share (None: not looked for)
    batch: bool = False  # --mode batch: the costs at the batch price too

    def batch_total(self, key: str) -> float | None:
        """The priced models' cost `key` ("cost_low", ...) at the batch price, summed."""
        if not self.batch:
            return None
        return _total([m.at_batch(getattr(m, key)) for m in self.models if m.priced])

    @property
    def cached_tokens(self) -> int | None:
        return None if self.shared is None else sum(m.cached_tokens or 0 for m in self.models)

    @property
    def cost_low_cached(self) -> float | None:
        return _total([m.cost_low_cached for m in self.models if m.priced])

    @property
    def cost_high_cached(self) -> float | None:
        return _total([m.cost_high_cached for m in self.models if m.priced])

    @property
    def completion_tokens_typical(self) -> int:
        return sum(m.completion_tokens_typical for m in self.models)

    def to_dict(self) -> dict[str, Any]:
        """For --json: every field (the request count under "requests"), models as a list;
        with `batch`, each cost also at the batch price (`cost_low_batch`, ...)."""
        doc = {
            "rows": self.rows,
            "requests": self.requests,
            "bad_rows": self.bad_rows,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens_typical": self.completion_tokens_typical,
            "completion_tokens_max": self.completion_tokens_max,
            "typical_reply_tokens": self.typical_reply_tokens,
            "cost_low": self.cost_low,
            "cost_high": self.cost_high,
            "cached_tokens": self.cached_tokens,
            "cost_low_cached": self.cost_low_cached,
            "cost_high_cached": self.cost_high_cached,
        }
        if self.batch:
            for key in COST_KEYS:
                doc[f"{key}_batch"] = self.batch_total(key)
        return {
            **doc,
            "shared_prefixes": None if self.shared is None else self.shared.to_dict(),
            "unpriced": list(self.unpriced),
            "duration_s": self.duration_s,
            "duration_basis": self.duration_basis,
            "models": [m.to_dict(self.batch) for m in self.models],
        }


def _cost(price: Price, prompt: int, completion: int, cached: int = 0) -> float:
    uncached = (prompt - cached) * price.input_per_million + cached * price.cached_rate
    return (uncached + completion * price.output_per_million) / 1e6


def _total(costs: list[float | None]) -> float | None:
    """The sum, or None when there is nothing to add or any part is unknown."""
    return None if not costs or None in costs else sum(costs)  # type: ignore[arg-type]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise UsageError(f"{name} must be greater than 0, got {_num(value)}")


def estimate(
    scan: InputScan,
    prices: PriceTable,
    *,
    concurrency: int,
    rpm: float | None,
    tpm: float | None,
    model_limits: Mapping[str, Mapping[str, float]] | None = None,
    seconds_per_request: float = 2.0,
    typical_reply_tokens: int = 150,
    completion_allowance: int = COMPLETION_ALLOWANCE,
    combinations: int = 1,
    samples: int = 1,
    shared: SharedPrefixes | None = None,
    batch: bool = False,
) -> Estimate:
    """Tokens, cost range and duration of the job that `scan` describes; `batch`: the costs
    at the batch price too.

    The duration is the largest of these lower bounds (the one that binds names the basis):

    - `requests / rpm * 60` for the whole job's rpm;
    - `charged tokens / tpm * 60`, charging each request its prompt estimate plus its
      max_tokens (`completion_allowance` when a model's requests lack one), as the limiter
      does before sending;
    - per model with its own limits in `model_limits` ({"model": {"rpm": .., "tpm": ..}}):
      the same two over that model's requests and tokens alone;
    - `requests * seconds_per_request / concurrency`, the time with the pool always full.

    Retries, 429 pauses and the limiter's smoothing are not modelled."""
    if concurrency < 1:
        raise UsageError(f"concurrency must be at least 1, got {concurrency}")
    _positive("rpm", rpm)
    _positive("tpm", tpm)
    if seconds_per_request < 0:
        raise UsageError(f"seconds per request must be >= 0, got {seconds_per_request}")
    if typical_reply_tokens < 0 or completion_allowance < 0:
        raise UsageError("typical reply tokens and completion allowance must be >= 0")
    limits = model_limits or {}
    models: list[ModelEstimate] = []
    unpriced: list[str] = []
    own_bounds: list[tuple[float, str]] = []
    charged = 0
    for name, count in scan.per_model.items():
        n = count.requests
        cmax = count.max_tokens_total if n else 0
        typical = n * typical_reply_tokens
        if cmax is not None:
            typical = min(typical, cmax)
        price = prices.get(name)
        prompt = count.est_prompt_tokens
        cached = None if shared is None else min(shared.cached_tokens.get(name, 0), prompt)
        low = high = low_cached = high_cached = discount = None
        if price is None:
            unpriced.append(name)
        else:
            low = _cost(price, prompt, typical)
            high = None if cmax is None else _cost(price, prompt, cmax)
            if cached is not None:
                low_cached = _cost(price, prompt, typical, cached)
                high_cached = None if cmax is None else _cost(price, prompt, cmax, cached)
            if batch:  # as Price.batch_factor
                discount = BATCH_DISCOUNT if price.batch_discount is None else price.batch_discount
        models.append(
            ModelEstimate(
                name, n, prompt, cmax, typical, low, high, cached, low_cached, high_cached, discount
            )
        )
        tokens = count.est_prompt_tokens + (n * completion_allowance if cmax is None else cmax)
        charged += tokens
        own = limits.get(name, {})
        if own.get("rpm"):
            own_bounds.append((n / own["rpm"] * 60, f"{name} rpm {_num(own['rpm'])}"))
        if own.get("tpm"):
            own_bounds.append((tokens / own["tpm"] * 60, f"{name} tpm {_num(own['tpm'])}"))
    requests = sum(m.requests for m in models)
    bounds: list[tuple[float, str]] = []
    if rpm:
        bounds.append((requests / rpm * 60, f"rpm {_num(rpm)}"))
    if tpm:
        bounds.append((charged / tpm * 60, f"tpm {_num(tpm)}"))
    bounds += own_bounds
    basis = f"concurrency {concurrency} x {_num(seconds_per_request)} s per request"
    bounds.append((requests * seconds_per_request / concurrency, basis))
    if requests == 0:
        duration, basis = 0.0, "no requests"
    else:
        duration, basis = max(bounds, key=lambda b: b[0])  # the first of equals wins

    priced = [m for m in models if m.priced]
    maxes = [m.completion_tokens_max for m in models]
    return Estimate(
        rows=scan.rows,
        requests=requests,
        models=models,
        prompt_tokens=sum(m.prompt_tokens for m in models),
        completion_tokens_max=None if None in maxes else sum(maxes),  # type: ignore[arg-type]
        cost_low=sum(m.cost_low for m in priced) if priced else None,  # type: ignore[misc]
        cost_high=(
            sum(m.cost_high for m in priced)  # type: ignore[misc]
            if priced and all(m.cost_high is not None for m in priced)
            else None
        ),
        unpriced=unpriced,
        duration_s=duration,
        duration_basis=basis,
        bad_rows=scan.bad_rows,
        typical_reply_tokens=typical_reply_tokens,
        combinations=combinations,
        samples=samples,
        shared=shared,
        batch=batch,
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def render_estimate(est: Estimate) -> list[str]:
    """Human lines: requests, tokens, a cost table per model with the total, the duration
    and the models without a price."""
    n_models = len(est.models)
    good_rows = est.rows - est.bad_rows
    factors = [_plural(good_rows, "row"), _plural(n_models, "model")]
    if est.combinations > 1:
        factors.append(_plural(est.combinations, "combination"))
    if est.samples > 1:
        factors.append(_plural(est.samples, "sample"))
    product = good_rows * n_models * est.combinations * est.samples
    how = (" x " if est.requests == product else ", ").join(factors)
    lines = [f"requests: {est.requests} ({how})"]
    if est.bad_rows:
        lines.append(f"bad rows: {est.bad_rows} (not sent)")
    reply = (
        f"~{est.completion_tokens_typical} typical "
        f"({est.typical_reply_tokens} per request, at most max_tokens)"
    )
    if est.completion_tokens_max is not None:
        reply += f", at most {est.completion_tokens_max} (max_tokens)"
    lines.append(f"prompt tokens: ~{est.prompt_tokens} (characters / 4)")
    lines.append(f"reply tokens: {reply}")

    header = ["model", "requests", "prompt tokens", "cost low", "cost high"]
    if est.batch:
        header[3:] = ["online low", "online high", "batch low", "batch high"]
    rows = [header]
    for m in est.models:
        row = [m.model, str(m.requests), str(m.prompt_tokens), money(m.cost_low)]
        row.append(money(m.cost_high))
        if est.batch:
            row += [money(m.at_batch(m.cost_low)), money(m.at_batch(m.cost_high))]
        rows.append(row)
    total = ["total", str(est.requests), str(est.prompt_tokens)]
    total += [money(est.cost_low), money(est.cost_high)]
    if est.batch:
        total += [money(est.batch_total("cost_low")), money(est.batch_total("cost_high"))]
    rows.append(total)
    lines += aligned(rows)
    if est.batch:
        lines.append(_batch_line(est))
    if est.unpriced and est.cost_low is not None:
        lines.append("(totals cover priced models only)")
    if any(m.priced and m.cost_high is None for m in est.models):
        lines.append("cost high: unknown without max_tokens on every request (--max-tokens)")
    lines += _cache_lines(est)
    lines.append(f"duration: ~{duration(est.duration_s)} ({est.duration_basis})")
    if est.batch:
        lines[-1] = lines[-1].replace("duration:", "duration online:", 1)
        lines.append("duration in batch mode: up to 24h (the Batch API's window; often less)")
    if est.unpriced:
        lines.append(f"no price for: {', '.join(est.unpriced)} {UNPRICED_HINT}")
    return lines


def _percent(share: float) -> str:
    return f"{round(share * 100, 1):g}%"


def _batch_line(est: Estimate) -> str:
    """What the batch columns are, with each priced model's discount."""
    line = "batch: the price --mode batch is billed"
    off = {m.model: m.batch_discount for m in est.models if m.batch_discount is not None}
    if len(set(off.values())) == 1:
        line += f", {_percent(next(iter(off.values())))} off the online price"
    elif off:
        each = ", ".join(f"{model} {_percent(d)}" for model, d in off.items())
        line += f"; off the online price: {each}"
    return line


def _cache_lines(est: Estimate) -> list[str]:
    """The shared prefixes, and the cost range with cache hits, when rows share any."""
    shared = est.shared
    if shared is None or not shared.groups:
        return []
    lines = [
        f"shared prefixes: {shared.shared:,} of 1,024+ tokens, over {shared.sharing:,} requests"
        + (f"; the largest {len(shared.groups)}:" if shared.shared > len(shared.groups) else ":")
    ]
    for g in shared.groups:
        lines.append(
            f"  {g.requests:,} requests to {g.model} share their first {g.tokens:,}+ tokens "
            f"({g.where}, first at row {g.first_id!r})"
        )
    if est.cost_low_cached is not None:
        cost = f"{money(est.cost_low_cached)} to {money(est.cost_high_cached)}"
        if est.batch:
            low, high = est.batch_total("cost_low_cached"), est.batch_total("cost_high_cached")
            cost += f" online, {money(low)} to {money(high)} batch"
        lines.append(
            f"with cache hits: {cost} "
            f"(~{est.cached_tokens:,}+ prompt tokens cached, at the cached-input price)"
        )
    if not shared.complete:
        lines.append("(more distinct prefixes than could be compared: cached tokens at least)")
    return lines
