"""`batcher report` and the end-of-job summary through the CLI: groups in the run's model
order (as -m gave them), latencies under 10 ms in milliseconds."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from conftest import write_jsonl

from batcher.io.output import read_output

ROWS = [{"id": str(i), "prompt": f"question {i}"} for i in range(20)]
HEADER = "model  ok  errors  tokens in  tokens out  cost     p50     p95"


def latencies(out, model: str | None = None) -> list[float]:
    table = pq.read_table(out, columns=["model", "latency_s"])
    if model is not None:
        table = table.filter(pc.equal(table["model"], model))
    return table["latency_s"].to_pylist()


def percentiles(values: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(values, [50, 95])
    return float(p50), float(p95)


def run_zeta_alpha(run_job, tmp_path, *args, server=None):
    out = tmp_path / "out.parquet"
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    result = run_job(data, out, "-m", "alpha", *args, model="zeta", server=server)
    assert result.exit_code == 0, result.stderr
    return out, result


def test_report_and_summary_list_models_as_given_and_fast_latencies_in_ms(cli, run_job, tmp_path):
    # -c 1: one request at a time on one connection, under a millisecond each as a rule
    out, run = run_zeta_alpha(run_job, tmp_path, "-c", "1")

    def shown(value: float) -> str:
        """In ms under 10 ms (the mock is that fast unless the machine is loaded: the
        boundary itself is pinned by test_report_latency_cells_at_the_10_ms_boundary)."""
        return f"{value * 1000:.1f} ms" if value * 1000 < 9.95 else f"{value:.2f} s"

    z50, z95 = map(shown, percentiles(latencies(out, "zeta")))
    a50, a95 = map(shown, percentiles(latencies(out, "alpha")))
    t50, t95 = map(shown, percentiles(latencies(out)))
    report = cli("report", out)
    assert report.exit_code == 0, report.stderr
    assert report.stdout.splitlines() == [
        HEADER,
        f"zeta   20       0         40         267     -  {z50}  {z95}",
        f"alpha  20       0         40         262     -  {a50}  {a95}",
        f"total  40       0         80         529     -  {t50}  {t95}",
    ]
    # the end-of-job summary: models in the same order, its latency line as the report's
    lines = run.stderr.splitlines()
    assert lines[1:3] == [
        "  zeta: 20/20 ok, 40 tokens in, 267 out",
        "  alpha: 20/20 ok, 40 tokens in, 262 out",
    ]
    latency = [line for line in lines if line.startswith("latency:")]
    assert len(latency) == 1
    assert re.fullmatch(rf"latency: p50 {t50}, p95 {t95}; wall time \d+\.\ds", latency[0])
    # --json: the same order, raw seconds
    found = json.loads(cli("report", out, "--json").stdout)
    assert [g["label"] for g in found["groups"]] == ["zeta", "alpha"]
    assert found["total"]["latency_p50"] == percentiles(latencies(out))[0]
    # --html: the table's rows in the same order, the figures as in the text; the axis in
    # ms when every group's p95 is
    page = tmp_path / "report.html"
    assert cli("report", out, "--html", page).exit_code == 0
    html = page.read_text()
    assert html.index("<td>zeta</td>") < html.index("<td>alpha</td>")
    assert f"<b>{t50} / {t95}</b>" in html
    assert f">p50 {z50} · p95 {z95}</text>" in html
    unit = "ms" if z95.endswith("ms") and a95.endswith("ms") else "s"
    assert f"latency ({unit})" in html


def test_latencies_of_10_ms_and_more_stay_in_seconds(cli, run_job, make_api, tmp_path):
    out, run = run_zeta_alpha(run_job, tmp_path, server=make_api(latency=0.05))

    def s(value: float) -> str:
        return f"{value:.2f} s"

    z50, z95 = map(s, percentiles(latencies(out, "zeta")))
    a50, a95 = map(s, percentiles(latencies(out, "alpha")))
    t50, t95 = map(s, percentiles(latencies(out)))
    assert cli("report", out).stdout.splitlines() == [
        HEADER,
        f"zeta   20       0         40         267     -  {z50}  {z95}",
        f"alpha  20       0         40         262     -  {a50}  {a95}",
        f"total  40       0         80         529     -  {t50}  {t95}",
    ]
    assert re.search(rf"^latency: p50 {t50}, p95 {t95}; wall time \d+\.\ds$", run.stderr, re.M)


def test_the_metadata_order_wins_and_a_plain_file_keeps_first_appearance(cli, run_job, tmp_path):
    out, _ = run_zeta_alpha(run_job, tmp_path)
    table = read_output(out)
    assert json.loads(table.schema.metadata[b"batcher"])["settings"]["models"] == ["zeta", "alpha"]

    def models(path) -> list[str]:
        result = cli("report", path, "--by", "model")
        assert result.exit_code == 0, result.stderr
        return [line.split()[0] for line in result.stdout.splitlines()[1:-1]]

    # alpha's rows first, the footer still naming zeta first: the run's order
    alpha_first = table.take(pc.sort_indices(table, sort_keys=[("model", "ascending")]))
    pq.write_table(alpha_first, tmp_path / "sorted.parquet")
    assert models(tmp_path / "sorted.parquet") == ["zeta", "alpha"]
    # without the footer's metadata: the order the rows show the models in
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "plain.parquet")
    assert models(tmp_path / "plain.parquet") == ["zeta", "alpha"]  # not alphabetical
    pq.write_table(alpha_first.replace_schema_metadata(None), tmp_path / "plain_sorted.parquet")
    assert models(tmp_path / "plain_sorted.parquet") == ["alpha", "zeta"]


def test_report_latency_cells_at_the_10_ms_boundary(cli, tmp_path):
    cases = {"fast": 0.0042, "edge": 0.0099, "rounds-up": 0.00996, "ten": 0.01, "slow": 2.5}
    models = [*cases, "failed"]
    table = pa.table(
        {
            "id": [str(i) for i in range(len(models))],
            "model": models,
            "status": ["ok"] * len(cases) + ["error"],
            "error_type": [None] * len(cases) + ["timeout"],
            "prompt_tokens": [1] * len(cases) + [0],
            "completion_tokens": [1] * len(cases) + [0],
            "total_tokens": [2] * len(cases) + [0],
            "latency_s": [*cases.values(), 0.001],  # an error's latency is not counted
        }
    )
    pq.write_table(table, tmp_path / "plain.parquet")
    result = cli("report", tmp_path / "plain.parquet")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "model      ok  errors  tokens in  tokens out     cost     p50     p95",
        "fast        1       0          1           1        -  4.2 ms  4.2 ms",
        "edge        1       0          1           1        -  9.9 ms  9.9 ms",
        "rounds-up   1       0          1           1        -  0.01 s  0.01 s",
        "ten         1       0          1           1        -  0.01 s  0.01 s",
        "slow        1       0          1           1        -  2.50 s  2.50 s",
        "failed      0       1          0           0  $0.0000       -       -",
        "total       5       1          5           5  $0.0000  0.01 s  2.00 s",
        "errors by type: timeout 1",
    ]
    found = json.loads(cli("report", tmp_path / "plain.parquet", "--json").stdout)
    assert [g["latency_p50"] for g in found["groups"]] == [*cases.values(), None]


def test_a_running_job_and_cost_list_models_as_given_too(cli, run_job, tmp_path):
    out, _ = run_zeta_alpha(run_job, tmp_path, "--keep-job-dir")
    out.unlink()  # as while the job runs: the results are in its folder alone
    for command in ("report", "cost"):
        shown = cli(command, out)
        assert shown.exit_code == 0, shown.stderr
        groups = [line.split()[0] for line in shown.stdout.splitlines()[1:4]]
        assert groups == ["zeta", "alpha", "total"], command
