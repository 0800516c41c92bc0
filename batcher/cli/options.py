"""The options `batcher run` and `batcher estimate` share, and how their values become the
keyword options of `batcher.spec.make_spec`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from batcher.errors import BatcherError, StorageError, is_uri
from batcher.spec import CHOICES, DEFAULTS, keep_columns

EXIT_USAGE = 2  # bad options or input, found before anything was sent
EXIT_STORAGE = 74  # results or the output could not be written (EX_IOERR)


class CliError(click.ClickException):
    """A one-line error and its exit code: 2 unless said otherwise."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def of(cls, error: BatcherError) -> CliError:
        """The command line's error for one of batcher's."""
        code = EXIT_STORAGE if isinstance(error, StorageError) else EXIT_USAGE
        return cls(str(error), getattr(error, "exit_code", code))  # its own, if it has one


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
    """--sweep KEY=V1,V2 (repeatable)."""
    out = []
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip() or not raw:
            raise click.BadParameter(f"expected KEY=V1,V2,..., got {value!r}", param_hint="--sweep")
        items = raw.split(",")
        if not all(item.strip() for item in items):
            raise click.BadParameter(
                f'{value!r} has an empty value; write each one out ("" for an empty string)',
                param_hint="--sweep",
            )
        out.append((key.strip(), tuple(parse_param(f"{key}={v}")[1] for v in items)))
    return tuple(out)


def env_names(command: click.Command) -> click.Command:
    """Each option of `command` also read from BATCHER_ and its long flag, the name users
    type (`--model`: BATCHER_MODEL, `--job`: BATCHER_JOB), besides click's BATCHER_ and the
    parameter's name (BATCHER_MODELS). The command line wins over both, and both over a
    --job file."""
    for param in command.params:
        flags = [o for o in param.opts if o.startswith("--")]
        if not isinstance(param, click.Option) or param.envvar or not flags:
            continue
        flag = "BATCHER_" + flags[0][2:].replace("-", "_").upper()
        named = f"BATCHER_{(param.name or '').upper()}"
        if flag != named:
            param.envvar = [flag, named]
    return command


def job_options(command: Any) -> Any:
    """The options shared by `run` and `estimate`: input, request, provider and limits."""
    for option in reversed(JOB_OPTIONS):
        command = option(command)
    return command


# Where requests go and how they authenticate: `run`, `estimate` and `models`.
ENDPOINT_OPTIONS = [
    click.option(
        "--provider",
        type=click.Choice(CHOICES["provider"]),
        help="Preset [default: mock, or custom with --base-url].",
    ),
    click.option("--base-url", help="Any OpenAI-compatible API, e.g. http://localhost:8000/v1."),
    click.option("--api-key-env", metavar="NAME", help="Environment variable holding the key."),
    click.option("--api-key-file", type=click.Path(dir_okay=False), help="File holding the key."),
    click.option("--auth-header", type=click.Choice(CHOICES["auth_header"])),
]

