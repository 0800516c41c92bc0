"""`batcher run --mode batch` end to end against the mock's Batch API: the same rows as
online, rounds after expiry and errors, resume after kill -9, --no-wait, and clear stops."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import Job, prompts, records, rewrite_records, wait_for, write_jsonl

ROWS = [{"id": f"r{i}", "prompt": f"question number {i}"} for i in range(6)]
TIMINGS = {"latency_s", "created", "mode"}


def batch_run(run_job, server, rows, out: Path, *args: str, model: str = "gpt-4o-mini"):
    return run_job(rows, out, "--mode", "batch", *args, server=server, model=model)


def test_batch_gives_the_online_rows_at_half_the_price(run_job, make_api, tmp_path):
    server = make_api(batch_step=0.2)
    online = run_job(ROWS, tmp_path / "online.parquet", server=server, model="gpt-4o-mini")
    batch = batch_run(run_job, server, ROWS, tmp_path / "batch.parquet")
    assert (online.exit_code, batch.exit_code) == (0, 0), batch.stderr
    a = pq.read_table(tmp_path / "online.parquet")
    b = pq.read_table(tmp_path / "batch.parquet")
    assert b.column_names == [*a.column_names[:29], "mode", *a.column_names[29:]]
    assert b["mode"].to_pylist() == ["batch"] * 6
    same = [c for c in a.column_names if c not in TIMINGS | {"cost_usd"}]
    assert b.select(same).to_pylist() == a.select(same).to_pylist()
    assert b["latency_s"].null_count == 6  # unknown, not 0
    assert b["cost_usd"].to_pylist() == pytest.approx(
        [c / 2 for c in a["cost_usd"].to_pylist()], rel=1e-12
    )
    assert len(server.batches.batches) == 1
    assert "batch_" in batch.stderr and "completed, 6/6 done" in batch.stderr


def test_expiry_halfway_then_a_second_round_bills_each_request_once(run_job, make_api, tmp_path):
    server = make_api(batch_step=0.2, batch_faults=("expire:3",))
    ran = batch_run(run_job, server, ROWS, tmp_path / "out.parquet")
    assert ran.exit_code == 0, ran.stderr
    out = pq.read_table(tmp_path / "out.parquet")
    assert out["id"].to_pylist() == [r["id"] for r in ROWS]
    assert out["status"].to_pylist() == ["ok"] * 6 and out["attempts"].to_pylist() == [1] * 6
    assert len(server.log) == 6  # every line ran once: nothing billed twice
    first, second = server.batches.batches.values()
    assert (first.status, second.status) == ("expired", "completed")
    assert len(second.lines) == 3


def test_error_lines_become_rows_and_retryable_ones_go_again(run_job, make_api, tmp_path):
    server = make_api(batch_step=0.2)
    rows = [
        {"id": "fine", "prompt": "a plain question"},
        {"id": "refused", "prompt": "[[mock:400]] a bad request"},
        {"id": "flaky", "prompt": "[[mock:500x1]] fails once"},
        {"id": "down", "prompt": "[[mock:503x9]] keeps failing"},
    ]
    ran = batch_run(run_job, server, rows, tmp_path / "out.parquet", "--batch-rounds", "2")
    assert ran.exit_code == 1
    got = {r["id"]: r for r in pq.read_table(tmp_path / "out.parquet").to_pylist()}
    assert (got["fine"]["status"], got["fine"]["attempts"]) == ("ok", 1)
    refused = got["refused"]
    assert (refused["error_type"], refused["http_status"], refused["attempts"]) == (
        "bad_request",
        400,
        1,
    )
    assert (got["flaky"]["status"], got["flaky"]["attempts"]) == ("ok", 2)
    down = got["down"]
    assert (down["error_type"], down["http_status"], down["attempts"]) == ("server_error", 503, 2)
    assert all(r["mode"] == "batch" for r in got.values())
    assert len(server.batches.batches) == 2 and len(server.log) == 4 + 2


def test_kill_9_while_waiting_then_rerun_resubmits_nothing(run_job, make_api, tmp_path):
    server = make_api(batch_step=1.5)
    rows = prompts(8)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    args = [data, "-o", out, "--base-url", server.url, "-m", "mock-1", "--mode", "batch"]
    job = Job(args, tmp_path)
    job_dir = tmp_path / "out.parquet.batcher"

    def recorded() -> bool:
        try:
            return records(out)[0]["batch_id"] is not None
        except (OSError, ValueError, IndexError):
            return False

    wait_for(recorded)
    job.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    assert not out.exists() and job_dir.exists()
    ran = run_job(data, out, "--mode", "batch", server=server)
    assert ran.exit_code == 0, ran.stderr
    assert pq.read_table(out)["status"].to_pylist() == ["ok"] * 8
    assert len(server.batches.batches) == 1 and len(server.log) == 8


def test_a_batch_uploaded_but_not_recorded_is_found_not_made_again(run_job, make_api, tmp_path):
    server = make_api(batch_step=0.2)
    out = tmp_path / "out.parquet"
    submitted = batch_run(run_job, server, ROWS, out, "--no-wait")
    assert submitted.exit_code == 0, submitted.stderr
    assert "1 batches running: rerun the same command to collect" in submitted.stderr
    assert submitted.stdout == "" and not out.exists()
    # as if killed after the batch was created, before its id was recorded
    kept = records(out)
    kept[0]["batch_id"] = None
    rewrite_records(out, kept)
    ran = batch_run(run_job, server, ROWS, out)
    assert ran.exit_code == 0, ran.stderr
    assert len(server.batches.batches) == 1 and len(server.log) == 6
    assert pq.read_table(out).num_rows == 6


def test_a_failed_batch_is_said_in_one_line_and_its_rows_are_errors(run_job, make_api, tmp_path):
    server = make_api(batch_step=0.2, batch_faults=("invalid",))
    ran = batch_run(run_job, server, ROWS, tmp_path / "out.parquet")
    assert ran.exit_code == 1
    failed = [line for line in ran.stderr.splitlines() if "failed:" in line]
    assert failed == [
        f"ERROR batcher.batch: batch {next(iter(server.batches.batches))} failed: "
        "mock batch fault: invalid"
    ]
    out = pq.read_table(tmp_path / "out.parquet")
    assert pc.unique(out["error_type"]).to_pylist() == ["bad_request"]
    assert len(server.log) == 0


def test_completed_without_an_output_file_stops_and_a_rerun_sends_nothing(
    run_job, make_api, tmp_path
):
    server = make_api(batch_step=0.2, batch_faults=("no_output",))
    out = tmp_path / "out.parquet"
    for _ in range(2):
        ran = batch_run(run_job, server, ROWS, out)
        assert ran.exit_code == 1
        assert "completed without an output file: rerun later to fetch it" in ran.stderr
    assert len(server.batches.batches) == 1 and len(server.log) == 6


def test_a_batch_left_to_fetch_stays_on_record_when_out_was_written(run_job, make_api, tmp_path):
    """One batch ends fine, the other "completed" with no file: OUT is written with the
    first's rows, and a rerun (OUT newer than the parts) keeps the record: nothing resent."""
    server = make_api(batch_step=0.05, batch_faults=("none", "no_output"))
    out = tmp_path / "out.parquet"
    for _ in range(2):
        ran = batch_run(run_job, server, ROWS, out, "--batch-max-requests", "3")
        assert ran.exit_code == 1
        assert "completed without an output file: rerun later to fetch it" in ran.stderr
        assert pq.read_table(out)["status"].to_pylist().count("ok") == 3
    assert len(server.batches.batches) == 2 and len(server.log) == 6
    online = run_job(ROWS, out, server=server, model="gpt-4o-mini")
    assert online.exit_code == 2
    assert online.stderr == (
        f"Error: --mode online: 1 batches of {out} may still run or hold results not "
        f"collected: cancel them first (batcher batch cancel {out}) or rerun with --mode "
        "batch to collect them\n"
    )
    assert len(server.log) == 6  # nothing sent online


