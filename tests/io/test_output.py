"""OUT as one Parquet file or as a Parquet dataset folder, chosen by the name; both read
back the same by `cost`, `status`, `report`, resume and the usual readers."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batcher.io import output
from batcher.io.output import read_output, write_output
from tests.conftest import prompts, write_jsonl

TIMINGS = [
    "latency_s",
    "started_at",
    "finished_at",
    "_done_at",
    "ttft_s",
    "created",
]  # differ per run


def rows_of(table: pa.Table) -> list[dict]:
    keep = [n for n in table.column_names if n not in TIMINGS]
    return table.select(keep).to_pylist()


@pytest.fixture
def small_files(monkeypatch):
    monkeypatch.setattr(output, "DATASET_FILE_ROWS", 16)


def test_a_name_without_a_suffix_is_a_dataset_with_the_rows_of_a_file(
    tmp_path, run_job, small_files
):
    data = write_jsonl(tmp_path / "in.jsonl", prompts(40))
    assert run_job(data, tmp_path / "one.parquet").exit_code == 0
    result = run_job(data, tmp_path / "many")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'many'}\n"
    folder = tmp_path / "many"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert [pq.read_metadata(folder / n).num_rows for n in names] == [16, 16, 8]
    one, many = pq.read_table(tmp_path / "one.parquet"), read_output(folder)
    assert many.schema.remove_metadata() == one.schema.remove_metadata()
    assert rows_of(many) == rows_of(one)
    meta = json.loads(many.schema.metadata[b"batcher"])
    assert (meta["rows"], meta["requests"], meta["ok"]) == (40, 40, 40)
    # the usual readers see the same 40 rows
    assert len(pd.read_parquet(folder)) == len(pl.read_parquet(folder)) == 40
    assert pq.read_table(folder).num_rows == 40
    count = duckdb.sql(f"select count(*) from read_parquet('{folder}/*.parquet')").fetchall()
    assert count == [(40,)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".many")] == [".many.lock"]


def test_cost_status_and_report_read_a_dataset(tmp_path, run_job, cli, small_files):
    data = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    assert run_job(data, tmp_path / "one.parquet").exit_code == 0
    assert run_job(data, tmp_path / "many").exit_code == 0
    for command in ("cost", "status"):
        one = cli(command, tmp_path / "one.parquet")
        many = cli(command, tmp_path / "many")
        assert many.exit_code == 0, many.stderr
        assert many.stdout == one.stdout.replace(
            str(tmp_path / "one.parquet"), str(tmp_path / "many")
        )
    report = cli("report", tmp_path / "many")
    assert report.exit_code == 0
    assert report.stdout.splitlines()[1].split()[:3] == ["mock-1", "20", "0"]


def test_a_rerun_resumes_from_a_dataset_and_fresh_replaces_it(tmp_path, run_job, api, small_files):
    data = write_jsonl(tmp_path / "in.jsonl", prompts(40))
    out = tmp_path / "many"
    assert run_job(data, out).exit_code == 0
    first = read_output(out)
    sent = len(api.log)
    again = run_job(data, out)
    assert again.exit_code == 0
    assert "this run sent 0 HTTP requests; 40 results were done by earlier runs" in again.stderr
    assert len(api.log) == sent
    assert rows_of(read_output(out)) == rows_of(first)
    fresh = run_job(write_jsonl(tmp_path / "in.jsonl", prompts(3)), out, "--fresh")
    assert fresh.exit_code == 0
    assert read_output(out).column("id").to_pylist() == ["p0", "p1", "p2"]
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]


def test_a_folder_that_is_not_ours_is_refused_and_left_alone(tmp_path, run_job, api):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for extra in ((), ("--fresh",)):
        result = run_job(write_jsonl(tmp_path / "in.jsonl", prompts(2)), folder, *extra)
        assert result.exit_code == 2
        assert result.stderr == (
            f"Error: {folder}: a folder that is not a batcher output; choose another -o (a new "
            "name without a suffix is written as a Parquet dataset)\n"
        )
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert api.log == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_job(write_jsonl(tmp_path / "in.jsonl", prompts(2)), empty).exit_code == 0
    assert read_output(empty).num_rows == 2


def test_a_write_cut_short_leaves_the_old_output_and_is_cleaned_up(tmp_path, run_job):
    out = tmp_path / "many"
    schema = pa.schema([("x", pa.int64())])

    def tables():
        yield pa.table({"x": [1, 2]})
        raise OSError(28, "No space left on device")

    write_output(out, schema, [pa.table({"x": [7]})], lambda: {"batcher": b"{}"})
    with pytest.raises(OSError):
        write_output(out, schema, tables())
    assert read_output(out).column("x").to_pylist() == [7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many"]
    # what a kill would leave, between the two renames of a replace and mid-write
    (tmp_path / ".many.123.old").mkdir()
    (tmp_path / ".many.123.tmp").mkdir()
    data = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    assert run_job(data, tmp_path / "many", "--fresh").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".many.lock", "in.jsonl", "many"]


def test_an_empty_folder_beside_a_job_folder_resumes_from_the_job_folder(tmp_path, run_job, api):
    """A job stopped before writing into its (empty) OUT folder: the rerun sends nothing."""
    data = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    out = tmp_path / "many"
    assert run_job(data, out, "--keep-job-dir").exit_code == 0
    for part in out.iterdir():
        part.unlink()
    sent = len(api.log)
    again = run_job(data, out)
    assert again.exit_code == 0, again.stderr
    assert "this run sent 0 HTTP requests; 5 results were done by earlier runs" in again.stderr
    assert len(api.log) == sent
    assert read_output(out).column("id").to_pylist() == ["p0", "p1", "p2", "p3", "p4"]
