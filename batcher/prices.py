"""List prices per model, and the cost of one request from its tokens.

`PriceTable.load` reads the packaged `prices.toml`, then the file named by `BATCHER_PRICES`,
then `--prices FILE` (USD per million tokens). A model without a price has an unknown cost
(None), never $0. `row_cost` prices one request; the server's own `usage.cost` wins.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from batcher.errors import UsageError, os_problem, show_path
from batcher.types import Usage

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["PRICE_KEYS", "Price", "PriceTable", "row_cost", "usage_cost"]

REQUIRED_KEYS = ("input_per_million", "output_per_million")


PRICE_KEYS = (
    *REQUIRED_KEYS,
    "cached_input_per_million",
    "cache_write_per_million",
    "reasoning_per_million",
    "per_search",
    "batch_discount",
)


BATCH_DISCOUNT = 0.5  # OpenAI, Anthropic, Google and Mistral all sell batches at half price
UNPRICED_HINT = "(cost left empty; add them with --prices FILE)"
PACKAGED = "batcher/prices.toml"  # how the packaged file is named in messages


@dataclass(frozen=True, slots=True)
class Price:
    """A model's list price in USD per million tokens (and per web search)."""

    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None = None  # None: cached tokens at the input rate
    cache_write_per_million: float | None = None  # None: tokens written at the input rate
    reasoning_per_million: float | None = None  # None: reasoning tokens at the output rate
    per_search: float | None = None  # None: searches unpriced (a row with any: cost unknown)
    batch_discount: float | None = None  # share off through a Batch API; None: 0.5

    @property
    def batch_factor(self) -> float:
        """What a Batch API request pays of the list price (0.5: half)."""
        return 1.0 - (BATCH_DISCOUNT if self.batch_discount is None else self.batch_discount)

    @property
    def cached_rate(self) -> float:
        c = self.cached_input_per_million
        return self.input_per_million if c is None else c

    @property
    def write_rate(self) -> float:
        w = self.cache_write_per_million
        return self.input_per_million if w is None else w

    @property
    def reasoning_rate(self) -> float:
        r = self.reasoning_per_million
        return self.output_per_million if r is None else r


class PriceTable:
    """Prices by model name.

    `get` tries the exact name, then the name without its leading "vendor/" segments, one at
    a time: "openrouter/openai/gpt-4o" tries "openai/gpt-4o", then "gpt-4o". The packaged
    table holds the vendors' own ids ("gpt-4o"), so gateway names find them; a file may price
    a gateway name ("openai/gpt-4o") to override that for it alone."""

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices: dict[str, Price] = dict(prices or {})

    @classmethod
    def load(
        cls,
        extra: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] = os.environ,
    ) -> PriceTable:
        """The packaged prices, then `env["BATCHER_PRICES"]`, then `extra` (--prices FILE).

        A later file adds models or replaces an earlier file's table for the same model
        (the whole table: keys it leaves out are not inherited). Raises `UsageError`."""
        text = resources.files("batcher").joinpath("prices.toml").read_bytes()
        prices = _parse(text, PACKAGED)
        env_file = env.get("BATCHER_PRICES")
        if env_file:
            prices.update(_parse(_read(env_file, " (named by BATCHER_PRICES)"), env_file))
        if extra is not None:
            prices.update(_parse(_read(extra), extra))
        return cls(prices)

    def get(self, model: str) -> Price | None:
        """The price of `model`, exact name first, then without "vendor/" prefixes."""
        name = model
        while True:
            price = self._prices.get(name)
            if price is not None:
                return price
            _, slash, rest = name.partition("/")
            if not slash or not rest:
                return None
            name = rest

    def models(self) -> list[str]:
        """The priced model names, sorted."""
        return sorted(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.get(model) is not None


def _read(path: str | os.PathLike[str], origin: str = "") -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"{show_path(path)}: {os_problem(exc)}{origin}") from None


def _parse(data: bytes, path: str | os.PathLike[str]) -> dict[str, Price]:
    """The prices of one TOML file; every problem is a one-line `UsageError`."""
    where = show_path(path)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{where}: invalid TOML: not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML: {exc}") from None
    out: dict[str, Price] = {}
    for model, table in doc.items():
        if not isinstance(table, dict):
            raise UsageError(
                f"{where}: {model!r} is not a model table; "
                f'write its prices under a header such as ["{model}"]'
            )
        if not model:
            raise UsageError(f"{where}: empty model name")
        out[model] = _price(table, f"{where}: model {model!r}")
    return out


def _price(table: Mapping[str, Any], where: str) -> Price:
    for key, value in table.items():
        if isinstance(value, dict):  # [gpt-4.1] is the table "gpt-4" holding a table "1"
            raise UsageError(
                f"{where}: {key!r} is a table, not a price; quote model names "
                'that hold a dot: ["gpt-4.1"]'
            )
        if key not in PRICE_KEYS:
            close = difflib.get_close_matches(key, PRICE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{where}: unknown key {key!r}{hint}")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise UsageError(f"{where}: {key} must be a number >= 0")
    if table.get("batch_discount", 0) > 1:
        raise UsageError(f"{where}: batch_discount is a share off, from 0 to 1")
    missing = [key for key in REQUIRED_KEYS if key not in table]
    if missing:
        raise UsageError(f"{where}: missing {' and '.join(missing)}")
    return Price(**{key: float(value) for key, value in table.items()})


def row_cost(
    price: Price | None,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    search_queries: int = 0,
    server_cost: float | None = None,
    batch: bool = False,
) -> float | None:
    """The USD cost of one request: the server's `usage.cost` when given, else from tokens.

    Cached and cache-write tokens are part of the prompt tokens, priced at the cached-input
    and cache-write rates (the input rate without one); reasoning tokens are part of the
    completion tokens (as in OpenAI's usage details), priced at the reasoning rate (the
    output rate without one); each search costs `per_search`; `batch`: every rate at the
    batch price (`Price.batch_factor`). None when there is neither a price nor a server
    cost, or searches without a search price."""
    if server_cost is not None:
        return server_cost
    if price is None or (search_queries and price.per_search is None):
        return None
    cached = min(cached_tokens, prompt_tokens)
    written = min(cache_write_tokens, prompt_tokens - cached)
    reasoning = min(reasoning_tokens, completion_tokens)
    f = price.batch_factor if batch else 1.0
    total = (
        (prompt_tokens - cached - written) * (price.input_per_million * f)
        + cached * (price.cached_rate * f)
        + written * (price.write_rate * f)
        + (completion_tokens - reasoning) * (price.output_per_million * f)
        + reasoning * (price.reasoning_rate * f)
    )
    return total / 1e6 + search_queries * ((price.per_search or 0.0) * f)


def usage_cost(price: Price | None, usage: Usage, *, batch: bool = False) -> float | None:
    """`row_cost` of a reply's usage (its unknown counts taken as 0)."""
    return row_cost(
        price,
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        cached_tokens=usage.cached_tokens or 0,
        cache_write_tokens=usage.cache_write_tokens or 0,
        reasoning_tokens=usage.reasoning_tokens or 0,
        search_queries=usage.search_queries or 0,
        server_cost=usage.cost_usd,
        batch=batch,
    )
