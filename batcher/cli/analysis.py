"""The commands that send nothing: `estimate` before a job, `cost`, `report` and `status`
of an output or a running job's folder."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import click

from batcher.cli.options import CliError, job_options, spec_options
from batcher.errors import BatcherError


@click.command(context_settings={"auto_envvar_prefix": "BATCHER"})
@job_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option(
    "--seconds-per-request",
    type=float,
    default=2.0,
    show_default=True,
    help="Typical reply time, for the duration under --concurrency.",
)
@click.option(
    "--typical-reply-tokens",
    type=int,
    default=150,
    show_default=True,
    help="Completion tokens of a typical reply, for the low cost.",
)
@click.pass_context
def estimate(
    ctx: click.Context,
    as_json: bool,
    seconds_per_request: float,
    typical_reply_tokens: int,
    **opts: Any,
) -> None:
    """Read INPUT exactly as `run` would and estimate requests, tokens, cost and duration;
    with --mode batch, the Batch API price beside the online one.

    Sends nothing and needs no key."""
    from batcher.analysis.estimate import estimate as make_estimate
    from batcher.analysis.estimate import render_estimate
    from batcher.analysis.prefixes import PrefixCounter
    from batcher.analysis.tokens import ENCODING, TokenCounter
    from batcher.io.rows import sweep_grid
    from batcher.job import Job
    from batcher.spec import make_spec

    try:
        spec = make_spec(**spec_options(ctx, opts))
        job = Job(spec, need_key=False)
        counter = TokenCounter.offline()
        prefixes = PrefixCounter()

        def sink(*args: Any) -> None:
            prefixes(*args)
            if counter is not None:
                counter(*args)

        with tempfile.TemporaryDirectory(prefix="batcher-input-") as folder:
            asyncio.run(job.open_input(Path(folder)))
            found = job.check(sink)
        if counter is not None:
            found = counter.recount(found)
        counted = f"tiktoken {ENCODING}" if counter is not None else "characters / 4"
        figures = make_estimate(
            found,
            job.prices,
            concurrency=spec.concurrency,
            rpm=spec.rpm,
            tpm=spec.tpm,
            model_limits=spec.model_limits,
            seconds_per_request=seconds_per_request,
            typical_reply_tokens=typical_reply_tokens,
            combinations=len(sweep_grid(spec.sweep)),
            samples=spec.samples,
            shared=prefixes.found(),
            batch=spec.mode == "batch",
        )
    except BatcherError as exc:
        raise CliError.of(exc) from None
    if as_json:
        click.echo(json.dumps({**figures.to_dict(), "prompt_tokens_counted_by": counted}))
    else:
        for line in render_estimate(figures):
            click.echo(line)
        click.echo(f"(prompt tokens counted by {counted})")


estimate.params = [p for p in estimate.params if p.name != "json_mode"]
# What only a run uses: accepted (the same command line estimates what it would run) but not
# listed in `estimate --help` (--mode is: it adds the batch price).
RUN_ONLY = frozenset(
    {
        "output",
        "stream",
        "timeout",
        "max_retries",
        "flush_rows",
        "flush_seconds",
        "keep_job_dir",
        "fresh",
        "retry_errors",
        "cache",
        "batch_output",
        "cache_aware",
        "prompt_cache_key",
        "mode",
        "batch_rounds",
        "fallback",
        "wait",
        "batch_max_requests",
        "batch_max_bytes",
        "max_cost",
        "api_key_env",
        "api_key_file",
        "auth_header",
    }
)
for param in estimate.params:
    if param.name == "mode" and isinstance(param, click.Option):
        param.help = "batch: also the Batch API price, what `run --mode batch` is billed."
    elif param.name in RUN_ONLY and isinstance(param, click.Option):
        param.hidden = True


@click.command("export-batch", context_settings={"auto_envvar_prefix": "BATCHER"})
@job_options
@click.pass_context
def export_batch(ctx: click.Context, **opts: Any) -> None:
    """Write the Batch API input file of INPUT's requests to -o FILE.jsonl: the lines
    `--mode batch` would upload (same bodies, custom_id "row-model-combination-sample").

    Sends nothing and needs no key."""
    from batcher.job import Job
    from batcher.spec import make_spec

    target = opts.pop("output", None)
    if target is None:
        raise CliError("missing -o/--output: the JSON Lines file to write")
    try:
        spec = make_spec(**{**spec_options(ctx, opts), "output": None, "dry_run": True})
        count = asyncio.run(Job(spec, need_key=False).export_batch(Path(target)))
    except BatcherError as exc:
        raise CliError.of(exc) from None
    click.echo(f"wrote {count:,} requests to {target}", err=True)
    click.echo(str(target))


for param in export_batch.params:
    if param.name in RUN_ONLY - {"output"} and isinstance(param, click.Option):
        param.hidden = True
    elif param.name == "output":
        param.help = "The Batch API input file to write (JSON Lines)."


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--prices",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Re-price the rows with this price table [env: BATCHER_PRICES].",
)
@click.option("--by", default="model", show_default=True, help="Group by these columns: a,b.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout.")
def cost(path: Path, prices: Path | None, by: str, as_json: bool, as_csv: bool) -> None:
    """Requests, tokens and cost per group of a finished OUT, a running job's directory,
    or a Batch API output file (priced at the batch rate).

    The server's cost wins where it sent one; other rows are priced from tokens."""
    if as_json and as_csv:
        raise CliError("give --json or --csv, not both")
    from batcher.analysis.cost import cost_csv, cost_groups, cost_json, render_cost, with_costs
    from batcher.batch.results import is_batch_output, output_results
    from batcher.io.columns import results_table
    from batcher.io.jobdir import read_results
    from batcher.prices import PriceTable

    columns = tuple(c.strip() for c in by.split(",") if c.strip())
    try:
        table_prices = PriceTable.load(prices)
        if path.is_file() and is_batch_output(path):
            results = results_table(output_results(path))
        else:
            results = read_results(path)
        table = with_costs(results, table_prices)
        groups, total = cost_groups(table, columns, table_prices)
    except BatcherError as exc:
        raise CliError.of(exc) from None
    if as_json:
        click.echo(json.dumps(cost_json(groups, total, columns)))
    elif as_csv:
        click.echo(cost_csv(groups, total, columns), nl=False)
    else:
        for line in render_cost(groups, total, columns):
            click.echo(line)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--by", help="Group by these columns: a,b [default: model and param_* columns].")
