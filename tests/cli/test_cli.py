"""`batcher run` end to end, as a user runs it, against the mock API on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE, write_jsonl

from batcher import __version__

OUTPUT_TYPES = {
    "id": pa.string(),
    "model": pa.string(),
    "status": pa.string(),
    "content": pa.string(),
    "finish_reason": pa.string(),
    "refusal": pa.string(),
    "reasoning": pa.string(),
    "tool_calls": pa.string(),
    "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(),
    "total_tokens": pa.int64(),
    "cached_tokens": pa.int64(),
    "cache_write_tokens": pa.int64(),
    "reasoning_tokens": pa.int64(),
    "search_queries": pa.int64(),
    "audio_tokens": pa.int64(),
    "cost_usd": pa.float64(),
    "latency_s": pa.float64(),
    "attempts": pa.int32(),
    "http_status": pa.int32(),
    "error_type": pa.string(),
    "error_message": pa.string(),
    "response_id": pa.string(),
    "response_model": pa.string(),
    "created": pa.timestamp("ms", tz="UTC"),
    "request_hash": pa.string(),
    "search_results": pa.string(),
    "warning": pa.string(),
    "cached": pa.bool_(),
}


def read(path: Path) -> pa.Table:
    return pq.read_table(path)


def test_sample_job_as_in_the_readme(cli, tmp_path):
    out = tmp_path / "out" / "questions.parquet"
    result = cli("run", SAMPLE / "questions.jsonl", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert f"wrote {out}" in result.stderr
    assert "40 ok, 0 errors of 40 requests from 40 rows" in result.stderr
    table = read(out)
    for name, typ in OUTPUT_TYPES.items():
        assert table.schema.field(name).type == typ, name
    assert table.column_names[: len(OUTPUT_TYPES)] == list(OUTPUT_TYPES)
    assert table.column_names[len(OUTPUT_TYPES) :] == ["input_id", "prompt"]
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [f"q{i:02d}" for i in range(1, 41)]
    first = rows[0]
    assert first["status"] == "ok" and first["model"] == "mock-1"
    assert first["content"].startswith("Mock reply to: What is the capital of Australia?")
    assert first["finish_reason"] == "stop"
    assert first["attempts"] == 1 and first["http_status"] == 200
    assert first["prompt_tokens"] > 0 and first["total_tokens"] == (
        first["prompt_tokens"] + first["completion_tokens"]
    )
    assert len(first["request_hash"]) == 64
    assert not (tmp_path / "out" / "questions.parquet.batcher").exists()


def test_every_reader_reads_the_output(cli, tmp_path):
    out = tmp_path / "o.parquet"
    assert cli("run", SAMPLE / "questions.jsonl", "-o", out, "-q").exit_code == 0
    assert len(pd.read_parquet(out)) == 40
    assert pl.read_parquet(out).height == 40
    assert duckdb.sql(f"select count(*) from '{out}'").fetchall() == [(40,)]


def test_metadata_holds_settings_and_counts(cli, tmp_path):
    out = tmp_path / "o.parquet"
    cli("run", SAMPLE / "questions.jsonl", "-o", out, "--limit", "5", "-q")
    meta = json.loads(pq.read_metadata(out).metadata[b"batcher"])
    assert meta["version"] == __version__
    assert meta["settings"]["limit"] == 5
    assert (meta["rows"], meta["requests"], meta["ok"], meta["errors"]) == (5, 5, 5, 0)
    assert meta["started"] <= meta["finished"]


def test_metadata_names_the_model_used_and_every_start_of_the_job(cli, tmp_path):
    out = tmp_path / "o.parquet"
    first = cli("run", SAMPLE / "questions.jsonl", "-o", out, "--limit", "5", "-q")
    assert first.exit_code == 0
    meta = json.loads(pq.read_metadata(out).metadata[b"batcher"])
    assert meta["settings"]["models"] == ["mock-1"]  # the provider's default, not []
    assert meta["runs"] == [meta["started"]]
    again = cli("run", SAMPLE / "questions.jsonl", "-o", out, "--limit", "8", "-q")
    assert again.exit_code == 0
    later = json.loads(pq.read_metadata(out).metadata[b"batcher"])
    assert later["started"] == meta["started"]  # the job's first start
    assert len(later["runs"]) == 2 and later["runs"][0] == meta["started"] <= later["runs"][1]
    fresh = cli("run", SAMPLE / "questions.jsonl", "-o", out, "--fresh", "-q")
    assert fresh.exit_code == 0
    anew = json.loads(pq.read_metadata(out).metadata[b"batcher"])
    assert anew["runs"] == [anew["started"]] and anew["started"] >= later["runs"][1]


def test_two_models_in_input_then_model_order(cli, tmp_path):
    out = tmp_path / "o.parquet"
    result = cli(
        "run",
        SAMPLE / "questions.jsonl",
        "-o",
        out,
        "-m",
        "b/model",
        "-m",
        "a/model",
        "--limit",
        "6",
        "-q",
    )
    assert result.exit_code == 0
    rows = read(out).to_pylist()
    assert [(r["id"], r["model"]) for r in rows] == [
        (f"q{i:02d}", m) for i in range(1, 7) for m in ("b/model", "a/model")
    ]
    assert all(r["response_model"] == r["model"] for r in rows)


def test_each_input_shape(cli, tmp_path):
    shapes = {
        "chats.jsonl": [],
        "batch_requests.jsonl": [],
        "reviews.csv": ["--template", "Review of {product}: {text}"],
        "reviews.parquet": ["--template", "Review of {product}: {text}", "--limit", "10"],
    }
    for name, extra in shapes.items():
        out = tmp_path / (name + ".parquet")
        result = cli("run", SAMPLE / name, "-o", out, "-q", *extra)
        assert result.exit_code == 0, (name, result.stderr)
        table = read(out)
        assert set(table.column("status").to_pylist()) == {"ok"}, name
    batch = read(tmp_path / "batch_requests.jsonl.parquet").to_pylist()
    assert [r["id"] for r in batch] == [f"req-{i}" for i in range(1, 21)]
    reviews = read(tmp_path / "reviews.csv.parquet").to_pylist()
    assert reviews[0]["content"].startswith("Mock reply to: Review of ")
    assert reviews[0]["rating"] == "2"  # CSV values are strings


def test_system_prompt_and_params_reach_the_server(run_job, api, tmp_path):
    result = run_job(
        [{"id": "a", "prompt": "hello"}],
        tmp_path / "o.parquet",
        "--system",
        "Be brief.",
        "--temperature",
        "0.2",
        "--max-tokens",
        "50",
        "--seed",
        "7",
        "--stop",
        "END",
        "--param",
        "top_k=40",
        "--param",
        'reasoning={"effort":"low"}',
        "--param",
        "verbosity=low",
        "-q",
        model="x/y",
    )
    assert result.exit_code == 0, result.stderr
    assert api.log[0].body == {
        "model": "x/y",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
        "seed": 7,
        "stop": ["END"],
        "top_k": 40,
        "reasoning": {"effort": "low"},
        "verbosity": "low",
    }


def test_json_mode(run_job, api, tmp_path):
    result = run_job([{"prompt": "hi"}], tmp_path / "o.parquet", "--json", "-q", model="m")
    assert result.exit_code == 0
    assert api.log[0].body["response_format"] == {"type": "json_object"}
    content = read(tmp_path / "o.parquet").column("content")[0].as_py()
    assert isinstance(json.loads(content), dict)


def test_keep_columns(cli, tmp_path):
    out = tmp_path / "o.parquet"
    args = (
        "run",
        SAMPLE / "reviews.jsonl",
        "-o",
        out,
        "--template",
        "{text}",
        "--limit",
        "3",
        "-q",
    )
    cli(*args, "--keep-columns", "rating,text")
    assert read(out).column_names[-2:] == ["rating", "text"]
    assert read(out).schema.field("rating").type == pa.int64()
    cli(*args, "--keep-columns", "none", "--fresh")
    assert read(out).column_names == list(OUTPUT_TYPES)
    result = cli(*args, "--keep-columns", "nope", "--fresh")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: --keep-columns: no input column 'nope' (columns: id, product, category, "
        "rating, text, expected_sentiment, expected_topic)\n"
    )


def test_some_rows_in_error_exit_1(cli, tmp_path):
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "1", "prompt": "fine"},
            {"id": "2", "prompt": "bad [[mock:400]]"},
            {"id": "3", "prompt": "flaky [[mock:503x1]]"},
        ],
    )
    out = tmp_path / "o.parquet"
    result = cli("run", data, "-o", out, "--max-retries", "2")
    assert result.exit_code == 1
    assert "2 ok, 1 error (1 bad_request) of 3 requests from 3 rows" in result.stderr
    rows = read(out).to_pylist()
    assert [(r["id"], r["status"], r["attempts"], r["error_type"]) for r in rows] == [
        ("1", "ok", 1, None),
        ("2", "error", 1, "bad_request"),
        ("3", "ok", 2, None),
    ]
    assert rows[1]["http_status"] == 400 and rows[1]["error_message"]


def test_dry_run_sends_nothing(cli, api, tmp_path, monkeypatch):
    monkeypatch.setenv("GW_KEY", "sk-dry-run-secret")
    result = cli(
        "run",
        SAMPLE / "questions.jsonl",
        "--dry-run",
        "--base-url",
        api.url,
        "--api-key-env",
        "GW_KEY",
        "-m",
        "m1",
        "-m",
        "m2",
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"80 requests from 40 rows to {api.url}/chat/completions"
    assert json.loads(lines[1].removeprefix("headers: "))["Authorization"] == "Bearer ***"
    assert [json.loads(line)["model"] for line in lines[2:]] == ["m1", "m2", "m1"]
    assert "sk-dry-run-secret" not in result.stdout + result.stderr
    assert api.log == []


def test_version_and_help(cli):
    assert cli("--version").stdout == f"batcher, version {__version__}\n"
    for command in ([], ["run"], ["mock-server"]):
        result = cli(*command, "--help")
        assert result.exit_code == 0 and "Usage: " in result.stdout


# ---------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written, nothing sent


# What follows "Error: INPUT: " on the one stderr line; "..." ends a message whose rest is
# orjson's own wording, which the orjson versions pyproject allows word differently.
BAD_INPUTS = [
    ("bad.jsonl", b'{"prompt": "ok"}\n{"prompt": \n', "line 2: invalid JSON: ..."),
    (
        "neither.jsonl",
        b'{"prompt": "ok"}\n{"text": "no prompt"}\n',
        "line 2: row has neither 'prompt' nor 'messages'",
    ),
    (
        "msgs.jsonl",
        b'{"messages": "hello"}\n',
        "line 1: 'messages' must be a non-empty list, got str",
    ),
    ("num.jsonl", b'{"prompt": 5}\n', "line 1: 'prompt' must be a string, got int"),
    ("utf8.jsonl", b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n', "line 2: invalid UTF-8"),
    ("empty.jsonl", b"", "no rows"),
    (
        "dup.jsonl",
        b'{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n',
        "line 2: duplicate id '1' (first at line 1)",
    ),
    (
        "prompts.txt",
        b"hello\n",
        "unknown file type '.txt' (expected .jsonl, .parquet or .csv, also compressed:"
        " .jsonl.gz, .csv.zst; or say --input-format)",
    ),
]


@pytest.mark.parametrize("name, content, message", BAD_INPUTS)
def test_bad_input_one_line_exit_2_nothing_sent(run_job, api, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "o.parquet"
    result = run_job(path, out, model="m")
    assert result.exit_code == 2
    assert result.stdout == ""
    expected = f"Error: {path}: {message}"
    if expected.endswith("..."):  # the rest is orjson's wording (see BAD_INPUTS)
        assert len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith(expected.removesuffix("...")), result.stderr
    else:
        assert result.stderr == f"{expected}\n"
    assert not out.exists() and not (tmp_path / "o.parquet.batcher").exists()
    assert api.log == []


def test_template_errors(run_job, api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"txt": "b"}])
    out = tmp_path / "o.parquet"
    missing = run_job(data, out, "--template", "Say {text}", model="m")
    assert missing.exit_code == 2
    assert missing.stderr == (
        f"Error: {data}: line 2: template field 'text' names no column (columns: txt)\n"
    )
    evil = run_job(data, out, "--template", "{text.__class__}", model="m")
    assert evil.exit_code == 2
    assert evil.stderr == (
        "Error: template: field '{text.__class__}' is not allowed: "
        "only plain column names such as {text}\n"
    )
    assert api.log == [] and not out.exists()


def test_bad_options_exit_2(cli, tmp_path):
    result = cli("run", SAMPLE / "questions.jsonl", "-o", tmp_path / "o.parquet", "-c", "0")
    assert result.exit_code == 2
    assert result.stderr == "Error: --concurrency must be a finite number greater than 0, got 0\n"
    result = cli(
        "run", SAMPLE / "questions.jsonl", "-o", tmp_path / "o.parquet", "--provider", "openai"
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: no API key for provider 'openai': set $OPENAI_API_KEY or pass --api-key-file\n"
    )
    (tmp_path / "notes.txt").write_text("not ours")
    result = cli("run", SAMPLE / "questions.jsonl", "-o", tmp_path)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {tmp_path}: a folder that is not a batcher output; choose another -o (a new "
        "name without a suffix is written as a Parquet dataset)\n"
    )
    result = cli("run", SAMPLE / "questions.jsonl")
    assert result.exit_code == 2
    assert result.stderr == "Error: missing -o/--output\n"


def test_on_bad_row_skip(run_job, api, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": 3}\nnot json\n')
    out = tmp_path / "o.parquet"
    result = run_job(data, out, "--on-bad-row", "skip", model="m")
    assert result.exit_code == 1
    rows = read(out).to_pylist()
    assert [(r["id"], r["status"], r["error_type"]) for r in rows] == [
        ("a", "ok", None),
        ("b", "error", "bad_input"),
        ("(line 3)", "error", "bad_input"),  # its own id cannot be read
    ]
    assert rows[1]["error_message"] == f"{data}: line 2: 'prompt' must be a string, got int"
    assert len(api.log) == 1


# ---------------------------------------------------------------------------------------
# Keys


def test_bad_key_stops_early_and_keeps_the_job(run_job, make_api, tmp_path, monkeypatch):
    api = make_api(api_key="right-key")
    monkeypatch.setenv("MY_KEY", "wrong-key-123")
    out = tmp_path / "o.parquet"
    result = run_job(
        SAMPLE / "reviews.jsonl",
        out,
        "--template",
        "{text}",
        "--api-key-env",
        "MY_KEY",
        "-c",
        "2",
        model="m",
        server=api,
    )
    assert result.exit_code == 1
    assert (
        "stopped early: 20 requests in a row failed with HTTP 401 auth_error"
        " (Incorrect API key provided)"
    ) in result.stderr.splitlines()
    rows = read(out).to_pylist()
    assert len(rows) == 300
    sent = [r for r in rows if r["error_type"] == "auth_error"]
    assert 20 <= len(sent) <= 24 and len(sent) == len(api.log)
    assert {r["error_type"] for r in rows} == {"auth_error", "not_sent"}
    assert (tmp_path / "o.parquet.batcher").is_dir()
    assert "wrong-key-123" not in result.stdout + result.stderr


def test_key_never_appears_anywhere(run_job, make_api, tmp_path, monkeypatch, caplog):
    key = "sk-test-SECRET-0123456789"
    api = make_api(api_key=key)
    monkeypatch.setenv("GW_KEY", key)
    key_file = tmp_path / "key.txt"
    key_file.write_text(key + "\n")
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "1", "prompt": "fine"},
            {"id": "2", "prompt": "no [[mock:401]]"},
            {"id": "3", "prompt": "drop [[mock:dropx1]]"},
        ],
    )
    outputs = []
    for i, auth in enumerate((["--api-key-env", "GW_KEY"], ["--api-key-file", key_file])):
        out = tmp_path / f"o{i}.parquet"
        for extra in ([], ["--dry-run"], ["-v", "--keep-job-dir", "--fresh"]):
            result = run_job(data, out, *auth, *extra, model="m", server=api)
            outputs.append(result.stdout + result.stderr)
        assert read(out).column("status").to_pylist() == ["ok", "error", "ok"]
    assert all(e.auth == "bearer" for e in api.log)
    blobs = [o.encode() for o in outputs] + [caplog.text.encode()]
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != key_file:
            blobs.append(path.read_bytes())
            if path.suffix == ".parquet":  # compressed: look at the values and metadata too
                blobs.append(json.dumps(read(path).to_pylist(), default=str).encode())
                blobs.append(repr(pq.read_metadata(path).metadata).encode())
    assert not [b for b in blobs if key.encode() in b]


def test_the_command_never_imports_pandas(tmp_path):
    """pyarrow would import pandas (0.4 s) on its first conversion of a Python value; the
    `batcher` command spares it (see cli.skip_pandas_probe). Output still reads in pandas."""
    import subprocess
    import sys

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "prompt": f"p{i}"} for i in range(30)])
    out = tmp_path / "out.parquet"
    report = "import atexit, sys; atexit.register(lambda: print('pandas' in sys.modules))"
    entry = f"{report}; from batcher.cli import entry; entry()"
    cmd = [sys.executable, "-c", entry, "run", str(inp), "-o", str(out), "--provider", "mock"]
    done = subprocess.run([*cmd, "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"  # pandas was never imported
    frame = pq.read_table(out).to_pandas()
    assert len(frame) == 30 and set(frame["status"]) == {"ok"}
