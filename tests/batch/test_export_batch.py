"""`batcher export-batch`: the Batch API input file of a job, round-tripped through the
mock's Batch API, with the rows `batcher run` gives."""

from __future__ import annotations

import asyncio
import time

import orjson
import pyarrow.parquet as pq
from conftest import write_jsonl

from batcher.batch.client import BatchClient
from batcher.batch.lines import read_lines
from batcher.providers import Endpoint

ROWS = [{"id": f"r{i}", "prompt": f"question number {i}"} for i in range(5)]


def test_export_round_trips_through_the_batch_api(cli, make_api, tmp_path):
    server = make_api(batch_step=0.1)
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    exported = cli(
        "export-batch",
        data,
        "-m",
        "mock-1",
        "--temperature",
        "0",
        "-o",
        tmp_path / "requests.jsonl",
    )
    assert exported.exit_code == 0, exported.stderr
    assert exported.stdout == f"{tmp_path / 'requests.jsonl'}\n"
    assert "wrote 5 requests to" in exported.stderr
    lines = [orjson.loads(x) for x in (tmp_path / "requests.jsonl").read_bytes().splitlines()]
    assert [x["custom_id"] for x in lines] == [f"{i}-0-0-0" for i in range(5)]
    assert lines[0]["body"] == {
        "messages": [{"content": "question number 0", "role": "user"}],
        "model": "mock-1",
        "temperature": 0,
    }

    async def through_the_api() -> bytes:
        async with BatchClient(Endpoint(server.url, "bearer", None)) as client:
            file_id = await client.upload((tmp_path / "requests.jsonl").read_bytes(), "r.jsonl")
            batch = await client.create(file_id, {"from": "test"})
            deadline = time.monotonic() + 10
            while batch["status"] != "completed" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                batch = await client.retrieve(batch["id"])
            assert batch["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
            return await client.download(batch["output_file_id"])

    outcomes = {o.custom_id: o for o in read_lines(asyncio.run(through_the_api()))}
    online = cli(
        "run",
        data,
        "-o",
        tmp_path / "out.parquet",
        "--base-url",
        server.url,
        "-m",
        "mock-1",
        "--temperature",
        "0",
    )
    assert online.exit_code == 0, online.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    for i, row in enumerate(rows):
        reply = outcomes[f"{i}-0-0-0"].attempt.reply
        assert (reply.content, reply.usage.prompt_tokens) == (row["content"], row["prompt_tokens"])


def test_export_needs_an_output_and_refuses_bad_input(cli, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    missing = cli("export-batch", data, "-m", "mock-1")
    assert missing.exit_code == 2 and "missing -o/--output" in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b"}\n')
    refused = cli("export-batch", bad, "-m", "mock-1", "-o", tmp_path / "r.jsonl")
    assert refused.exit_code == 2 and "line 2" in refused.stderr
    assert not (tmp_path / "r.jsonl").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"in.jsonl", "bad.jsonl"}  # no .tmp
