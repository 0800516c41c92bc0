"""--stream end to end: the same rows as without it, plus ttft_s; cut streams retried."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import write_jsonl


def test_streamed_rows_match_plain_rows(run_job, api, tmp_path):
    data = write_jsonl(
        tmp_path / "in.jsonl", [{"id": str(i), "prompt": f"stream me {i}"} for i in range(5)]
    )
    assert run_job(data, tmp_path / "plain.parquet", "-q", model="m").exit_code == 0
    assert run_job(data, tmp_path / "stream.parquet", "-q", "--stream", model="m").exit_code == 0
    plain = pq.read_table(tmp_path / "plain.parquet")
    streamed = pq.read_table(tmp_path / "stream.parquet")
    assert streamed.schema.field("ttft_s").type == pa.float64()
    assert "ttft_s" not in plain.column_names
    for name in ("id", "content", "finish_reason", "prompt_tokens", "completion_tokens"):
        assert streamed.column(name).to_pylist() == plain.column(name).to_pylist(), name
    for row in streamed.to_pylist():
        assert 0 < row["ttft_s"] <= row["latency_s"]
    sent = api.log[-1].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_a_stream_cut_before_done_is_retried(run_job, tmp_path):
    out = tmp_path / "o.parquet"
    rows = [{"id": "a", "prompt": "x [[mock:cutstreamx1]]"}]
    assert run_job(rows, out, "--stream", "-q", model="m").exit_code == 0
    row = pq.read_table(out).to_pylist()[0]
    assert (row["status"], row["attempts"]) == ("ok", 2)


def test_octen_typed_stream_chunks(run_job, make_api, tmp_path):
    api = make_api(usage_style="octen")
    out = tmp_path / "o.parquet"
    rows = [{"id": "a", "prompt": "search this"}]
    result = run_job(
        rows, out, "--stream", "--param", "octen_search=true", "-q", model="m", server=api
    )
    assert result.exit_code == 0, result.stderr
    row = pq.read_table(out).to_pylist()[0]
    assert row["status"] == "ok" and row["total_tokens"] > 0
    assert row["search_results"] and row["content"]
