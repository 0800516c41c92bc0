"""The Ray Data UDF that sends: batcher's own Engine, one run per actor, fed by every block.

Ray Data hands an actor several blocks at once (`Sender` is an async callable class). Their
requests all go into the one Engine run the actor keeps for the whole job (one session,
one set of limits, `concurrency` requests in flight), so no block waits for another's slow
request. A call returns once every request of its block has its result, or, once the run
has stopped (a bad key, the job stopped), none for those it did not send.

Two kinds of block, by the config's `rows`:

- None: blocks of requests the driver built (the job's request spool, `batcher.ray.run`);
  a call returns its results, pickled, for the driver's part writer;
- `RowRules`: blocks of any Dataset's rows (`batcher.ray.process`); a call builds each
  row's requests as a job would and returns one output row per request: the result columns
  of OUT, then the row's own columns.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pickle
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from batcher.engine.budget import Budget
from batcher.engine.engine import Engine, EngineRun, EngineSettings
from batcher.io import spool
from batcher.io.columns import Layout, to_arrow
from batcher.io.inputs import RowBatch
from batcher.io.rows import RequestBuilder, RequestSpec
from batcher.providers import Endpoint
from batcher.ray.budget import LeasedBudget
from batcher.ray.coordinator import ClusterLimits
from batcher.types import ErrorType, Request, Result, Status

Key = tuple[int, str, int, int]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowRules:
    """How `process` turns a Dataset's rows into requests and prices the results."""

    requests: RequestSpec
    prices: Any  # a PriceTable


@dataclass(frozen=True)
class SenderConfig:
    endpoint: Endpoint  # its key travels inside Ray only, with the actor's class
    settings: EngineSettings
    coordinator: Any  # the job's Coordinator actor (it holds the limits learned)
    rows: RowRules | None = None
    budget: Budget | None = None  # --max-cost: its limit and prices (the coordinator leases it)