def test_what_the_rounds_leave_goes_online_with_fallback(run_job, make_api, tmp_path):
    server = make_api(batch_step=0.2, batch_faults=("expire:0", "expire:0"))
    out = tmp_path / "out.parquet"
    ran = batch_run(run_job, server, ROWS, out, "--batch-rounds", "2", "--fallback", "online")
    assert ran.exit_code == 0, ran.stderr
    table = pq.read_table(out)
    assert table["status"].to_pylist() == ["ok"] * 6
    assert table["mode"].to_pylist() == ["online"] * 6
    assert len(server.batches.batches) == 2 and len(server.log) == 6


def test_without_fallback_what_is_left_says_why(run_job, make_api, tmp_path):
    server = make_api(batch_step=0.2, batch_faults=("expire:0",))
    ran = batch_run(run_job, server, ROWS, tmp_path / "out.parquet", "--batch-rounds", "1")
    assert ran.exit_code == 1
    row = pq.read_table(tmp_path / "out.parquet").to_pylist()[0]
    assert row["error_type"] == "not_sent"
    assert row["error_message"] == (
        "batch_expired: This request could not be executed before the completion window "
        "expired.; still without one after 1 batch rounds (rerun with --retry-errors, or "
        "--fallback online)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mode", "batch", "--stream"), "--stream is for --mode online"),
        (("--mode", "batch", "--max-cost", "1"), "--max-cost is for --mode online"),
        (("--no-wait",), "--no-wait is for --mode batch"),
        (("--batch-rounds", "2"), "--batch-rounds is for --mode batch"),
        (("--mode", "batch", "--batch-rounds", "0"), "--batch-rounds must be"),
    ],
)
def test_options_that_contradict_are_refused(run_job, make_api, tmp_path, args, message):
    server = make_api()
    ran = run_job(ROWS, tmp_path / "out.parquet", *args, server=server)
    assert ran.exit_code == 2 and message in ran.stderr
    assert len(server.batches.batches) == 0 and not (tmp_path / "out.parquet").exists()


