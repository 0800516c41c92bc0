"""The `batcher` command line: click at the edge, the library underneath.

`batcher.cli.options` holds the options `run` and `estimate` share; each command module
parses, builds a spec, calls the library, prints and picks the exit code.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from batcher import __version__
from batcher.cli.analysis import cost, estimate, export_batch, report, show, status
from batcher.cli.batch import batch
from batcher.cli.mock import mock_server
from batcher.cli.models import models
from batcher.cli.options import env_names
from batcher.cli.run import run

NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class Batcher(click.Group):
    """The `batcher` group: a usage error is one line, like every other error of batcher's
    (click's own form adds the usage and a hint on three more)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NO_ARGS_IS_HELP as exc:  # bare `batcher`: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            see = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{see}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(
    cls=Batcher,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="batcher")
def main() -> None:
    """Push bulk chat-completion requests through OpenAI-compatible APIs into Parquet."""


COMMANDS = (run, estimate, export_batch, batch, cost, report, status, show, models, mock_server)
for command in COMMANDS:
    if command.context_settings.get("auto_envvar_prefix"):  # options from the environment
        env_names(command)
    main.add_command(command)


def entry() -> None:
    """The `batcher` console command."""
    open_standard_streams()
    args = sys.argv[1:]
    if args and not {"-h", "--help", "--version"} & set(args):  # help stays instant
        from batcher.io.columns import skip_pandas_probe

        skip_pandas_probe()
    main(prog_name="batcher")  # also as `python -m batcher`


def open_standard_streams() -> None:
    """Give a standard stream the process was started without (`>&-`) /dev/null: else the
    first socket or file the job opens takes its number, and output meant for it lands
    there (uvloop aborted on it), or Python has no sys.stderr at all."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115
