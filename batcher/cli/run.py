"""The `batcher` command: parse options into a spec, call the library, print, exit.

Exit codes: 0 every row ok; 1 some rows ended in error or the job stopped early (the output
is still written); 2 usage or input errors, found before anything was sent; 130 / 143 after
Ctrl-C / SIGTERM (finished results stay durable; the same command resumes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from batcher import __version__
from batcher.errors import BatcherError

GRACE_SECONDS = 5.0  # after Ctrl-C, how long requests in flight may finish
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class CliError(click.ClickException):
    """A one-line error and exit code 2: nothing was sent."""

    exit_code = 2


def parse_param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"expected KEY=JSON, got {value!r}", param_hint="--param")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        parsed = raw  # a bare word such as verbosity=low
    return key.strip(), parsed


def parse_sweeps(values: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """--sweep KEY=V1,V2 (repeatable), or a job file's table {key: [values]}."""
    if isinstance(values, dict):
        return tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in values.items())
    out = []
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip() or not raw:
            raise click.BadParameter(f"expected KEY=V1,V2,..., got {value!r}", param_hint="--sweep")
        out.append((key.strip(), tuple(parse_param(f"{key}={v}")[1] for v in raw.split(","))))
    return tuple(out)


def read_text_option(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not readable as UTF-8 text"
        raise CliError(f"{what} {path}: {reason}") from None


def keep_columns(value: str) -> str | tuple[str, ...]:
    if value in ("all", "none"):
        return value
    return tuple(c.strip() for c in value.split(",") if c.strip())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="batcher")
def main() -> None:
    """Push bulk chat-completion requests through OpenAI-compatible APIs into Parquet."""


def job_options(command: Any) -> Any:
    """The options shared by `run` and `estimate`: input, request, provider and limits."""
    for option in reversed(JOB_OPTIONS):
        command = option(command)
    return command


