"""Edge cases found in review: hangs, locks, timed flushes, odd outputs and odd replies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pyarrow.parquet as pq
from conftest import Job, durable_count, prompts, request, wait_for, write_jsonl

from batcher.engine.engine import Engine, EngineSettings
from batcher.engine.replies import unix_seconds
from batcher.mock import MockServer
from batcher.providers import Endpoint


def test_a_slow_consumer_never_hangs_the_end():
    async def main():
        async with MockServer() as server:
            engine = Engine(Endpoint(server.url, "bearer", None), EngineSettings(concurrency=1))
            got = 0
            async for _ in engine.run([request(i) for i in range(40)]):
                got += 1
                await asyncio.sleep(0.01)  # slower than the server
            return got

    assert asyncio.run(asyncio.wait_for(main(), 30)) == 40


def test_cancelling_a_full_engine_returns_at_once():
    async def main():
        from batcher.mock import MockConfig

        async with MockServer(MockConfig(latency=30)) as server:
            engine = Engine(Endpoint(server.url, "bearer", None), EngineSettings(concurrency=4))

            async def consume():
                async for _ in engine.run([request(i) for i in range(100)]):
                    pass

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.5)  # every worker busy, the queue full
            started = time.monotonic()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return time.monotonic() - started

    assert asyncio.run(main()) < 2


def test_skipped_bad_rows_resume(run_job, api, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": 3}\n')
    args = (data, tmp_path / "o.parquet", "--on-bad-row", "skip", "-q")
    assert run_job(*args, model="m").exit_code == 1
    assert (
        run_job(*args, model="m").exit_code == 1
    )  # a finished job: nothing sent, the bad row kept
    assert len(api.log) == 1


def test_created_in_other_units():
    assert unix_seconds(1700000000) == 1700000000
    assert unix_seconds(1700000000123) == 1700000000  # milliseconds
    assert unix_seconds(1700000000123456789) == 1700000000  # nanoseconds
    assert unix_seconds(-5) is None and unix_seconds("x") is None


def test_one_job_per_output(make_api, tmp_path):
    api = make_api(latency=0.2)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(100))
    out = tmp_path / "out.parquet"
    args = [data, "-o", out, "--base-url", api.url, "-m", "m", "-c", "4", "-q"]
    first = Job(args, tmp_path)
    wait_for(lambda: len(api.log) >= 4)
    second = Job(args, tmp_path)
    assert second.wait(timeout=30) == 2
    assert second.stderr == (
        f"Error: {out}: another batcher job is writing this output; "
        "wait for it or choose another -o\n"
    )
    assert first.wait(timeout=60) == 0
    assert len(api.log) == 100


def test_results_are_flushed_on_time_while_a_request_hangs(make_api, tmp_path):
    api = make_api(hang_seconds=20)
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "fast", "prompt": "quick"}, {"id": "slow", "prompt": "x [[mock:hang]]"}],
    )
    out = tmp_path / "out.parquet"
    job = Job(
        [
            data,
            "-o",
            out,
            "--base-url",
            api.url,
            "-m",
            "m",
            "--flush-seconds",
            "0.5",
            "--timeout",
            "30",
            "-q",
        ],
        tmp_path,
    )
    try:
        job_dir = Path(f"{out}.batcher")
        wait_for(lambda: job_dir.is_dir() and durable_count(job_dir) == 1, timeout=10)
    finally:
        job.proc.kill()
        job.wait()


def test_an_output_that_is_not_ours_is_left_alone(run_job, api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    out = tmp_path / "o.parquet"
    out.write_bytes(b"precious data")
    result = run_job(data, out, model="m")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {out}: exists and is not a batcher output; choose another -o, "
        "or use --fresh to replace it\n"
    )
    assert out.read_bytes() == b"precious data" and api.log == []
    assert not (tmp_path / "o.parquet.batcher").exists()
    assert run_job(data, out, "--fresh", "-q", model="m").exit_code == 0
    assert pq.read_table(out).num_rows == 2


def test_wrong_keep_columns_and_infinite_numbers_send_nothing(run_job, api, tmp_path):
    rows, out = prompts(2), tmp_path / "o.parquet"
    assert run_job(rows, out, "--keep-columns", "nope", model="m").exit_code == 2
    assert run_job(rows, out, "--rpm", "inf", model="m").exit_code == 2
    assert run_job(rows, out, "--timeout", "inf", model="m").exit_code == 2
    assert run_job(rows, out, "--param", "stream=true", model="m").exit_code == 2
    assert api.log == [] and not (tmp_path / "o.parquet.batcher").exists()


def test_the_ray_engine_without_ray_installed_is_one_line(run_job, api, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a)
    )
    ran = run_job([{"id": "a", "prompt": "x"}], tmp_path / "out.parquet", "--engine", "ray")
    assert (ran.exit_code, ran.stderr) == (
        2,
        "Error: --engine ray needs Ray: pip install 'batcher[ray]'\n",
    )
    assert len(api.log) == 0
    assert not (tmp_path / "out.parquet").exists()
