"""The job spec: every option of `batcher run`, validated once, typed, never holding a key."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from batcher.errors import UsageError, is_uri
from batcher.providers import AUTH_STYLES, PRESETS

KEEP_ALL = "all"
KEEP_NONE = "none"
# Options whose values are one of a few names (the CLI offers the same choices).
CHOICES: dict[str, tuple[str, ...]] = {
    "provider": tuple(PRESETS),
    "auth_header": AUTH_STYLES,
    "on_bad_row": ("error", "skip"),
    "input_format": ("jsonl", "csv", "parquet"),
    "engine": ("local", "ray"),
    "mode": ("online", "batch"),
}
# What only --mode batch takes (None: its default).
BATCH_OPTIONS = (
    "batch_rounds",
    "fallback",
    "wait",
    "batch_max_requests",
    "batch_max_bytes",
    "batch_submit",
)


@dataclass(frozen=True)
class JobSpec:
    input: Path | str  # a path, a folder, a glob, or a URI (kept a str: s3://...)
    output: Path | None = None  # None only for --dry-run
    models: tuple[str, ...] = ()
    # request body
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json: bool = False
    stream: bool = False  # streaming requests: the same row, plus time to first token
    schema: Path | None = None  # JSON Schema of the reply object
    reask: int = 2  # re-asks of a reply that is not valid JSON or breaks the schema
    params: Mapping[str, Any] = field(default_factory=dict)
    sweep: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # body keys and the values to cross
    samples: int = 1  # independent requests per (row, model, combination)
    system: str | None = None
    system_file: Path | None = None  # the system message template, from a file
    template: str | None = None
    template_file: Path | None = None
    messages_template: Path | None = None
    # input shape
    input_format: str | None = None  # jsonl | csv | parquet; None: from the name
    prompt_column: str = "prompt"
    messages_column: str = "messages"
    id_column: str | None = None
    keep_columns: str | tuple[str, ...] = KEEP_ALL
    body_columns: tuple[str, ...] = ()  # row columns sent as body keys (a row's own model)
    on_bad_row: str = "error"
    limit: int | None = None
    # where to send
    provider: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    auth_header: str | None = None
    # engine
    concurrency: int = 32
    timeout: float = 120.0
    max_retries: int = 6
    rpm: float | None = None
    tpm: float | None = None
    model_limits: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # durability
    flush_rows: int = 1000
    flush_seconds: float = 5.0
    keep_job_dir: bool = False
    fresh: bool = False  # drop earlier results of this OUT and start over
    retry_errors: bool = False  # send again the requests whose earlier result was an error
    cache: Path | None = None  # response cache directory shared across jobs
    batch_output: tuple[Path, ...] = ()  # Batch API output/error files: results by custom_id
    prices: Path | None = None  # price table added to the packaged one (and $BATCHER_PRICES)
    max_cost: float | None = None  # USD budget: stop sending before passing it
    dry_run: bool = False
    cache_aware: bool | None = None  # group rows by prompt prefix (None: on, off on Ray)
    prompt_cache_key: bool | None = None  # None: sent where the provider takes one (OpenAI)
    # where it runs
    engine: str = "local"  # local | ray
    ray_address: str | None = None  # "local", "auto", "ray://..." or host:port; None: local
    actors: int | None = None  # sender actors on Ray (-c requests in flight each); None: 2
    # how: now, or through the provider's Batch API (batcher.batch)
    mode: str = "online"  # online | batch
    batch_rounds: int | None = None  # None: 3
    fallback: str | None = None  # "online": send online what the rounds left
    wait: bool | None = None  # False: submit and exit; None: wait
    batch_max_requests: int | None = None  # None: 50,000
    batch_max_bytes: int | None = None  # None: 200 MiB
    batch_submit: bool | None = None  # False: only collect the recorded batches (batch cancel)

    def __post_init__(self) -> None:
        check_positive("concurrency", self.concurrency)
        check_positive("timeout", self.timeout)
        check_positive("flush-rows", self.flush_rows)
        check_positive("flush-seconds", self.flush_seconds)
        if self.max_retries < 0:
            raise UsageError("--max-retries must be 0 or more")
        check_positive("samples", self.samples)
        for key, values in self.sweep:
            if key in ("model", "messages"):
                raise UsageError(f"--sweep {key}: use -m for models; messages come from the input")
            if not values:
                raise UsageError(f"--sweep {key}: no values")
        if len({key for key, _ in self.sweep}) != len(self.sweep):
            raise UsageError("--sweep: the same key twice")
        if self.params.get("stream") or self.params.get("stream_options") is not None:
            raise UsageError("use --stream for streaming requests, not --param stream=...")
        named = self.named_body()
        for key in self.params:
            if key in named:
                raise UsageError(f"--param {key} and {named[key]} both set {key!r}; give one")
        for key, _ in self.sweep:
            if key in named or key in self.params:
                other = named.get(key) or f"--param {key}"
                raise UsageError(f"--sweep {key} and {other} both set {key!r}; give one")
        if self.cache_aware and self.engine == "ray":
            raise UsageError("--cache-aware works with --engine local; Ray sends in block order")
        if self.reask < 0:
            raise UsageError("--reask must be 0 or more")
        if self.json and self.schema is not None:
            raise UsageError("give --json or --schema, not both")
        for name in ("rpm", "tpm", "limit", "max_tokens", "max_cost"):
            value = getattr(self, name)
            if value is not None:
                check_positive(name.replace("_", "-"), value)
        for name in ("system", "template"):
            if getattr(self, name) is not None and getattr(self, f"{name}_file") is not None:
                raise UsageError(f"give --{name} or --{name}-file, not both")
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in choices:
                shown = ", ".join(repr(c) for c in choices)
                raise UsageError(f"--{name.replace('_', '-')}: {value!r} is not one of {shown}")
        self._check_engine()
        self._check_mode()
        if self.fresh and self.retry_errors:
            raise UsageError("--fresh starts over; it cannot be combined with --retry-errors")
        if (
            self.output is not None
            and str(self.input) != "-"
            and os.path.realpath(self.output) == os.path.realpath(self.input)
        ):
            raise UsageError("the output path is the input file")

    def _check_engine(self) -> None:
        if self.engine != "ray":
            for name in ("ray_address", "actors"):
                if getattr(self, name) is not None:
                    flag = f"--{name.replace('_', '-')}"
                    raise UsageError(f"{flag} is for --engine ray; add --engine ray or drop it")
            return
        if importlib.util.find_spec("ray") is None:
            raise UsageError("--engine ray needs Ray: pip install 'batcher[ray]'")
        if self.actors is not None:
            check_positive("actors", self.actors)

    def _check_mode(self) -> None:
        if self.mode != "batch":
            for name in BATCH_OPTIONS:
                if getattr(self, name) is not None:
                    flag = "--no-wait" if name == "wait" else f"--{name.replace('_', '-')}"
                    raise UsageError(f"{flag} is for --mode batch; add --mode batch or drop it")
            return
        for name, given in (
            ("--engine ray", self.engine == "ray"),
            ("--stream", self.stream),
            ("--max-cost", self.max_cost is not None),
            ("--cache-aware", bool(self.cache_aware)),
            ("--rpm", self.rpm is not None),
            ("--tpm", self.tpm is not None),
        ):
            if given:
                raise UsageError(f"{name} is for --mode online; a Batch API job cannot use it")
        for name in ("batch_rounds", "batch_max_requests", "batch_max_bytes"):
            if getattr(self, name) is not None:
                check_positive(name.replace("_", "-"), getattr(self, name))

    def named_body(self) -> dict[str, str]:
        """The body keys the named options set, and the option that sets each."""
        named = {
            "temperature": ("--temperature", self.temperature is not None),
            "top_p": ("--top-p", self.top_p is not None),
            "max_tokens": ("--max-tokens", self.max_tokens is not None),
            "seed": ("--seed", self.seed is not None),
            "stop": ("--stop", bool(self.stop)),
            "response_format": (
                "--json" if self.json else "--schema",
                self.json or bool(self.schema),
            ),
            "stream": ("--stream", self.stream),
            "stream_options": ("--stream", self.stream),
        }
        return {key: option for key, (option, given) in named.items() if given}

    def body_params(self) -> dict[str, Any]:
        """Job-level body keys: the named options and --param (never the same key twice)."""
        body: dict[str, Any] = {}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.seed is not None:
            body["seed"] = self.seed
        if self.stop:
            body["stop"] = list(self.stop)
        if self.json:
            body["response_format"] = {"type": "json_object"}
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self.params)
        return body

    def settings(self) -> dict[str, Any]:
        """The spec as JSON-friendly settings for metadata and the job directory."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) if isinstance(v, Path) else v for v in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


