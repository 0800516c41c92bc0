"""The job's requests sent on Ray Data: the driver's side of `--engine ray`.

    request spool (job folder, the driver's node)
      ──► SpoolSource: one read task per block of requests still to send
      ──► map_batches(Sender, N actors): batcher's Engine in each, one Coordinator for all
      ──► the driver: results, block by block, to the job's part writer (as a local run)

`RayRun` is what `Job` iterates instead of a local `EngineRun`: the same batches of
results, `stop()`, `note()`, `learned()` and `sent`, so resume, assembly, the summary and
the exit codes are the local engine's. The driver stays the one writer of the job folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import pickle
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import Datasource
from ray.data.block import BlockMetadata
from ray.data.datasource import ReadTask
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from batcher.engine.budget import Budget
from batcher.engine.cache import ResponseCache
from batcher.engine.engine import EngineSettings
from batcher.engine.reask import known_result
from batcher.errors import BatcherError, UsageError
from batcher.io import spool
from batcher.providers import Endpoint
from batcher.ray.coordinator import Coordinator
from batcher.ray.sender import Sender, SenderConfig
from batcher.structured.validate import Validators
from batcher.types import Result

log = logging.getLogger(__name__)

LOCAL = "local"
ACTORS = 2  # sender actors unless --actors says
# Blocks an actor works on at once: with blocks of -c / 2 requests, 4 x -c requests wait
# in its run, so -c stay in flight while blocks come and go.
CALLS_PER_ACTOR = 8
ACTOR_CPUS = 0.25  # a sender waits on the network: four fit in a CPU
MAX_READ_TASKS = 20_000  # a huge spool gets bigger blocks rather than more tasks
MIN_BLOCK = 32  # requests: fewer make each a Ray task of its own for little work
CONNECT_SECONDS = 10.0  # for a cluster's address to answer at all
STATUS_INTERVAL = 0.2  # seconds between the driver's looks at the coordinator
NOT_CACHED = "requests-not-cached.arrow"  # beside the spool: what the cache does not answer


class RayJobError(BatcherError):
    """Ray could not run the job (an actor kept dying, the cluster went away)."""

    exit_code = 1


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray, started or joined for the block, unless it is already (a notebook's own)."""
    if ray.is_initialized():
        yield
        return
    connect(address)
    try:
        yield
    finally:
        ray.shutdown()


def connect(address: str | None) -> None:
    """Start or join Ray: `"local"` starts one on this machine bound to 127.0.0.1 (and so
    does None, unless $RAY_ADDRESS names a cluster); an address joins that cluster."""
    address = address or os.environ.get("RAY_ADDRESS") or LOCAL
    for name in ("ray", "ray.data"):  # Ray's own notes on stderr: errors only
        logging.getLogger(name).setLevel(logging.ERROR)
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address == LOCAL:
        options.update(_node_ip_address="127.0.0.1", include_dashboard=False)
    # Ray's C++ side writes notes to stderr: errors only (the core workers' note that they
    # set the level is said while ray.init starts, with stderr pointed elsewhere).
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    on_loopback = address == LOCAL or address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
    _reachable(address)
    try:
        with _stderr_to(os.devnull), _loopback(on_loopback):
            ray.init(address=address, **options)
    except Exception as exc:  # no cluster there, a version mismatch, ...: said in a line
        raise UsageError(
            f"--ray-address {address}: cannot start or join Ray: {_first_line(exc)}"
        ) from None

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job's own bar says it
    context.print_on_execution_start = False


def _reachable(address: str) -> None:
    """A cluster's address (HOST:PORT, ray://HOST:PORT, or the one `auto` finds) that
    nothing answers on is said in a line at once: Ray itself retries for minutes, silent."""
    given = address
    if address == "auto":  # as ray.init finds it: $RAY_ADDRESS, the last `ray start`, ...
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or ""
        except ImportError:  # another Ray: ray.init finds it
            return
        except ConnectionError as exc:
            raise UsageError(f"--ray-address auto: {_first_line(exc)}") from None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "local": started here
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UsageError(f"--ray-address {given}: no Ray at {address} ({why})") from None


