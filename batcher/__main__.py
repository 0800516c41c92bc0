from batcher.cli.run import entry

entry()