JOB_OPTIONS = [
    click.argument("input", type=click.Path(dir_okay=False, path_type=Path), required=False),
    click.option("-o", "--output", type=click.Path(path_type=Path), help="Output Parquet file."),
    click.option(
        "--job",
        "job_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="TOML job file with any of these options; the command line overrides it.",
    ),
    click.option("-m", "--model", "models", multiple=True, help="Model; repeat for several."),
    click.option("--temperature", type=float),
    click.option("--top-p", type=float),
    click.option("--max-tokens", type=int, help="Completion token bound per request."),
    click.option("--seed", type=int),
    click.option("--stop", multiple=True, help="Stop sequence; repeatable."),
    click.option(
        "--stream",
        is_flag=True,
        help="Streaming requests: the same output row, plus ttft_s (time to first token).",
    ),
    click.option("--json", "json_mode", is_flag=True, help="response_format json_object."),
    click.option(
        "--schema",
        type=click.Path(dir_okay=False, path_type=Path),
        help="JSON Schema of the reply: sent as a strict json_schema response_format, "
        "replies validated, one typed column per property.",
    ),
    click.option(
        "--reask",
        type=int,
        default=2,
        show_default=True,
        help="Re-ask a reply that is not valid JSON / breaks the schema up to N times.",
    ),
    click.option(
        "--param",
        "params",
        multiple=True,
        metavar="KEY=JSON",
        help='Any other body key, e.g. top_k=40 or \'reasoning={"effort":"low"}\'.',
    ),
    click.option(
        "--sweep",
        "sweep",
        multiple=True,
        metavar="KEY=V1,V2",
        help="Send every row with each value of a body key; repeat for the cross product, "
        "e.g. --sweep temperature=0,0.7,1 (values are JSON, else strings).",
    ),
    click.option(
        "--samples",
        type=int,
        default=1,
        show_default=True,
        help="Independent requests per row, model and combination (with --seed S, "
        "sample k uses seed S+k).",
    ),
    click.option("--system", help="System message (a template over the row's columns)."),
    click.option("--system-file", type=click.Path(dir_okay=False), help="System message file."),
    click.option("--template", help='User message template, e.g. "Classify: {text}".'),
    click.option("--template-file", type=click.Path(dir_okay=False), help="Template file."),
    click.option(
        "--messages-template",
        type=click.Path(dir_okay=False),
        help="JSON list of messages (few-shot) whose contents are templates.",
    ),
    click.option("--prompt-column", default="prompt", show_default=True),
    click.option("--messages-column", default="messages", show_default=True),
    click.option(
        "--id-column", help="Row id column [default: id, else custom_id, else row number]"
    ),
    click.option(
        "--keep-columns",
        default="all",
        show_default=True,
        help="Input columns to keep: all, none or a,b,c.",
    ),
    click.option(
        "--on-bad-row",
        type=click.Choice(["error", "skip"]),
        default="error",
        show_default=True,
        help="skip: record bad rows as errors and send the rest.",
    ),
    click.option("--limit", type=int, help="Only the first N rows."),
    click.option(
        "--provider",
        type=click.Choice(["octen", "octopusx", "openai", "mock", "custom"]),
        help="Preset [default: mock, or custom with --base-url].",
    ),
    click.option("--base-url", help="Any OpenAI-compatible API, e.g. http://localhost:8000/v1."),
    click.option("--api-key-env", metavar="NAME", help="Environment variable holding the key."),
    click.option("--api-key-file", type=click.Path(dir_okay=False), help="File holding the key."),
    click.option("--auth-header", type=click.Choice(["bearer", "x-api-key"])),
    click.option(
        "-c",
        "--concurrency",
        type=int,
        default=32,
        show_default=True,
        help="Requests in flight at most.",
    ),
    click.option(
        "--timeout", type=float, default=120.0, show_default=True, help="Seconds per attempt."
    ),
    click.option("--max-retries", type=int, default=6, show_default=True),
    click.option("--rpm", type=float, help="Requests per minute at most."),
    click.option("--tpm", type=float, help="Tokens per minute at most."),
    click.option(
        "--flush-rows",
        type=int,
        default=1000,
        show_default=True,
        help="Make results durable at least every N results...",
    ),
    click.option(
        "--flush-seconds", type=float, default=5.0, show_default=True, help="...or every S seconds."
    ),
    click.option("--keep-job-dir", is_flag=True, help="Keep OUT.batcher/ after success."),
    click.option("--fresh", is_flag=True, help="Discard earlier results for OUT and start over."),
    click.option(
        "--retry-errors",
        is_flag=True,
        help="Send again only the requests whose earlier result is an error.",
    ),
    click.option(
        "--prices",
        type=click.Path(dir_okay=False, path_type=Path),
        help="TOML price table (USD per million tokens) over the packaged one "
        "[env: BATCHER_PRICES].",
    ),
    click.option(
        "--max-cost",
        type=float,
        metavar="USD",
        help="Stop sending before the cost (spent + in flight) would pass USD.",
    ),
    click.option(
        "--cache",
        type=click.Path(file_okay=False, path_type=Path),
        help="Response cache directory, shared by jobs [env: BATCHER_CACHE].",
    ),
]


@main.command(context_settings={"auto_envvar_prefix": "BATCHER"})
@job_options
@click.option("--dry-run", is_flag=True, help="Print the request count and first bodies.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging on stderr.")
@click.pass_context
def run(ctx: click.Context, **opts: Any) -> None:
    """Send every row of INPUT (.jsonl, .parquet or .csv) to the API; write OUT.parquet."""
    setup_logging(opts.pop("verbose"))
    quiet = opts.pop("quiet")
    from batcher.job import Job
    from batcher.spec import make_spec

    try:
        options = run_options(with_job_file(ctx, opts))
        spec = make_spec(**options)
        job = Job(spec, need_key=not spec.dry_run)  # a dry run sends nothing
        if spec.dry_run:
            print_dry_run(asyncio.run(job.dry_run()))
            return
        code = execute(job, quiet)
    except BatcherError as exc:
        raise CliError(str(exc)) from None
    sys.exit(code)


