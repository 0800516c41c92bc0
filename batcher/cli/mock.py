"""`batcher mock-server`: the built-in OpenAI-compatible mock API, in the foreground."""

from __future__ import annotations

from typing import Any

import click

from batcher.cli.options import CliError


@click.command("mock-server")
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
    "--usage-style",
    type=click.Choice(["openai", "octen", "anthropic"]),
    default="openai",
    show_default=True,
    help="Usage as OpenAI, Octen (meta.usage) or a gateway passing Anthropic's on.",
)
@click.option(
    "--cache-window",
    type=float,
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Report prompt prefixes of 1,024+ tokens seen this recently as cached (0: never).",
)
@click.option(
    "--batch-step",
    type=float,
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Batch API: how long each phase of a batch takes (validating, in progress, ...).",
)
@click.option(
    "--batch-faults",
    metavar="F,...",
    default="",
    help="Batch API: a fault per batch created, in order: none, expire:K, invalid, "
    "no_output, finalizing[:S], gone.",
)
@click.option(
    "--rpm-window",
    type=float,
    metavar="SECONDS",
    help="Enforce --rpm over this span, as real servers do (600 rpm over 1 s: 10 a second).",
)
@click.option(
    "--rpm-schedule",
    metavar="S:RPM,...",
    help="Change --rpm as the run goes on: '20:200,80:600' (seconds after the first request).",
)
@click.option(
    "--ratelimit-style",
    type=click.Choice(["retry-after", "retry-after-ms", "headers", "bare"]),
    default="retry-after",
    show_default=True,
    help="429s with retry-after; with retry-after-ms and x-ratelimit-*; x-ratelimit-* on "
    "every reply (OpenAI); or bare 429s with no header (Octen).",
)
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

    from batcher.mock import MockConfig, serve

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise CliError(f"--api-key-env: ${api_key_env} is not set")
    kinds = tuple(k.strip() for k in faults.split(",") if k.strip())
    try:
        opts["rpm_schedule"] = _schedule(opts["rpm_schedule"])
        opts["batch_faults"] = tuple(
            f.strip() for f in opts["batch_faults"].split(",") if f.strip()
        )
        config = MockConfig(api_key=api_key, faults=kinds, **opts)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        serve(config, host, port, ready=lambda url: click.echo(f"Mock API listening on {url}"))
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _schedule(text: str | None) -> tuple[tuple[float, int], ...]:
    """'20:200,80:600' -> ((20.0, 200), (80.0, 600))."""
    if not text:
        return ()
    pairs = []
    for part in text.split(","):
        after, _, rpm = part.partition(":")
        try:
            pairs.append((float(after), int(rpm)))
        except ValueError:
            raise ValueError(
                f"--rpm-schedule: {part.strip()!r} is not SECONDS:RPM (e.g. 20:200)"
            ) from None
    return tuple(pairs)
