"""--stream end to end: the same rows as without it, plus ttft_s; cut streams retried."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import write_jsonl


def test_streamed_rows_match_plain_rows(cli, api, tmp_path):
    data = write_jsonl(
        tmp_path / "in.jsonl", [{"id": str(i), "prompt": f"stream me {i}"} for i in range(5)]
    )
    base = ("run", data, "--base-url", api.url, "-m", "m", "-q")
    assert cli(*base, "-o", tmp_path / "plain.parquet").exit_code == 0
    assert cli(*base, "-o", tmp_path / "stream.parquet", "--stream").exit_code == 0
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


def test_a_stream_cut_before_done_is_retried(cli, api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x [[mock:cutstreamx1]]"}])
    out = tmp_path / "o.parquet"
    assert (
        cli("run", data, "-o", out, "--base-url", api.url, "-m", "m", "--stream", "-q").exit_code
        == 0
    )
    row = pq.read_table(out).to_pylist()[0]
    assert (row["status"], row["attempts"]) == ("ok", 2)


def test_octen_typed_stream_chunks(cli, make_api, tmp_path):
    api = make_api(usage_style="octen")
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "search this"}])
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
        "--stream",
        "--param",
        "octen_search=true",
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    row = pq.read_table(out).to_pylist()[0]
    assert row["status"] == "ok" and row["total_tokens"] > 0
    assert row["search_results"] and row["content"]
