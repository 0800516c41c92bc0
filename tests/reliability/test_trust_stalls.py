"""Promise: no job hangs, stalls in silence, grows without bound, or is blocked for good by
damaged state (issue 13, items 9-16). Each test replays one case through `python -m batcher`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from conftest import wait_for
from reliability_support import (
    MB,
    AppThread,
    Batcher,
    error_lines,
    read_rows,
    rows,
    run_args,
    run_batcher,
    write_jsonl,
)


def opening_a_fifo(pid: int) -> bool:
    """Whether a thread of `pid` waits in the open of a FIFO for a writer (Linux)."""
    for wchan in Path(f"/proc/{pid}/task").glob("*/wchan"):
        with contextlib.suppress(OSError):
            if wchan.read_text() == "wait_for_partner":
                return True
    return False


def pairs(items: list[dict]) -> list[tuple]:
    return [(r["id"], r["prompt"]) for r in items]


# --- 9. a FIFO or standard input as the input ---------------------------------------------


def test_a_fifo_nobody_writes_to_still_stops_on_ctrl_c(api, tmp_path):
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    job = Batcher("run", fifo, "-o", tmp_path / "out.parquet", "--base-url", api.url, "-m", "m")
    wait_for(lambda: opening_a_fifo(job.pid), timeout=30)  # its signal handler is set by now
    job.send_signal(signal.SIGINT)
    ran = job.wait(timeout=10)
    assert ran.code == 130, ran.stderr
    assert error_lines(ran.stderr) == [
        "interrupted: stopped before any result was saved; nothing to resume"
    ]
    assert len(api.log) == 0


def test_a_fifo_and_standard_input_are_read_once_and_run(api, tmp_path):
    items = rows(300)
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    out = tmp_path / "fifo.parquet"
    writer = threading.Thread(target=write_jsonl, args=(fifo, items))
    writer.start()
    ran = run_batcher("run", fifo, "-o", out, "--base-url", api.url, "-m", "m", "-q")
    writer.join()
    assert ran.code == 0, ran.stderr
    assert [(r["id"], r["prompt"]) for r in read_rows(out)] == [
        (r["id"], r["prompt"]) for r in items
    ]
    data = write_jsonl(tmp_path / "file.jsonl", items)
    out = tmp_path / "stdin.parquet"
    with open(data, "rb") as stdin:
        job = Batcher("run", "-", "-o", out, "--base-url", api.url, "-m", "m", "-q", stdin=stdin)
        ran = job.wait()
    assert ran.code == 0, ran.stderr
    assert [(r["id"], r["prompt"]) for r in read_rows(out)] == [
        (r["id"], r["prompt"]) for r in items
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
        ".fifo.parquet.lock",
        ".stdin.parquet.lock",
    ]  # no copy of the input left behind


def test_compressed_input_on_standard_input_with_its_format_named(api, tmp_path):
    import gzip

    items = rows(50)
    data = tmp_path / "in.jsonl.gz"
    data.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in items).encode()))
    out = tmp_path / "out.parquet"
    ran = run_batcher("run", data, "-o", out, "--base-url", api.url, "-m", "m", "-q")
    assert ran.code == 0, ran.stderr
    assert [r["id"] for r in read_rows(out)] == [r["id"] for r in items]


# --- 10. a rate-limit reset an hour away ----------------------------------------------------


async def reset_in_an_hour(request: web.Request) -> web.Response:
    body = await request.json()
    reply = {
        "id": "x",
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3600s"}
    return web.json_response(reply, headers=headers)


def test_a_reset_an_hour_away_pauses_a_minute_at_most_and_says_so(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(5))
    with AppThread({"/v1/chat/completions": reset_in_an_hour}) as server:
        job = Batcher(
            "run",
            data,
            "-o",
            tmp_path / "out.parquet",
            "--base-url",
            server.url + "/v1",
            "-m",
            "m",
            "-c",
            "1",
        )
        started = time.monotonic()
        time.sleep(3)
        job.send_signal(signal.SIGINT)
        ran = job.wait(timeout=20)
    assert ran.code == 130, ran.stderr
    assert time.monotonic() - started < 10
    assert error_lines(ran.stderr)[0] == (
        "WARNING batcher.engine.limits: pausing new requests for 60 s: "
        "x-ratelimit-remaining-requests is 0"
    )


# --- 11. a request that needs more than --tpm allows ----------------------------------------


def test_a_request_over_the_tpm_limit_is_an_input_error_in_run_and_estimate(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(2))
    args = ("-m", "m", "--tpm", "10", "--max-tokens", "100")
    expected = [
        f"Error: {data}: line 1: the request needs ~104 tokens (~4 in, up to 100 out), more than "
        "the 10 tokens a minute --tpm allows: it could never be sent; raise --tpm or lower "
        "--max-tokens"
    ]
    ran = run_batcher(
        "run", data, "-o", tmp_path / "out.parquet", "--base-url", api.url, *args, timeout=20
    )
    assert (ran.code, error_lines(ran.stderr)) == (2, expected)
    ran = run_batcher("estimate", data, *args, timeout=20)
    assert (ran.code, error_lines(ran.stderr)) == (2, expected)
    assert len(api.log) == 0


# --- 13. a server that is down --------------------------------------------------------------

# The outage stop after 3 s instead of 120, so the test is short.
SHORT_OUTAGE = """
import dataclasses
import batcher.senders as senders
made = senders.engine_settings
senders.engine_settings = lambda spec: dataclasses.replace(made(spec), outage_seconds=3.0)
"""


def refused_url() -> str:
    """A loopback port that nothing listens on: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_a_server_that_is_down_stops_the_job_early_in_flat_memory(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(20_000))
    out = tmp_path / "out.parquet"
    url = refused_url()
    ran = run_batcher(
        *run_args(data, out, url),
        "-q",
        prelude=SHORT_OUTAGE,
        measure_rss=True,
        timeout=60,
    )
    assert ran.code == 1, ran.stderr
    (line,) = [x for x in ran.stderr.splitlines() if x.startswith("stopped early")]
    port = url.rsplit(":", 1)[1].removesuffix("/v1")
    assert re.fullmatch(
        # 3 s, or 4: once the retry quota is spent, attempts go one a second
        r"stopped early: the server gave no usable reply for [34] s \(\d+ attempts in a row "
        rf"failed, the last: cannot connect to 127.0.0.1:{port}: Connection refused\); run the "
        "same command again once it is back",
        line,
    ), line
    table = pq.read_table(out, columns=["error_type"])
    assert set(table.column("error_type").to_pylist()) <= {"connection_error", "not_sent"}
    assert ran.max_rss_mb < 250, f"peak RSS {ran.max_rss_mb:.0f} MB"


