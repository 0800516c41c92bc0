"""`batcher batch status|cancel OUT`, `--fresh` while batches run, and Ctrl-C while waiting,
against the mock's Batch API on a clock the tests move."""

from __future__ import annotations

import json
import signal
import threading
import time

import pyarrow.parquet as pq
import pytest
from conftest import Job, records, rewrite_records, wait_for, write_jsonl

from batcher.io.jobdir import JobDir

ROWS = [{"id": f"r{i}", "prompt": f"question number {i}"} for i in range(6)]
T0 = 1_800_000_000.0
NOTE = ["cancel", "requested"]
HEAD = "batch                           model   status       round  completed  failed  requests"


class Clock:
    """The mock's clock: stopped at `now` (the test moves it); once a batch is cancelling,
    far enough on for it to have stopped; `run(speed)` lets it go, `speed` times real time."""

    def __init__(self, server) -> None:
        self.server, self.now, self.speed, self.since = server, T0, 0.0, 0.0
        self.jump = True  # a batch cancelling has stopped: the clock moves on 100 s
        server.server._state.clock = self

    def __call__(self) -> float:
        cancelling = any(b.status == "cancelling" for b in self.server.batches.batches.values())
        running = self.speed * (time.time() - self.since) if self.speed else 0.0
        return self.now + running + (100.0 if cancelling and self.jump else 0.0)

    def run(self, speed: float) -> None:
        self.now, self.speed, self.since = self(), speed, time.time()


@pytest.fixture
def submitted(run_job, make_api, tmp_path):
    """Six requests submitted with --no-wait to a mock whose phases take 10 s; the clock is
    then moved to halfway through the batch's run: 3 of its 6 lines answered."""
    server = make_api(batch_step=10.0)
    clock = Clock(server)
    out = tmp_path / "out.parquet"
    ran = run_job(ROWS, out, "--mode", "batch", "--no-wait", server=server)
    assert ran.exit_code == 0, ran.stderr
    clock.now += 15.0
    return server, clock, out


def test_status_shows_each_batch_at_the_provider(cli, submitted):
    server, _, out = submitted
    batch_id = records(out)[0]["batch_id"]
    shown = cli("batch", "status", out)
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        HEAD,
        f"{batch_id}  mock-1  in_progress      1          3       0         6",
    ]
    assert shown.stderr == (
        "1 batches still running: rerun the job's command to wait for them and collect, "
        f"or stop them with `batcher batch cancel {out}`\n"
    )
    as_json = cli("batch", "status", out, "--json")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {
            "number": 1,
            "batch_id": batch_id,
            "model": "mock-1",
            "round": 1,
            "requests": 6,
            "status": "in_progress",
            "completed": 3,
            "failed": 0,
            "note": None,
        }
    ]
    assert records(out)[0]["status"] == "validating"  # status only looks: no record changed
    assert len(server.log) == 3


def test_cancel_keeps_what_finished_and_a_rerun_sends_only_the_rest(cli, run_job, submitted):
    server, clock, out = submitted
    batch_id = records(out)[0]["batch_id"]
    cancelled = cli("batch", "cancel", out)
    assert cancelled.exit_code == 1, cancelled.stderr  # rows were left unsent
    head, line = cancelled.stderr.splitlines()[:2]
    assert head.split() == HEAD.split()
    assert line.split() == [
        batch_id,
        "mock-1",
        "cancelling",
        *["1", "3", "0", "6", "cancel", "requested"],
    ]
    assert "stopped early: batches cancelled: 3 requests not sent (rerun to send them)" in (
        cancelled.stderr
    )
    rows = pq.read_table(out).to_pylist()
    assert [r["status"] for r in rows].count("ok") == 3
    left = [r for r in rows if r["status"] != "ok"]
    assert [(r["error_type"], r["mode"]) for r in left] == [("not_sent", "batch")] * 3
    assert left[0]["error_message"] == (
        f"batch {batch_id} cancelled before it ran (batcher batch cancel): rerun the job to send it"
    )
    assert server.batches.batches[batch_id].status == "cancelled"
    assert len(server.batches.batches) == 1 and len(server.log) == 3  # nothing submitted

    shown = cli("batch", "status", out)
    row = [batch_id, "mock-1", "cancelled", "1", "3", "0", "6"]
    assert shown.stdout.splitlines()[1].split() == row
    assert "every batch has ended" in shown.stderr

    clock.run(speed=100.0)  # 10 s phases in 0.1 s
    again = run_job(ROWS, out, "--mode", "batch", server=server)
    assert again.exit_code == 0, again.stderr
    table = pq.read_table(out)
    assert table["id"].to_pylist() == [r["id"] for r in ROWS]
    assert table["status"].to_pylist() == ["ok"] * 6 and table["attempts"].to_pylist() == [1] * 6
    assert len(server.batches.batches) == 2 and len(server.log) == 6  # each line ran once
    second = list(server.batches.batches.values())[1]
    assert len(second.lines) == 3


