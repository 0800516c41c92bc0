"""--max-cost: send no request whose worst case could pass the budget.

A request reserves its worst case before it is sent (estimated prompt plus its completion
bound, at list prices); when its result is known the reservation is replaced by what it
really cost (the server's usage.cost, else tokens x prices, re-asks and billed retries
included; the worst case again when the reply's usage is unknown). Money is counted in
whole pico-dollars, so reservations add up and cancel out exactly: a float remainder can
never keep the budget waiting for a request that is not in flight.

Near the end, when the budget left cannot cover every request the workers would send, fewer
go at once (each waits for a reservation to be settled); the run stops only when not even
one more fits with nothing in flight.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from batcher.prices import PriceTable, row_cost, usage_cost
from batcher.types import Request, Result

PICO = 10**12  # pico-dollars per dollar


def pico(usd: float) -> int:
    """Dollars as whole pico-dollars."""
    return round(usd * PICO)


@dataclass
class Budget:
    limit: int  # pico-dollars
    prices: PriceTable
    spent: int = 0  # known cost of finished results (earlier runs included)
    reserved: int = 0  # worst case of the requests in flight
    _settled: asyncio.Event | None = field(default=None, repr=False)

    @classmethod
    def of(cls, usd: float, prices: PriceTable, *, spent_usd: float = 0.0) -> Budget:
        return cls(pico(usd), prices, spent=pico(spent_usd))

    def worst_case(self, request: Request) -> int:
        cost = row_cost(
            self.prices.get(request.model),
            prompt_tokens=request.est_prompt_tokens,
            completion_tokens=request.completion_bound,
        )
        return pico(cost or 0.0)

    async def reserve(self, request: Request) -> int | None:
        """Reserve the request's worst case; while it does not fit but requests are in
        flight, wait for them (they usually cost less than their worst case). None when it
        cannot fit: the budget is spent."""
        amount = self.worst_case(request)
        while self.spent + self.reserved + amount > self.limit:
            if self.reserved == 0:
                return None
            if self._settled is None:
                self._settled = asyncio.Event()
            self._settled.clear()
            await self._settled.wait()
        self.reserved += amount
        return amount

    def settle(self, reserved: int, result: Result | None) -> None:
        """Swap a reservation for the real cost (nothing when the request was not sent)."""
        self.reserved -= reserved
        if result is not None:
            self.spent += self.cost_of(result, reserved)
        if self._settled is not None:
            self._settled.set()

    def cost_of(self, result: Result, worst: int) -> int:
        """What a result cost; `worst` (its reservation) when its usage is unknown."""
        if result.cached:
            return 0
        usage = result.usage
        if usage.cost_usd is not None:
            return pico(usage.cost_usd)
        if usage.prompt_tokens is None or usage.completion_tokens is None:
            return worst  # billed, but how much is unknown: count the worst case
        return pico(usage_cost(self.prices.get(result.model), usage) or 0.0)

    def message(self) -> str:
        return (
            f"the next request could pass the budget of ${self.limit / PICO:.4f} "
            f"(${self.spent / PICO:.4f} spent); rerun with a higher --max-cost to go on"
        )