def with_job_file(ctx: click.Context, opts: dict[str, Any]) -> dict[str, Any]:
    """The options of `--job FILE`, overridden by what the command line (or env) set."""
    path = opts.pop("job_file")
    if path is None:
        opts["model_limits"] = {}
        return opts
    from batcher.jobfile import load_job_file, merge

    job = load_job_file(path, ctx.command)
    sources = {name: ctx.get_parameter_source(name) for name in opts}
    merged = merge(job, opts, sources)
    merged["model_limits"] = job.model_limits
    return merged


def run_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Click's values as `make_spec` keywords."""
    if opts["input"] is None:
        raise CliError("missing INPUT: give the input file, or `input` in the --job file")
    params = opts["params"]
    if not isinstance(params, dict):
        params = dict(parse_param(p) for p in params)
    opts["params"] = params
    opts["sweep"] = parse_sweeps(opts["sweep"])
    opts["json"] = opts.pop("json_mode")
    system_file = read_text_option(opts.pop("system_file"), "--system-file")
    template_file = read_text_option(opts.pop("template_file"), "--template-file")
    if opts["system"] is not None and system_file is not None:
        raise CliError("give --system or --system-file, not both")
    if opts["template"] is not None and template_file is not None:
        raise CliError("give --template or --template-file, not both")
    opts["system"] = opts["system"] if opts["system"] is not None else system_file
    opts["template"] = opts["template"] if opts["template"] is not None else template_file
    opts["keep_columns"] = keep_columns(opts["keep_columns"])
    return opts


def execute(job: Any, quiet: bool) -> int:
    """Run the job with a progress bar and signal handling; return the exit code."""
    from batcher.analysis.summary import render

    bar = None if quiet or not sys.stderr.isatty() else ProgressBar()
    job.progress = bar.update if bar else None
    received: list[signal.Signals] = []
    try:
        summary = run_fast(run_with_signals(job, received))
    except asyncio.CancelledError:
        summary = None
    finally:
        if bar:
            bar.close()
    if received:
        where = job_dir_hint(job)
        click.echo(
            f"interrupted: finished results are saved in {where}; "
            "run the same command again to resume",
            err=True,
        )
        return EXIT_SIGNAL.get(received[0], 130)
    assert summary is not None
    if not quiet:
        for line in render(summary):
            click.echo(line, err=True)
    click.echo(str(summary.output))
    return summary.exit_code


def job_dir_hint(job: Any) -> str:
    from batcher.job import job_dir_for

    return str(job_dir_for(job.spec.output))


class _NoPandas:
    """A meta-path finder for which pandas does not exist (see `skip_pandas_probe`)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def skip_pandas_probe() -> None:
    """pyarrow imports pandas (0.4 s of CPU) the first time it converts a Python value, only
    to ask whether the value is a pandas object; batcher's never are, and batcher never uses
    pandas. Let that first probe find no pandas. For the console command only (a process of
    its own): pyarrow still imports pandas where it needs it (`to_pandas`)."""
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


def entry() -> None:
    """The `batcher` console command."""
    args = sys.argv[1:]
    if args and not {"-h", "--help", "--version"} & set(args):  # help stays instant
        skip_pandas_probe()
    main()


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


class ProgressBar:
    """A tqdm bar on stderr fed with `Progress` values."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=None, unit="req", file=sys.stderr, dynamic_ncols=True)

    def update(self, p: Any) -> None:
        self._bar.total = p.total
        self._bar.n = p.done
        self._bar.set_postfix(
            ok=p.ok, err=p.errors, tok=p.prompt_tokens + p.completion_tokens, refresh=False
        )
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def print_dry_run(dry: Any) -> None:
    click.echo(f"{dry.requests} requests from {dry.rows} rows to {dry.url}")
    click.echo("headers: " + json.dumps(dry.headers))
    import orjson

    for body in dry.bodies:  # exactly as it would be sent
        click.echo(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS).decode())


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("batcher")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False


