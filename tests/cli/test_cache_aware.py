"""--cache-aware: rows sharing a long prefix go out together, OUT stays in input order."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batcher.io.spool import _grouped

CONTEXTS = [f"Context {k}: " + "label tickets carefully. " * 200 for k in range(8)]


def rows() -> list[dict]:
    """24 rows over 8 long contexts, interleaved: a job comes back to each every 8 rows."""
    return [
        {
            "id": f"r{i}",
            "messages": [
                {"role": "system", "content": CONTEXTS[i % 8]},
                {"role": "user", "content": f"ticket {i}"},
            ],
        }
        for i in range(24)
    ]


def context_of(body: dict) -> int:
    return CONTEXTS.index(body["messages"][0]["content"])


def test_groups_go_together_and_hit_the_cache(run_job, make_api, tmp_path):
    # 0.1 s a reply, cached 0.5 s: in input order a context comes back after 0.8 s, too late
    api = make_api(latency=0.1, cache_window=0.5)
    results = {}
    for mode in ("--no-cache-aware", "--cache-aware"):
        api.reset()
        out = tmp_path / f"{mode}.parquet"
        result = run_job(rows(), out, "-c", "1", mode, server=api)
        assert result.exit_code == 0, result.stderr
        table = pq.read_table(out).to_pylist()
        assert [r["id"] for r in table] == [f"r{i}" for i in range(24)]  # input order
        results[mode] = table
        sent = [context_of(e.body) for e in api.log]
        if mode == "--cache-aware":  # each next context's first one place ahead (-c 1)
            assert sent == [0, 0, 1, 0, 1, 2, 1, 2, 3, 2, 3, 4, 3, 4, 5, 4, 5, 6, 5, 6, 7, 6, 7, 7]
            assert "cache: " in result.stderr
        else:
            assert sent == [i % 8 for i in range(24)]
    assert sum(r["cached_tokens"] for r in results["--no-cache-aware"]) == 0
    hits = [r["cached_tokens"] for r in results["--cache-aware"]]
    assert hits == [0 if i < 8 else 1152 for i in range(24)]  # each context's first: a miss
    same = ("content", "prompt_tokens", "completion_tokens", "request_hash")
    for off, on in zip(results["--no-cache-aware"], results["--cache-aware"]):
        assert [off[k] for k in same] == [on[k] for k in same]


def test_the_first_of_each_group_goes_lead_places_ahead():
    keys = ["a", "b", "a", "c", "b", "a", None, "c", "d"]
    table = pa.table({"model": ["m"] * 9, "prefix": keys, "i": list(range(9))})
    ordered, last = _grouped(table, None, 2)
    assert ordered["i"].to_pylist() == [0, 1, 2, 3, 5, 4, 7, 6, 8]
    assert last == "m\x00d"
    ordered, _ = _grouped(table, "m\x00c", 2)  # the group sent last goes on first
    assert ordered["i"].to_pylist() == [3, 7, 0, 1, 2, 5, 4, 6, 8]


def test_prompt_cache_key_names_the_shared_prefix(run_job, api, tmp_path):
    data = [*rows()[:3], {"id": "short", "prompt": "hi"}]
    result = run_job(data, tmp_path / "o.parquet", "--prompt-cache-key")
    assert result.exit_code == 0, result.stderr
    keys = {e.body["messages"][-1]["content"]: e.body.get("prompt_cache_key") for e in api.log}
    assert keys["hi"] is None
    assert len({keys["ticket 0"], keys["ticket 1"], keys["ticket 2"]}) == 3
    assert all(k.startswith("batcher-") and len(k) == 24 for k in list(keys.values())[:3] if k)
    api.reset()
    plain = run_job(rows()[:1], tmp_path / "p.parquet")  # --base-url: not sent unasked
    assert plain.exit_code == 0, plain.stderr
    assert "prompt_cache_key" not in api.log[0].body
    # the mock answers the same with or without the hint
    first = pq.read_table(tmp_path / "o.parquet")["content"][0].as_py()
    assert first == pq.read_table(tmp_path / "p.parquet")["content"][0].as_py()


def test_cache_aware_on_ray_is_an_error(cli, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text('{"id": "a", "prompt": "hi"}\n', encoding="utf-8")
    result = cli("run", data, "-o", tmp_path / "o.parquet", "--engine", "ray", "--cache-aware")
    assert result.exit_code == 2
    assert "--cache-aware works with --engine local" in result.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_estimate_names_the_shared_prefix_and_prices_the_hits(cli, tmp_path):
    system = "Label the ticket. " * 300  # 5,400 characters: its first 1,024 tokens shared
    data = tmp_path / "in.jsonl"
    lines = [
        {
            "id": f"r{i}",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"ticket {i}"},
            ],
        }
        for i in range(3)
    ]
    lines.append({"id": "short", "prompt": "hello there"})
    data.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '["m"]\ninput_per_million = 2.0\noutput_per_million = 8.0\n'
        "cached_input_per_million = 0.5\n",
        encoding="utf-8",
    )
    args = ("estimate", data, "-m", "m", "--prices", prices, "--max-tokens", "10")
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    out = result.stdout.splitlines()
    assert "shared prefixes: 1 of 1,024+ tokens, over 3 requests:" in out
    assert (
        "  3 requests to m share their first 1,024+ tokens (the system prompt, first at row 'r0')"
        in out
    )
    doc = json.loads(cli(*args, "--json").stdout)
    assert doc["cached_tokens"] == 2048  # the second and third request: 1,024 each
    assert doc["cost_low_cached"] == pytest.approx(doc["cost_low"] - 2048 * 1.5 / 1e6)
    assert doc["cost_high_cached"] == pytest.approx(doc["cost_high"] - 2048 * 1.5 / 1e6)
    assert doc["shared_prefixes"]["groups"] == [
        {
            "model": "m",
            "requests": 3,
            "tokens": 1024,
            "where": "the system prompt",
            "first_id": "r0",
        }
    ]
    low, high = (f"${doc[k]:.4f}" for k in ("cost_low_cached", "cost_high_cached"))
    assert (
        f"with cache hits: {low} to {high} (~2,048+ prompt tokens cached, at the "
        "cached-input price)" in out
    )
