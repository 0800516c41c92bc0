"""Assembly: the spool's requests joined with their newest results from the parts, in
input order, one vectorised lookup per window."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from batcher.io.assemble import Assembler
from batcher.io.columns import Layout, results_table
from batcher.io.jobdir import JobDir, write_atomic
from batcher.io.spool import SpoolWriter, Windows
from batcher.types import Request, Result, Status

MODELS = ("a", "b")
VARIANTS, SAMPLES = 2, 2
ROWS = 12


def requests(start: int, stop: int) -> list[Request]:
    return [
        Request(row, f"id{row}", model, mi, b"{}", f"h{row}{model}{v}{k}", 1, None, k, variant=v)
        for row in range(start, stop)
        for mi, model in enumerate(MODELS)
        for v in range(VARIANTS)
        for k in range(SAMPLES)
    ]


def result(r: Request, content: str = "") -> Result:
    return Result.of(r, Status.OK, attempts=1, finished_at=1.0, error_message=content or None)


def write_parts(job_dir: JobDir, results: list[Result], size: int = 7, first_part: int = 0):
    job_dir.create()
    for n, i in enumerate(range(0, len(results), size), first_part):
        write_atomic(results_table(results[i : i + size]), job_dir.path / f"part-{n:06d}.parquet")


@pytest.fixture
def job_dir(tmp_path) -> JobDir:
    """A job folder whose spool holds the requests of rows 0..ROWS, in batches of 4 rows."""
    folder = JobDir(tmp_path / "out.parquet")
    folder.create()
    with SpoolWriter(folder.spool) as sink:
        for start in range(0, ROWS, 4):
            batch = requests(start, start + 4)
            sink(None, batch, [True] * len(batch))
    return folder


def assemble(job_dir: JobDir, start: int, stop: int) -> pa.Table:
    layout = Layout(with_sample=True, params=(("param_t", pa.int64(), (0, 1)),))
    assembler = Assembler(
        job_dir, layout, models=MODELS, variants=VARIANTS, samples=SAMPLES,
        not_sent_reason="not sent",
    )  # fmt: skip
    windows = Windows(job_dir.spool)
    try:
        if start:
            windows.take(0, start)
        return assembler.table(windows.take(start, stop), start, stop, None)
    finally:
        windows.close()


def shuffled(items: list, seed: int = 1) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


@pytest.mark.parametrize("window", [(0, ROWS), (3, 9)])
def test_shuffled_results_come_out_in_request_order(job_dir, window):
    write_parts(job_dir, shuffled([result(r) for r in requests(0, ROWS)]))
    fast = assemble(job_dir, *window)
    assert fast["status"].to_pylist() == ["ok"] * fast.num_rows
    expected = [(r.row_index, r.model, r.variant, r.sample) for r in requests(*window)]
    got = list(
        zip(
            fast["id"].to_pylist(),
            fast["model"].to_pylist(),
            fast["param_t"].to_pylist(),
            fast["sample"].to_pylist(),
        )
    )
    assert got == [(f"id{row}", m, v, k) for row, m, v, k in expected]


def test_a_missing_result_becomes_not_sent(job_dir):
    todo = requests(0, ROWS)
    write_parts(job_dir, shuffled([result(r) for r in todo[:5] + todo[6:]]))
    table = assemble(job_dir, 0, ROWS)
    assert table.num_rows == len(todo)
    assert table["error_type"].to_pylist() == [None] * 5 + ["not_sent"] + [None] * (len(todo) - 6)
    assert table["error_message"].to_pylist()[5] == "not sent"
    assert table["request_hash"].to_pylist() == [r.request_hash for r in todo]
    assert table["id"].to_pylist() == [r.row_id for r in todo]


def test_a_key_written_twice_keeps_the_newest_even_when_the_count_adds_up(job_dir):
    todo = requests(0, 2)
    # key 3 twice (older, newer part) and key 4 missing: as many results as requests
    write_parts(job_dir, [result(r) for r in todo[:4] + todo[5:]], size=100)
    write_parts(job_dir, [result(todo[3], "newer")], first_part=1)
    table = assemble(job_dir, 0, 2)
    assert table["error_message"].to_pylist()[3] == "newer"
    assert table["error_type"].to_pylist()[4] == "not_sent"


def test_a_model_the_job_does_not_ask_is_left_out(job_dir):
    todo = requests(0, 2)
    stale = Request(0, "id0", "c", 2, b"{}", "hc", 1, None, 0)
    write_parts(job_dir, [result(r) for r in todo[1:]] + [result(stale)])
    table = assemble(job_dir, 0, 2)
    assert "c" not in table["model"].to_pylist()
    assert table["error_type"].to_pylist()[0] == "not_sent"


def test_a_key_written_twice_in_a_short_window_keeps_the_newest(job_dir):
    todo = requests(0, 1)
    write_parts(job_dir, [result(todo[0], "old")])
    write_parts(job_dir, [result(todo[0], "new")], first_part=5)
    table = assemble(job_dir, 0, 1)
    assert table["error_message"].to_pylist()[0] == "new"
    assert table["error_type"].to_pylist()[1:] == ["not_sent"] * (len(todo) - 1)
