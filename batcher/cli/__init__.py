"""The `batcher` command line."""

from batcher.cli.run import entry, main

__all__ = ["entry", "main"]