def test_batches_the_provider_lost_are_submitted_again(cli, tmp_path):
    """The built-in mock's batches end with its run: a rerun finds them gone (404)."""
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.parquet"
    first = cli("run", data, "-o", out, "--mode", "batch", "--no-wait")
    assert first.exit_code == 0 and not out.exists()
    batch_id = records(out)[0]["batch_id"]
    again = cli("run", data, "-o", out, "--mode", "batch")
    assert again.exit_code == 0, again.stderr
    assert (
        f"batch {batch_id} is unknown to the provider (404): its 6 requests are submitted again"
        in again.stderr
    )
    assert pq.read_table(out)["status"].to_pylist() == ["ok"] * 6
    assert not (tmp_path / "out.parquet.batcher").exists()  # done: the job folder went


def test_batches_recorded_for_another_endpoint_are_not_abandoned(run_job, make_api, tmp_path):
    first, other = make_api(batch_step=0.2), make_api(batch_step=0.2)
    out = tmp_path / "out.parquet"
    assert batch_run(run_job, first, ROWS, out, "--no-wait").exit_code == 0
    ran = batch_run(run_job, other, ROWS, out)
    assert ran.exit_code == 2
    assert f"the batches of {out} went to {first.url}: rerun with that endpoint" in ran.stderr
    assert len(other.batches.batches) == 0


def test_no_wait_again_collects_the_batches_that_ended(run_job, make_api, tmp_path):
    server = make_api(batch_step=0.1)
    out = tmp_path / "out.parquet"
    assert batch_run(run_job, server, ROWS, out, "--no-wait").exit_code == 0
    time.sleep(0.5)  # the batch's three phases of 0.1 s are over: it has ended
    again = batch_run(run_job, server, ROWS, out, "--no-wait")
    assert again.exit_code == 0, again.stderr
    assert pq.read_table(out)["status"].to_pylist() == ["ok"] * 6
    assert len(server.batches.batches) == 1


LABEL = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["label"],
    "additionalProperties": False,
}


def test_an_invalid_structured_reply_is_re_asked_in_the_next_round(run_job, make_api, tmp_path):
    server = make_api(batch_step=0.05)
    schema = tmp_path / "label.json"
    schema.write_text(json.dumps(LABEL))
    rows = [
        {"id": "fine", "prompt": "a review"},
        {"id": "fixed", "prompt": "a review [[mock:badschemax1]]"},
        {"id": "never", "prompt": "a review [[mock:notjson]]"},
    ]
    out = tmp_path / "out.parquet"
    ran = batch_run(run_job, server, rows, out, "--schema", schema, "--reask", "1")
    assert ran.exit_code == 1, ran.stderr  # "never" stays invalid
    got = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    shown = {k: (r["status"], r["error_type"], r["reasks"], r["attempts"]) for k, r in got.items()}
    assert shown == {
        "fine": ("ok", None, 0, 1),
        "fixed": ("ok", None, 1, 2),
        "never": ("error", "invalid_output", 1, 2),
    }
    assert got["fixed"]["label"] in ("positive", "negative")
    assert "no JSON object found" in got["never"]["error_message"]
    assert all(r["mode"] == "batch" for r in got.values())
    first, second = server.batches.batches.values()
    assert (len(first.lines), len(second.lines)) == (3, 2)  # the re-asks: a second round
    by_prompt = {}
    for entry in server.log:
        by_prompt.setdefault(entry.body["messages"][0]["content"], []).append(entry.body)
    asked, again = by_prompt["a review [[mock:badschemax1]]"]
    assert again["messages"][:-2] == asked["messages"]
    assert again["messages"][-2]["role"] == "assistant"
    assert again["messages"][-1]["role"] == "user"
    assert "is a required property" in again["messages"][-1]["content"]
    tokens = sum(max(1, sum(len(m["content"]) for m in b["messages"]) // 4) for b in (asked, again))
    assert got["fixed"]["prompt_tokens"] == tokens  # both lines billed to the row


def test_a_re_ask_round_cut_short_mid_upload_is_made_again_with_the_re_ask(
    run_job, make_api, tmp_path
):
    server = make_api(batch_step=0.05)
    schema = tmp_path / "label.json"
    schema.write_text(json.dumps(LABEL))
    rows = [{"id": "fixed", "prompt": "a review [[mock:badschemax1]]"}]
    out = tmp_path / "out.parquet"
    args = ("--schema", schema, "--no-wait")
    assert batch_run(run_job, server, rows, out, *args).exit_code == 0  # round 1 submitted
    time.sleep(0.3)
    assert batch_run(run_job, server, rows, out, *args).exit_code == 0  # round 2: the re-ask
    assert len(server.batches.batches) == 2
    kept = records(out)  # as if killed before round 2's upload was recorded
    kept[1]["file_id"] = kept[1]["batch_id"] = None
    rewrite_records(out, kept)
    ran = batch_run(run_job, server, rows, out, "--schema", schema)
    assert ran.exit_code == 0, ran.stderr
    third = list(server.batches.batches.values())[2]
    body = json.loads(third.lines[0][1])
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    row = pq.read_table(out).to_pylist()[0]
    assert (row["status"], row["reasks"]) == ("ok", 1)
