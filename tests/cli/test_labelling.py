"""Structured output end to end: schemas sent, replies validated, re-asks, typed columns,
job files and every shipped job."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, SAMPLE, write_jsonl

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "confidence": {"type": "number"},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {
            "type": "object",
            "properties": {"lang": {"type": "string"}, "words": {"type": "integer"}},
            "required": ["lang", "words"],
            "additionalProperties": False,
        },
        "extra": {"type": "object"},
        "status": {"type": "string"},
    },
    "required": ["label", "score", "confidence", "urgent", "tags", "meta", "extra", "status"],
    "additionalProperties": False,
}


@pytest.fixture
def schema_file(tmp_path) -> Path:
    path = tmp_path / "label.json"
    path.write_text(json.dumps(SCHEMA))
    return path


def run_labels(cli, api, tmp_path, schema_file, rows, *extra):
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o.parquet"
    result = cli(
        "run",
        data,
        "-o",
        out,
        "--base-url",
        api.url,
        "-m",
        "m",
        "--schema",
        schema_file,
        "-q",
        *extra,
    )
    return result, out


def prompt_tokens_of(body) -> int:
    """The mock's own count: characters of every message // 4."""
    return max(1, sum(len(m["content"] or "") for m in body["messages"]) // 4)


def test_schema_is_sent_strict_and_typed_columns_come_back(cli, api, tmp_path, schema_file):
    result, out = run_labels(
        cli,
        api,
        tmp_path,
        schema_file,
        [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}],
    )
    assert result.exit_code == 0, result.stderr
    assert api.log[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "label", "schema": SCHEMA, "strict": True},
    }
    table = pq.read_table(out)
    types = {f.name: f.type for f in table.schema}
    assert types["label"] == pa.dictionary(pa.int32(), pa.string())
    assert types["score"] == pa.int64()
    assert types["confidence"] == pa.float64()
    assert types["urgent"] == pa.bool_()
    assert types["tags"] == pa.list_(pa.string())
    assert types["meta"] == pa.struct([("lang", pa.string()), ("words", pa.int64())])
    assert pa.types.is_large_string(types["extra"])  # free-form object: JSON text
    assert types["out_status"] == pa.string()  # clashes with the status column
    assert types["reasks"] == pa.int32() and types["parsed"] == pa.string()
    rows = table.to_pylist()
    for row in rows:
        parsed = json.loads(row["parsed"])
        assert row["label"] == parsed["label"] and row["score"] == parsed["score"]
        assert row["meta"] == parsed["meta"] and row["tags"] == parsed["tags"]
        assert json.loads(row["extra"]) == parsed["extra"]
        assert row["out_status"] == parsed["status"] and row["status"] == "ok"
        assert row["reasks"] == 0
    df = pd.read_parquet(out)
    assert str(df["label"].dtype) == "category" and str(df["score"].dtype) == "int64"


def test_json_mode_and_a_rows_own_response_format_wins(cli, api, tmp_path):
    own = {
        "type": "json_schema",
        "json_schema": {
            "name": "own",
            "schema": {
                "type": "object",
                "properties": {"x": {"type": "integer"}},
                "required": ["x"],
            },
        },
    }
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q", "response_format": own}],
    )
    out = tmp_path / "o.parquet"
    result = cli(
        "run", data, "-o", out, "--base-url", api.url, "-m", "m", "--json", "-q",
        "--body-columns", "response_format",
    )  # fmt: skip
    assert result.exit_code == 0
    assert api.log[0].body["response_format"] == {"type": "json_object"}
    assert api.log[1].body["response_format"] == own
    rows = pq.read_table(out).to_pylist()
    assert isinstance(json.loads(rows[1]["parsed"])["x"], int)


@pytest.mark.parametrize("kind", ["fenced", "prose"])
def test_lenient_parsing_needs_no_reask(cli, api, tmp_path, schema_file, kind):
    result, out = run_labels(
        cli, api, tmp_path, schema_file, [{"id": "a", "prompt": f"x [[mock:{kind}]]"}]
    )
    assert result.exit_code == 0
    row = pq.read_table(out).to_pylist()[0]
    assert (row["status"], row["reasks"], row["attempts"]) == ("ok", 0, 1)
    assert row["content"] != row["parsed"] and row["label"] is not None


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("notjson", "no JSON object found"),
        ("badschema", "is a required property"),
        ("length", "cut off"),
    ],
)
def test_reask_with_the_problem_then_ok(cli, api, tmp_path, schema_file, kind, problem):
    result, out = run_labels(
        cli, api, tmp_path, schema_file, [{"id": "a", "prompt": f"x [[mock:{kind}x1]]"}]
    )
    assert result.exit_code == 0, result.stderr
    row = pq.read_table(out).to_pylist()[0]
    assert (row["status"], row["reasks"], row["attempts"]) == ("ok", 1, 2)
    first, second = api.log[0].body, api.log[1].body
    assert second["messages"][:-2] == first["messages"]
    assert second["messages"][-2]["role"] == "assistant"
    follow_up = second["messages"][-1]
    assert follow_up["role"] == "user" and problem in follow_up["content"]
    assert row["prompt_tokens"] == prompt_tokens_of(first) + prompt_tokens_of(second)


