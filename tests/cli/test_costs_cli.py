"""estimate, cost and --max-cost end to end, checked against each other and by hand."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from conftest import write_jsonl

PRICES = """
["priced-a"]
input_per_million = 2.0
output_per_million = 8.0

["priced-b"]
input_per_million = 1.0
output_per_million = 1.0
"""
UNPRICED = "no price for: unpriced (cost left empty; add them with --prices FILE)"


def setup(tmp_path, n=10, chars=40):
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    rows = [{"id": str(i), "prompt": "x" * chars} for i in range(n)]
    return write_jsonl(tmp_path / "in.jsonl", rows), prices


def test_estimate_by_hand(cli, tmp_path):
    data, prices = setup(tmp_path)
    result = cli(
        "estimate",
        data,
        "-m",
        "priced-a",
        "-m",
        "unpriced",
        "--max-tokens",
        "100",
        "--prices",
        prices,
        "--typical-reply-tokens",
        "50",
        "--rpm",
        "60",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    est = json.loads(result.stdout)
    assert (est["rows"], est["requests"]) == (10, 20)
    a = next(m for m in est["models"] if m["model"] == "priced-a")
    assert a["prompt_tokens"] == 100  # 10 prompts x 40 characters / 4
    # low: prompt + typical reply; high: prompt + max_tokens (USD per million tokens)
    assert a["cost_low"] == (100 * 2.0 + 10 * 50 * 8.0) / 1e6
    assert a["cost_high"] == (100 * 2.0 + 10 * 100 * 8.0) / 1e6
    assert est["unpriced"] == ["unpriced"]
    assert est["duration_s"] == 20.0  # 20 requests at 60 a minute
    text = cli("estimate", data, "-m", "priced-a", "--prices", prices).stdout
    assert text.splitlines()[0] == "requests: 10 (10 rows x 1 model)"


def test_estimate_sends_nothing_and_needs_no_key(cli, api, tmp_path):
    data, _ = setup(tmp_path)
    result = cli("estimate", data, "--provider", "openai", "-m", "gpt-4o")
    assert result.exit_code == 0, result.stderr
    assert api.log == []


def test_run_prices_rows_and_cost_agrees(cli, run_job, tmp_path):
    data, prices = setup(tmp_path)
    out = tmp_path / "o.parquet"
    result = run_job(data, out, "-m", "priced-a", "-m", "unpriced", "--prices", prices, model=None)
    assert result.exit_code == 0, result.stderr
    assert UNPRICED in result.stderr.splitlines()
    rows = pq.read_table(out).to_pylist()
    for row in rows:
        if row["model"] == "priced-a":
            expected = (row["prompt_tokens"] * 2.0 + row["completion_tokens"] * 8.0) / 1e6
            assert row["cost_usd"] == expected
        else:
            assert row["cost_usd"] is None  # unknown is null, never 0
    report = json.loads(cli("cost", out, "--prices", prices, "--json").stdout)
    spent = sum(r["cost_usd"] for r in rows if r["cost_usd"] is not None)
    assert report["total"]["cost_usd"] == spent
    assert report["total"]["requests"] == 20
    assert UNPRICED in cli("cost", out, "--prices", prices).stdout.splitlines()
    by = cli("cost", out, "--by", "model,status", "--csv", "--prices", prices).stdout
    assert by.splitlines()[0].startswith("model,status,requests")
    assert cli("cost", out, "--by", "nope").exit_code == 2


def assert_stopped_within_budget(result, out, sent: int) -> None:
    """A run of 200 rows at --max-tokens 100 and --max-cost 0.02: stopped within one
    request's worst case of the budget, said so, every row not sent marked not_sent."""
    one_request = (10 * 2.0 + 100 * 8.0) / 1e6  # the worst case of one request
    assert result.exit_code == 1
    rows = pq.read_table(out).to_pylist()
    spent = sum(r["cost_usd"] for r in rows if r["status"] == "ok")
    assert 0.02 - one_request <= spent <= 0.02
    assert (
        f"stopped early: the next request could pass the budget of $0.0200 (${spent:.4f} spent);"
        " rerun with a higher --max-cost to go on"
    ) in result.stderr.splitlines()
    unsent = [r for r in rows if r["error_type"] == "not_sent"]
    assert unsent and sent == 200 - len(unsent)


def test_max_cost_stops_within_one_request_and_resumes(run_job, api, tmp_path):
    data, prices = setup(tmp_path, n=200)
    out = tmp_path / "o.parquet"
    args = (data, out, "--prices", prices, "--max-tokens", "100", "-c", "4")
    result = run_job(*args, "--max-cost", "0.02", model="priced-a")
    assert_stopped_within_budget(result, out, len(api.log))
    again = run_job(*args, "--max-cost", "1", model="priced-a")
    assert again.exit_code == 0
    assert len(api.log) == 200
    assert run_job(*args, "--max-cost", "1", "-m", "unpriced", model="priced-a").exit_code == 2


def test_estimate_counts_with_tiktoken_when_it_is_available_offline(cli, tmp_path, monkeypatch):
    import sys
    import types

    class WordEncoder:
        def encode(self, text, disallowed_special=()):
            return text.split()

    fake = types.ModuleType("tiktoken")
    fake.get_encoding = lambda name: WordEncoder()
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "one two three"}, {"prompt": "four"}])
    est = json.loads(cli("estimate", data, "-m", "gpt-4o", "--json").stdout)
    assert est["prompt_tokens"] == 4 and est["prompt_tokens_counted_by"] == "tiktoken o200k_base"

    def offline(name):
        raise OSError("needs the network")

    fake.get_encoding = offline
    est = json.loads(cli("estimate", data, "-m", "gpt-4o", "--json").stdout)
    assert est["prompt_tokens_counted_by"] == "characters / 4"
    assert est["prompt_tokens"] == 3 + 1  # 13 characters // 4, and 4 // 4