@contextlib.contextmanager
def _loopback(local: bool) -> Iterator[None]:
    """A local Ray that binds 127.0.0.1 only. Ray 2.60 turns `_node_ip_address="127.0.0.1"`
    into the machine's own address and listens on every interface, unless it takes the
    machine for one that runs no cluster (its setting for Windows and macOS laptops); so it
    is told that while it starts (its processes read the variable, this one the constant)."""
    if not local:
        yield
        return
    from ray._private import ray_constants

    name = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved = os.environ.get(name)
    flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = flag
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@contextlib.contextmanager
def _stderr_to(path: str) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY)
    os.dup2(target, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def coordinator(
    settings: EngineSettings, learned: Mapping | None = None, budget: Budget | None = None
) -> Any:
    """The job's Coordinator actor: on the driver's node, no CPU of its own, one call at a
    time (no locks), restarted should it die (its schedules start again)."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # A sender's periodic report is not worth a retry (the next one says it all), and a
    # retried one to the coordinator killed at the job's end was a Ray note on the driver.
    ray.method(max_task_retries=0)(Coordinator.sync)
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Coordinator)
    return actor.options(scheduling_strategy=here).remote(
        settings.rpm,
        settings.tpm,
        {m: (x.rpm, x.tpm) for m, x in settings.model_limits.items()},
        settings.stop_after_fatal,
        learned,
        settings.retry.max_wait,
        (budget.limit, budget.spent) if budget is not None else None,
    )


def actor_settings(settings: EngineSettings) -> EngineSettings:
    """An actor's own settings: the job's limits are the coordinator's to hold."""
    return dataclasses.replace(settings, rpm=None, tpm=None, model_limits={})


def map_senders(ds: Any, config: SenderConfig, actors: int, batch_size: int) -> Any:
    """`ds` through `actors` Sender actors, `batch_size` rows a call."""
    # The config goes with the class (Ray keeps constructor arguments in the object store,
    # from where an actor restarted after its node died cannot always take them back).
    sender = type("Sender", (Sender,), {"config": config})
    return ds.map_batches(
        sender,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            size=actors,
            max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
            max_tasks_in_flight_per_actor=2 * CALLS_PER_ACTOR,
        ),
        num_cpus=ACTOR_CPUS,
        zero_copy_batch=True,
    )


