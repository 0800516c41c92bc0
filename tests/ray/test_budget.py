"""--max-cost over several actors: `LeasedBudget`s sharing one `BudgetPool`, in one event loop
(the coordinator's `trade` as an awaitable call, as Ray makes it), no Ray needed."""

from __future__ import annotations

import asyncio
import random

import pytest

from batcher.engine.budget import pico
from batcher.prices import Price, PriceTable
from batcher.ray import budget as ray_budget
from batcher.ray.budget import BudgetPool, LeasedBudget
from batcher.types import Request, Result, Status, Usage

PRICES = PriceTable({"m": Price(input_per_million=2.0, output_per_million=8.0)})


class Coordinator:
    """The coordinator's `trade`, reached the way an actor reaches it: `.trade.remote(...)`."""

    def __init__(self, pool: BudgetPool) -> None:
        self.pool = pool
        self.trade = self
        self.calls = 0

    async def remote(self, *args):
        self.calls += 1
        await asyncio.sleep(0.001)  # a hop to another process
        return self.pool.trade(*args)


def request(i: int) -> Request:
    return Request.chat("m", [{"role": "user", "content": f"q{i}"}], index=i, max_tokens=100)


async def actor(leased: LeasedBudget, queue: list[Request], costs: list[float], rng) -> str:
    """Eight workers sending from `queue`, each result costing at most its worst case; the
    stop message, if the budget stopped it."""
    stopped = ""

    async def worker() -> None:
        nonlocal stopped
        while queue and not stopped:
            req = queue.pop()
            amount = await leased.reserve(req)
            if amount is None:
                stopped = leased.message()
                return
            await asyncio.sleep(rng.uniform(0, 0.004))
            cost = leased.worst_case(req) / 1e12 * rng.uniform(0.2, 1.0)
            costs.append(cost)
            leased.settle(amount, Result.of(req, Status.OK, usage=Usage(1, 1, 2, cost)))

    await asyncio.gather(*(worker() for _ in range(8)))
    await leased.close()
    return stopped


@pytest.mark.parametrize("seed", range(5))
def test_three_actors_spend_within_one_request_of_the_budget_and_no_more(seed):
    rng = random.Random(seed)
    pool = BudgetPool(limit=pico(0.05), spent=pico(0.01))  # an earlier run spent $0.01
    coordinator = Coordinator(pool)
    queue = [request(i) for i in range(500)]
    worst = LeasedBudget(pool.limit, PRICES, coordinator).worst_case(queue[0])
    costs: list[float] = []

    async def job():
        budgets = [LeasedBudget(pool.limit, PRICES, coordinator) for _ in range(3)]
        return await asyncio.gather(*(actor(b, queue, costs, rng) for b in budgets))

    stops = asyncio.run(job())
    total = pico(0.01) + sum(pico(c) for c in costs)
    assert queue  # the budget stopped it, with requests left
    said = f"the next request could pass the budget of $0.0500 (${total / 1e12:.4f} spent);"
    assert {stop.split(" rerun")[0] for stop in stops if stop} == {said}
    assert pool.limit - worst < total <= pool.limit  # within one worst case of the budget
    assert pool.spent == total  # the pool counted every cent spent, once
    assert set(pool.held.values()) == {0}  # every actor gave back all it held
    assert coordinator.calls < len(costs)  # leases: fewer calls than requests


def test_what_a_dead_actor_held_counts_as_spent_and_the_job_does_not_wait_for_it(monkeypatch):
    monkeypatch.setattr(ray_budget, "WAIT", 0.01)
    monkeypatch.setattr(ray_budget, "WAIT_MOST", 0.02)
    now = [0.0]
    pool = BudgetPool(limit=pico(0.01), spent=0, clock=lambda: now[0])
    coordinator = Coordinator(pool)
    dead, alive = (LeasedBudget(pool.limit, PRICES, coordinator) for _ in range(2))
    worst = alive.worst_case(request(1))

    async def job():
        assert await dead.reserve(request(0)) == worst  # ...and never settled: it died
        sent = 0
        while True:
            reserving = asyncio.ensure_future(alive.reserve(request(1)))
            await asyncio.sleep(0.05)
            if not reserving.done():
                break  # waiting for what `dead` holds
            alive.settle(reserving.result(), Result.of(request(1), Status.OK, usage=Usage(
                1, 1, 2, worst / 1e12)))  # fmt: skip
            sent += 1
        now[0] += ray_budget.LOST + 1
        assert await asyncio.wait_for(reserving, 1) is None  # the budget is spent: stop
        return sent

    sent = asyncio.run(job())
    # `dead` leased 8 worst cases; `alive` sent what was left: 4 (the rest is less than one)
    assert (sent, pool.limit - 12 * worst < worst) == (4, True)
    assert pool.spent == 12 * worst and pool.held == {alive._actor: 0}
