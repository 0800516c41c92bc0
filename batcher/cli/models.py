"""`batcher models`: the models an endpoint lists (`GET {base}/models`), to check a name
before a job."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from batcher.cli.options import ENDPOINT_OPTIONS, CliError
from batcher.errors import BatcherError


def _models(as_json: bool, timeout: float, **opts: Any) -> None:
    """List the models of the endpoint (the built-in mock unless --provider/--base-url)."""
    from batcher.providers import read_key, resolve_provider

    try:
        provider = resolve_provider(
            opts["provider"], opts["base_url"], opts["auth_header"], opts["api_key_env"]
        )
        key = read_key(provider, opts["api_key_file"])
        found = asyncio.run(_list(provider, key, timeout))
    except BatcherError as exc:
        raise CliError.of(exc) from None
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for model in found:
        click.echo(model["id"])


async def _list(provider: Any, key: str | None, timeout: float) -> list[dict]:
    from batcher.engine.http import list_models
    from batcher.providers import Endpoint

    if provider.base_url is not None:
        return await list_models(Endpoint(provider.base_url, provider.auth_header, key), timeout)
    from batcher.mock import MockServer

    async with MockServer(keep_log=False) as server:
        return await list_models(Endpoint(server.url, provider.auth_header, key), timeout)


for _option in reversed(ENDPOINT_OPTIONS):
    _models = _option(_models)
models = click.command("models", context_settings={"auto_envvar_prefix": "BATCHER"})(
    click.option("--json", "as_json", is_flag=True, help="The server's model objects as JSON.")(
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=30.0,
            show_default=True,
            help="Seconds to wait for the list.",
        )(_models)
    )
)
