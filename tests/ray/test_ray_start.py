"""While Ray starts, fd 2 goes elsewhere (Ray's C++ notes), but batcher's log lines, said
meanwhile by the checking pass, still reach stderr."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray

SCRIPT = """
import logging, os
from batcher.cli.run import setup_logging
from batcher.ray.engine import _stderr_to

setup_logging(False)
with _stderr_to(os.devnull):
    logging.getLogger("batcher.io.jobdir").warning("part-1.parquet is damaged")
    os.write(2, b"a C++ note\\n")
logging.getLogger("batcher").warning("after")
os.write(2, b"fd 2 is back\\n")
"""


def test_log_lines_reach_stderr_while_fd2_is_pointed_away():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "WARNING batcher.io.jobdir: part-1.parquet is damaged",
        "WARNING batcher: after",
        "fd 2 is back",
    ]
