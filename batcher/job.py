"""A whole job: check the input, send every request, keep results durable, write OUT.

    input file ──► scan (cheap pass: every row checked, nothing sent)
               ──► requests ──► Engine ──► PartWriter (job dir, durable parts)
               ──► Assembler (input again, in order) ──► OUT.parquet (atomic)

This module wires the stages together; each stage lives in its own module.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batcher import __version__
from batcher.analysis.cost import PriceTable, with_costs
from batcher.analysis.summary import JobSummary, Tally
from batcher.engine.budget import Budget
from batcher.engine.cache import ResponseCache
from batcher.engine.engine import Engine, EngineSettings, ModelLimits
from batcher.engine.retry import RetryPolicy
from batcher.errors import UsageError
from batcher.io.assemble import (
    OUTPUT_NAMES,
    Assembler,
    KeySpace,
    Layout,
    PartWriter,
    RequestGroup,
    part_files,
    write_output,
)
from batcher.io.inputs import read_batches, to_arrow
from batcher.io.resume import DoneIndex, import_output, load_index
from batcher.io.rows import (
    InputScan,
    RequestSpec,
    batch_requests,
    iter_requests,
    load_messages_template,
    scan,
    sweep_grid,
)
from batcher.providers import Endpoint, read_key, resolve_provider
from batcher.spec import KEEP_ALL, KEEP_NONE, JobSpec
from batcher.structured.validate import arrow_fields, load_schema, response_format
from batcher.types import Request, Result

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.2  # seconds between progress callbacks
MOCK_IDENTITY = "batcher-mock://local/v1"


@dataclass(frozen=True, slots=True)
class Progress:
    """Handed to the progress callback a few times a second."""

    done: int
    total: int
    ok: int
    errors: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class DryRun:
    requests: int
    rows: int
    bodies: list[dict]
    url: str
    headers: dict[str, str]


ProgressCallback = Callable[[Progress], None]


def engine_settings(spec: JobSpec) -> EngineSettings:
    return EngineSettings(
        concurrency=spec.concurrency,
        timeout=spec.timeout,
        retry=RetryPolicy(max_retries=spec.max_retries),
        rpm=spec.rpm,
        tpm=spec.tpm,
        model_limits={
            model: ModelLimits(limits.get("rpm"), limits.get("tpm"))
            for model, limits in spec.model_limits.items()
        },
        reask=spec.reask,
    )


def job_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".batcher")


class Job:
    """One run of a `JobSpec`. `await job.run()` does it all; `job.interrupt()` stops it."""

    def __init__(
        self, spec: JobSpec, *, progress: ProgressCallback | None = None, need_key: bool = True
    ) -> None:
        self.spec = spec
        self.progress = progress
        self.provider = resolve_provider(
            spec.provider, spec.base_url, spec.auth_header, spec.api_key_env
        )
        self._key = None
        if need_key or spec.api_key_file or os.environ.get(self.provider.key_env or "", ""):
            self._key = read_key(self.provider, spec.api_key_file)
        self.schema = load_schema(spec.schema) if spec.schema is not None else None
        self.prices = PriceTable.load(spec.prices)
        # Request hashes name the endpoint; the in-process mock's port changes every run,
        # so it is known by a fixed name instead (resume and the cache keep working).
        self.identity_url = self.provider.base_url or MOCK_IDENTITY
        self.conversation = (
            load_messages_template(spec.messages_template) if spec.messages_template else None
        )
        self.engine: Engine | None = None
        self.cache: ResponseCache | None = None
        self.already_done = 0  # requests finished by earlier runs
        self._part_ranges: dict[str, tuple[int, int]] = {}  # parts written by this run
        self.interrupted = False

    def interrupt(self, reason: str = "interrupted") -> None:
        """Send nothing new; what is in flight finishes; the job directory stays for a rerun."""
        self.interrupted = True
        if self.engine is not None:
            self.engine.stop(reason)

    def endpoint(self, base_url: str) -> Endpoint:
        return Endpoint(base_url, self.provider.auth_header, self._key)

    def request_spec(self) -> RequestSpec:
        spec = self.spec
        params = spec.body_params()
        if self.schema is not None:
            params.setdefault("response_format", response_format(self.schema, spec.schema.stem))
        default = self.provider.default_model
        return RequestSpec(
            models=spec.models or ((default,) if default else ()),
            params=params,
            system=spec.system,
            template=spec.template,
            messages_template=self.conversation,
            prompt_column=spec.prompt_column,
            messages_column=spec.messages_column,
            id_column=spec.id_column,
            sweep=spec.sweep,
            samples=spec.samples,
            base_url=self.identity_url,
            on_bad_row=spec.on_bad_row,
        )

    @property
    def structured(self) -> bool:
        return self.schema is not None or self.spec.json

    def scan(self) -> InputScan:
        return scan(self.request_spec(), self.spec.input, limit=self.spec.limit)

    async def dry_run(self, count: int = 3) -> DryRun:
        base_url = self.provider.base_url or "http://127.0.0.1:PORT/v1"
        found = self.scan()
        bodies = []
        for request in self.requests():
            if len(bodies) == count:
                break
            if request.bad_input is None:
                bodies.append(request.body)
        endpoint = self.endpoint(base_url)
        return DryRun(found.requests, found.rows, bodies, endpoint.url, endpoint.redacted_headers())

    async def run(self) -> JobSummary:
        started = time.time()
        spec = self.spec
        if spec.output is None:
            raise UsageError("missing -o/--output")
        output = Path(spec.output)
        check_writable(output)
        async with contextlib.AsyncExitStack() as stack:
            base_url = self.provider.base_url
            if base_url is None:  # the built-in mock, on a free loopback port
                from batcher.mock.server import MockServer

                server = await stack.enter_async_context(MockServer(keep_log=False))
                base_url = server.url
            found = await asyncio.to_thread(self.scan)
            kept_columns(spec.keep_columns, found)  # a wrong name fails before sending
            job_dir = job_dir_for(output)
            stack.enter_context(job_lock(output))
            done, self.already_done = await asyncio.to_thread(self._resume_index, output, job_dir)
            prepare_job_dir(job_dir, spec, found)
            cache = None
            if spec.cache is not None:
                cache = ResponseCache(spec.cache)
                stack.callback(cache.close)
            self.cache = cache
            budget = self._budget(job_dir, found) if spec.max_cost is not None else None
            self.engine = Engine(
                self.endpoint(base_url), engine_settings(spec), known=cache, budget=budget
            )
            if self.interrupted:
                self.engine.stop("interrupted")
            tally = await self._send(job_dir, found, done)
            stop_reason = self.engine.stop_reason
            if self.interrupted:
                return self._summary(None, found, tally, started, stop_reason, job_dir)
            reason = (
                f"not sent: the job stopped early ({stop_reason})" if stop_reason else "not sent"
            )
            final = await asyncio.to_thread(
                self._assemble, job_dir, output, base_url, found, reason, started
            )
            keep = spec.keep_job_dir or stop_reason is not None
            if not keep:
                shutil.rmtree(job_dir, ignore_errors=True)
            return self._summary(
                output, found, final, started, stop_reason, job_dir if keep else None
            )

    def _resume_index(self, output: Path, job_dir: Path) -> tuple[DoneIndex, int]:
        """Earlier results of this OUT (its job directory, else OUT itself), checked against
        the requests this run would make, and how many of those are done already. A
        mismatch stops the job (exit 2) unless --fresh."""
        remove_stale_temporaries(output)
        if self.spec.fresh:
            shutil.rmtree(job_dir, ignore_errors=True)
            return DoneIndex.empty(), 0
        imported = False
        if not job_dir.exists() and output.exists():
            staging = job_dir.with_name(f".{job_dir.name}.importing")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            try:
                imported = import_output(output, staging) > 0
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            staging.rename(job_dir)  # all of OUT, or nothing: a kill here loses no result
        if not job_dir.exists():
            return DoneIndex.empty(), 0
        index = load_index(job_dir)
        if not len(index):
            return index, 0
        requests = self.requests()
        done, changed = index.compare(requests, retry_errors=self.spec.retry_errors)
        if changed is not None:
            if imported:
                shutil.rmtree(job_dir, ignore_errors=True)
            source = output if imported else job_dir
            raise UsageError(
                f"{source}: earlier results were made from a different input or settings "
                f"(first: row {changed.row_index}, id {changed.row_id!r}, model "
                f"{changed.model!r}); run with --fresh to start over, or restore the earlier "
                "input and options"
            )
        return index, done

    def _budget(self, job_dir: Path, found: InputScan) -> Budget:
        """The --max-cost budget, less what earlier runs of this OUT already spent."""
        assert self.spec.max_cost is not None
        unpriced = [m for m in found.per_model if self.prices.get(m) is None]
        if unpriced:
            raise UsageError(
                f"--max-cost needs a price for every model; none for: {', '.join(unpriced)} "
                "(add them with --prices FILE)"
            )
        budget = Budget(self.spec.max_cost, self.prices)
        for part in part_files(job_dir):
            table = with_costs(pq.ParquetFile(part).read(), self.prices)
            budget.spent += pc.sum(table.column("cost_usd")).as_py() or 0.0
        return budget

    async def _send(self, job_dir: Path, found: InputScan, done_index: DoneIndex) -> Tally:
        """Run the engine over every request not yet done, flushing durable parts."""
        assert self.engine is not None
        writer = PartWriter(job_dir, first_part=next_part_number(job_dir))
        self._part_ranges = writer.row_ranges  # for the assembler: no footers to read
        done = ok = prompt = completion = 0
        last_flush = last_progress = time.monotonic()
        flush_rows, flush_seconds = self.spec.flush_rows, self.spec.flush_seconds
        total = found.requests - self.already_done  # what this run has to do
        retry_errors = self.spec.retry_errors
        todo = (
            (r for r in self.requests() if not done_index.is_done(r, retry_errors=retry_errors))
            if len(done_index)
            else self.requests()  # a fresh job: nothing to look up
        )
        batches = self.engine.run_batches(todo)
        fresh: list[Result] = []  # sent this run, for the response cache
        # Parts are written by one thread, in order; a batch handed to it is written even if
        # the job is cancelled meanwhile (a second Ctrl-C): nothing taken is lost.
        parts = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batcher-parts")
        writes: deque[asyncio.Future] = deque()
        loop = asyncio.get_running_loop()

        async def flush() -> None:
            """Hand the buffered results to the part thread; wait only when two writes are
            already queued (results keep flowing while a part is written)."""
            nonlocal last_flush
            last_flush = time.monotonic()
            if self.cache is not None:
                self.cache.put(fresh)
                fresh.clear()
            taken = writer.take()
            if taken is None:
                return
            while writes and writes[0].done():
                writes.popleft().result()  # a failed write stops the job here
            writes.append(loop.run_in_executor(parts, writer.write, *taken))
            if len(writes) > 2:
                await asyncio.shield(asyncio.wait([writes[0]]))

        async def tick() -> None:
            """Flush on time even while no result arrives (a slow or hung request)."""
            while True:
                await asyncio.sleep(max(0.0, last_flush + flush_seconds - time.monotonic()))
                if time.monotonic() - last_flush >= flush_seconds:
                    await flush()

        ticker = asyncio.ensure_future(tick())
        try:
            async for batch in batches:
                writer.extend(batch)
                if self.cache is not None:
                    fresh.extend(batch)
                done += len(batch)
                for result in batch:
                    ok += result.ok
                    usage = result.usage
                    prompt += usage.prompt_tokens
                    completion += usage.completion_tokens
                if writer.pending >= flush_rows:
                    await flush()
                now = time.monotonic()
                if self.progress is not None and now - last_progress >= PROGRESS_INTERVAL:
                    last_progress = now
                    self.progress(Progress(done, total, ok, done - ok, prompt, completion))
        finally:
            ticker.cancel()
            try:  # a second Ctrl-C stops these waits, not the writes
                await asyncio.gather(ticker, return_exceptions=True)
                outcomes = await asyncio.shield(asyncio.gather(*writes, return_exceptions=True))
                failed = [r for r in outcomes if isinstance(r, BaseException)]
                await batches.aclose()
            finally:
                parts.shutdown(wait=True)  # every batch handed over is on disk
                writer.flush()  # synchronously: a second Ctrl-C cannot cut it short
                if self.cache is not None:
                    self.cache.put(fresh)
        if failed:
            raise failed[0]
        if self.progress is not None:
            self.progress(Progress(done, total, ok, done - ok, prompt, completion))
        return Tally(rows=done, ok=ok)  # what this run finished (the summary of a stop)

    def requests(self) -> Iterator[Request]:
        """Every request of the job, in order (nothing sent)."""
        batches = read_batches(self.spec.input, limit=self.spec.limit)
        return iter_requests(
            self.request_spec(),
            batches,
            str(self.spec.input),
        )

    def _groups(self, found: InputScan) -> Iterator[RequestGroup]:
        """The input again, batch by batch, with its kept columns and (built only if the
        assembler asks) its requests."""
        keep = kept_columns(self.spec.keep_columns, found)
        spec = self.request_spec()
        source = str(self.spec.input)
        custom = found.custom_rows  # ascending
        for batch in read_batches(self.spec.input, limit=self.spec.limit):
            start, stop = batch.start, batch.start + len(batch.rows)
            columns = None if keep is None else to_arrow(batch, found.schema).select(keep)
            first_custom = bisect.bisect_left(custom, start)
            default = first_custom == len(custom) or custom[first_custom] >= stop
            requests = functools.partial(batch_requests, spec, batch, source)
            yield RequestGroup(start, stop, columns, requests, default)

    def _assemble(
        self,
        job_dir: Path,
        output: Path,
        base_url: str,
        found: InputScan,
        reason: str,
        started: float,
    ) -> Tally:
        """Write OUT from the parts and the input, in input order; count as it goes."""
        keep = kept_columns(self.spec.keep_columns, found)
        kept = None if keep is None else pa.schema([found.schema.field(n) for n in keep])
        grid = sweep_grid(self.spec.sweep)  # param_<key> value of each combination
        taken = set(OUTPUT_NAMES) | set(kept.names if kept is not None else ())
        layout = Layout(
            input_schema=kept,
            with_sample=self.spec.samples > 1,
            streamed=self.spec.stream,
            params=tuple(
                param_column(key, tuple(combo[key] for combo in grid)) for key, _ in self.spec.sweep
            ),
            structured=self.structured,
            typed=tuple(arrow_fields(self.schema, taken)) if self.schema is not None else (),
        )
        schema = layout.schema()
        spec = self.request_spec()
        keys = KeySpace(tuple(spec.models), len(grid), self.spec.samples)
        assembler = Assembler(
            job_dir, layout, not_sent_reason=reason, keys=keys, row_ranges=self._part_ranges
        )
        tally = Tally()

        def tables() -> Iterator[pa.Table]:
            for group in self._groups(found):
                table = with_costs(assembler.table(group), self.prices)
                tally.add(table)
                yield table

        def metadata() -> dict[str, bytes]:
            info = {
                "version": __version__,
                "settings": self.spec.settings(),
                "base_url": base_url,
                "started": iso(started),
                "finished": iso(time.time()),
                "rows": found.rows,
                "requests": tally.rows,
                "ok": tally.ok,
                "errors": tally.rows - tally.ok,
                "stop_reason": self.engine.stop_reason if self.engine else None,
            }
            return {"batcher": json.dumps(info, default=str).encode()}

        write_output(output, schema, tables(), metadata)
        return tally

    def _summary(self, output, found, tally, started, stop_reason, job_dir) -> JobSummary:
        assert self.engine is not None
        return JobSummary(
            output=output,
            rows=found.rows,
            requests=found.requests,
            ok=tally.ok,
            errors=tally.rows - tally.ok,
            errors_by_type=dict(tally.errors_by_type),
            models=tally.model_totals(),
            latency_p50=tally.latency.percentile(0.5),
            latency_p95=tally.latency.percentile(0.95),
            wall_s=time.time() - started,
            sent=self.engine.sent,
            unpriced=tuple(sorted(tally.unpriced)),
            resumed=self.already_done,
            cache_hits=self.cache.hits if self.cache is not None else 0,
            stop_reason=stop_reason,
            interrupted=self.interrupted,
            job_dir=job_dir,
        )


def param_column(key: str, values: tuple) -> tuple[str, pa.DataType, tuple]:
    """The `param_<key>` column of a swept body key, typed from its values."""
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        kind = pa.bool_()
    elif kinds == {int}:
        kind = pa.int64()
    elif kinds <= {int, float}:
        kind, values = pa.float64(), tuple(float(v) for v in values)
    elif kinds == {str}:
        kind = pa.string()
    else:  # lists, objects, mixtures: JSON text
        kind = pa.string()
        values = tuple(json.dumps(v, sort_keys=True) for v in values)
    return f"param_{key}", kind, values


def kept_columns(keep: str | tuple[str, ...], found: InputScan) -> list[str] | None:
    names = list(found.schema.names)
    if keep == KEEP_ALL:
        return names or None
    if keep == KEEP_NONE:
        return None
    missing = [c for c in keep if c not in names]
    if missing:
        raise UsageError(f"--keep-columns: no input column '{missing[0]}'")
    return list(keep)


def check_writable(output: Path) -> None:
    """Fail before anything is sent if OUT cannot be written (its folder is made)."""
    if output.is_dir():
        raise UsageError(f"{output}: the output path is a directory")
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{output}: cannot create {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{output}: the directory {parent} is not writable")


def prepare_job_dir(job_dir: Path, spec: JobSpec, found: InputScan) -> None:
    """The job's settings (never a key) and size, for `batcher status` and for people."""
    job_dir.mkdir(exist_ok=True)
    info = {
        "version": __version__,
        "pid": os.getpid(),
        "started": iso(time.time()),
        "rows": found.rows,
        "requests": found.requests,
        "models": list(found.per_model),
        "per_model": {model: count.requests for model, count in found.per_model.items()},
        "settings": spec.settings(),
    }
    tmp = job_dir / ".job.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, default=str))
    tmp.replace(job_dir / "job.json")


@contextlib.contextmanager
def job_lock(output: Path) -> Iterator[None]:
    """One job at a time per OUT: a second would send (and bill) every row again."""
    path = output.with_name(f".{output.name}.lock")
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole job
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(
                f"{output}: another batcher job is writing this output; wait for it or "
                "choose another -o"
            ) from None
        yield
    finally:
        handle.close()


def remove_stale_temporaries(output: Path) -> None:
    """Temporary OUT files left by a run killed while writing OUT."""
    for tmp in output.parent.glob(f".{output.name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def next_part_number(job_dir: Path) -> int:
    numbers = [int(p.stem.split("-")[1]) for p in job_dir.glob("part-*.parquet")]
    return max(numbers, default=-1) + 1


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


__all__ = ["DryRun", "Job", "Progress", "Result"]
