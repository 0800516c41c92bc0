"""--max-cost: stop sending once the cost spent plus the cost in flight would pass the budget.

A request reserves its worst case before it is sent (estimated prompt plus max_tokens, at
list prices); when its result is known the reservation is replaced by what it really cost
(the server's usage.cost, else tokens x prices, re-asks included).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from batcher.prices import PriceTable, row_cost
from batcher.types import Request, Result


@dataclass
class Budget:
    limit: float
    prices: PriceTable
    spent: float = 0.0  # known cost of finished results (earlier runs included)
    reserved: float = 0.0  # worst case of requests in flight
    _settled: asyncio.Event | None = field(default=None, repr=False)

    def worst_case(self, request: Request) -> float:
        price = self.prices.get(request.model)
        if price is None:
            return 0.0
        cost = row_cost(
            price,
            prompt_tokens=request.est_prompt_tokens,
            completion_tokens=request.completion_bound,
        )
        return cost or 0.0

    async def reserve(self, request: Request) -> float | None:
        """Reserve the request's worst case; while it does not fit but requests are in
        flight, wait for them (they usually cost less than their worst case). None when it
        cannot fit: the budget is spent."""
        amount = self.worst_case(request)
        while self.spent + self.reserved + amount > self.limit:
            if self.reserved <= 0:
                return None
            if self._settled is None:
                self._settled = asyncio.Event()
            self._settled.clear()
            await self._settled.wait()
        self.reserved += amount
        return amount

    def settle(self, reserved: float, result: Result | None) -> None:
        """Swap a reservation for the real cost (nothing when the request was not sent)."""
        self.reserved = max(0.0, self.reserved - reserved)
        if result is not None:
            self.spent += self.cost_of(result)
        if self._settled is not None:
            self._settled.set()

    def cost_of(self, result: Result) -> float:
        if result.cached:
            return 0.0
        usage = result.usage
        if usage.cost_usd is not None:
            return usage.cost_usd
        cost = row_cost(
            self.prices.get(result.model),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
        return cost or 0.0

    def message(self) -> str:
        return (
            f"the next request could pass the budget of ${self.limit:.4f} "
            f"(${self.spent:.4f} spent); rerun with a higher --max-cost to go on"
        )