def test_fresh_is_refused_while_a_batch_may_still_run(run_job, submitted):
    server, _, out = submitted
    ran = run_job(ROWS, out, "--mode", "batch", "--fresh", server=server)
    assert ran.exit_code == 2
    assert ran.stderr == (
        f"Error: --fresh: 1 batches of {out} may still run or hold results not collected: "
        f"cancel them first (batcher batch cancel {out}) or rerun without --fresh to collect "
        "them\n"
    )
    assert len(server.batches.batches) == 1 and records(out)[0]["batch_id"]


def test_the_built_in_mocks_batches_are_said_to_have_ended(cli, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.parquet"
    assert cli("run", data, "-o", out, "--mode", "batch", "--no-wait").exit_code == 0
    batch_id = records(out)[0]["batch_id"]
    shown = cli("batch", "status", out)
    assert shown.exit_code == 0
    row = [batch_id, "mock-1", "validating", "1", "-", "-", "6"]
    assert shown.stdout.splitlines()[1].split() == row
    note = (
        "the built-in mock's batches end with the run that made them: rerun the job to submit "
        "them again"
    )
    assert shown.stderr == note + "\n"
    cancelled = cli("batch", "cancel", out)
    assert (cancelled.exit_code, cancelled.stderr) == (0, f"nothing to cancel: {note}\n")
    fresh = cli("run", data, "-o", out, "--mode", "batch", "--fresh")
    assert fresh.exit_code == 0, fresh.stderr  # nothing of it can still run


def test_a_batch_already_cancelling_is_noted_and_the_rest_collected(cli, submitted):
    server, clock, out = submitted
    batch = next(iter(server.batches.batches.values()))
    clock.jump = False  # cancelling holds until the timer lets it end
    server.batches.cancel(batch)  # as a first `batch cancel` cut short left it
    threading.Timer(0.5, lambda: setattr(clock, "jump", True)).start()
    again = cli("batch", "cancel", out)
    assert again.exit_code == 1, again.stderr
    row = again.stderr.splitlines()[1].split()
    assert row[2:] == ["cancelling", "1", "3", "0", "6", "cancel", "refused", "while", "cancelling"]
    assert pq.read_table(out)["status"].to_pylist().count("ok") == 3


def test_cancel_waits_for_no_running_job(cli, submitted):
    server, _, out = submitted
    with JobDir(out).lock():  # as a job still running holds it
        refused = cli("batch", "cancel", out)
    assert (refused.exit_code, refused.stderr) == (
        2,
        f"Error: {out}: its job is still running: stop it (Ctrl-C) first, then cancel\n",
    )
    assert records(out)[0]["status"] == "validating"  # nothing was cancelled
    assert not server.batches.batches[records(out)[0]["batch_id"]].times.get("cancelling")


def test_a_job_folder_without_batches_is_a_clear_error(cli, run_job, tmp_path):
    out = tmp_path / "out.parquet"
    assert run_job(ROWS, out).exit_code == 0
    for command in ("status", "cancel"):
        shown = cli("batch", command, out)
        assert (shown.exit_code, shown.stdout) == (2, "")
        assert shown.stderr == (
            f"Error: {out}: no job folder (out.parquet.batcher), so no batches on record "
            "(a job that finished keeps none)\n"
        )


def test_ctrl_c_while_waiting_says_where_the_batches_are_and_a_rerun_collects(
    run_job, make_api, tmp_path
):
    server = make_api(batch_step=1.0)
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.parquet"
    job = Job(
        [data, "-o", out, "--base-url", server.url, "-m", "mock-1", "--mode", "batch"], tmp_path
    )
    wait_for(lambda: "validating, 0/6 done" in job.stderr)
    job.send_signal(signal.SIGINT)
    assert job.wait() == 130
    assert job.stderr.splitlines()[-1] == (
        f"interrupted: the batches submitted are recorded in {out}.batcher; run the same "
        "command again to collect"
    )
    assert not out.exists() and len(server.batches.batches) == 1
    again = run_job(data, out, "--mode", "batch", server=server)
    assert again.exit_code == 0, again.stderr
    assert pq.read_table(out)["status"].to_pylist() == ["ok"] * 6
    assert len(server.batches.batches) == 1 and len(server.log) == 6


def test_an_ended_batch_whose_rows_are_all_done_holds_nothing_back(run_job, make_api, tmp_path):
    server = make_api(batch_step=0.05)
    out = tmp_path / "out.parquet"
    args = ("--mode", "batch", "--keep-job-dir")
    assert run_job(ROWS, out, *args, server=server).exit_code == 0
    kept = records(out)
    assert kept[0]["collected"] is True
    del kept[0]["collected"]  # as a record of an earlier version, or rows done elsewhere
    rewrite_records(out, kept)
    assert run_job(ROWS, out, "--fresh", server=server).exit_code == 2
    assert run_job(ROWS, out, *args, server=server).exit_code == 0  # nothing to send
    assert records(out)[0]["collected"] is True
    fresh = run_job(ROWS, out, "--fresh", server=server)
    assert fresh.exit_code == 0, fresh.stderr
    assert len(server.batches.batches) == 1
