from batcher.cli import entry

entry()
