"""batcher: bulk chat completions through OpenAI-compatible APIs, into Parquet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("batcher")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