class Sender:
    """The UDF: a subclass whose `config` is set, as `map_senders` makes (see the module)."""

    config: SenderConfig

    def __init__(self) -> None:
        self._run: EngineRun | None = None
        self._queue: asyncio.Queue[Request] | None = None
        self._waiting: dict[Key, asyncio.Future[Result | None]] = {}
        self._rows = 0  # rows of `process` blocks so far: their numbers are this actor's own
        self._ended: str | None = None  # the run ended: why
        self._failure: BaseException | None = None  # the run failed (a bug): this
        self._shared: ClusterLimits | None = None
        self._budget: LeasedBudget | None = None
        self._consumer: asyncio.Future[None] | None = None

    async def __call__(self, block: pa.Table) -> dict[str, Any] | pa.Table:
        rows = self.config.rows
        if rows is None:
            requests = list(spool.requests_in(block))
            results = await self._send(requests)
            return {"results": [pickle.dumps([r for r in results if r is not None])]}
        start, self._rows = self._rows, self._rows + block.num_rows
        requests = self._build(block, start, rows.requests)
        results = await self._send([r for r in requests if r.bad_input is None])
        sent = iter(results)
        done = [self._bad(r) if r.bad_input is not None else next(sent) for r in requests]
        done = [r if r is not None else self._not_sent(q) for r, q in zip(done, requests)]
        return self._output(block, start, done, rows)

    async def _send(self, requests: list[Request]) -> list[Result | None]:
        """Every request through this actor's run; None for those it did not send."""
        if self._queue is None:
            self._start()
        assert self._queue is not None
        if self._failure is not None:
            raise self._failure
        if self._ended is not None:
            return [None] * len(requests)
        loop = asyncio.get_running_loop()
        futures = []
        for request in requests:
            future = self._waiting[request.key] = loop.create_future()
            futures.append(future)
            self._queue.put_nowait(request)
        results = list(await asyncio.gather(*futures))
        if self._failure is not None:  # a bug in the actor's run: the Dataset fails with it
            raise self._failure  # (and the driver says so; what it saved stays for a rerun)
        return results

    def _start(self) -> None:
        config = self.config
        self._queue = queue = asyncio.Queue()
        shared = ClusterLimits(config.coordinator, want=config.settings.concurrency)

        async def requests() -> AsyncIterator[Request]:
            """The blocks' requests, until the run stops (then the run ends: its workers
            waiting here are done, and every request still waiting was not sent)."""
            stopped = asyncio.ensure_future(shared.stopped.wait())
            try:
                while True:
                    get = asyncio.ensure_future(queue.get())
                    await asyncio.wait([get, stopped], return_when=asyncio.FIRST_COMPLETED)
                    if not get.done():
                        get.cancel()
                        return
                    yield get.result()
            finally:
                stopped.cancel()

        budget = config.budget
        if budget is not None:
            self._budget = LeasedBudget(budget.limit, budget.prices, config.coordinator)
        engine = Engine(config.endpoint, config.settings)
        self._run = engine.start(requests(), shared=shared, budget=self._budget)
        self._shared = shared
        self._consumer = asyncio.ensure_future(self._consume())

    async def _consume(self) -> None:
        """Hand each result to the call waiting for it; once the run ends (it stopped),
        every request still waiting was not sent."""
        run = self._run
        assert run is not None
        try:
            async for batch in run:
                for result in batch:
                    key = (result.row_index, result.model, result.variant, result.sample)
                    future = self._waiting.pop(key, None)
                    if future is not None and not future.done():
                        future.set_result(result)
        except Exception as exc:
            self._failure = exc
        finally:
            self._ended = run.stop_reason or "the actor's run ended"
            for future in self._waiting.values():
                if not future.done():
                    future.set_result(None)
            self._waiting.clear()
            assert self._shared is not None
            try:
                if run.stop_reason is not None:  # this actor saw why: every actor stops
                    await self.config.coordinator.stop.remote(run.stop_reason)
                await self._shared.close()
                if self._budget is not None:
                    await self._budget.close()
            except Exception as exc:  # the job goes on; the coordinator hears it later
                log.warning("cannot reach the job's coordinator: %s", exc)

    # --- process(): rows in, output rows out ----------------------------------------------

    @staticmethod
    def _build(block: pa.Table, start: int, spec: RequestSpec) -> list[Request]:
        rows = block.to_pylist()
        ids = spec.id_column or next(
            (c for c in ("id", "custom_id") if c in block.schema.names), None
        )
        if ids is None:  # no id column: the row's content names it, the same on every run
            for row in rows:
                text = orjson.dumps(row, option=orjson.OPT_SORT_KEYS, default=str)
                row["id"] = "row-" + hashlib.sha256(text).hexdigest()[:16]
        batch = RowBatch(start, rows, list(range(1, len(rows) + 1)), "parquet", {}, None)
        builder = RequestBuilder(spec, "dataset")
        # A bad row is an error row of its own: one row never fails a whole Dataset.
        return [request for i in range(len(rows)) for request in builder.requests(batch, i)]

    @staticmethod
    def _bad(request: Request) -> Result:
        return Result.of(
            request,
            Status.ERROR,
            error_type=ErrorType.BAD_INPUT.value,
            error_message=request.bad_input,
        )

    def _not_sent(self, request: Request) -> Result:
        why = f" ({self._ended})" if self._ended else ""
        return Result.of(
            request,
            Status.ERROR,
            error_type=ErrorType.NOT_SENT.value,
            error_message=f"not sent: the job stopped early{why}",
        )

    @staticmethod
    def _output(block: pa.Table, start: int, results: list[Result], rows: RowRules) -> pa.Table:
        """The result columns of OUT, priced, then each result's row's own columns."""
        from batcher.analysis.cost import with_costs

        table = with_costs(to_arrow(results), rows.prices)
        taken = block.take(pa.array([r.row_index - start for r in results], pa.int64()))
        layout = Layout(input_schema=block.schema)
        for name, column in zip(block.schema.names, taken.columns):
            table = table.append_column(layout.input_name(name), column)
        return table
