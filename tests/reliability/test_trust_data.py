"""Promise: no job loses, mislabels, re-bills or makes up a result (issue 13, items 1-8).

Each test replays one case where a job broke that promise, as a user or a fault would cause
it, through `python -m batcher` against the mock API on loopback.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from reliability_support import (
    AppThread,
    Batcher,
    clean_env,
    error_lines,
    read_rows,
    rows,
    run_args,
    run_batcher,
    wait_for,
    write_jsonl,
)


def job_dir_of(out: Path) -> Path:
    return out.with_name(out.name + ".batcher")


def parts_of(out: Path) -> list[Path]:
    return sorted(job_dir_of(out).glob("part-*.parquet"))


def durable(out: Path) -> int:
    """The results saved in the job folder's parts so far."""
    total = 0
    for part in parts_of(out):
        with contextlib.suppress(OSError):  # renamed away meanwhile
            total += pq.read_metadata(part).num_rows
    return total


def sent(api) -> int:
    return len(api.log)


def sent_ids(api) -> list[str]:
    """The ids of `rows(n)` that the mock was sent, from their prompts."""
    return ["r" + e.body["messages"][0]["content"].split()[-1] for e in api.log]


# --- 1. the input changed under a running job ---------------------------------------------


def test_an_input_reversed_mid_run_is_an_error_and_never_a_mislabelled_out(make_api, tmp_path):
    api = make_api(latency=0.01)
    items = rows(600)
    data = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "out.parquet"
    job = Batcher(
        *run_args(data, out, api.url),
        "-c",
        "2",
        "-q",
        "--flush-rows",
        "10",
    )
    wait_for(lambda: job_dir_of(out).exists() and durable(out) > 0, what="a first part")
    write_jsonl(data, items[::-1])  # the same rows, the same size, in reverse order
    ran = job.wait()
    assert ran.code == 2, ran.stderr
    assert error_lines(ran.stderr) == [
        f"Error: {data}: changed while the job ran, so its rows are no longer the rows that "
        "were sent; restore it and run the same command again to write the output, or use "
        "--fresh to start over"
    ]
    assert not out.exists()
    write_jsonl(data, items)  # restored: the same command writes OUT from what was saved
    ran = run_batcher("run", data, "-o", out, "--base-url", api.url, "-m", "m", "-q")
    assert ran.code == 0, ran.stderr
    got = read_rows(out)
    assert [(r["id"], r["prompt"]) for r in got] == [(r["id"], r["prompt"]) for r in items]
    # each reply answers its own row's prompt
    assert all(r["content"].startswith(f"Mock reply to: {r['prompt']} ") for r in got)


# --- 2. a rerun asking for less never drops finished results -----------------------------


def test_a_rerun_asking_for_less_is_refused_naming_fresh(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(40))
    out = tmp_path / "out.parquet"
    base = ("run", data, "-o", out, "--base-url", api.url, "-q")
    assert run_batcher(*base, "-m", "mock-1", "-m", "mock-2").code == 0
    before = out.read_bytes()
    for fewer, dropped in (("--limit", "70"), ("-m", "40")):
        args = (
            ("-m", "mock-1", "-m", "mock-2", "--limit", "5")
            if fewer == "--limit"
            else ("-m", "mock-2")
        )
        ran = run_batcher(*base, *args)
        assert ran.code == 2, ran.stderr
        assert error_lines(ran.stderr) == [
            f"Error: {out}: holds {dropped} earlier results that this run does not ask for (a "
            "smaller --limit, fewer models, samples or sweep values); run the command that "
            "made them to finish the job, or add --fresh to start over without them"
        ]
        assert out.read_bytes() == before
    api.reset()
    ran = run_batcher(*base, "-m", "mock-1", "-m", "mock-2")
    assert ran.code == 0 and sent(api) == 0  # nothing re-sent, nothing re-billed
    assert len(read_rows(out)) == 80


# --- 3. kill -9 while the job folder is being removed ------------------------------------

