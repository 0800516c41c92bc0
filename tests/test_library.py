"""The library API, as a notebook uses it."""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq
from conftest import SAMPLE

import batcher


def test_run_returns_a_summary(tmp_path):
    seen = []
    summary = batcher.run(
        SAMPLE / "questions.jsonl",
        tmp_path / "q.parquet",
        models=["mock-1", "mock-2"],
        limit=5,
        concurrency=4,
        progress=seen.append,
    )
    assert (summary.rows, summary.requests, summary.ok, summary.errors) == (5, 10, 10, 0)
    assert summary.exit_code == 0 and summary.output == tmp_path / "q.parquet"
    assert set(summary.models) == {"mock-1", "mock-2"}
    assert summary.models["mock-1"].ok == 5
    assert seen[-1].done == 10 and seen[-1].total == 10
    assert pq.read_table(summary.output).num_rows == 10


def test_run_inside_a_running_loop_and_arun(tmp_path):
    async def notebook_cell():
        inner = batcher.run(SAMPLE / "questions.jsonl", tmp_path / "a.parquet", limit=3)
        outer = await batcher.arun(SAMPLE / "questions.jsonl", tmp_path / "b.parquet", limit=3)
        return inner, outer

    inner, outer = asyncio.run(notebook_cell())
    assert inner.ok == outer.ok == 3


def test_unknown_option_is_a_usage_error(tmp_path):
    try:
        batcher.run(SAMPLE / "questions.jsonl", tmp_path / "a.parquet", modles=["x"])
    except batcher.errors.UsageError as exc:
        assert str(exc) == "unknown option 'modles'"
    else:
        raise AssertionError("no error")
