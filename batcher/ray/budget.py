"""--max-cost across a cluster: one budget for every actor, leased a few requests at a time.

The job's money is a `BudgetPool` in the coordinator; each actor's run reserves against a
`LeasedBudget`, the engine's `Budget` with money leased from the pool:

    actor ─ trade(spent since, holding, need, want) ─► BudgetPool ─► granted, spent, others

An actor reserves a request's worst case from what it holds. When that is short it gives
back all it holds beyond its reservations and asks for a lease of about `LEASE` worst cases
(at least the one it needs); an actor with nothing in flight gives back what it holds, so no
money waits with an idle actor. As on one machine, no request is sent whose worst case could
pass the budget, and the job stops only when not even one more fits with nothing reserved
by any actor: the budget left is then less than one request's worst case.

An actor holding money reports at least every `HEARTBEAT` seconds. One silent for `LOST`
seconds is taken for dead (Ray replaces it): what it held counts as spent, since its
requests in flight may have been billed, and the job goes on without waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batcher.engine.budget import Budget
from batcher.types import Request, Result

LEASE = 8  # worst cases an actor leases at a time
WAIT, WAIT_MOST = 0.1, 1.0  # seconds between an actor's asks while others hold the money
HEARTBEAT = 5.0  # seconds: an actor holding money reports at least this often
LOST = 60.0  # seconds: an actor holding money and silent this long is gone


@dataclass
class BudgetPool:
    """The job's budget in pico-dollars: what the actors reported spent, what each holds."""

    limit: int
    spent: int  # earlier runs included
    held: dict[str, int] = field(default_factory=dict)  # actor: reserved + leased, unspent
    heard: dict[str, float] = field(default_factory=dict)  # actor: its last trade
    clock: Callable[[], float] = time.monotonic

    def trade(
        self, actor: str, spent: int, holding: int, need: int, want: int
    ) -> tuple[int, int, int]:
        """`actor` spent `spent` since its last trade and holds `holding` now; it gets a lease
        of up to `want` when at least `need` is free (else nothing). Returns the lease, the
        job's spending so far, and what the other actors hold."""
        now = self.clock()
        for lost in [a for a, at in self.heard.items() if now - at > LOST and a != actor]:
            self.spent += self.held.pop(lost)  # it may all have been billed
            del self.heard[lost]
        self.spent += spent
        self.held[actor], self.heard[actor] = holding, now
        free = self.limit - self.spent - sum(self.held.values())
        granted = min(max(want, need), free) if need and free >= need else 0
        self.held[actor] += granted
        return granted, self.spent, sum(v for a, v in self.held.items() if a != actor)


class LeasedBudget(Budget):
    """An actor's share of the job's `BudgetPool` (`trade` is the coordinator's, remote)."""

    def __init__(self, limit: int, prices: Any, coordinator: Any) -> None:
        super().__init__(limit, prices)
        self._coordinator = coordinator
        self._actor = uuid.uuid4().hex
        self._leased = 0  # held, not reserved
        self._unreported = 0  # spent since the last trade
        self._trading = asyncio.Lock()
        self._changed = asyncio.Event()  # a reservation was settled
        self._giving: asyncio.Future[Any] | None = None
        self._heartbeat: asyncio.Future[None] | None = None

    async def reserve(self, request: Request) -> int | None:
        amount = self.worst_case(request)
        if self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(self._beat())
        if self._leased < amount:
            async with self._trading:  # one worker of the actor asks the pool at a time
                wait = WAIT
                while self._leased < amount:
                    granted, others, alone = await self._trade(need=amount, want=LEASE * amount)
                    if granted:
                        continue
                    if alone and others == 0:
                        return None  # nothing in flight anywhere and not one more fits
                    self._changed.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait)
                    wait = min(WAIT_MOST, 2 * wait)  # others hold it: ask less often
        self._leased -= amount
        self.reserved += amount
        return amount

    def settle(self, reserved: int, result: Result | None) -> None:
        self.reserved -= reserved
        cost = self.cost_of(result, reserved) if result is not None else 0
        self._unreported += cost
        # what it cost beyond its worst case is counted by the pool, in `spent`
        self._leased = max(0, self._leased + reserved - cost)
        self._changed.set()
        idle = self.reserved == 0 and (self._leased or self._unreported)
        if idle and (self._giving is None or self._giving.done()):  # give it all back
            self._giving = asyncio.ensure_future(self._quietly())

    async def give_back(self) -> None:
        """Report what was spent and give back what is held beyond the reservations."""
        async with self._trading:
            await self._trade(need=0, want=0)

    async def close(self) -> None:
        """The last report: what was spent, and everything held given back (after a trade
        on its way: a trade cut short could be counted twice)."""
        async with self._trading:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
            await self._trade(need=0, want=0)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            if self.reserved or self._leased or self._unreported:
                await self._quietly()

    async def _quietly(self) -> None:
        with contextlib.suppress(Exception):  # the coordinator is away: the next trade tells
            await self.give_back()

    async def _trade(self, need: int, want: int) -> tuple[int, int, bool]:
        """Give back, report, ask: the lease, what others hold, and whether this actor held
        nothing and had nothing left to report when the pool answered."""
        spent, self._unreported = self._unreported, 0
        self._leased = 0  # given back
        holding = self.reserved
        try:
            granted, self.spent, others = await self._coordinator.trade.remote(
                self._actor, spent, holding, need, want
            )
        except BaseException:  # the pool may have heard it or not: count it spent, held not
            self._unreported += spent
            raise
        self._leased += granted
        alone = holding == 0 and self.reserved == 0 and self._unreported == 0
        return granted, others, alone