JOB_OPTIONS = [
    click.argument(
        "input",  # a file, folder or glob (a Path), or a URI (kept a str: s3://...)
        type=click.Path(allow_dash=True, path_type=str),
        required=False,
        callback=lambda ctx, param, value: value if value is None or is_uri(value) else Path(value),
    ),
    click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        help="OUT: NAME.parquet (one Parquet file), NAME (a Parquet dataset folder), "
        "NAME.jsonl or NAME.csv.",
    ),
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
    click.option(
        "--json",
        "json_mode",
        is_flag=True,
        envvar=["BATCHER_JSON", "BATCHER_JSON_MODE"],
        help="response_format json_object.",
    ),
    click.option(
        "--schema",
        type=click.Path(dir_okay=False, path_type=Path),
        help="JSON Schema of the reply: sent as a strict json_schema response_format, "
        "replies validated, one typed column per property.",
    ),
    click.option(
        "--reask",
        type=int,
        default=DEFAULTS["reask"],
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
        default=DEFAULTS["samples"],
        show_default=True,
        help="Independent requests per row, model and combination (with --seed S, "
        "sample k uses seed S+k).",
    ),
    click.option("--system", help="System message (a template over the row's columns)."),
    click.option(
        "--system-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="System message file.",
    ),
    click.option("--template", help='User message template, e.g. "Classify: {text}".'),
    click.option(
        "--template-file", type=click.Path(dir_okay=False, path_type=Path), help="Template file."
    ),
    click.option(
        "--messages-template",
        type=click.Path(dir_okay=False),
        help="JSON list of messages (few-shot) whose contents are templates.",
    ),
    click.option(
        "--input-format",
        type=click.Choice(CHOICES["input_format"]),
        help="The input's format, for a name without .jsonl/.csv/.parquet (or standard input).",
    ),
    click.option("--prompt-column", default=DEFAULTS["prompt_column"], show_default=True),
    click.option("--messages-column", default=DEFAULTS["messages_column"], show_default=True),
    click.option(
        "--id-column", help="Row id column [default: id, else custom_id, else row number]"
    ),
    click.option(
        "--keep-columns",
        default=DEFAULTS["keep_columns"],
        show_default=True,
        help="Input columns to keep: all, none or a,b,c.",
    ),
    click.option(
        "--body-columns",
        metavar="A,B",
        help="Row columns sent as body keys of the same name: a row's own model, "
        "temperature, ... (any other column is never sent).",
    ),
    click.option(
        "--on-bad-row",
        type=click.Choice(CHOICES["on_bad_row"]),
        default=DEFAULTS["on_bad_row"],
        show_default=True,
        help="skip: record bad rows as errors and send the rest.",
    ),
    click.option("--limit", type=int, help="Only the first N rows."),
    *ENDPOINT_OPTIONS,
    click.option(
        "-c",
        "--concurrency",
        type=int,
        default=DEFAULTS["concurrency"],
        show_default=True,
        help="Requests in flight at most.",
    ),
    click.option(
        "--timeout",
        type=float,
        default=DEFAULTS["timeout"],
        show_default=True,
        help="Seconds per attempt.",
    ),
    click.option("--max-retries", type=int, default=DEFAULTS["max_retries"], show_default=True),
    click.option("--rpm", type=float, help="Requests per minute at most."),
    click.option("--tpm", type=float, help="Tokens per minute at most."),
    click.option(
        "--flush-rows",
        type=int,
        default=DEFAULTS["flush_rows"],
        show_default=True,
        help="Make results durable at least every N results...",
    ),
    click.option(
        "--flush-seconds",
        type=float,
        default=DEFAULTS["flush_seconds"],
        show_default=True,
        help="...or every S seconds.",
    ),
    click.option(
        "--cache-aware/--no-cache-aware",
        default=None,
        help="Send rows sharing a prompt prefix of 1,024+ tokens one after another, for the "
        "provider's prompt cache; OUT keeps input order [default: on; off on Ray].",
    ),
    click.option(
        "--prompt-cache-key/--no-prompt-cache-key",
        default=None,
        help="Send prompt_cache_key (OpenAI's routing hint), named after the shared prefix "
        "[default: on for api.openai.com].",
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
    click.option(
        "--batch-output",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="A Batch API output or error file whose lines are results of this job's requests "
        "(by custom_id, as export-batch makes them); only the rest are sent. Repeatable.",
    ),
    click.option(
        "--engine",
        type=click.Choice(CHOICES["engine"]),
        default="local",
        show_default=True,
        help="Where requests are sent from: this process, or actors on Ray Data "
        "(pip install 'batcher[ray]').",
    ),
    click.option(
        "--ray-address",
        metavar="ADDR",
        help="--engine ray: 'local' (a Ray on 127.0.0.1, the default), 'auto' or a cluster.",
    ),
    click.option(
        "--actors",
        type=int,
        help="--engine ray: sender actors, each with -c requests in flight [default: 2].",
    ),
    click.option(
        "--mode",
        type=click.Choice(CHOICES["mode"]),
        default="online",
        show_default=True,
        help="Send each request now, or through the provider's Batch API (about half the "
        "price, results within 24 hours).",
    ),
    click.option(
        "--batch-rounds",
        type=int,
        help="--mode batch: batch rounds at most; each resubmits what the last left without "
        "a result (expired, cancelled, a retryable error) [default: 3].",
    ),
    click.option(
        "--fallback",
        type=click.Choice(["online"]),
        help="--mode batch: send online what the batch rounds left.",
    ),
    click.option(
        "--wait/--no-wait",
        default=None,
        help="--mode batch: wait for the batches, or submit them and exit (rerun to collect) "
        "[default: wait].",
    ),
    click.option(
        "--batch-max-requests",
        type=int,
        help="--mode batch: requests in one batch file at most [default: 50,000].",
    ),
    click.option(
        "--batch-max-bytes",
        type=int,
        help="--mode batch: bytes of one batch file at most [default: 200 MiB].",
    ),
]


# What the command line says itself; a value left at its default does not override the file.
EXPLICIT = frozenset({ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT})


def spec_options(ctx: click.Context, opts: dict[str, Any]) -> dict[str, Any]:
    """The `JobSpec` options of a command: what the command line (or the environment) set,
    laid over the `--job` file's; the spec's defaults fill in the rest."""
    path = opts.pop("job_file", None)
    given: dict[str, Any] = {}
    for name, value in opts.items():
        if ctx.get_parameter_source(name) not in EXPLICIT:
            continue
        if name == "json_mode":
            given["json"] = value
        elif name == "params":
            given["params"] = dict(parse_param(p) for p in value)
        elif name == "sweep":
            given["sweep"] = parse_sweeps(value)
        elif name == "keep_columns":
            given["keep_columns"] = keep_columns(value)
        elif name == "body_columns":
            given["body_columns"] = tuple(c.strip() for c in value.split(",") if c.strip())
        else:
            given[name] = value
    options = given
    if path is not None:
        from batcher.jobfile import load_job_file, merge

        options = merge(load_job_file(path).options, given)
    if options.get("input") is None:
        raise CliError("missing INPUT: give the input file, or `input` in the --job file")
    return options
