"""Assembly: results from the parts, joined to the input's requests in input order.

A window whose results are exactly its default requests is put in order from the results
alone (no Request is built); anything else goes through the requests. Both must give the
same rows."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from batcher.io.assemble import (
    Assembler,
    KeySpace,
    Layout,
    PartWriter,
    RequestGroup,
)
from batcher.types import Request, Result, Status

MODELS = ("a", "b")
KEYS = KeySpace(MODELS, variants=2, samples=2)
ROWS = 12


def requests(start: int, stop: int) -> list[Request]:
    return [
        Request(row, f"id{row}", model, mi, {}, f"h{row}{model}{v}{k}", 1, None, k, variant=v)
        for row in range(start, stop)
        for mi, model in enumerate(MODELS)
        for v in range(KEYS.variants)
        for k in range(KEYS.samples)
    ]


def result(r: Request, content: str = "") -> Result:
    return Result(
        row_index=r.row_index,
        model_index=r.model_index,
        sample=r.sample,
        variant=r.variant,
        id=r.row_id,
        model=r.model,
        status=Status.OK,
        request_hash=r.request_hash,
        attempts=1,
        finished_at=1.0,
        reply=None,
        error_message=content or None,
    )


def write_parts(job_dir, results: list[Result], size: int = 7, first_part: int = 0) -> None:
    writer = PartWriter(job_dir, first_part=first_part)
    for i in range(0, len(results), size):
        writer.extend(results[i : i + size])
        writer.flush()


def assemble(job_dir, start: int, stop: int, *, default: bool, build=None) -> pa.Table:
    layout = Layout(with_sample=True, params=(("param_t", pa.int64(), (0, 1)),))
    assembler = Assembler(job_dir, layout, not_sent_reason="not sent", keys=KEYS)
    group = RequestGroup(start, stop, None, build or (lambda: requests(start, stop)), default)
    return assembler.table(group)


def never() -> list[Request]:
    raise AssertionError("the requests were built")


def shuffled(items: list, seed: int = 1) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


@pytest.mark.parametrize("window", [(0, ROWS), (3, 9)])
def test_results_alone_give_the_same_rows_as_the_requests(tmp_path, window):
    write_parts(tmp_path, shuffled([result(r) for r in requests(0, ROWS)]))
    fast = assemble(tmp_path, *window, default=True, build=never)  # from the results alone
    slow = assemble(tmp_path, *window, default=False)
    assert fast.equals(slow)
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


def test_a_missing_result_becomes_not_sent(tmp_path):
    todo = requests(0, ROWS)
    write_parts(tmp_path, shuffled([result(r) for r in todo[:5] + todo[6:]]))
    table = assemble(tmp_path, 0, ROWS, default=True)
    assert table.num_rows == len(todo)
    assert table["error_type"].to_pylist()[5] == "not_sent"
    assert table["request_hash"].to_pylist()[5] == todo[5].request_hash
    assert table.equals(assemble(tmp_path, 0, ROWS, default=False))


def test_a_key_written_twice_keeps_the_newest_even_when_the_count_adds_up(tmp_path):
    todo = requests(0, 2)
    # key 3 twice (older, newer part) and key 4 missing: as many results as requests
    write_parts(tmp_path, [result(r) for r in todo[:4] + todo[5:]], size=100)
    write_parts(tmp_path, [result(todo[3], "newer")], first_part=1)
    table = assemble(tmp_path, 0, 2, default=True)
    assert table["error_message"].to_pylist()[3] == "newer"
    assert table["error_type"].to_pylist()[4] == "not_sent"


def test_a_model_the_job_does_not_ask_is_left_out(tmp_path):
    todo = requests(0, 2)
    stale = Request(0, "id0", "c", 2, {}, "hc", 1, None, 0)
    write_parts(tmp_path, [result(r) for r in todo[1:]] + [result(stale)])
    table = assemble(tmp_path, 0, 2, default=True)
    assert "c" not in table["model"].to_pylist()
    assert table["error_type"].to_pylist()[0] == "not_sent"


def test_a_key_written_twice_in_a_short_window_keeps_the_newest(tmp_path):
    todo = requests(0, 1)
    write_parts(tmp_path, [result(todo[0], "old")])
    write_parts(tmp_path, [result(todo[0], "new")], first_part=5)
    table = assemble(tmp_path, 0, 1, default=True)
    assert table["error_message"].to_pylist()[0] == "new"
    assert table["error_type"].to_pylist()[1:] == ["not_sent"] * (len(todo) - 1)
