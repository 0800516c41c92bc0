"""The README's tables stay true to the commands: every option of `batcher run` is in its
options table, and every exit code the CLI uses is in the exit-code table."""

from __future__ import annotations

import re
from pathlib import Path

from batcher.cli.options import EXIT_STORAGE, EXIT_USAGE
from batcher.cli.run import EXIT_SIGNAL, run

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n#", start + len(title))
    return README[start:end]


def test_every_run_option_is_in_the_options_table():
    table = section("## `batcher run` options")
    missing = []
    for param in run.params:
        names = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
        if names and not any(re.search(re.escape(n) + r"(?![\w-])", table) for n in names):
            missing.append(names[0])
    assert missing == []


def test_every_exit_code_is_in_the_exit_code_table():
    table = section("### Exit codes")
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    documented = {int(code) for row in rows[2:] for code in row.split(" / ")}  # under the header
    assert documented == {0, 1, EXIT_USAGE, EXIT_STORAGE, *EXIT_SIGNAL.values()}
