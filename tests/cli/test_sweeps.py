"""Sweeps: models x parameter combinations x samples in one long, typed table."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import write_jsonl


def test_cross_product_counts_columns_and_seeds(run_job, api, tmp_path):
    out = tmp_path / "o.parquet"
    result = run_job(
        [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q"}],
        out,
        "-m",
        "m1",
        "-m",
        "m2",
        "--sweep",
        "temperature=0,0.7",
        "--sweep",
        "verbosity=low,high",
        "--samples",
        "3",
        "--seed",
        "100",
        "-q",
        model=None,
    )
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == 2 * 2 * 2 * 2 * 3  # rows x models x temperatures x verbosity x 3
    assert len(api.log) == 48
    assert table.schema.field("sample").type == pa.int32()
    assert table.schema.field("param_temperature").type == pa.float64()
    assert table.schema.field("param_verbosity").type == pa.string()
    rows = table.to_pylist()
    first = [
        (r["id"], r["model"], r["param_temperature"], r["param_verbosity"], r["sample"])
        for r in rows[:7]
    ]
    assert first == [
        ("a", "m1", 0.0, "low", 0),
        ("a", "m1", 0.0, "low", 1),
        ("a", "m1", 0.0, "low", 2),
        ("a", "m1", 0.0, "high", 0),
        ("a", "m1", 0.0, "high", 1),
        ("a", "m1", 0.0, "high", 2),
        ("a", "m1", 0.7, "low", 0),
    ]
    bodies = {
        (e.body["model"], e.body["temperature"], e.body["verbosity"], e.body["seed"])
        for e in api.log
        if e.body["messages"][0]["content"] == "p"
    }
    assert len(bodies) == 24  # every combination and sample is its own request
    assert {seed for *_, seed in bodies} == {100, 101, 102}


def test_sweep_resume_and_report_group_by_parameters(cli, run_job, api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "prompt": f"p{i}"} for i in range(4)])
    out = tmp_path / "o.parquet"
    args = (data, out, "--sweep", "temperature=0,1", "-q")
    assert run_job(*args, model="m").exit_code == 0
    assert run_job(*args, model="m").exit_code == 0  # finished: nothing sent again
    assert len(api.log) == 8
    report = cli("report", out).stdout.splitlines()
    assert report[0].split()[:2] == ["model", "param_temperature"]
    assert len(report) == 4  # header, two combinations, total
    by = cli("cost", out, "--by", "model,param_temperature", "--csv").stdout.splitlines()
    assert [line.split(",")[1] for line in by[1:3]] == ["0", "1"]


def test_bad_sweeps_exit_2(cli, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p"}])
    for bad in ("temperature", "model=a,b", "temperature="):
        result = cli("run", data, "-o", tmp_path / "o.parquet", "--sweep", bad)
        assert result.exit_code == 2, bad
