"""batcher: bulk chat completions through OpenAI-compatible APIs, into Parquet.

import batcher
summary = batcher.run("prompts.jsonl", "out.parquet", models=["gpt-5.5"], provider="mock")
summary = await batcher.arun(...)   # inside a running event loop
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("batcher")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from batcher.analysis.summary import JobSummary
    from batcher.api import arun, run
    from batcher.engine.engine import Engine, EngineSettings

__all__ = ["Engine", "EngineSettings", "JobSummary", "__version__", "arun", "run"]

_LAZY = {
    "run": "batcher.api",
    "arun": "batcher.api",
    "Engine": "batcher.engine.engine",
    "EngineSettings": "batcher.engine.engine",
    "JobSummary": "batcher.analysis.summary",
}


def __getattr__(name: str) -> Any:
    """Heavy modules load on first use, so `batcher --help` stays instant."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'batcher' has no attribute {name!r}")
