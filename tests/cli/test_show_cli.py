"""`batcher show`: the first rows of an output or of a running job, without Python."""

from __future__ import annotations

import json
import sys

from conftest import prompts


def rows_with_a_bad_one() -> list[dict]:
    rows = prompts(6)
    rows[2]["prompt"] = None  # a bad row: an error row of its own, bad_input
    return rows


def test_the_first_rows_the_errors_a_where_and_json(run_job, cli, tmp_path):
    out = tmp_path / "o.parquet"
    assert run_job(rows_with_a_bad_one(), out, "--on-bad-row", "skip").exit_code == 1
    shown = cli("show", out, "-n", "3", "--columns", "id,status,error_type")
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "id  status  error_type",
        "p0  ok",
        "p1  ok",
        "p2  error   bad_input",
        "(3 rows)",
    ]
    table = cli("show", out, "-n", "1").stdout.splitlines()
    assert table[0].split() == ["id", "model", "status", "content", "error_type", "error_message"]
    assert table[1].startswith("p0  mock-1  ok      Mock reply to: question number 0 (")
    assert len(table[1]) == len("p0  mock-1  ok      ") + 48 and table[1].endswith("…")
    errors = cli("show", out, "--errors", "--columns", "id,error_message", "--json").stdout
    [error] = [json.loads(line) for line in errors.splitlines()]
    assert error["id"] == "p2"
    assert error["error_message"].endswith("line 3: 'prompt' must be a string, got null")
    where = cli("show", out, "--where", "status = 'ok' and id in ('p1', 'p5')", "--json")
    rows = [json.loads(line) for line in where.stdout.splitlines()]
    assert [(r["id"], r["status"]) for r in rows] == [("p1", "ok"), ("p5", "ok")]
    assert list(rows[0]) == ["id", "model", "status", "content", "error_type", "error_message"]


def test_a_running_job_is_shown_from_its_folder(run_job, cli, tmp_path):
    out = tmp_path / "o.parquet"
    ran = run_job(prompts(5), out, "-m", "mock-1", "--keep-job-dir", "-c", "8", model="mock-2")
    assert ran.exit_code == 0
    finished = cli("show", out).stdout
    out.unlink()  # as while the job runs: its results are in the job folder only
    running = cli("show", out)
    assert running.exit_code == 0 and running.stdout == finished
    assert [line.split()[:2] for line in running.stdout.splitlines()[1:5]] == [
        ["p0", "mock-2"], ["p0", "mock-1"], ["p1", "mock-2"], ["p1", "mock-1"]
    ]  # fmt: skip
    assert running.stdout.splitlines()[-1] == "(10 rows)"


def test_bad_columns_and_conditions_are_one_line(run_job, cli, tmp_path, monkeypatch):
    out = tmp_path / "o.parquet"
    assert run_job(prompts(2), out).exit_code == 0
    bad = cli("show", out, "--columns", "id,nope")
    assert bad.exit_code == 2 and bad.stderr.startswith(
        f"Error: --columns: no column 'nope' in {out} (it has: id, model, status, content,"
    )
    wrong = cli("show", out, "--where", "nope = 1")
    assert wrong.exit_code == 2
    assert wrong.stderr == (
        "Error: --where 'nope = 1': Binder Error: Referenced column \"nope\" not found in FROM "
        "clause!\n"
    )
    monkeypatch.setitem(sys.modules, "duckdb", None)  # not installed
    missing = cli("show", out, "--where", "status = 'ok'")
    assert missing.stderr == (
        "Error: --where needs duckdb: pip install duckdb (or use --errors for the rows in error)\n"
    )
    assert cli("show", tmp_path / "none.parquet").stderr == (
        f"Error: {tmp_path / 'none.parquet'}: no such output or job directory\n"
    )
