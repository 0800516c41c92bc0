"""Crash-safe jobs: kills, signals, resume, --retry-errors, --fresh, the cache and status."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import Job, durable_count, prompts, wait_for, write_jsonl

from batcher.io.jobdir import JobDir


def sent_keys(api) -> Counter:
    return Counter(e.request_key for e in api.log if e.status == 200)


def ids_and_models(out: Path) -> list[tuple[str, str]]:
    table = pq.read_table(out, columns=["id", "model", "status"])
    assert set(table.column("status").to_pylist()) == {"ok"}
    return list(zip(table.column("id").to_pylist(), table.column("model").to_pylist()))


@pytest.mark.parametrize("moment", ["before_first_flush", "middle"])
def test_kill_9_then_resume_resends_at_most_in_flight_plus_unflushed(make_api, tmp_path, moment):
    api = make_api(latency=0.01)
    n, concurrency, flush_rows = 3000, 8, 100
    data = write_jsonl(tmp_path / "in.jsonl", prompts(n))
    out = tmp_path / "out.parquet"
    job_dir = tmp_path / "out.parquet.batcher"
    args = [
        data,
        "-o",
        out,
        "--base-url",
        api.url,
        "-m",
        "a",
        "-m",
        "b",
        "-c",
        concurrency,
        "--flush-rows",
        flush_rows,
        "--flush-seconds",
        "60",
        "-q",
    ]
    proc = Job(args, tmp_path)
    if moment == "middle":
        wait_for(lambda: job_dir.is_dir() and durable_count(job_dir) >= 1000)
    else:
        wait_for(lambda: len(api.log) >= 20)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    durable = durable_count(job_dir) if job_dir.is_dir() else 0
    seen_before = len(sent_keys(api))
    resumed = Job(args, tmp_path)
    assert resumed.wait(timeout=120) == 0, resumed.stderr
    assert ids_and_models(out) == [(f"p{i}", m) for i in range(n) for m in ("a", "b")]
    twice = sum(1 for c in sent_keys(api).values() if c > 1)
    # sent again: what was in flight, plus what finished since the last flush
    assert twice <= seen_before - durable + concurrency
    assert twice <= concurrency + flush_rows + concurrency
    if moment == "middle":
        assert durable >= 1000
    assert not job_dir.exists()


def test_kill_during_final_assembly_leaves_no_broken_output(make_api, tmp_path):
    """A stale temporary from a killed assembly is cleaned; the rerun sends nothing."""
    api = make_api()
    data = write_jsonl(tmp_path / "in.jsonl", prompts(50))
    out = tmp_path / "out.parquet"
    args = [data, "-o", out, "--base-url", api.url, "-m", "mock-1", "--keep-job-dir", "-q"]
    assert Job(args, tmp_path).wait(timeout=60) == 0
    out.unlink()  # as if killed before the rename: the parts are all there
    stale = tmp_path / f".{out.name}.99999.tmp"
    stale.write_bytes(b"PAR1 half a file")
    sent = len(api.log)
    assert Job(args, tmp_path).wait(timeout=60) == 0
    assert len(api.log) == sent
    assert not stale.exists()
    assert len(ids_and_models(out)) == 50


def signal_job(make_api, tmp_path, sig):
    api = make_api(latency=0.2)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(400))
    out = tmp_path / "out.parquet"
    args = [data, "-o", out, "--base-url", api.url, "-m", "mock-1", "-c", "16", "-q"]
    proc = Job(args, tmp_path)
    wait_for(lambda: len(api.log) >= 40)
    started = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=20)
    elapsed = time.monotonic() - started
    stderr = proc.stderr
    return api, args, out, code, elapsed, stderr


@pytest.mark.parametrize("sig, expected", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_cleanly_and_resume(make_api, tmp_path, sig, expected):
    api, args, out, code, elapsed, stderr = signal_job(make_api, tmp_path, sig)
    assert code == expected
    assert elapsed < 10
    lines = stderr.strip().splitlines()
    assert lines[-1] == (
        f"interrupted: finished results are saved in {out}.batcher; "
        "run the same command again to resume"
    )
    assert "Traceback" not in stderr and "Unclosed" not in stderr and "destroyed" not in stderr
    assert not out.exists()
    durable = durable_count(Path(f"{out}.batcher"))
    assert durable > 0
    before = len(api.log)
    assert Job(args, tmp_path).wait(timeout=60) == 0
    assert len(ids_and_models(out)) == 400
    assert len(api.log) - before <= 400 - durable + 16


def test_truncated_part_is_sent_again(make_api, tmp_path):
    api = make_api()
    data = write_jsonl(tmp_path / "in.jsonl", prompts(300))
    out = tmp_path / "out.parquet"
    args = [
        data,
        "-o",
        out,
        "--base-url",
        api.url,
        "-m",
        "mock-1",
        "--flush-rows",
        "100",
        "--keep-job-dir",
        "-q",
    ]
    assert Job(args, tmp_path).wait(timeout=60) == 0
    out.unlink()
    parts = JobDir(Path(out)).parts()
    assert len(parts) == 3
    damaged_rows = pq.read_metadata(parts[1]).num_rows
    parts[1].write_bytes(parts[1].read_bytes()[:200])
    before = len(api.log)
    proc = Job(args, tmp_path)
    assert proc.wait(timeout=60) == 0
    # the reason in brackets is pyarrow's own wording, which its versions change
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"WARNING batcher.io.jobdir: {parts[1].name} is damaged (")
    assert proc.stderr.endswith("); its results will be sent again\n")
    assert len(api.log) - before == damaged_rows
    assert len(ids_and_models(out)) == 300


def test_duplicate_prompts_with_different_ids_stay_two_rows(run_job, api, tmp_path):
    data = write_jsonl(
        tmp_path / "in.jsonl", [{"id": "a", "prompt": "same"}, {"id": "b", "prompt": "same"}]
    )
    out = tmp_path / "o.parquet"
    assert run_job(data, out, "-q").exit_code == 0
    assert [r["id"] for r in pq.read_table(out).to_pylist()] == ["a", "b"]
    assert run_job(data, out, "-q").exit_code == 0
    assert [r["id"] for r in pq.read_table(out).to_pylist()] == ["a", "b"]
    assert len(api.log) == 2


def test_rerun_of_a_finished_job_sends_nothing_and_a_new_model_only_its_own(run_job, api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", prompts(10))
    out = tmp_path / "o.parquet"
    assert run_job(data, out, "-q", model="a").exit_code == 0
    assert run_job(data, out, "-q", model="a").exit_code == 0
    assert len(api.log) == 10
    assert run_job(data, out, "-q", "-m", "b", model="a").exit_code == 0
    assert [e.model for e in api.log[10:]] == ["b"] * 10
    assert len(ids_and_models(out)) == 20


def test_changed_input_is_refused_unless_fresh(run_job, api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    out = tmp_path / "o.parquet"
    assert run_job(data, out, "-q").exit_code == 0
    write_jsonl(data, prompts(5, prefix="x"))
    result = run_job(data, out, "-q")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {out}: earlier results were made from a different input or settings "
        "(first: row 0, id 'x0', model 'mock-1'); run with --fresh to start over, "
        "or restore the earlier input and options\n"
    )
    changed = run_job(data, out, "-q", "--system", "new system prompt")
    assert changed.exit_code == 2
    assert len(api.log) == 5
    assert run_job(data, out, "-q", "--fresh").exit_code == 0
    assert len(api.log) == 10
    assert [r[0] for r in ids_and_models(out)] == [f"x{i}" for i in range(5)]


def test_retry_errors_touches_only_error_rows(run_job, api, tmp_path):
    rows = prompts(6)
    rows[2]["prompt"] += " [[mock:400x1]]"
    rows[4]["prompt"] += " [[mock:quotax1]]"
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o.parquet"
    assert run_job(data, out, "-q").exit_code == 1
    first = pq.read_table(out).to_pylist()
    assert [r["status"] for r in first] == ["ok", "ok", "error", "ok", "error", "ok"]
    # a plain rerun keeps the row error (400) but sends the job-wide one (quota) again,
    # as after a top-up
    assert run_job(data, out, "-q").exit_code == 1
    assert [e.body["messages"][0]["content"] for e in api.log[6:]] == [rows[4]["prompt"]]
    assert run_job(data, out, "-q", "--retry-errors").exit_code == 0
    assert [e.body["messages"][0]["content"] for e in api.log[7:]] == [rows[2]["prompt"]]
    second = pq.read_table(out).to_pylist()
    assert all(r["status"] == "ok" for r in second)
    for i in (0, 1, 3, 5):
        assert second[i]["response_id"] == first[i]["response_id"]
        assert second[i]["latency_s"] == first[i]["latency_s"]


def test_cache_reuses_across_outputs_and_misses_on_any_change(run_job, make_api, tmp_path):
    api = make_api()
    other = make_api()
    cache = tmp_path / "cache"
    data = write_jsonl(tmp_path / "in.jsonl", prompts(4))

    def run(out, *extra, server=api):
        result = run_job(data, tmp_path / out, "--cache", cache, "-q", *extra, server=server)
        assert result.exit_code == 0, result.stderr
        return pq.read_table(tmp_path / out).to_pylist()

    first = run("a.parquet")
    assert [r["cached"] for r in first] == [False] * 4
    second = run("b.parquet")
    assert [r["cached"] for r in second] == [True] * 4
    assert [r["content"] for r in second] == [r["content"] for r in first]
    assert all(r["cost_usd"] == 0.0 and r["attempts"] == 0 for r in second)
    assert len(api.log) == 4
    run("c.parquet", "--system", "You are terse.")
    assert len(api.log) == 8
    run("d.parquet", "--temperature", "0.5")
    assert len(api.log) == 12
    run("e.parquet", server=other)
    assert len(api.log) == 12 and len(other.log) == 4
    sweep = run("f.parquet", "-m", "second-model")
    assert [r["cached"] for r in sweep] == [True, False] * 4
    assert [e.model for e in api.log[12:]] == ["second-model"] * 4


def test_cache_env_var(run_job, api, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHER_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    for out in ("a.parquet", "b.parquet"):
        assert run_job(data, tmp_path / out, "-q").exit_code == 0
    assert len(api.log) == 2
    assert (tmp_path / "cache" / "cache.sqlite3").exists()


def test_status_of_a_running_job_then_a_finished_one(cli, make_api, tmp_path):
    api = make_api(latency=0.05)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(400))
    out = tmp_path / "out.parquet"
    proc = Job(
        [
            data,
            "-o",
            out,
            "--base-url",
            api.url,
            "-m",
            "mock-1",
            "-c",
            "4",
            "--flush-seconds",
            "0.2",
            "-q",
        ],
        tmp_path,
    )
    try:
        wait_for(
            lambda: Path(f"{out}.batcher").is_dir() and durable_count(Path(f"{out}.batcher")) >= 20
        )
        result = cli("status", out, "--json")
        running = json.loads(result.stdout)
        assert running["state"] == "running"
        assert running["requests"] == 400 and 20 <= running["done"] < 400
        assert running["pending"] == 400 - running["done"]
        assert running["last_minute"] == running["done"]
        assert running["models"][0]["model"] == "mock-1"
        text = cli("status", out).stdout.splitlines()
        assert text[0].startswith(f"{out}.batcher: running (pid {proc.pid}), ")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    stopped = json.loads(cli("status", out, "--json").stdout)
    assert stopped["state"] == "stopped"
    assert (
        Job([data, "-o", out, "--base-url", api.url, "-m", "mock-1", "-q"], tmp_path).wait(
            timeout=60
        )
        == 0
    )
    finished = json.loads(cli("status", out, "--json").stdout)
    assert (finished["state"], finished["done"], finished["ok"]) == ("finished", 400, 400)
    assert cli("status", tmp_path / "nope.parquet").exit_code == 2


def test_second_ctrl_c_exits_at_once_and_durable_results_stay(make_api, tmp_path):
    api = make_api(latency=3.0)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(200))
    out = tmp_path / "out.parquet"
    args = [
        data,
        "-o",
        out,
        "--base-url",
        api.url,
        "-m",
        "mock-1",
        "-c",
        "50",
        "--flush-seconds",
        "0.1",
        "-q",
    ]
    proc = Job(args, tmp_path)
    wait_for(
        lambda: Path(f"{out}.batcher").is_dir() and durable_count(Path(f"{out}.batcher")) >= 50
    )
    wait_for(lambda: len(api.log) >= 100)  # a second wave is in flight, 3 s from done
    durable = durable_count(Path(f"{out}.batcher"))
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 130
    assert time.monotonic() - started < 2.5
    assert "Traceback" not in proc.stderr
    assert durable_count(Path(f"{out}.batcher")) >= durable
    assert Job(args, tmp_path).wait(timeout=60) == 0
    assert len(ids_and_models(out)) == 200


def test_damaged_learned_limits_are_ignored_never_fatal(tmp_path) -> None:
    """limits.json is a head start only: a value too large for a float, a bool, a bad
    source or bad JSON loses it, never the rerun."""
    from batcher.io.jobdir import LIMITS, JobDir

    job_dir = JobDir(tmp_path / "out.parquet")
    job_dir.path.mkdir()
    url = "http://127.0.0.1:1/v1"
    limits = {
        "huge": {"rpm": [10**400, "429s"]},
        "bool": {"rpm": [True, "429s"]},
        "source": {"rpm": [600, "a guess"]},
        "good": {"rpm": [600, "429s"], "tpm": [9000.5, "headers"], "other": [1, "429s"]},
    }
    (job_dir.path / LIMITS).write_text(json.dumps({url: limits}))
    assert job_dir.read_limits(url) == {
        "good": {"rpm": (600.0, "429s"), "tpm": (9000.5, "headers")}
    }
    job_dir.write_limits(url, {"new": {"rpm": (30.0, "429s")}})
    assert set(job_dir.read_limits(url)) == {"good", "new"}  # models of earlier runs stay
    (job_dir.path / LIMITS).write_text("{not json")
    assert job_dir.read_limits(url) == {}