# Removing the job folder is killed (os._exit, as by kill -9) once half its parts are gone.
KILLED_WHILE_REMOVING = """
import os, shutil
real = shutil.rmtree
def rmtree(path, *args, **kwargs):
    isdir = os.path.isdir(path)
    parts = sorted(p for p in os.listdir(path) if p.endswith(".parquet")) if isdir else []
    if not parts:
        return real(path, *args, **kwargs)
    for name in parts[: len(parts) // 2]:
        os.unlink(os.path.join(path, name))
    os._exit(137)
shutil.rmtree = rmtree
"""


def test_kill_while_the_job_folder_is_removed_resends_nothing(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(2000))
    out = tmp_path / "out.parquet"
    args = ("run", data, "-o", out, "--base-url", api.url, "-m", "m", "-q", "--flush-rows", "100")
    killed = run_batcher(*args, prelude=KILLED_WHILE_REMOVING)
    assert killed.code == 137, killed.stderr
    assert len(read_rows(out)) == 2000
    api.reset()
    ran = run_batcher(*args)
    assert ran.code == 0, ran.stderr
    assert sent(api) == 0
    assert [r["id"] for r in read_rows(out)] == [f"r{i}" for i in range(2000)]
    # no job folder, no tombstone left: only the lock file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.parquet.lock",
        "in.jsonl",
        "out.parquet",
    ]


