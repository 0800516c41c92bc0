"""OUT as JSON Lines or CSV: the Parquet OUT's columns and rows, typed again when read back
(cost, status, show, resume), written whole or not at all."""

from __future__ import annotations

import datetime
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, SAMPLE

from batcher.errors import UsageError
from batcher.io.output import read_output, write_output

DIFFER = {"latency_s", "created", "response_id"}  # two runs of one job differ in these
JOB = ROOT / "jobs" / "label_reviews.toml"  # a schema: list and typed columns, kept input


def same_rows(a: pa.Table, b: pa.Table) -> None:
    assert a.schema.remove_metadata() == b.schema.remove_metadata()
    names = [n for n in a.column_names if n not in DIFFER]
    assert a.select(names).to_pylist() == b.select(names).to_pylist()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_the_rows_of_the_parquet_out_typed_again_and_resumed(cli, tmp_path, suffix):
    parquet, text = tmp_path / "one.parquet", tmp_path / f"one{suffix}"
    for out in (parquet, text):
        ran = cli("run", "--job", JOB, "-o", out, "--limit", "30", "-q")
        assert ran.exit_code == 0, ran.stderr
    same_rows(pq.read_table(parquet), read_output(text))
    meta = json.loads(read_output(text).schema.metadata[b"batcher"])
    assert (meta["rows"], meta["ok"]) == (30, 30)
    hidden = {p.name for p in tmp_path.iterdir() if p.name.startswith(".one")}
    assert hidden == {".one.parquet.lock", f".one{suffix}.batcher.json", f".one{suffix}.lock"}
    readers = {".jsonl": lambda p: pd.read_json(p, lines=True), ".csv": pd.read_csv}
    frame = readers[suffix](text)
    assert list(frame.columns) == pq.read_schema(parquet).names and len(frame) == 30
    for command in ("cost", "status"):
        assert cli(command, text).stdout == cli(command, parquet).stdout.replace(
            str(parquet), str(text)
        )
    # a rerun finds every row done, one with more rows sends the new ones only
    again = cli("run", "--job", JOB, "-o", text, "--limit", "40")
    assert again.exit_code == 0, again.stderr
    assert "this run sent 10 HTTP requests; 30 results were done by earlier runs" in again.stderr
    assert read_output(text).column("id").to_pylist() == [f"r{i:04d}" for i in range(1, 41)]


def test_csv_keeps_nulls_empty_strings_line_breaks_and_nested_values_apart(tmp_path):
    schema = pa.schema(
        [
            ("s", pa.string()),
            ("n", pa.int64()),
            ("tags", pa.list_(pa.string())),
            ("call", pa.struct([("name", pa.string()), ("args", pa.string())])),
            ("at", pa.timestamp("ms", tz="UTC")),
            ("day", pa.date32()),
        ]
    )
    at = datetime.datetime(2026, 12, 2, 15, 22, 22, 123000, tzinfo=datetime.timezone.utc)
    table = pa.table(
        {
            "s": ["a", "", None, 'two\nlines, "quoted"'],
            "n": [1, None, 3, 4],
            "tags": [["x", "y"], [], None, ["z"]],
            "call": [{"name": "f", "args": "{}"}, None, {"name": "", "args": None}, None],
            "at": [at, None, at, at],
            "day": [datetime.date(2026, 12, 2), None, None, datetime.date(1999, 1, 31)],
        },
        schema=schema,
    )
    for name in ("t.csv", "t.jsonl"):
        write_output(tmp_path / name, schema, [table], lambda: {"batcher": b'{"rows": 4}'})
        back = read_output(tmp_path / name)
        assert back.to_pylist() == table.to_pylist(), name
        assert back.schema.metadata == {b"batcher": b'{"rows": 4}'}
    assert (tmp_path / "t.csv").read_text().splitlines()[:3] == [
        '"s","n","tags","call","at","day"',
        '"a",1,"[""x"",""y""]","{""name"":""f"",""args"":""{}""}",'
        "2026-12-02 15:22:22.123Z,2026-12-02",
        '"",,"[]",,,',
    ]
    # an OUT that is not the one its schema file describes (a kill between the two renames)
    (tmp_path / "t.jsonl").write_text('{"s": "old"}\n')
    with pytest.raises(UsageError, match=r"t\.jsonl: not a readable batcher output"):
        read_output(tmp_path / "t.jsonl")


def test_input_columns_text_could_not_give_back_are_refused_before_sending(run_job, api, tmp_path):
    data = tmp_path / "in.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a"],
                "prompt": ["hi"],
                "blob": pa.array([b"\x00"], pa.binary()),
                "ns": pa.array([1], pa.timestamp("ns")),
            }
        ),
        data,
    )
    ran = run_job(data, tmp_path / "o.jsonl")
    assert (ran.exit_code, ran.stderr) == (
        2,
        f"Error: {tmp_path / 'o.jsonl'}: .jsonl cannot hold the input columns blob (binary), "
        "ns (timestamp[ns]); name the output .parquet, or leave them out with --keep-columns\n",
    )
    assert api.log == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        ".o.jsonl.lock",
        "in.parquet",
    ]
    kept = run_job(data, tmp_path / "o.jsonl", "--keep-columns", "prompt")
    assert kept.exit_code == 0, kept.stderr


def test_a_text_out_without_its_schema_file_is_not_taken_for_a_batcher_output(cli, tmp_path):
    out = tmp_path / "o.jsonl"
    assert cli("run", SAMPLE / "questions.jsonl", "-o", out, "--limit", "3", "-q").exit_code == 0
    (tmp_path / ".o.jsonl.batcher.json").unlink()
    shown = cli("status", out)
    assert (shown.exit_code, shown.stderr) == (2, f"Error: {out}: not a batcher output\n")
