"""The usage-detail columns of OUT, end to end through the mock's usage shapes."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

DETAILS = ("cached_tokens", "cache_write_tokens", "reasoning_tokens", "search_queries")
PREFIX = "You label support tickets by topic. " * 160  # 5,760 characters: 1,440 mock tokens


def rows(n: int) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "messages": [
                {"role": "system", "content": PREFIX},
                {"role": "user", "content": f"ticket {i}: my order is late"},
            ],
        }
        for i in range(n)
    ]


def details(out) -> list[tuple]:
    table = pq.read_table(out)
    for name in (*DETAILS, "audio_tokens"):
        assert table.schema.field(name).type == pa.int64(), name
    return [tuple(r[n] for n in ("prompt_tokens", *DETAILS)) for r in table.to_pylist()]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_shape_reports_cached_and_reasoning(run_job, make_api, tmp_path, stream):
    api = make_api(usage_style="openai")
    out = tmp_path / "o.parquet"
    extra = ("--stream",) if stream else ()
    result = run_job(rows(3), out, "-c", "1", *extra, server=api)
    assert result.exit_code == 0, result.stderr
    # the first prompt writes the cache, the next two read its 1,408 tokens (11 x 128)
    prompt = 1446  # (5,760 + len("ticket 0: my order is late")) // 4
    assert details(out) == [
        (prompt, 0, None, 0, None),
        (prompt, 1408, None, 0, None),
        (prompt, 1408, None, 0, None),
    ]
    assert "cache: 64.9% of input tokens cached (2,816 of 4,338)" in result.stderr


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_shape_through_a_gateway(run_job, make_api, tmp_path, stream):
    api = make_api(usage_style="anthropic")
    out = tmp_path / "o.parquet"
    extra = ("--stream",) if stream else ()
    result = run_job(rows(2), out, "-c", "1", *extra, server=api)
    assert result.exit_code == 0, result.stderr
    # input_tokens + cache reads + cache writes: every prompt token, as OpenAI counts them
    assert details(out) == [(1446, 0, 1408, None, None), (1446, 1408, 0, None, None)]


@pytest.mark.parametrize("stream", [False, True])
def test_octen_shape_reports_reasoning_and_searches(run_job, make_api, tmp_path, stream):
    api = make_api(usage_style="octen")
    out = tmp_path / "o.parquet"
    data = [
        {"id": "a", "prompt": "[[mock:reasoning]] why is the sky blue"},
        {"id": "b", "prompt": "plain"},
    ]
    extra = ("--stream",) if stream else ()
    result = run_job(data, out, "--param", "octen_search=true", *extra, server=api)
    assert result.exit_code == 0, result.stderr
    got = details(out)
    assert [g[1:3] for g in got] == [(None, None), (None, None)]  # Octen says nothing of it
    assert got[0][3] > 0 and got[1][3] == 0
    assert [g[4] for g in got] == [1, 1]


def test_no_usage_leaves_every_detail_null(run_job, tmp_path):
    out = tmp_path / "o.parquet"
    result = run_job([{"id": "a", "prompt": "[[mock:nousage]] hi"}], out)
    assert result.exit_code == 0, result.stderr
    assert details(out) == [(None, None, None, None, None)]


PRICES = """["mock-1"]
input_per_million = 3.0
output_per_million = 15.0
cached_input_per_million = 0.3
cache_write_per_million = 3.75
reasoning_per_million = 20.0
per_search = 0.01
"""


def test_cost_and_report_split_each_part_exactly(run_job, make_api, cli, tmp_path):
    api = make_api(usage_style="anthropic")
    out = tmp_path / "o.parquet"
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES, encoding="utf-8")
    data = [*rows(2), {"id": "s", "prompt": "[[mock:reasoning]] why"}]
    result = run_job(data, out, "-c", "1", "--prices", prices, server=api)
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out).to_pylist()
    completion = [r["completion_tokens"] for r in table]
    reasoning = table[2]["reasoning_tokens"]
    assert reasoning is None  # Anthropic's usage keeps reasoning inside output_tokens
    uncached = 1446 - 1408 + 1446 - 1408 + table[2]["prompt_tokens"]
    expected = {
        "cost_input_usd": uncached * 3.0 / 1e6,
        "cost_cached_input_usd": 1408 * 0.3 / 1e6,
        "cost_cache_write_usd": 1408 * 3.75 / 1e6,
        "cost_output_usd": sum(completion) * 15.0 / 1e6,
        "cost_reasoning_usd": 0.0,
        "cost_search_usd": 0.0,
        "saved_by_cache_usd": 1408 * (3.0 - 0.3) / 1e6,
    }
    import json

    cost = cli("cost", out, "--prices", prices, "--json")
    total = json.loads(cost.stdout)["total"]
    for name, value in expected.items():
        assert total[name] == pytest.approx(value, rel=1e-12), name
    parts = sum(v for k, v in expected.items() if k != "saved_by_cache_usd")
    assert total["cost_usd"] == pytest.approx(parts, rel=1e-12)
    assert total["cached_tokens"] == 1408 and total["cache_write_tokens"] == 1408
    assert total["cache_hit_rate"] == pytest.approx(1408 / (2 * 1446 + table[2]["prompt_tokens"]))
    text = cli("cost", out, "--prices", prices).stdout.splitlines()
    assert text[0].split() == [
        "model",
        "requests",
        "ok",
        "errors",
        "tokens",
        "in",
        "tokens",
        "out",
        "cached",
        "$",
        "input",
        "$",
        "cached",
        "$",
        "cache",
        "write",
        "$",
        "output",
        "cost",
    ]
    assert text[-1].startswith("cache: ") and "saved $0.0038" in text[-1]
    report = cli("report", out, "--prices", prices, "--json")
    group = json.loads(report.stdout)["total"]
    assert group["cost_cache_write_usd"] == pytest.approx(expected["cost_cache_write_usd"])
    assert "$ cache write" in cli("report", out, "--prices", prices).stdout
