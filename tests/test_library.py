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


def test_progress_true_is_tqdm_autos_bar_a_notebooks_widget_in_jupyter(tmp_path, monkeypatch):
    import tqdm.auto

    bars = []

    class Bar:  # what tqdm.auto gives: the notebook widget in Jupyter, else the text bar
        def __init__(self, **options):
            self.options, self.n, self.total, self.postfix, self.closed = options, 0, None, {}, 0
            bars.append(self)

        def set_postfix(self, refresh=False, **values):
            self.postfix = values

        def refresh(self):
            pass

        def close(self):
            self.closed += 1

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    summary = batcher.run(SAMPLE / "questions.jsonl", tmp_path / "q.parquet", limit=5,
                          progress=True)  # fmt: skip
    assert summary.ok == 5
    [bar] = bars
    assert (bar.n, bar.total, bar.closed, bar.options["unit"]) == (5, 5, 1, "req")
    assert (bar.postfix["ok"], bar.postfix["err"]) == (5, 0)


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
        assert str(exc) == "unknown option 'modles' (did you mean 'models'?)"
    else:
        raise AssertionError("no error")


def test_help_lists_every_option_with_its_default():
    import dataclasses
    import inspect

    from batcher.spec import JobSpec

    for function in (batcher.run, batcher.arun):
        params = inspect.signature(function).parameters
        expected = ["input", "output", "job", "progress"]
        expected += [f.name for f in dataclasses.fields(JobSpec)][2:]
        assert list(params) == expected
        assert params["concurrency"].default == 32
        assert params["models"].default == ()
        assert params["concurrency"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "concurrency: int = 32" in pydoc_text(batcher.run)


def pydoc_text(obj) -> str:
    import pydoc

    return pydoc.plain(pydoc.render_doc(obj))


def test_the_curated_surface():
    assert batcher.errors.UsageError is batcher.UsageError
    assert issubclass(batcher.InputError, batcher.errors.BatcherError)
    assert sorted(batcher.__all__) == [
        "BatcherError",
        "Engine",
        "EngineSettings",
        "InputError",
        "JobSummary",
        "Request",
        "Result",
        "UsageError",
        "__version__",
        "arun",
        "errors",
        "run",
        "to_arrow",
    ]
    for name in batcher.__all__:
        assert getattr(batcher, name) is not None


def test_a_job_file_with_options_over_it(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(
        f'input = "{SAMPLE / "questions.jsonl"}"\noutput = "out.parquet"\n'
        'models = ["mock-1", "mock-2"]\nlimit = 4\n',
        encoding="utf-8",
    )
    summary = batcher.run(job=job, models=["mock-2"])  # the call overrides the file
    assert summary.output == tmp_path / "out.parquet"  # relative to the job file
    assert (summary.rows, summary.requests, list(summary.models)) == (4, 4, ["mock-2"])
    try:
        batcher.run(job=job, fresh=True, limitt=3)
    except batcher.UsageError as exc:
        assert str(exc) == "unknown option 'limitt' (did you mean 'limit'?)"
    else:
        raise AssertionError("no error")


def test_requests_by_hand_through_the_engine_and_into_arrow():
    from batcher.mock import MockServer
    from batcher.providers import Endpoint

    async def main():
        async with MockServer() as server:
            engine = batcher.Engine(Endpoint(server.url, "bearer", None))
            requests = [
                batcher.Request.chat(
                    "mock-1",
                    [{"role": "user", "content": f"question {i}"}],
                    id=f"q{i}",
                    index=i,
                    temperature=0,
                    max_tokens=50,
                )
                for i in range(3)
            ]
            return requests, [r async for r in engine.run(requests)]

    requests, results = asyncio.run(main())
    first = requests[0]
    assert first.body == {
        "model": "mock-1",
        "messages": [{"role": "user", "content": "question 0"}],
        "temperature": 0,
        "max_tokens": 50,
    }
    assert first.payload == (
        b'{"max_tokens":50,"messages":[{"content":"question 0","role":"user"}],'
        b'"model":"mock-1","temperature":0}'
    )
    assert len(first.request_hash) == 64 and first.max_tokens == 50
    assert first.est_prompt_tokens == 2  # "question 0": 10 characters / 4
    table = batcher.to_arrow(sorted(results, key=lambda r: r.row_index))
    assert table.column("id").to_pylist() == ["q0", "q1", "q2"]
    assert table.column("status").to_pylist() == ["ok"] * 3
    assert table.column("request_hash").to_pylist() == [r.request_hash for r in requests]
    assert not [name for name in table.column_names if name.startswith("_")]
