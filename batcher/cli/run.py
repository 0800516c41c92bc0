"""`batcher run`: the job with a progress bar, signal handling, the summary and the exit code.

Exit codes: 0 every row ok; 1 some rows ended in error or the job stopped early (the output
is still written); 2 usage or input errors, found before anything was sent; 74 a write failed
(disk full, standard output full, ...); 129 / 130 / 143 after SIGHUP / Ctrl-C / SIGTERM
(finished results stay durable; the same command resumes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

import click

from batcher.analysis.text import duration
from batcher.cli.options import EXIT_STORAGE, CliError, job_options, spec_options
from batcher.errors import BatcherError
from batcher.progress import ProgressBar

GRACE_SECONDS = 5.0  # after Ctrl-C, how long requests in flight may finish
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


@click.command(context_settings={"auto_envvar_prefix": "BATCHER"})
@job_options
@click.option("--dry-run", is_flag=True, help="Print the request count and first bodies.")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="No progress bar or summary (a stop before the end is still said).",
)
@click.option(
    "--log-every",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="S",
    help="Off a terminal (nohup, cron, CI): a progress line on stderr every S seconds.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging on stderr.")
@click.pass_context
def run(ctx: click.Context, **opts: Any) -> None:
    """Send every row of INPUT (.jsonl, .parquet or .csv) to the API; write OUT (Parquet,
    a Parquet dataset folder, JSON Lines or CSV, as its name says)."""
    quiet = opts.pop("quiet")
    setup_logging(opts.pop("verbose"), quiet)
    log_every = opts.pop("log_every")
    from batcher.job import Job
    from batcher.spec import make_spec

    try:
        spec = make_spec(**spec_options(ctx, opts))
        job = Job(spec, need_key=not spec.dry_run)  # a dry run sends nothing
        if spec.dry_run:
            print_dry_run(asyncio.run(job.dry_run()))
            return
        code = execute(job, quiet, log_every)
    except BatcherError as exc:
        raise CliError.of(exc) from None
    sys.exit(code)


def execute(job: Any, quiet: bool, log_every: float = 60.0) -> int:
    """Run the job with a progress bar (a line every `log_every` seconds off a terminal)
    and signal handling; return the exit code."""
    from batcher.analysis.summary import render

    bar: ProgressBar | ProgressLines | None = None
    if not quiet:
        bar = ProgressBar() if sys.stderr.isatty() else ProgressLines(log_every)
    job.progress = bar.update if bar else None
    received: list[signal.Signals] = []
    try:
        summary = run_fast(run_with_signals(job, received))
    except asyncio.CancelledError:
        summary = None
    finally:
        if bar:
            bar.close()
    if received and (summary is None or summary.output is None):
        click.echo(f"interrupted: {resume_hint(job)}", err=True)
        return EXIT_SIGNAL.get(received[0], 130)
    assert summary is not None  # a signal after OUT was written: the job is done
    if not quiet:
        for line in render(summary):
            click.echo(line, err=True)
    elif summary.stop_reason:  # why some rows were not sent is never left unsaid
        click.echo(f"stopped early: {summary.stop_reason}", err=True)
    if summary.output is None:  # --no-wait: batches submitted, no OUT yet
        return summary.exit_code
    try:
        click.echo(str(summary.output))
        sys.stdout.flush()
    except OSError as exc:  # stdout is full or gone: OUT is written all the same
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so that exit's flush is quiet
        click.echo(
            f"cannot write to standard output ({exc.strerror}); wrote {summary.output}", err=True
        )
        return EXIT_STORAGE
    return summary.exit_code


def resume_hint(job: Any) -> str:
    """Where the finished results (or the batches submitted) are, and the command that
    resumes."""
    job_dir = job.job_dir
    parts = job_dir.exists() and job_dir.parts()
    batches = job_dir.exists() and job_dir.read_batches()
    if not parts and not batches:
        return "stopped before any result was saved; nothing to resume"
    again = "the same command again"
    if job.spec.fresh:
        again = "the same command again without --fresh"
    if str(job.spec.input) == "-":
        again += ", with the same input on standard input,"
    if not parts:
        return f"the batches submitted are recorded in {job_dir.path}; run {again} to collect"
    return f"finished results are saved in {job_dir.path}; run {again} to resume"


def run_fast(coro: Any) -> Any:
    """Run the job's event loop: uvloop when installed (`pip install batcher[fast]`), and a
    garbage collector that does not stop every few hundred allocations (a job allocates
    many short-lived objects and few cycles)."""
    import gc

    threshold = gc.get_threshold()
    gc.set_threshold(50_000, 20, 20)
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(coro)
        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
        uvloop.install()  # pragma: no cover - Python 3.10
        return asyncio.run(coro)
    finally:
        gc.set_threshold(*threshold)


async def run_with_signals(job: Any, received: list[signal.Signals]) -> Any:
    """First Ctrl-C/SIGTERM: stop sending, let in-flight requests finish for a few seconds.
    A second Ctrl-C: stop at once. Either way, what was durable stays durable."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal(sig: signal.Signals) -> None:
        if received:
            task.cancel()
            return
        received.append(sig)
        job.interrupt("interrupted by " + sig.name)
        loop.call_later(GRACE_SECONDS, task.cancel)

    for sig in EXIT_SIGNAL:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await job.run()
    finally:
        for sig in EXIT_SIGNAL:
            loop.remove_signal_handler(sig)


class ProgressLines:
    """Off a terminal: a line on stderr every `every` seconds while the job runs, e.g.
    `progress: 1,200/5,000 requests (24%), 1,198 ok, 2 errors, 61,000 tokens, $0.4210,
    20.0 req/s, ETA 3m 10s, ~590 rpm from 429s`. The rate is that of the last interval."""

    def __init__(self, every: float, clock: Any = None) -> None:
        import time

        self.every = every
        self._clock = clock or time.monotonic
        self._last = (self._clock(), 0)  # when the last line was said, and the count then

    def update(self, p: Any) -> None:
        now = self._clock()
        since, done_then = self._last
        if now - since < self.every:
            return
        self._last = (now, p.done)
        rate = (p.done - done_then) / (now - since)
        parts = [
            f"{p.done:,}/{p.total:,} requests ({p.done * 100 // max(1, p.total)}%)",
            f"{p.ok:,} ok",
            f"{p.errors:,} errors",
            f"{p.prompt_tokens + p.completion_tokens:,} tokens",
        ]
        if p.cost_usd is not None:
            parts.append(f"${p.cost_usd:.4f}")
        parts.append(f"{rate:.1f} req/s")
        if rate > 0 and p.total > p.done:
            parts.append(f"ETA {duration((p.total - p.done) / rate)}")
        if p.note:
            parts.append(p.note)
        click.echo("progress: " + ", ".join(parts), err=True)

    def close(self) -> None:
        """The summary says the end."""


def print_dry_run(dry: Any) -> None:
    click.echo(f"{dry.requests} requests from {dry.rows} rows to {dry.url}")
    click.echo("headers: " + json.dumps(dry.headers))
    for payload in dry.bodies:  # exactly as it would be sent
        click.echo(payload.decode())


def setup_logging(verbose: bool, quiet: bool = False) -> None:
    """Warnings and errors on stderr (all with -v); also, unless quiet, what a Batch API job
    submits and how each batch stands, with its id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("batcher")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False
    batches = logging.getLogger("batcher.batch")
    batches.setLevel(logging.NOTSET if verbose else logging.WARNING if quiet else logging.INFO)
