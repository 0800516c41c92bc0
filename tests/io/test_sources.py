"""INPUT as a folder, a glob or a URI of a filesystem pyarrow reads: one input, in path
order, each message naming its own file."""

from __future__ import annotations

import gzip

import pyarrow.parquet as pq

from tests.conftest import prompts, write_jsonl


def lines(rows) -> str:
    return "".join(f'{{"id": "{r["id"]}", "prompt": "{r["prompt"]}"}}\n' for r in rows)


def folder_of_inputs(tmp_path):
    data = tmp_path / "in"
    (data / "sub").mkdir(parents=True)
    (data / ".hidden").mkdir()
    write_jsonl(data / "a.jsonl", prompts(3, "a"))
    (data / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(lines(prompts(2, "b")).encode()))
    write_jsonl(data / ".hidden" / "c.jsonl", prompts(1, "c"))  # left out
    (data / "README.md").write_text("not an input")  # left out
    return data


def test_a_folder_a_glob_and_a_file_uri_read_the_same_rows(tmp_path, run_job):
    data = folder_of_inputs(tmp_path)
    expected = ["a0", "a1", "a2", "b0", "b1"]
    for i, given in enumerate([data, f"{data}/**/*.jsonl*", f"file://{data}/"]):
        out = tmp_path / f"out{i}.parquet"
        result = run_job(given, out)
        assert result.exit_code == 0, result.stderr
        assert pq.read_table(out).column("id").to_pylist() == expected


def test_a_bad_row_names_its_own_file_and_line(tmp_path, run_job, api):
    data = folder_of_inputs(tmp_path)
    (data / "sub" / "z.jsonl").write_text('{"id": "z0", "prompt": "ok"}\n{"id": "a1"}\n')
    result = run_job(data, tmp_path / "out.parquet")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {data}/sub/z.jsonl: line 2: ")
    (data / "sub" / "z.jsonl").write_text('{"id": "a1", "prompt": "again"}\n')
    result = run_job(data, tmp_path / "out.parquet")
    assert result.stderr == (
        f"Error: {data}/sub/z.jsonl: line 1: duplicate id 'a1' (first at {data}/a.jsonl: line 2)\n"
    )
    assert api.log == []


def test_inputs_that_cannot_be_one_are_refused(tmp_path, run_job):
    data = folder_of_inputs(tmp_path)
    (data / "d.csv").write_text("id,prompt\nd0,hi\n")
    result = run_job(data, tmp_path / "out.parquet")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {data}: files of more than one kind: csv ({data}/d.csv), "
        f"jsonl ({data}/a.jsonl); give one kind\n"
    )
    result = run_job(f"{data}/*.parquet", tmp_path / "out.parquet")
    assert result.stderr == (
        f"Error: {data}/*.parquet: matches no input file (.jsonl, .csv or .parquet, also "
        "compressed)\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_job(empty, tmp_path / "out.parquet")
    assert result.stderr == (
        f"Error: {empty}: holds no input file (.jsonl, .csv or .parquet, also compressed)\n"
    )
