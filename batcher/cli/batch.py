"""`batcher batch status|cancel OUT`: the provider batches of a `--mode batch` job."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from batcher.analysis.text import aligned
from batcher.cli.options import CliError
from batcher.cli.run import execute, setup_logging
from batcher.errors import BatcherError

if TYPE_CHECKING:
    from batcher.batch.manage import BatchState

OUT = click.argument("out", metavar="OUT", type=click.Path(path_type=Path))


@click.group()
def batch() -> None:
    """Look at or cancel the batches a `--mode batch` job submitted."""


@batch.command(short_help="Each batch's status and request counts.")
@OUT
@click.option("--json", "as_json", is_flag=True, help="One JSON object per batch (JSON Lines).")
def status(out: Path, as_json: bool) -> None:
    """Each batch of OUT's job as the provider has it: status and request counts."""
    from batcher.batch.manage import ENDED, MOCK_NOTE, Recorded, look

    try:
        found = Recorded.of(out)
        states = asyncio.run(look(found))
    except BatcherError as exc:
        raise CliError.of(exc) from None
    if as_json:
        for state in states:
            click.echo(json.dumps(state.to_dict()))
        return
    for line in render(states):
        click.echo(line)
    running = [s for s in states if s.status not in {*ENDED, "unknown", "not submitted"}]
    if found.built_in_mock:
        click.echo(MOCK_NOTE, err=True)
    elif running:
        click.echo(
            f"{len(running)} batches still running: rerun the job's command to wait for them "
            f"and collect, or stop them with `batcher batch cancel {out}`",
            err=True,
        )
    else:
        click.echo(
            "every batch has ended: the job's command, run again, collects what they finished "
            "and sends the rest",
            err=True,
        )


@batch.command(short_help="Cancel the batches; write OUT with what they finished.")
@OUT
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def cancel(out: Path, quiet: bool) -> None:
    """Cancel every batch of OUT's job, then wait for them to stop and write OUT with what
    they finished (the rest as `not_sent` rows, which a rerun of the job sends)."""
    from batcher.batch.manage import MOCK_NOTE, Recorded
    from batcher.batch.manage import cancel as cancel_batches
    from batcher.io.jobdir import JobDir
    from batcher.job import Job
    from batcher.spec import make_spec

    setup_logging(False, quiet)
    try:
        Recorded.of(out)  # no batches on record: said before anything is made
        busy = "its job is still running: stop it (Ctrl-C) first, then cancel"
        with JobDir.of(out).lock(busy):  # a job still running would submit its next round
            found = Recorded.of(out)
            if found.built_in_mock:
                click.echo(f"nothing to cancel: {MOCK_NOTE}", err=True)
                return
            states = asyncio.run(cancel_batches(found))
        lines = render(states)
        click.echo(lines[0], err=True)
        for line, state in zip(lines[1:], states):
            click.echo(f"{line}  {state.note}" if state.note else line, err=True)
        if found.spec.get("input") == "-":
            click.echo(
                "the job read standard input: run it again with the same input to collect "
                "what the batches finished",
                err=True,
            )
            return
        job = Job(make_spec(**found.collecting_spec()))
        code = execute(job, quiet)
    except BatcherError as exc:
        raise CliError.of(exc) from None
    sys.exit(code)


def render(states: list[BatchState]) -> list[str]:
    """A table of the batches: id, model, status, round and request counts ("-": unknown)."""
    rows = [["batch", "model", "status", "round", "completed", "failed", "requests"]]
    for s in states:
        row = [s.batch_id or f"(file {s.number})", s.model, s.status, str(s.round)]
        row += ["-" if c is None else f"{c:,}" for c in (s.completed, s.failed)]
        rows.append([*row, f"{s.requests:,}"])
    return aligned(rows, left=3)