def test_a_complete_out_wins_over_a_half_deleted_job_folder(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(300))
    out = tmp_path / "out.parquet"
    args = ("run", data, "-o", out, "--base-url", api.url, "-m", "m", "-q", "--flush-rows", "50")
    assert run_batcher(*args, "--keep-job-dir").code == 0
    parts = parts_of(out)
    for part in parts[: len(parts) // 2]:
        part.unlink()
    api.reset()
    ran = run_batcher(*args)
    assert ran.code == 0, ran.stderr
    assert sent(api) == 0
    assert [r["status"] for r in read_rows(out)] == ["ok"] * 300


# --- 4. a part write that fails -----------------------------------------------------------

# A "disk" that is full while the file named by $FULL_DISK exists: writing a part, job.json
# or OUT then fails with ENOSPC, as on a full file system.
FULL_DISK = """
import errno, functools, os, pathlib
import pyarrow.parquet as pq
import pytest
def full(write):
    @functools.wraps(write)
    def checked(*args, **kwargs):
        if os.path.exists(os.environ["FULL_DISK"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(*args, **kwargs)
    return checked
pq.write_table = full(pq.write_table)
pq.ParquetWriter.write_table = full(pq.ParquetWriter.write_table)
pq.ParquetWriter.write_batch = full(pq.ParquetWriter.write_batch)
pathlib.Path.write_text = full(pathlib.Path.write_text)
"""


def test_a_disk_that_fills_mid_run_stops_sending_and_loses_nothing_saved(make_api, tmp_path):
    api = make_api(latency=0.01)
    full = tmp_path / "disk-is-full"
    data = write_jsonl(tmp_path / "in.jsonl", rows(2000))
    out = tmp_path / "out.parquet"
    args = (
        *run_args(data, out, api.url),
        "-q",
        "-c",
        "8",
        "--flush-rows",
        "50",
    )
    job = Batcher(*args, prelude=FULL_DISK, env=clean_env(FULL_DISK=str(full)))
    wait_for(lambda: job_dir_of(out).exists() and durable(out) >= 100, what="two parts")
    full.touch()
    ran = job.wait()
    saved = durable(out)
    lost = sent(api) - saved
    assert ran.code == 74, ran.stderr
    assert error_lines(ran.stderr) == [
        f"Error: disk full writing results to {job_dir_of(out)}: {lost} finished results "
        f"could not be saved and will be sent again ({saved} saved by this run); free space "
        "and run the same command again"
    ]
    assert 100 <= saved < 2000
    assert 0 < lost <= 2 * 50 + 8  # the batches being written and those in flight
    assert not out.exists()
    full.unlink()
    api.reset()
    ran = run_batcher(*args)
    assert ran.code == 0, ran.stderr
    assert sent(api) == 2000 - saved
    assert [r["id"] for r in read_rows(out)] == [f"r{i}" for i in range(2000)]


def test_space_freed_while_batcher_retries_saves_every_result(make_api, tmp_path):
    api = make_api(latency=0.01)
    full = tmp_path / "disk-is-full"
    data = write_jsonl(tmp_path / "in.jsonl", rows(2000))
    out = tmp_path / "out.parquet"
    args = (
        *run_args(data, out, api.url),
        "-c",
        "8",
        "--flush-rows",
        "50",
    )
    job = Batcher(*args, prelude=FULL_DISK, env=clean_env(FULL_DISK=str(full)))
    wait_for(lambda: job_dir_of(out).exists() and durable(out) >= 100, what="two parts")
    full.touch()
    time.sleep(0.3)
    full.unlink()  # freed before the last tries are over
    ran = job.wait()
    assert ran.code == 1, ran.stderr
    assert durable(out) == sent(api)  # every billed reply was saved
    assert ran.stderr.splitlines()[-2:] == [
        "stopped early: cannot save results: disk full; free space and run the same command "
        "again to send the rest",
        f"wrote {out}",
    ]
    unsent = [r["id"] for r in read_rows(out) if r["error_type"] == "not_sent"]
    assert len(unsent) == 2000 - sent(api)
    api.reset()
    assert run_batcher(*args, "-q").code == 0
    assert sorted(sent_ids(api)) == sorted(unsent)  # the rest, and only the rest
    assert [r["status"] for r in read_rows(out)] == ["ok"] * 2000


def run_at_c1020(api, tmp_path, prelude: str):
    """1,500 rows at -c 1020 in a process whose open-file limit `prelude` set first."""
    data = write_jsonl(tmp_path / "in.jsonl", rows(1500))
    out = tmp_path / "out.parquet"
    args = (*run_args(data, out, api.url), "-q", "-c", "1020")
    return run_batcher(*args, prelude=prelude), out


def test_too_few_open_files_for_the_concurrency_lowers_it_and_finishes(api, tmp_path):
    prelude = "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
    ran, out = run_at_c1020(api, tmp_path, prelude)
    assert ran.code == 0, ran.stderr
    assert error_lines(ran.stderr) == [
        "WARNING batcher.job: -c 1020 needs more open files than this process may have: 192 "
        "in flight at most (raise `ulimit -n` for more)"
    ]
    assert [r["status"] for r in read_rows(out)] == ["ok"] * 1500


def test_a_low_soft_open_file_limit_is_raised_to_the_hard_one(api, tmp_path):
    prelude = (
        "import resource\nhard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
    )
    ran, out = run_at_c1020(api, tmp_path, prelude)
    assert ran.code == 0, ran.stderr
    assert ran.stderr == ""
    assert [r["status"] for r in read_rows(out)] == ["ok"] * 1500


# --- 5. data columns named like body keys are never sent unasked --------------------------

CRM_ROW = {
    "text": "the kettle leaks",
    "user": "alice@example.com",
    "n": 5,
    "metadata": "from crm",
    "model": "Kettle X200",
}


def test_columns_named_like_body_keys_are_not_sent_unless_named(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [CRM_ROW])
    out = tmp_path / "out.parquet"
    args = ("run", data, "-o", out, "--base-url", api.url, "--template", "Classify: {text}")
    assert run_batcher(*args, "-m", "gpt-4o-mini", "-q").code == 0
    messages = [{"role": "user", "content": "Classify: the kettle leaks"}]
    assert [e.body for e in api.log] == [{"messages": messages, "model": "gpt-4o-mini"}]
    (row,) = read_rows(out)
    kept = {k: row[k] for k in ("text", "user", "n", "metadata", "input_model")}
    assert kept == {
        **{k: v for k, v in CRM_ROW.items() if k != "model"},
        "input_model": "Kettle X200",
    }
    assert (row["model"], row["n"]) == ("gpt-4o-mini", 5)
    api.reset()
    ran = run_batcher(*args, "--body-columns", "model,user", "--fresh", "-q")
    assert ran.code == 0, ran.stderr
    assert [e.body for e in api.log] == [
        {"messages": messages, "model": "Kettle X200", "user": "alice@example.com"}
    ]
    api.reset()
    ran = run_batcher(*args, "-m", "m", "--body-columns", "temperature", "--fresh", "-q")
    assert (ran.code, error_lines(ran.stderr)) == (
        2,
        [
            "Error: --body-columns: no input column 'temperature' (columns: text, user, n, "
            "metadata, model)"
        ],
    )
    assert sent(api) == 0


# --- 6 and 12. --max-cost never hangs, and spends what it may -----------------------------

REVIEWS = Path(__file__).resolve().parents[2] / "sample_data" / "reviews.jsonl"
GPT_4O = ("-m", "gpt-4o", "--template", "Classify: {text}", "--max-tokens", "50")
FULL_COST = 0.0994  # the 300 reviews through the mock at gpt-4o's list price, 50 tokens max
WORST = (60 * 2.5 + 50 * 10.0) / 1e6  # the worst case of the longest review's request


def budget_run(api, tmp_path, max_cost: float, concurrency: int):
    out = tmp_path / "out.parquet"
    ran = run_batcher(
        "run",
        REVIEWS,
        "-o",
        out,
        "--base-url",
        api.url,
        *GPT_4O,
        "-c",
        concurrency,
        "--max-cost",
        max_cost,
        "--fresh",
        timeout=60,
    )
    return ran, read_rows(out)


@pytest.mark.parametrize(("max_cost", "concurrency"), [(0.02, 2), (0.05, 2), (0.05, 8)])
def test_max_cost_stops_cleanly_and_never_hangs(api, tmp_path, max_cost, concurrency):
    ran, got = budget_run(api, tmp_path, max_cost, concurrency)
    spent = sum(r["cost_usd"] for r in got if r["status"] == "ok")
    assert ran.code == 1, ran.stderr
    assert (
        f"stopped early: the next request could pass the budget of ${max_cost:.4f} "
        f"(${spent:.4f} spent); rerun with a higher --max-cost to go on"
    ) in ran.stderr.splitlines()
    assert max_cost - WORST <= spent <= max_cost


def test_a_budget_that_covers_the_job_finishes_every_row(api, tmp_path):
    ran, got = budget_run(api, tmp_path, FULL_COST + WORST, 32)
    assert ran.code == 0, ran.stderr
    assert [r["status"] for r in got] == ["ok"] * 300
    assert round(sum(r["cost_usd"] for r in got), 4) == FULL_COST


def test_a_budget_smaller_than_the_concurrency_needs_still_sends(api, tmp_path):
    ran, got = budget_run(api, tmp_path, 4 * WORST, 32)  # 32 worst cases would be $0.02
    ok = [r for r in got if r["status"] == "ok"]
    assert ran.code == 1, ran.stderr
    assert len(ok) >= 4 and sum(r["cost_usd"] for r in ok) <= 4 * WORST


# --- 7. the id of an unreadable row never clashes with a real one -------------------------


def test_a_skipped_bad_line_gets_an_id_no_real_row_has_and_the_rerun_works(api, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(
        '{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": "b"}\n{"id": 3, oops\n'
        '{"id": 4, "prompt": "d"}\n'
    )
    out = tmp_path / "out.parquet"
    args = ("run", data, "-o", out, "--base-url", api.url, "-m", "m", "--on-bad-row", "skip")
    assert run_batcher(*args).code == 1
    got = [(r["id"], r["status"], r["error_type"]) for r in read_rows(out)]
    assert got == [
        ("1", "ok", None),
        ("2", "ok", None),
        ("(line 3)", "error", "bad_input"),
        ("4", "ok", None),
    ]
    api.reset()
    ran = run_batcher(*args)
    assert ran.code == 1, ran.stderr
    assert "earlier results" not in ran.stderr and sent(api) == 0
    assert [(r["id"], r["status"], r["error_type"]) for r in read_rows(out)] == got


# --- 8. unknown usage is null, and the budget counts its worst case -----------------------

USAGES = {  # prompt -> the usage a reply states
    "fine": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    "words": {"prompt_tokens": "lots", "completion_tokens": 7, "total_tokens": 12},
    "nan": {"prompt_tokens": float("nan"), "completion_tokens": 7},  # NaN: not JSON
    "negative": {"prompt_tokens": 5, "completion_tokens": 7, "cost": -300},
    "missing": None,
}


async def stated_usage(request: web.Request) -> web.Response:
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    reply = {
        "id": "x",
        "model": body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
    }
    if USAGES[prompt] is not None:
        reply["usage"] = USAGES[prompt]
    return web.Response(text=json.dumps(reply), content_type="application/json")  # NaN as is


@pytest.fixture(scope="module")
def usage_server():
    with AppThread({"/v1/chat/completions": stated_usage}) as server:
        yield server


def test_missing_or_nonsense_usage_is_null_never_zero(usage_server, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": k, "prompt": k} for k in USAGES])
    out = tmp_path / "out.parquet"
    ran = run_batcher(
        "run",
        data,
        "-o",
        out,
        "--base-url",
        usage_server.url + "/v1",
        "-m",
        "gpt-4o",
        "--max-retries",
        "0",
    )
    assert ran.code == 1, ran.stderr  # NaN is not JSON: that reply is rejected
    got = {
        r["id"]: (r["prompt_tokens"], r["completion_tokens"], r["cost_usd"]) for r in read_rows(out)
    }
    assert got == {
        "fine": (5, 7, (5 * 2.5 + 7 * 10.0) / 1e6),
        "words": (None, 7, None),
        "nan": (None, None, None),
        "negative": (5, 7, (5 * 2.5 + 7 * 10.0) / 1e6),  # the cost from the tokens instead
        "missing": (None, None, None),
    }
    lines = ran.stderr.splitlines()
    for warning in (
        "WARNING batcher.engine.replies: a reply's usage.prompt_tokens is 'lots', not a "
        "count: taken as unknown",
        "WARNING batcher.engine.replies: a reply's usage.cost is -300, not a count: taken as "
        "unknown",
        "usage unknown for 3 rows that were or may have been billed (the server did not say, "
        "said nonsense, or timed out): their tokens and cost are left empty",
        "cost: at least $0.0002 (3 rows of unknown cost)",
    ):
        assert warning in lines, ran.stderr
    assert "$-" not in ran.stderr


def test_the_budget_counts_unknown_usage_as_its_worst_case(usage_server, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": "words"} for i in range(200)])
    out = tmp_path / "out.parquet"
    ran = run_batcher(
        "run",
        data,
        "-o",
        out,
        "--base-url",
        usage_server.url + "/v1",
        "-m",
        "gpt-4o",
        "--max-tokens",
        "50",
        "--max-cost",
        "0.01",
        "-c",
        "4",
    )
    got = read_rows(out)
    ok = [r for r in got if r["status"] == "ok"]
    worst = (2 * 2.5 + 50 * 10.0) / 1e6  # "words" is counted as 2 tokens
    assert ran.code == 1, ran.stderr
    assert len(ok) == int(0.01 / worst)  # each counted at its worst case, none more
    assert [r["error_type"] for r in got if r["status"] != "ok"] == ["not_sent"] * (200 - len(ok))


def test_a_billed_reply_that_was_rejected_keeps_its_tokens(api, tmp_path):
    items = [{"id": k, "prompt": f"{k} [[mock:{k}]]"} for k in ("nochoices", "invalid_utf8")]
    data = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "out.parquet"
    ran = run_batcher(
        "run", data, "-o", out, "--base-url", api.url, "-m", "gpt-4o", "--max-retries", "0"
    )
    assert ran.code == 1, ran.stderr
    got = [(r["error_type"], r["prompt_tokens"] > 0, r["cost_usd"] > 0) for r in read_rows(out)]
    assert got == [("bad_response", True, True)] * 2


def test_an_unpriced_model_whose_rows_all_failed_shows_no_cost(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "prompt": "a [[mock:400]]"}])
    out = tmp_path / "out.parquet"
    ran = run_batcher("run", data, "-o", out, "--base-url", api.url, "-m", "no-price-model")
    assert ran.code == 1, ran.stderr
    assert ran.stderr.splitlines()[:3] == [
        "0 ok, 1 error (1 bad_request) of 1 requests from 1 rows",
        "  no-price-model: 0/1 ok, 0 tokens in, 0 out",
        "no price for: no-price-model (cost left empty; add them with --prices FILE)",
    ]
