"""batcher: bulk chat completions through OpenAI-compatible APIs, into Parquet.

    import batcher
    summary = batcher.run("prompts.jsonl", "out.parquet", models=["gpt-5.5"])
    summary = await batcher.arun(...)                      # inside a running event loop
    summary = batcher.run(job="jobs/label_reviews.toml")   # a job file, as `batcher run --job`

    engine = batcher.Engine(endpoint, batcher.EngineSettings(concurrency=64))
    async for result in engine.run([batcher.Request.chat("gpt-5.5", messages)]):
        ...
    table = batcher.to_arrow(results)                      # results as an Arrow table

Errors are `batcher.errors.*` (`UsageError`, `InputError`, ...); `help(batcher.run)` lists
every option.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from batcher import errors
from batcher.errors import BatcherError, InputError, UsageError

try:
    __version__ = version("batcher")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from batcher.analysis.summary import JobSummary
    from batcher.api import arun, run
    from batcher.engine.engine import Engine, EngineSettings
    from batcher.io.columns import to_arrow
    from batcher.types import Request, Result

__all__ = [
    "BatcherError",
    "Engine",
    "EngineSettings",
    "InputError",
    "JobSummary",
    "Request",
    "Result",
    "UsageError",
    "__version__",
    "arun",
    "errors",
    "run",
    "to_arrow",
]

_LAZY = {
    "run": "batcher.api",
    "arun": "batcher.api",
    "Engine": "batcher.engine.engine",
    "EngineSettings": "batcher.engine.engine",
    "JobSummary": "batcher.analysis.summary",
    "Request": "batcher.types",
    "Result": "batcher.types",
    "to_arrow": "batcher.io.columns",
}


def __getattr__(name: str) -> Any:
    """Heavy modules load on first use, so `batcher --help` stays instant."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'batcher' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