def test_never_valid_ends_invalid_output_with_the_last_reply(cli, api, tmp_path, schema_file):
    result, out = run_labels(
        cli,
        api,
        tmp_path,
        schema_file,
        [{"id": "a", "prompt": "x [[mock:notjson]]"}],
        "--reask",
        "2",
    )
    assert result.exit_code == 1
    row = pq.read_table(out).to_pylist()[0]
    assert (row["status"], row["error_type"], row["reasks"]) == ("error", "invalid_output", 2)
    assert row["content"] == "I think this one is positive, mostly about quality."
    assert "no JSON object found" in row["error_message"]
    assert row["label"] is None and row["parsed"] is None
    assert len(api.log) == 3
    assert row["prompt_tokens"] == sum(prompt_tokens_of(e.body) for e in api.log)


def test_reasks_respect_the_rate_limit(cli, api, tmp_path, schema_file):
    rows = [{"id": str(i), "prompt": f"x{i} [[mock:badschemax1]]"} for i in range(10)]
    result, _ = run_labels(cli, api, tmp_path, schema_file, rows, "--rpm", "600")
    assert result.exit_code == 0
    times = sorted(e.t for e in api.log)
    assert len(times) == 20
    assert times[-1] - times[0] >= 1.7  # 20 requests at 10 a second, re-asks included


def test_a_share_of_broken_replies_all_end_ok(cli, make_api, tmp_path, schema_file):
    api = make_api(
        fail_rate=0.3, faults=("notjson", "badschema", "fenced", "prose", "length"), seed=7
    )
    rows = [{"id": str(i), "prompt": f"review {i}"} for i in range(200)]
    result, out = run_labels(cli, api, tmp_path, schema_file, rows, "--reask", "5")
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out).to_pylist()
    assert all(r["status"] == "ok" and r["label"] for r in table)
    assert sum(r["reasks"] for r in table) + 200 == len(api.log)
    assert sum(r["attempts"] for r in table) == len(api.log)


def test_invalid_schema_file_is_exit_2_before_sending(cli, api, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object", "properties": {"a": {"type": "strnig"}}}')
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    result = cli(
        "run", data, "-o", tmp_path / "o.parquet", "--base-url", api.url, "-m", "m", "--schema", bad
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {bad}: invalid JSON Schema: ")
    assert "strnig" in result.stderr and len(result.stderr.splitlines()) == 1
    assert api.log == [] and not (tmp_path / "o.parquet").exists()


def test_messages_template_few_shot(cli, api, tmp_path):
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "r1", "product": "Kettle", "rating": 5, "text": "Boils fast"}],
    )
    result = cli(
        "run",
        data,
        "-o",
        tmp_path / "o.parquet",
        "--base-url",
        api.url,
        "-m",
        "m",
        "--messages-template",
        SAMPLE / "templates" / "review_fewshot.json",
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    messages = api.log[0].body["messages"]
    template = json.loads((SAMPLE / "templates" / "review_fewshot.json").read_text())
    assert [m["role"] for m in messages] == [m["role"] for m in template]
    assert messages[2]["content"].startswith('{"sentiment": "mixed"')  # {{ }} are literal
    assert "Product: Kettle" in messages[-1]["content"]
    assert "Review: Boils fast" in messages[-1]["content"]


def test_job_file_with_overrides_and_relative_paths(cli, api, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_jsonl(tmp_path / "data.jsonl", [{"id": "1", "text": "hello"}, {"id": "2", "text": "x"}])
    (jobs / "j.toml").write_text(
        'input = "../data.jsonl"\noutput = "../out/o.parquet"\nmodels = ["a"]\n'
        f'base_url = "{api.url}"\ntemplate = "Say {{text}}"\ntemperature = 0.5\n'
        "[params]\ntop_k = 3\n"
    )
    result = cli("run", "--job", jobs / "j.toml", "--temperature", "0.9", "-q")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "o.parquet").exists()
    body = api.log[0].body
    assert (body["temperature"], body["top_k"], body["model"]) == (0.9, 3, "a")
    assert body["messages"] == [{"role": "user", "content": "Say hello"}]
    (jobs / "bad.toml").write_text('input = "../data.jsonl"\nmax_token = 5\n')
    bad = cli("run", "--job", jobs / "bad.toml")
    assert bad.exit_code == 2
    assert "unknown key 'max_token' (did you mean 'max_tokens'?)" in bad.stderr


@pytest.mark.parametrize("job", sorted(p.name for p in (ROOT / "jobs").glob("*.toml")))
def test_every_shipped_job_runs(cli, tmp_path, job):
    """Each job as shipped. A job with its own rpm runs its first rows only: the rest would
    only wait out the limit (900 requests at 500 rpm: 108 s), and the pace is checked."""
    spec = tomllib.loads((ROOT / "jobs" / job).read_text(encoding="utf-8"))
    out = tmp_path / "out.parquet"
    limit = ("--limit", "10") if "rpm" in spec else ()
    started = time.monotonic()
    result = cli("run", "--job", ROOT / "jobs" / job, "-o", out, "-q", *limit)
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out)
    assert set(table.column("status").to_pylist()) == {"ok"}
    models = len(spec["models"]) * len(next(iter(spec.get("sweep", {"": [0]}).values())))
    rows = 10 if limit else len((ROOT / "jobs" / spec["input"]).read_bytes().splitlines())
    assert table.num_rows == rows * models
    if limit:  # one second's budget may go at once, the rest at the job's rate
        burst = spec["rpm"] / 60
        assert elapsed >= (table.num_rows - burst) / burst * 0.9
