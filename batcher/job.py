"""A whole job: check the input, send every request, keep results durable, write OUT.

    input ──► checking pass (every row built once, checked, nothing sent) ──► request spool
          ──► Engine ──► PartWriter (job folder, durable parts)
          ──► assembly (spool + parts + the input's kept columns, in order) ──► OUT (atomic)

This module only wires the stages; each lives in its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from batcher import __version__
from batcher.analysis.cost import cost_split, spent_usd, with_costs
from batcher.analysis.summary import JobSummary, ModelTally
from batcher.analysis.totals import Totals
from batcher.batch.manage import refuse_running_batches
from batcher.batch.results import BatchOutput, FirstOf, with_batch_output
from batcher.engine.budget import Budget
from batcher.engine.cache import ResponseCache
from batcher.engine.engine import EngineRun
from batcher.errors import UsageError
from batcher.io import spool
from batcher.io.assemble import assemble
from batcher.io.check import InputScan, check_input
from batcher.io.columns import kept_columns, output_layout
from batcher.io.inputs import InputFile, InputSet
from batcher.io.jobdir import JobDir
from batcher.io.parts import PartWriter, saving
from batcher.io.resume import DoneIndex, earlier_results
from batcher.io.rows import RequestSpec, sweep_grid
from batcher.io.sources import locate
from batcher.io.streams import in_daemon_thread, is_stream, spool_stream
from batcher.io.templates import load_messages_template, text_or_file
from batcher.io.textout import check_text_columns
from batcher.prices import PriceTable
from batcher.providers import MOCK_IDENTITY, Endpoint, read_key, resolve_provider
from batcher.senders import start_sending
from batcher.spec import JobSpec
from batcher.structured.schema import load_schema, response_format

if TYPE_CHECKING:
    from batcher.ray.engine import RayRun
from batcher.progress import PROGRESS_INTERVAL, Counts, Progress, ProgressCallback

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DryRun:
    requests: int
    rows: int
    bodies: list[bytes]  # the first payloads, exactly as they would be sent
    url: str
    headers: dict[str, str]


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
        conversation = spec.messages_template
        self.requests = RequestSpec(
            models=spec.models
            or ((self.provider.default_model,) if self.provider.default_model else ()),
            params=self._params(),
            system=text_or_file(spec.system, spec.system_file, "--system-file"),
            template=text_or_file(spec.template, spec.template_file, "--template-file"),
            messages_template=load_messages_template(conversation) if conversation else None,
            prompt_column=spec.prompt_column,
            messages_column=spec.messages_column,
            id_column=spec.id_column,
            sweep=spec.sweep,
            samples=spec.samples,
            base_url=self.identity_url,
            on_bad_row=spec.on_bad_row,
            body_columns=spec.body_columns,
            models_given=bool(spec.models),
            cache_key=self.provider.cache_key
            if spec.prompt_cache_key is None
            else spec.prompt_cache_key,
        )
        self.job_dir = JobDir(spec.output) if spec.output is not None else None
        self.source: InputFile | InputSet | None = None  # as read (a stream: its copy)
        self.engine: EngineRun | RayRun | None = None  # this run's sender, once it starts
        self.cache: ResponseCache | None = None
        self.imported: BatchOutput | None = None  # --batch-output's results
        self._runs: list[str] = []  # when each run of the job started, this one last
        self.interrupted = False
        self._reading: asyncio.Future[InputFile] | None = None

    def _params(self) -> dict:
        params = self.spec.body_params()
        if self.schema is not None:
            assert self.spec.schema is not None
            params.setdefault(
                "response_format", response_format(self.schema, self.spec.schema.stem)
            )
        return params

    def interrupt(self, reason: str = "interrupted") -> None:
        """Send nothing new; what is in flight finishes; the job folder stays for a rerun."""
        self.interrupted = True
        if self._reading is not None:
            self._reading.cancel()  # a stream being copied: stop waiting for it
        if self.engine is not None:
            self.engine.stop(reason)

    async def open_input(self, folder: Path) -> InputFile | InputSet:
        """The input to read: the file, folder or glob itself (`batcher.io.sources`), or a
        copy in `folder` of an input that can be read only once (standard input, a FIFO);
        the copy is made in a thread of its own, so a Ctrl-C ends the wait even while
        nothing arrives."""
        spec = self.spec
        if not is_stream(spec.input):
            self.source = locate(spec.input, spec.input_format)
            return self.source
        folder.mkdir(parents=True, exist_ok=True)
        self._reading = asyncio.get_running_loop().create_future()
        in_daemon_thread(self._reading, spool_stream, spec.input, folder, spec.input_format)
        try:
            self.source = await self._reading
        finally:
            self._reading = None
        return self.source

    def endpoint(self, base_url: str) -> Endpoint:
        return Endpoint(base_url, self.provider.auth_header, self._key)

    def check(self, sink=None, earlier: DoneIndex | None = None) -> InputScan:
        """The checking pass over the whole input (nothing sent); `open_input` first."""
        assert self.source is not None
        return check_input(
            self.requests,
            self.source,
            limit=self.spec.limit,
            earlier=earlier,
            retry_errors=self.spec.retry_errors,
            sink=sink,
            tpm=self._tpm if self.spec.tpm or self.spec.model_limits else None,
        )

    def _tpm(self, model: str) -> float | None:
        """The tokens a minute a request to `model` may use: the least of its limits."""
        own = self.spec.model_limits.get(model, {}).get("tpm")
        limits = [x for x in (self.spec.tpm, own) if x is not None]
        return min(limits) if limits else None

    async def dry_run(self, count: int = 3) -> DryRun:
        bodies: list[bytes] = []

        def sample(batch, requests, todo) -> None:
            for request in requests:
                if len(bodies) < count and request.bad_input is None:
                    bodies.append(request.payload)

        with tempfile.TemporaryDirectory(prefix="batcher-input-") as folder:
            await self.open_input(Path(folder))
            found = await asyncio.to_thread(self.check, sample)
        endpoint = self.endpoint(self.provider.base_url or "http://127.0.0.1:PORT/v1")
        return DryRun(found.requests, found.rows, bodies, endpoint.url, endpoint.redacted_headers())

    async def export_batch(self, path: Path) -> int:
        """Write the Batch API input lines of every request (what `--mode batch` uploads,
        in input order, all models in one file) to `path`, atomically; how many."""
        from batcher.batch.lines import line_of

        tmp = path.with_name(f".{path.name}.tmp")
        count = 0
        with tempfile.TemporaryDirectory(prefix="batcher-input-") as folder:
            await self.open_input(Path(folder))
            try:
                with saving(path, "nothing was written"), open(tmp, "wb") as f:

                    def write(batch, requests, todo) -> None:
                        nonlocal count
                        for request in requests:
                            if request.bad_input is None:
                                f.write(line_of(request))
                                count += 1

                    await asyncio.to_thread(self.check, write)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return count

    async def run(self) -> JobSummary:
        started = time.time()
        spec, job_dir = self.spec, self.job_dir
        if job_dir is None:
            raise UsageError("missing -o/--output")
        job_dir.check_output()
        async with contextlib.AsyncExitStack() as stack:
            base_url = self.provider.base_url
            if base_url is None:  # the built-in mock, on a free loopback port
                from batcher.mock import MockServer

                server = await stack.enter_async_context(MockServer(keep_log=False))
                base_url = server.url
            stack.enter_context(job_dir.lock())
            if spec.fresh:
                refuse_running_batches(job_dir, "--fresh", "rerun without --fresh")
            elif spec.mode != "batch":
                refuse_running_batches(job_dir, "--mode online", "rerun with --mode batch")
            job_dir.clean()
            stack.callback(shutil.rmtree, job_dir.input_copy, ignore_errors=True)
            await self.open_input(job_dir.input_copy)
            found = await asyncio.to_thread(self._prepare, job_dir)
            if spec.cache is not None:
                self.cache = ResponseCache(spec.cache)
                stack.callback(self.cache.close)
            known = FirstOf(self.imported, self.cache) if self.imported else self.cache
            budget = None
            if spec.max_cost is not None:
                budget = await asyncio.to_thread(self._budget, job_dir, found)
            learned = job_dir.read_limits(self.identity_url)  # the mock: whatever port
            self.engine = start_sending(
                spec,
                self.endpoint(base_url),
                job_dir,
                stack,
                embedded_mock=self.provider.base_url is None,
                known=known,
                budget=budget,
                learned=learned,
                structured=self.schema is not None or spec.json,
                identity=self.identity_url,
            )
            if self.interrupted:
                self.engine.stop("interrupted")
            sent, row_ranges = await self._send(job_dir, found)
            stop_reason = self.engine.stop_reason
            if getattr(self.engine, "submitted_only", False):  # --no-wait: nothing to write
                summary = self._summary(None, found, sent, {}, started, job_dir)
                return dataclasses.replace(summary, submitted=stop_reason)
            if self.interrupted:
                return self._summary(None, found, sent, {}, started, job_dir)
            reason = (
                f"not sent: the job stopped early ({stop_reason})" if stop_reason else "not sent"
            )
            final = await asyncio.to_thread(
                self._assemble, job_dir, found, base_url, reason, started, row_ranges
            )
            keep = spec.keep_job_dir or stop_reason is not None
            if not keep:
                job_dir.remove()
            return self._summary(
                spec.output,
                found,
                final.overall(),
                final.models,
                started,
                job_dir if keep else None,
            )

    def _prepare(self, job_dir: JobDir) -> InputScan:
        """Earlier results, then the checking pass writing the request spool, then job.json.
        A bad input changes nothing: a folder made for it is removed again, and --fresh
        drops the earlier results only once the new requests are all built."""
        fresh = self.spec.fresh
        self._runs = [] if fresh else job_dir.earlier_starts()
        self._runs.append(iso(time.time()))
        earlier, imported = earlier_results(job_dir) if not fresh else (DoneIndex.empty(), False)
        had_folder = job_dir.exists()
        if fresh:
            target = job_dir.output.with_name(f".{job_dir.output.name}.spool.tmp")
        else:
            job_dir.create()
            target = job_dir.spool
        try:
            with saving(target, "nothing was sent"), spool.SpoolWriter(target) as sink:
                found = self.check(sink, earlier)
            kept = kept_columns(self.spec.keep_columns, found.schema)  # a wrong name fails here
            check_text_columns(job_dir.output, found.schema_of(kept) if kept else None)
            self._check_sources(found, target)
        except BaseException:
            if fresh:
                target.unlink(missing_ok=True)
            elif not had_folder or imported:  # OUT stays the only record of an imported job
                job_dir.remove()
            else:
                target.unlink(missing_ok=True)
            raise
        if fresh:  # start over: the earlier results go, in one rename
            job_dir.remove()
            job_dir.create()
            os.replace(target, job_dir.spool)
        info = {
            "version": __version__,
            "pid": os.getpid(),
            "started": self._runs[0],
            "runs": self._runs,
            "rows": found.rows,
            "requests": found.requests,
            "models": list(found.per_model),
            "per_model": {m: count.requests for m, count in found.per_model.items()},
            "settings": self._settings_used(found),
            "spec": self.spec.settings(),  # as given: what `batcher batch cancel` reruns
            "cwd": os.getcwd(),  # what relative paths in it are relative to
        }
        with saving(job_dir.path / "job.json", "nothing was sent"):
            job_dir.write_info(info)
        return found

    def _settings_used(self, found: InputScan) -> dict:
        """The spec's settings, `models` the models the requests went to (the provider's
        default, or those the rows named, when -m was not given)."""
        return {**self.spec.settings(), "models": list(found.per_model)}

    def _check_sources(self, found: InputScan, spool_path: Path) -> None:
        """Before anything is sent or dropped: prices for --max-cost, the --batch-output."""
        unpriced = [m for m in found.per_model if self.prices.get(m) is None]
        if self.spec.max_cost is not None and unpriced:
            raise UsageError(
                f"--max-cost needs a price for every model; none for: {', '.join(unpriced)} "
                "(add them with --prices FILE)"
            )
        if self.spec.batch_output:
            self.imported = with_batch_output(self.spec.batch_output, spool_path)

    def _budget(self, job_dir: JobDir, found: InputScan) -> Budget:
        """The --max-cost budget, less what earlier runs of this OUT already spent."""
        assert self.spec.max_cost is not None
        return Budget.of(self.spec.max_cost, self.prices, spent_usd=spent_usd(job_dir, self.prices))

    async def _send(self, job_dir: JobDir, found: InputScan) -> tuple[Totals, dict]:
        """Run the engine over the spool's requests still to send, flushing durable parts."""
        run = self.engine
        assert run is not None
        counts = Counts(found.requests - found.done, self.prices)  # what this run has to do
        cache = self.cache
        writer = PartWriter(
            job_dir,
            flush_rows=self.spec.flush_rows,
            flush_seconds=self.spec.flush_seconds,
            on_flush=cache.put if cache is not None else None,
            on_failure=run.stop,
        )
        ticker = asyncio.ensure_future(self._tick(counts)) if self.progress else None
        try:
            async with writer:
                async for batch in run:
                    await writer.add(batch)
                    counts.add(batch)
        finally:
            if ticker is not None:
                ticker.cancel()
            await run.aclose()
            if learned := run.learned():
                job_dir.write_limits(self.identity_url, learned)
        if self.progress is not None:
            self.progress(counts.progress(None))
        return Totals(requests=counts.done, ok=counts.ok), writer.row_ranges

    async def _tick(self, counts: Counts) -> None:
        """Progress a few times a second, also while nothing finishes (a long pause)."""
        assert self.progress is not None and self.engine is not None
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self.progress(counts.progress(self.engine.note()))

    def _assemble(
        self,
        job_dir: JobDir,
        found: InputScan,
        base_url: str,
        reason: str,
        started: float,
        row_ranges: dict,
    ) -> ModelTally:
        """Write OUT from the spool, the parts and the input, in input order; count it."""
        spec = self.spec
        keep = kept_columns(spec.keep_columns, found.schema)
        grid = sweep_grid(spec.sweep)
        kept = None if keep is None else found.schema_of(keep)
        layout = output_layout(
            kept=kept,
            samples=spec.samples,
            streamed=spec.stream,
            sweep=spec.sweep,
            grid=grid,
            structured=self.schema is not None or spec.json,
            schema=self.schema,
            batched=spec.mode == "batch" or bool(spec.batch_output),
        )
        tally = ModelTally()

        def finish(table):
            table = with_costs(table, self.prices)
            tally.add(table, cost_split(table, self.prices))
            return table

        def metadata() -> dict[str, bytes]:
            overall = tally.overall()
            info = {
                "version": __version__,
                "settings": self._settings_used(found),
                "base_url": base_url,
                "started": self._runs[0],  # the job's first start; each run's in `runs`
                "runs": self._runs,
                "finished": iso(time.time()),
                "rows": found.rows,
                "requests": overall.requests,
                "ok": overall.ok,
                "errors": overall.errors,
                "stop_reason": self.engine.stop_reason if self.engine else None,
            }
            return {"batcher": json.dumps(info, default=str).encode()}

        with saving(job_dir.output, f"every result is saved in {job_dir.path}"):
            assemble(
                job_dir,
                source=self.source,
                limit=spec.limit,
                schema=found.schema,
                keep=keep,
                layout=layout,
                models=found.models,
                variants=len(grid),
                samples=spec.samples,
                not_sent_reason=reason,
                row_ranges=row_ranges,
                finish=finish,
                metadata=metadata,
                fingerprint=found.fingerprint,
            )
        return tally

    def _unpriced(self, models: dict[str, Totals]) -> set[str]:
        """Models without a price whose rows no server put a cost on."""
        return {m for m, t in models.items() if self.prices.get(m) is None and not t.cost_usd}

    def _summary(
        self,
        output: Path | None,
        found: InputScan,
        overall: Totals,
        models: dict[str, Totals],
        started: float,
        job_dir: JobDir | None,
    ) -> JobSummary:
        assert self.engine is not None
        return JobSummary(
            output=output,
            rows=found.rows,
            requests=found.requests,
            ok=overall.ok,
            errors=overall.errors,
            errors_by_type=dict(overall.errors_by_type),
            models=models,
            latency_p50=overall.latency_p50,
            latency_p95=overall.latency_p95,
            wall_s=time.time() - started,
            sent=self.engine.sent,
            unpriced=tuple(sorted(overall.unpriced_models | self._unpriced(models))),
            resumed=found.done,
            cache_hits=self.cache.hits if self.cache is not None else 0,
            stop_reason=self.engine.stop_reason,
            learned=self.engine.learned(),
            interrupted=self.interrupted,
            job_dir=job_dir.path if job_dir is not None else None,
        )


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


__all__ = ["DryRun", "Job", "Progress"]