@main.command(context_settings={"auto_envvar_prefix": "BATCHER"})
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
    """Read INPUT exactly as `run` would and estimate requests, tokens, cost and duration.

    Sends nothing and needs no key."""
    from batcher.analysis.estimate import estimate as make_estimate
    from batcher.analysis.estimate import render_estimate
    from batcher.analysis.tokens import recount
    from batcher.job import Job
    from batcher.spec import make_spec

    opts["json_mode"] = False  # --json here means JSON output, not a response_format
    try:
        spec = make_spec(**run_options(with_job_file(ctx, opts)))
        job = Job(spec, need_key=False)
        found, counted = recount(job.scan(), job.requests())
        figures = make_estimate(
            found,
            job.prices,
            concurrency=spec.concurrency,
            rpm=spec.rpm,
            tpm=spec.tpm,
            model_limits=spec.model_limits,
            seconds_per_request=seconds_per_request,
            typical_reply_tokens=typical_reply_tokens,
        )
    except BatcherError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**figures.to_dict(), "prompt_tokens_counted_by": counted}))
    else:
        for line in render_estimate(figures):
            click.echo(line)
        click.echo(f"(prompt tokens counted by {counted})")


estimate.params = [p for p in estimate.params if p.name != "json_mode"]


@main.command()
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
    """Requests, tokens and cost per group of a finished OUT or a running job's directory.

    The server's cost wins where it sent one; other rows are priced from tokens."""
    from batcher.analysis.cost import (
        PriceTable,
        cost_csv,
        cost_groups,
        cost_json,
        render_cost,
        with_costs,
    )
    from batcher.analysis.status import read_results

    columns = tuple(c.strip() for c in by.split(",") if c.strip())
    try:
        table = with_costs(read_results(path), PriceTable.load(prices))
        groups, total = cost_groups(table, columns)
    except BatcherError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(cost_json(groups, total, columns)))
    elif as_csv:
        click.echo(cost_csv(groups, total, columns), nl=False)
    else:
        for line in render_cost(groups, total, columns):
            click.echo(line)


@main.command()
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
    from batcher.analysis.cost import PriceTable, with_costs
    from batcher.analysis.report import build_report, render_html, render_report
    from batcher.analysis.status import read_results

    columns = None if by is None else tuple(c.strip() for c in by.split(",") if c.strip())
    try:
        table = with_costs(read_results(path), PriceTable.load(prices))
        found = build_report(
            table, source=str(path), by=columns, reference=reference_column, answer=answer_column
        )
    except BatcherError as exc:
        raise CliError(str(exc)) from None
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


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def status(path: Path, as_json: bool) -> None:
    """How far the job writing PATH (OUT.parquet or its OUT.parquet.batcher/) has got.

    Works while the job runs in another terminal, after it stopped, and on a finished OUT."""
    from batcher.analysis.status import job_status, render

    try:
        found = job_status(path)
    except BatcherError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(found.to_dict()))
    else:
        for line in render(found):
            click.echo(line)


@main.command("mock-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds per reply.")
@click.option(
    "--jitter", type=float, default=0.0, show_default=True, help="Extra random 0..S seconds."
)
@click.option(
    "--fail-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Share of attempts failing with an injected fault.",
)
@click.option(
    "--faults",
    default="429,500,502,503,drop",
    show_default=True,
    help="Fault kinds drawn by --fail-rate.",
)
@click.option("--rpm", type=int, help="Answer 429 beyond N requests a minute.")
@click.option("--max-concurrency", type=int, help="Answer 429 beyond N requests in progress.")
@click.option("--api-key-env", metavar="NAME", help="Require the key held in $NAME.")
@click.option(
    "--error-style", type=click.Choice(["openai", "octen"]), default="openai", show_default=True
)
@click.option(
    "--usage-style", type=click.Choice(["openai", "octen"]), default="openai", show_default=True
)
@click.option("--ratelimit-headers", is_flag=True, help="Send x-ratelimit-* headers.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False),
    help="Append one JSON line per request received.",
)
def mock_server(host: str, port: int, api_key_env: str | None, faults: str, **opts: Any) -> None:
    """Run the built-in OpenAI-compatible mock API (no key, no network)."""
    import os

    from batcher.mock.server import MockConfig, serve

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise CliError(f"--api-key-env: ${api_key_env} is not set")
    kinds = tuple(k.strip() for k in faults.split(",") if k.strip())
    try:
        config = MockConfig(api_key=api_key, faults=kinds, **opts)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        serve(config, host, port, ready=lambda url: click.echo(f"Mock API listening on {url}"))
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