class RayEngine:
    """Sends a job's spooled requests through `actors` Sender actors on Ray."""

    def __init__(
        self,
        endpoint: Endpoint,
        settings: EngineSettings,
        *,
        actors: int,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.actors = actors

    def start(
        self,
        spool_path: Path,
        *,
        learned: Mapping[str, Mapping[str, tuple[float, str]]] | None = None,
        known: ResponseCache | None = None,
        budget: Budget | None = None,
    ) -> RayRun:
        """A run over the spool's requests still to send: those `known` (the cache) answers
        on the driver, the others on Ray, within `budget` (--max-cost) over every actor."""
        shared = coordinator(self.settings, learned, budget)
        settings = actor_settings(self.settings)
        config = SenderConfig(self.endpoint, settings, shared, budget=budget)

        def senders(path: Path) -> Any:
            source = SpoolSource(path, self.settings.concurrency)
            if not source.slices:
                return None
            ds = ray.data.read_datasource(
                source, num_cpus=ACTOR_CPUS, override_num_blocks=len(source.slices)
            )
            return map_senders(ds, config, self.actors, source.block)

        return RayRun(spool_path, senders, shared, known)


class SpoolSource(Datasource):
    """The spool's requests still to send as a Ray Datasource: one read task per block of
    `concurrency / 2` requests (32 at least, more for a huge spool), read on the driver's node
    (the job folder is there), so every actor gets work and results come back often."""

    def __init__(self, path: Path, concurrency: int) -> None:
        self.path = path
        self.slices: list[tuple[int, int, int]] = []  # spool batch, offset, length
        counts = []
        for i, batch in enumerate(spool.batches(path)):
            counts.append((i, pc.sum(batch.column("todo").cast(pa.int64())).as_py() or 0))
        total = sum(n for _, n in counts)
        self.block = max(MIN_BLOCK, concurrency // 2, math.ceil(total / MAX_READ_TASKS))
        for i, n in counts:
            self.slices += [(i, offset, self.block) for offset in range(0, n, self.block)]

    @property
    def supports_distributed_reads(self) -> bool:
        return False  # Ray reads it on the driver's node

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_name(self) -> str:
        return "BatcherSpool"

    def get_read_tasks(self, parallelism: int, **_: Any) -> list[ReadTask]:
        path = self.path
        meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(lambda s=s: [read_slice(path, *s)], meta) for s in self.slices]


def read_slice(path: Path, batch: int, offset: int, length: int) -> pa.Table:
    """Requests [offset, offset + length) among those still to send of spool batch `batch`."""
    with pa.OSFile(str(path), "rb") as source:
        record = pa.ipc.open_file(source).get_batch(batch)
    record = record.filter(record.column("todo"))
    return pa.Table.from_batches([record.slice(offset, length)])


class RayRun:
    """One job's requests on Ray, as `Job` iterates a local run: batches of results."""

    def __init__(
        self,
        spool_path: Path,
        senders: Callable[[Path], Any],
        shared: Any,
        known: ResponseCache | None = None,
    ) -> None:
        self.stop_reason: str | None = None
        self.sent = 0  # HTTP attempts of the results received
        self._spool = spool_path
        self._senders = senders  # a spool's requests to send, as a Dataset of results
        self._shared = shared
        self._known = known
        self._note: str | None = None
        self._learned: dict = {}
        self._batches: AsyncIterator[list[Result]] | None = None
        self._closed = False

    def note(self) -> str | None:
        return self._note

    def learned(self) -> dict[str, dict[str, tuple[float, str]]]:
        return self._learned

    def stop(self, reason: str) -> None:
        """Every actor sends nothing new; what is in flight finishes."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("stopping: %s", reason)
            self._shared.stop.remote(reason)

    def __aiter__(self) -> AsyncIterator[list[Result]]:
        if self._batches is None:
            self._batches = self._run()
        return self._batches

    async def aclose(self) -> None:
        if self._batches is not None:
            await self._batches.aclose()  # type: ignore[attr-defined]

    async def _run(self) -> AsyncIterator[list[Result]]:
        path = self._spool if self._known is None else self._spool.with_name(NOT_CACHED)
        try:
            if self._known is not None:
                for results in self._answered(path):
                    if results:
                        yield results
                    await asyncio.sleep(0)  # the progress bar, a Ctrl-C
                    if self.stop_reason is not None:
                        return
            ds = self._senders(path)
            if ds is not None:
                async for results in self._send(ds):
                    yield results
        finally:
            if path != self._spool:
                path.unlink(missing_ok=True)
            with contextlib.suppress(Exception):  # Ray itself failed: nothing to say
                await self._look()
                ray.kill(self._shared)

    def _answered(self, path: Path) -> Iterator[list[Result]]:
        """The results the cache has, batch by batch; the requests it has none for go to a
        spool of their own at `path`, for Ray (a cached reply is checked like a fresh one)."""
        assert self._known is not None
        validators = Validators()
        with spool.writer(path) as sink:
            for batch in spool.todo_batches(self._spool):
                results, send = [], []
                for request in spool.requests_in(batch):
                    found = known_result(self._known, validators, request)
                    send.append(found is None)
                    if found is not None:
                        results.append(found)
                if any(send):
                    sink.write_batch(batch.filter(pa.array(send)))
                yield results

    async def _send(self, ds: Any) -> AsyncIterator[list[Result]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        end = object()

        def pump() -> None:  # Ray's iterator blocks: it runs in a thread of its own
            try:
                for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    if self._closed:
                        break
                    for blob in block.column("results").to_pylist():
                        loop.call_soon_threadsafe(queue.put_nowait, pickle.loads(blob))
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, end)

        thread = threading.Thread(target=pump, name="batcher-ray", daemon=True)
        thread.start()
        watcher = asyncio.ensure_future(self._watch())
        try:
            while (item := await queue.get()) is not end:
                if isinstance(item, BaseException):
                    self.stop("Ray failed")
                    raise RayJobError(f"Ray could not run the job: {_first_line(item)}")
                if item:
                    self.sent += sum(r.attempts for r in item)  # type: ignore[attr-defined]
                    yield item  # type: ignore[misc]
        finally:
            self._closed = True
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            await self._look()

    async def _look(self) -> None:
        """The coordinator's counts, note, stop reason and learned limits."""
        status = await asyncio.wrap_future(self._shared.status.remote().future())
        self._note, reason, self._learned = status
        if reason is not None and self.stop_reason is None:
            self.stop_reason = reason


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