def keep_columns(value: str) -> str | tuple[str, ...]:
    """`--keep-columns` as written: "all", "none" or "a,b,c"."""
    if value in (KEEP_ALL, KEEP_NONE):
        return value
    return tuple(c.strip() for c in value.split(",") if c.strip())


def unknown_message(what: str, name: str, known: Iterable[str]) -> str:
    """ "unknown option 'modles' (did you mean 'models'?)" """
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}"


def check_positive(name: str, value: float) -> None:
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise UsageError(f"--{name} must be a finite number greater than 0, got {value}")


# The default of every field (the command line shows the same ones).
DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(JobSpec) if f.default is not dataclasses.MISSING
}
PATHS = (
    "input",
    "output",
    "api_key_file",
    "cache",
    "schema",
    "messages_template",
    "system_file",
    "template_file",
    "prices",
)


def make_spec(**options: Any) -> JobSpec:
    """A `JobSpec` from keyword options (library callers), unknown names rejected."""
    known = {f.name for f in fields(JobSpec)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(unknown_message("option", unknown[0], known))
    for name in PATHS:
        if options.get(name) is not None and not (name == "input" and is_uri(options[name])):
            options[name] = Path(options[name])
    if options.get("batch_output") is not None:
        given = options["batch_output"]
        given = [given] if isinstance(given, (str, os.PathLike)) else given
        options["batch_output"] = tuple(Path(p) for p in given)
    for name in ("models", "stop", "body_columns"):
        value = options.get(name)
        if isinstance(value, str):
            options[name] = (value,)
        elif value is not None:
            options[name] = tuple(value)
    sweep = options.get("sweep")
    if isinstance(sweep, Mapping):
        options["sweep"] = tuple((k, tuple(v)) for k, v in sweep.items())
    elif sweep is not None:
        options["sweep"] = tuple((k, tuple(v)) for k, v in sweep)
    keep = options.get("keep_columns")
    if isinstance(keep, (list, tuple)):
        options["keep_columns"] = tuple(keep)
    return JobSpec(**options)


__all__ = ["JobSpec", "make_spec"]
