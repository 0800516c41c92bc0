"""Batch API output files as results: `batcher run --batch-output FILE` joins their lines to
the job's requests by custom_id and sends only the rest; `batcher cost FILE` prices them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from batcher.batch.client import BatchClient
from batcher.providers import Endpoint

ROWS = [
    {"id": "a", "prompt": "question number 0"},
    {"id": "b", "prompt": "question number 1"},
    {"id": "refused", "prompt": "[[mock:400]] a bad request"},
    {"id": "flaky", "prompt": "[[mock:503x1]] fails once"},
    {"id": "c", "prompt": "question number 4"},
]
PRICES = "[mock-1]\ninput_per_million = 1000.0\noutput_per_million = 2000.0\n"


def through_the_batch_api(server, requests: Path) -> tuple[bytes, bytes]:
    """The output and error files of `requests` run as one batch on the mock."""

    async def run() -> tuple[bytes, bytes]:
        async with BatchClient(Endpoint(server.url, "bearer", None)) as client:
            file_id = await client.upload(requests.read_bytes(), "requests.jsonl")
            batch = await client.create(file_id, {})
            deadline = time.monotonic() + 10
            while batch["status"] != "completed" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                batch = await client.retrieve(batch["id"])
            assert batch["status"] == "completed"
            return (
                await client.download(batch["output_file_id"]),
                await client.download(batch["error_file_id"]),
            )

    return asyncio.run(run())


@pytest.fixture
def made(cli, make_api, tmp_path):
    """The rows exported, run through the mock's Batch API; its output file with row b's
    line left out (as if cut short), and its error file."""
    server = make_api(batch_step=0.05)
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    requests = tmp_path / "requests.jsonl"
    assert cli("export-batch", data, "-m", "mock-1", "-o", requests).exit_code == 0
    output, errors = through_the_batch_api(server, requests)
    kept = [x for x in output.splitlines(keepends=True) if b'"1-0-0-0"' not in x]
    (tmp_path / "output.jsonl").write_bytes(b"".join(kept))
    (tmp_path / "errors.jsonl").write_bytes(errors)
    (tmp_path / "prices.toml").write_text(PRICES)
    server.log.clear()
    return server, data


def test_run_takes_the_files_results_and_sends_only_the_rest(cli, run_job, made, tmp_path):
    server, data = made
    out = tmp_path / "out.parquet"
    files = [
        "--batch-output",
        tmp_path / "output.jsonl",
        "--batch-output",
        tmp_path / "errors.jsonl",
    ]
    ran = run_job(data, out, *files, "--prices", tmp_path / "prices.toml", server=server)
    assert ran.exit_code == 1, ran.stderr  # the refused row is an error
    assert "--batch-output: 4 lines are results of this job's requests" in ran.stderr
    rows = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert list(rows) == ["a", "b", "refused", "flaky", "c"]
    got = {k: (r["status"], r["error_type"], r["http_status"], r["mode"]) for k, r in rows.items()}
    assert got == {
        "a": ("ok", None, 200, "batch"),
        "b": ("ok", None, 200, "online"),  # not in the file: sent
        "refused": ("error", "bad_request", 400, "batch"),
        "flaky": ("ok", None, 200, "online"),  # its line was a 503: sent again
        "c": ("ok", None, 200, "batch"),
    }
    assert sorted(e.body["messages"][0]["content"] for e in server.log) == [
        "[[mock:503x1]] fails once",
        "question number 1",
    ]
    online = run_job(
        data, tmp_path / "online.parquet", "--prices", tmp_path / "prices.toml", server=server
    )
    assert online.exit_code == 1
    same = pq.read_table(tmp_path / "online.parquet").to_pylist()
    for row in same:
        mine = rows[row["id"]]
        assert (mine["content"], mine["prompt_tokens"]) == (row["content"], row["prompt_tokens"])
        factor = 0.5 if mine["mode"] == "batch" else 1.0
        if row["cost_usd"] is not None:
            assert mine["cost_usd"] == pytest.approx(row["cost_usd"] * factor, rel=1e-12)


def test_cost_prices_a_batch_output_file_at_the_batch_rate(cli, made, tmp_path):
    priced = cli("cost", tmp_path / "output.jsonl", "--prices", tmp_path / "prices.toml")
    assert priced.exit_code == 0, priced.stderr
    lines = [orjson.loads(x) for x in (tmp_path / "output.jsonl").read_bytes().splitlines()]
    usage = [x["response"]["body"]["usage"] for x in lines]
    tokens_in = sum(u["prompt_tokens"] for u in usage)
    tokens_out = sum(u["completion_tokens"] for u in usage)
    cost = (tokens_in * 1000 + tokens_out * 2000) / 1e6 * 0.5
    table = priced.stdout.splitlines()
    assert [line.split() for line in table] == [
        ["model", "requests", "ok", "errors", "tokens", "in", "tokens", "out", "cost"],
        ["mock-1", "2", "2", "0", str(tokens_in), str(tokens_out), f"${cost:.4f}"],
        ["total", "2", "2", "0", str(tokens_in), str(tokens_out), f"${cost:.4f}"],
    ]
    errors = cli("cost", tmp_path / "errors.jsonl", "--json")
    assert errors.exit_code == 0, errors.stderr
    total = orjson.loads(errors.stdout)["total"]
    assert (total["requests"], total["ok"], total["errors"]) == (2, 0, 2)


def reply_line(custom_id: str, model: str) -> dict:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
    }
    return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}, "error": None}


def test_a_file_made_for_other_options_is_refused_before_anything_is_sent(run_job, api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    swapped = write_jsonl(tmp_path / "swapped.jsonl", [reply_line("0-0-0-0", "mock-2")])
    out = tmp_path / "out.parquet"
    ran = run_job(data, out, "-m", "mock-2", "--batch-output", swapped, model="mock-1")
    assert ran.exit_code == 2
    assert ran.stderr == (
        f"Error: --batch-output {swapped}: custom_id 0-0-0-0 is a request to mock-1 here, but "
        "mock-2 answered it: give the -m and --sweep options the file's requests were made with\n"
    )
    other = write_jsonl(tmp_path / "other.jsonl", [reply_line("7-0-0-0", "mock-1")])
    ran = run_job(data, out, "--batch-output", other)
    assert ran.exit_code == 2
    assert ran.stderr == (
        "Error: --batch-output: no line's custom_id is one of this job's requests (custom_ids "
        "are row-model-combination-sample, as `batcher export-batch` writes them)\n"
    )
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"custom_id": "0-0-0-0", "method": "POST", "url": "/v1/x", "body": {}}\n')
    ran = run_job(data, out, "--batch-output", requests)
    assert (ran.exit_code, ran.stderr) == (
        2,
        f"Error: --batch-output {requests}: a Batch API input file (requests); give the output "
        "or error file it made\n",
    )
    missing = run_job(data, out, "--batch-output", tmp_path / "nope.jsonl")
    assert missing.exit_code == 2 and "--batch-output" in missing.stderr
    assert len(api.log) == 0 and not out.exists()


def test_a_refused_fresh_run_keeps_the_earlier_results(run_job, api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    out = tmp_path / "out.parquet"
    assert run_job(data, out).exit_code == 0
    other = write_jsonl(tmp_path / "other.jsonl", [reply_line("7-0-0-0", "mock-1")])
    refused = run_job(data, out, "--fresh", "--batch-output", other)
    assert refused.exit_code == 2 and "no line's custom_id" in refused.stderr
    again = run_job(data, out)
    assert again.exit_code == 0, again.stderr
    assert len(api.log) == 2  # the first run's two: nothing sent again