# --- 14. huge chunked replies at a high concurrency -----------------------------------------


async def six_mb_chunked(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await response.write(b'{"choices":[{"message":{"content":"')
        for _ in range(6):
            await response.write(b"x" * MB)
        await response.write(b'"}}]}')
    except ConnectionError:
        pass
    return response


def test_replies_in_flight_together_stay_within_a_gibibyte(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(64))
    out = tmp_path / "out.parquet"
    with AppThread({"/v1/chat/completions": six_mb_chunked}) as server:
        ran = run_batcher(
            "run",
            data,
            "-o",
            out,
            "--base-url",
            server.url + "/v1",
            "-m",
            "m",
            "-q",
            "-c",
            "256",
            "--max-retries",
            "0",
            measure_rss=True,
        )
    assert ran.code == 1, ran.stderr
    got = {(r["error_type"], r["error_message"]) for r in read_rows(out)}
    assert got == {("response_too_large", "reply larger than 4 MiB")}  # 1 GiB / -c
    assert ran.max_rss_mb < 400, f"peak RSS {ran.max_rss_mb:.0f} MB"


# --- 15. one enormous line ------------------------------------------------------------------


def test_a_line_longer_than_64_mib_is_an_input_error_in_bounded_memory(api, tmp_path):
    data = tmp_path / "in.jsonl"
    with open(data, "w") as f:
        f.write('{"id": 1, "prompt": "' + "x" * (100 * MB) + '"}\n')
    ran = run_batcher(
        "run",
        data,
        "-o",
        tmp_path / "out.parquet",
        "--base-url",
        api.url,
        "-m",
        "m",
        measure_rss=True,
    )
    assert (ran.code, error_lines(ran.stderr)) == (
        2,
        [f"Error: {data}: line 1: longer than 64 MiB, the most one line may hold"],
    )
    assert ran.max_rss_mb < 400, f"peak RSS {ran.max_rss_mb:.0f} MB"
    assert len(api.log) == 0


# --- 16. damaged state ------------------------------------------------------------------------


def test_a_part_with_damaged_pages_is_set_aside_and_its_rows_sent_again(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(300))
    out = tmp_path / "out.parquet"
    args = ("run", data, "-o", out, "--base-url", api.url, "-m", "m", "--flush-rows", "100")
    assert run_batcher(*args, "--keep-job-dir", "-q").code == 0
    out.unlink()
    folder = out.with_name(out.name + ".batcher")
    part = sorted(folder.glob("part-*.parquet"))[1]
    size, damaged = part.stat().st_size, pq.read_metadata(part).num_rows
    with open(part, "r+b") as f:  # the footer stays whole; the pages are garbage
        f.seek(8)
        f.write(os.urandom(size // 2))
    api.reset()
    ran = run_batcher(*args)
    assert ran.code == 0, ran.stderr
    assert any(
        line.startswith(f"WARNING batcher.io.jobdir: {part.name} is damaged")
        for line in ran.stderr.splitlines()
    ), ran.stderr
    assert len(api.log) == damaged
    assert [r["id"] for r in read_rows(out)] == [f"r{i}" for i in range(300)]


def test_damaged_cache_entries_are_misses_and_the_job_goes_on(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(10))
    cache = tmp_path / "cache"
    args = ("--base-url", api.url, "-m", "m", "--cache", cache)
    assert run_batcher("run", data, "-o", tmp_path / "a.parquet", *args, "-q").code == 0
    db = sqlite3.connect(cache / "cache.sqlite3")
    hashes = [h for (h,) in db.execute("select request_hash from replies order by request_hash")]
    reply = json.loads(db.execute("select reply from replies").fetchone()[0])
    newer = json.dumps({**reply, "usage": {**reply["usage"], "new_field": 1}, "added": 2})
    with db:
        db.execute(
            "update replies set reply = ? where request_hash = ?", (b"\x00garbage", hashes[0])
        )
        db.execute("update replies set reply = ? where request_hash = ?", ("[1, 2]", hashes[1]))
        db.execute("update replies set reply = ? where request_hash = ?", (newer, hashes[2]))
    db.close()
    api.reset()
    out = tmp_path / "b.parquet"
    ran = run_batcher("run", data, "-o", out, *args)
    assert ran.code == 0, ran.stderr
    warnings = [x for x in ran.stderr.splitlines() if x.startswith("WARNING")]
    assert len(warnings) == 1 and "cannot read an entry" in warnings[0], ran.stderr
    assert len(api.log) == 2  # the garbage and the wrong shape; the newer entry reads
    assert sum(r["cached"] for r in read_rows(out)) == 8


def test_cost_and_report_on_a_job_folder_with_a_foreign_part(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out = tmp_path / "out.parquet"
    job = Batcher(
        "run", data, "-o", out, "--base-url", api.url, "-m", "gpt-4o", "--keep-job-dir", "-q"
    )
    assert job.wait().code == 0
    folder = out.with_name(out.name + ".batcher")
    pq.write_table(pa.table({"x": [1, 2]}), folder / "part-000099.parquet")
    out.unlink()
    for command in ("cost", "report"):
        ran = run_batcher(command, folder)
        assert ran.code == 0, ran.stderr
        assert error_lines(ran.stderr) == [
            "part-000099.parquet is not one of this job's parts; left out"
        ]
        (total,) = [line.split() for line in ran.stdout.splitlines() if line.startswith("total")]
        assert total[1] == "20"  # every result of the job (requests, or ok), and only those