@click.option(
    "--reference-column", metavar="COL", help="The expected answer: adds accuracy per group."
)
@click.option(
    "--answer-column",
    metavar="COL",
    help="Compared with the reference [default: the column named like it without "
    "'expected_', else content].",
)
@click.option(
    "--prices",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Re-price the rows with this price table [env: BATCHER_PRICES].",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML page with charts.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def report(
    path: Path,
    by: str | None,
    reference_column: str | None,
    answer_column: str | None,
    prices: Path | None,
    html_path: Path | None,
    as_json: bool,
) -> None:
    """Per model and parameter combination: ok and errors, tokens, cost, latency p50/p95,
    and accuracy against a reference column."""
    from batcher.analysis.cost import with_costs
    from batcher.analysis.html import render_html
    from batcher.analysis.report import build_report, render_report
    from batcher.io.jobdir import read_results
    from batcher.prices import PriceTable

    columns = None if by is None else tuple(c.strip() for c in by.split(",") if c.strip())
    try:
        table_prices = PriceTable.load(prices)
        table = with_costs(read_results(path), table_prices)
        found = build_report(
            table,
            source=str(path),
            by=columns,
            reference=reference_column,
            answer=answer_column,
            prices=table_prices,
        )
    except BatcherError as exc:
        raise CliError.of(exc) from None
    if html_path is not None:
        try:
            html_path.write_text(render_html(found), encoding="utf-8")
        except OSError as exc:
            raise CliError(f"--html {html_path}: {exc.strerror}") from None
    if as_json:
        click.echo(json.dumps(found.to_dict(), default=str))
    else:
        for line in render_report(found):
            click.echo(line)
        if html_path is not None:
            click.echo(f"wrote {html_path}", err=True)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def status(path: Path, as_json: bool) -> None:
    """How far the job writing PATH (OUT.parquet or its OUT.parquet.batcher/) has got.

    Works while the job runs in another terminal, after it stopped, and on a finished OUT."""
    from batcher.analysis.status import job_status, render

    try:
        found = job_status(path)
    except BatcherError as exc:
        raise CliError.of(exc) from None
    if as_json:
        click.echo(json.dumps(found.to_dict()))
    else:
        for line in render(found):
            click.echo(line)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-n", "--rows", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rows to show at most.")  # fmt: skip
@click.option("--columns", metavar="A,B", help="Columns to show [default: id, model, status, "
              "content, error_type, error_message].")  # fmt: skip
@click.option("--where", metavar="SQL", help="Only rows this SQL condition holds for "
              "(needs duckdb), e.g. \"status = 'error' and model = 'gpt-5.5'\".")  # fmt: skip
@click.option("--errors", is_flag=True, help="Only the rows in error.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a row (JSON Lines).")
def show(
    path: Path, rows: int, columns: str | None, where: str | None, errors: bool, as_json: bool
) -> None:
    """The first rows of PATH (OUT, or its job folder while the job runs), in input order."""
    from batcher.analysis.show import render_json, render_table
    from batcher.analysis.show import show as pick

    names = None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]
    try:
        table = pick(path, rows=rows, columns=names, where=where, errors=errors)
    except BatcherError as exc:
        raise CliError.of(exc) from None
    for line in (render_json if as_json else render_table)(table):
        click.echo(line)
