"""Prices, per-row cost and cost reports (batcher/cost.py, batcher/prices.toml)."""

from __future__ import annotations

import json
import re
from importlib import resources

import pyarrow as pa
import pytest

from batcher.analysis.cost import (
    PARTS,
    cost_csv,
    cost_dict,
    cost_groups,
    cost_json,
    price_table,
    render_cost,
    with_costs,
)
from batcher.errors import UsageError
from batcher.prices import Price, PriceTable, row_cost

NO_ENV: dict[str, str] = {}


def write(tmp_path, text, name="prices.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- The packaged table -----------------------------------------------------------------------


def test_packaged_table_loads_and_every_entry_names_its_source():
    table = PriceTable.load(env=NO_ENV)
    text = resources.files("batcher").joinpath("prices.toml").read_text(encoding="utf-8")
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("[")]
    assert len(headers) == len(table.models()) >= 10
    source = re.compile(r"# source: https://\S+, list price as of [A-Z][a-z]+ 20\d\d")
    for i in headers:
        near = [lines[j] for j in (i - 1, i, i + 1) if 0 <= j < len(lines)]
        assert any(source.search(line) for line in near), f"no source for {lines[i]}"


def test_packaged_prices_known_and_unknown():
    table = PriceTable.load(env=NO_ENV)
    assert table.get("gpt-4o") == Price(2.5, 10.0, cached_input_per_million=1.25)
    assert table.get("gpt-4o-mini") == Price(0.15, 0.6, cached_input_per_million=0.075)
    assert table.get("claude-3-5-sonnet-20241022") == Price(3.0, 15.0, 0.3, 3.75)
    assert table.get("claude-3-5-haiku-20241022") == Price(0.8, 4.0, 0.08, 1.0)
    # no published price known: an honest null, never $0
    for model in ("openai/gpt-5.5", "anthropic/claude-opus-4.8", "google/gemini-3.5-flash"):
        assert table.get(model) is None
        assert model not in table
    for price in (table.get(m) for m in table.models()):
        assert price is not None and price.input_per_million > 0 and price.output_per_million > 0


def test_lookup_exact_then_without_vendor_prefixes():
    table = PriceTable({"gpt-4o": Price(2.5, 10.0), "openai/o3": Price(2.0, 8.0)})
    assert table.get("gpt-4o") == Price(2.5, 10.0)
    assert table.get("openai/gpt-4o") == Price(2.5, 10.0)
    assert table.get("openrouter/openai/gpt-4o") == Price(2.5, 10.0)
    assert table.get("openrouter/openai/o3") == Price(2.0, 8.0)
    assert table.get("o3") is None  # prefixes are only ever removed, never added
    assert table.get("gpt-4") is None
    assert table.get("gpt-4o/") is None
    assert table.get("") is None
    assert table.models() == ["gpt-4o", "openai/o3"]


# --- Loading files ----------------------------------------------------------------------------


def test_override_file_adds_and_replaces_whole_tables(tmp_path):
    path = write(
        tmp_path,
        '["gpt-4o"]\ninput_per_million = 5\noutput_per_million = 15\n\n'
        '["my-model"]\ninput_per_million = 0.5\noutput_per_million = 1\n'
        "reasoning_per_million = 2\n",
    )
    table = PriceTable.load(path, env=NO_ENV)
    assert table.get("gpt-4o") == Price(5.0, 15.0)  # cached price not inherited
    assert table.get("openai/gpt-4o") == Price(5.0, 15.0)
    assert table.get("my-model") == Price(0.5, 1.0, reasoning_per_million=2.0)
    assert table.get("gpt-4o-mini") == Price(0.15, 0.6, cached_input_per_million=0.075)
    assert len(table) == len(PriceTable.load(env=NO_ENV)) + 1


def test_gateway_name_priced_apart_from_the_vendor_name(tmp_path):
    path = write(tmp_path, '["openai/gpt-4o"]\ninput_per_million = 3\noutput_per_million = 12\n')
    table = PriceTable.load(str(path), env=NO_ENV)
    assert table.get("openai/gpt-4o") == Price(3.0, 12.0)
    assert table.get("gpt-4o") == Price(2.5, 10.0, cached_input_per_million=1.25)


def test_batcher_prices_env_then_extra(tmp_path):
    env_file = write(
        tmp_path,
        '["a"]\ninput_per_million = 1\noutput_per_million = 2\n'
        '["b"]\ninput_per_million = 3\noutput_per_million = 4\n',
        "env.toml",
    )
    extra = write(tmp_path, '["b"]\ninput_per_million = 5\noutput_per_million = 6\n', "x.toml")
    env = {"BATCHER_PRICES": str(env_file)}
    assert PriceTable.load(env=env).get("b") == Price(3.0, 4.0)
    table = PriceTable.load(extra, env=env)
    assert table.get("a") == Price(1.0, 2.0)
    assert table.get("b") == Price(5.0, 6.0)
    assert PriceTable.load(env={"BATCHER_PRICES": ""}).get("a") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '["x"]\ninptu_per_million = 1\noutput_per_million = 2\n',
            "model 'x': unknown key 'inptu_per_million' (did you mean 'input_per_million'?)",
        ),
        ('["x"]\ncolour = "red"\n', "model 'x': unknown key 'colour'"),
        (
            '["x"]\ninput_per_million = -1\noutput_per_million = 2\n',
            "model 'x': input_per_million must be a number >= 0",
        ),
        (
            '["x"]\ninput_per_million = "2.5"\noutput_per_million = 2\n',
            "model 'x': input_per_million must be a number >= 0",
        ),
        (
            '["x"]\ninput_per_million = 1\noutput_per_million = true\n',
            "model 'x': output_per_million must be a number >= 0",
        ),
        (
            '["x"]\ninput_per_million = 1\noutput_per_million = 2\n'
            "cached_input_per_million = inf\n",
            "model 'x': cached_input_per_million must be a number >= 0",
        ),
        ('["x"]\ninput_per_million = 1\n', "model 'x': missing output_per_million"),
        ('["x"]\n', "model 'x': missing input_per_million and output_per_million"),
        (
            "input_per_million = 1\n",
            "'input_per_million' is not a model table; write its prices under a header "
            'such as ["input_per_million"]',
        ),
        (
            "[gpt-4.1]\ninput_per_million = 1\noutput_per_million = 2\n",
            "model 'gpt-4': '1' is a table, not a price; quote model names that hold a dot: "
            '["gpt-4.1"]',
        ),
        ('[""]\ninput_per_million = 1\noutput_per_million = 2\n', "empty model name"),
        ("[x]\ninput_per_million = = 1\n", "invalid TOML: Invalid value (at line 2, column 21)"),
    ],
)
def test_bad_price_files_give_one_line_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        PriceTable.load(path, env=NO_ENV)
    assert str(info.value) == f"{path}: {message}"


def test_missing_and_unreadable_files(tmp_path):
    gone = tmp_path / "gone.toml"
    with pytest.raises(UsageError, match=r"^.*gone\.toml: no such file$") as info:
        PriceTable.load(gone, env=NO_ENV)
    assert str(info.value) == f"{gone}: no such file"
    with pytest.raises(UsageError) as info:
        PriceTable.load(env={"BATCHER_PRICES": str(gone)})
    assert str(info.value) == f"{gone}: no such file (named by BATCHER_PRICES)"
    with pytest.raises(UsageError) as info:
        PriceTable.load(tmp_path, env=NO_ENV)
    assert str(info.value) == f"{tmp_path}: is a directory, not a file"
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'["caf\xe9"]\ninput_per_million = 1\noutput_per_million = 2\n')
    with pytest.raises(UsageError) as info:
        PriceTable.load(bad, env=NO_ENV)
    assert str(info.value) == f"{bad}: invalid TOML: not UTF-8"


# --- row_cost ---------------------------------------------------------------------------------

GPT4O = Price(2.5, 10.0, cached_input_per_million=1.25)
FULL = Price(2.0, 8.0, cached_input_per_million=0.5, reasoning_per_million=4.0)


def test_row_cost_from_tokens():
    # 1000 in, 500 out at $2.50 / $10: (2500 + 5000) / 1e6
    assert row_cost(GPT4O, prompt_tokens=1000, completion_tokens=500) == 0.0075
    # 200 of them cached at $1.25: 800 * 2.5 + 200 * 1.25 + 500 * 10 = 7250
    assert row_cost(GPT4O, prompt_tokens=1000, completion_tokens=500, cached_tokens=200) == 0.00725
    # reasoning 100 of 300 out at $4: 600*2 + 400*0.5 + 200*8 + 100*4 = 3400
    got = row_cost(
        FULL, prompt_tokens=1000, completion_tokens=300, cached_tokens=400, reasoning_tokens=100
    )
    assert got == 0.0034
    # without a reasoning price, reasoning tokens are output tokens: 1200 + 200 + 2400
    no_reasoning = Price(2.0, 8.0, cached_input_per_million=0.5)
    got = row_cost(
        no_reasoning,
        prompt_tokens=1000,
        completion_tokens=300,
        cached_tokens=400,
        reasoning_tokens=100,
    )
    assert got == 0.0038
    # without a cached price, cached tokens are input tokens: 2000 + 2400
    got = row_cost(Price(2.0, 8.0), prompt_tokens=1000, completion_tokens=300, cached_tokens=400)
    assert got == 0.0044
    # counts above their totals are capped: all 1000 cached
    got = row_cost(GPT4O, prompt_tokens=1000, completion_tokens=0, cached_tokens=5000)
    assert got == 0.00125
    assert row_cost(GPT4O, prompt_tokens=0, completion_tokens=0) == 0.0


def test_row_cost_server_cost_wins_and_unknown_is_none():
    assert row_cost(GPT4O, prompt_tokens=1000, completion_tokens=500, server_cost=0.5) == 0.5
    assert row_cost(GPT4O, prompt_tokens=1000, completion_tokens=500, server_cost=0.0) == 0.0
    assert row_cost(None, prompt_tokens=1000, completion_tokens=500, server_cost=0.25) == 0.25
    assert row_cost(None, prompt_tokens=1000, completion_tokens=500) is None
    assert row_cost(None, prompt_tokens=0, completion_tokens=0) is None  # never 0 for unknown


# --- price_table ------------------------------------------------------------------------------

PRICES = PriceTable({"gpt-4o": GPT4O, "cheap": Price(1.0, 2.0)})

# (model, status, error_type, prompt, completion, cost_usd, cached) -> expected cost
CASES = [
    (("openai/gpt-4o", "ok", None, 1000, 500, None, False), 0.0075),
    (("gpt-4o", "ok", None, 1000, 500, None, True), 0.0),  # response cache: nothing billed
    (("gpt-4o", "ok", None, 1000, 500, 0.75, True), 0.0),
    (("mystery", "ok", None, 100, 100, None, False), None),  # unknown model: null
    (("mystery", "ok", None, 100, 100, 0.25, False), 0.25),  # the server's cost
    (("cheap", "ok", None, 2000, 1000, 0.5, False), 0.5),
    (("gpt-4o", "error", "server_error", 0, 0, None, False), 0.0),
    (("mystery", "error", "auth_error", 0, 0, None, False), 0.0),  # nothing billed: no price needed
    (("gpt-4o", "ok", None, None, None, None, False), None),  # billed, usage unknown: null
    (("mystery", "error", "not_sent", 0, 0, None, False), 0.0),  # never sent
    (("mystery", "error", "bad_input", 0, 0, None, None), 0.0),
    ((None, "error", "bad_input", 0, 0, None, False), 0.0),
    (("cheap", "ok", None, 3000, 2000, None, None), 0.007),  # 3000 + 4000
]
NAMES = ["model", "status", "error_type", "prompt_tokens", "completion_tokens", "cost_usd"]


def output_table(cases, *, chunks=1):
    schema = pa.schema(
        [
            ("model", pa.string()),
            ("status", pa.string()),
            ("error_type", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("cost_usd", pa.float64()),
            ("cached", pa.bool_()),
        ]
    )
    rows = [dict(zip(schema.names, case)) for case in cases]
    size = -(-len(rows) // chunks)
    batches = [
        pa.RecordBatch.from_pylist(rows[i : i + size], schema=schema)
        for i in range(0, len(rows), size)
    ]
    return pa.Table.from_batches(batches, schema=schema)


@pytest.mark.parametrize("chunks", [1, 3])
def test_price_table_every_case(chunks):
    table = output_table([case for case, _ in CASES], chunks=chunks)
    got = price_table(table, PRICES)
    assert isinstance(got, pa.Array) and got.type == pa.float64()
    assert got.to_pylist() == [expected for _, expected in CASES]


def test_price_table_without_server_costs_matches_row_cost():
    table = output_table([case for case, _ in CASES], chunks=2)
    got = price_table(table, PRICES, keep_server_cost=False).to_pylist()
    assert got[4] is None  # unknown model: the server's cost is dropped too
    assert got[5] == 0.004  # 2000 * 1 + 1000 * 2
    assert got[2] == 0.0  # cached rows stay free
    for (model, _, error_type, prompt, completion, _, cached), cost in zip(
        (case for case, _ in CASES), got
    ):
        if cached or error_type in ("not_sent", "bad_input"):
            continue
        if prompt is None:  # billed, usage unknown: no cost can be made up
            assert cost is None
            continue
        if prompt == completion == 0:  # nothing billed costs nothing, priced or not
            assert cost == 0.0
            continue
        want = row_cost(PRICES.get(model), prompt_tokens=prompt, completion_tokens=completion)
        assert cost == want


def test_price_table_uses_cached_and_reasoning_token_columns():
    full = PriceTable({"m": FULL})
    table = pa.table(
        {
            "model": ["m", "m", "m"],
            "prompt_tokens": [1000, 1000, 10],
            "completion_tokens": [300, 300, 0],
            "cached_tokens": [400, None, 50],
            "reasoning_tokens": [100, 0, 0],
        }
    )
    # 3400 as in row_cost; 2000 + 2400; all 10 cached: 10 * 0.5
    assert price_table(table, full).to_pylist() == [0.0034, 0.0044, 0.000005]


def test_price_table_without_optional_columns_and_empty():
    table = pa.table(
        {"model": ["gpt-4o", "x"], "prompt_tokens": [1000, 1], "completion_tokens": [500, 1]}
    )
    assert price_table(table, PRICES).to_pylist() == [0.0075, None]
    assert price_table(table.slice(0, 0), PRICES).to_pylist() == []
    with pytest.raises(UsageError, match="no column completion_tokens"):
        price_table(table.drop_columns(["completion_tokens"]), PRICES)


def test_with_costs_replaces_or_adds_the_column():
    table = output_table([case for case, _ in CASES[:4]])
    priced = with_costs(table, PRICES)
    assert priced.column_names == table.column_names
    assert priced["cost_usd"].to_pylist() == [0.0075, 0.0, 0.0, None]
    added = with_costs(table.drop_columns(["cost_usd"]), PRICES)
    assert added.column_names[-1] == "cost_usd"
    assert added["cost_usd"].to_pylist() == [0.0075, 0.0, 0.0, None]


# --- cost_groups and reports ------------------------------------------------------------------


def groups_table():
    return pa.table(
        {
            "model": ["a", "a", "a", "b", "b", "b"],
            "status": ["ok", "ok", "error", "ok", "error", "ok"],
            "prompt_tokens": [10, 20, 0, 40, 0, 8],
            "completion_tokens": [5, 10, 0, 20, 0, 4],
            "total_tokens": [15, 30, 0, 60, 0, 12],
            "cost_usd": [0.25, 0.5, 0.0, None, 0.0, 0.125],
            "error_type": [None, None, "rate_limited", None, "not_sent", None],
            "param_temperature": [0.5, 0.5, 1.0, 0.5, 1.0, None],
        }
    )


# What a group says of the usage details and the bill's parts when no row stated any.
UNSTATED = {
    **dict.fromkeys(("cached_tokens", "cache_write_tokens", "reasoning_tokens")),
    **dict.fromkeys(("search_queries", "audio_tokens", "cache_hit_rate", "saved_by_cache_usd")),
    **{f"cost_{p}_usd": None for p in PARTS},
}


def group(key, requests, ok, errors, prompt, completion, total, cost, unpriced=0, models=()):
    """The `batcher cost --json` form of a group with these figures."""
    return {
        "key": key,
        "requests": requests,
        "ok": ok,
        "errors": errors,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "cost_usd": cost,
        "unpriced_requests": unpriced,
        "unpriced_models": list(models),
        **UNSTATED,
    }


def dicts(groups) -> list[dict]:
    return [cost_dict(g) for g in groups]


TOTAL = group({}, 6, 4, 2, 78, 39, 117, 0.875, 1, ["b"])


def test_cost_groups_by_model():
    groups, total = cost_groups(groups_table())
    assert dicts(groups) == [
        group({"model": "a"}, 3, 2, 1, 30, 15, 45, 0.75),
        group({"model": "b"}, 3, 2, 1, 48, 24, 72, 0.125, 1, ["b"]),  # not_sent: an error
    ]
    assert cost_dict(total) == TOTAL


def test_cost_groups_by_two_columns_nulls_last():
    groups, total = cost_groups(groups_table(), by=["model", "param_temperature"])
    assert dicts(groups) == [
        group({"model": "a", "param_temperature": 0.5}, 2, 2, 0, 30, 15, 45, 0.75),
        group({"model": "a", "param_temperature": 1.0}, 1, 0, 1, 0, 0, 0, 0.0),
        group({"model": "b", "param_temperature": 0.5}, 1, 1, 0, 40, 20, 60, None, 1, ["b"]),
        group({"model": "b", "param_temperature": 1.0}, 1, 0, 1, 0, 0, 0, 0.0),
        group({"model": "b", "param_temperature": None}, 1, 1, 0, 8, 4, 12, 0.125),
    ]
    assert cost_dict(total) == TOTAL
    groups, _ = cost_groups(groups_table(), by=["param_temperature"])
    assert [(g.key, g.requests, g.cost_usd, g.unpriced_models) for g in groups] == [
        ({"param_temperature": 0.5}, 3, 0.75, {"b"}),
        ({"param_temperature": 1.0}, 2, 0.0, set()),
        ({"param_temperature": None}, 1, 0.125, set()),
    ]


def test_cost_groups_no_keys_empty_and_no_costs():
    groups, total = cost_groups(groups_table(), by=())
    assert (groups, cost_dict(total)) == ([], TOTAL)
    groups, total = cost_groups(groups_table().slice(0, 0))
    assert groups == []
    assert cost_dict(total) == group({}, 0, 0, 0, 0, 0, 0, None)
    groups, total = cost_groups(groups_table().drop_columns(["cost_usd"]))
    assert [g.cost_usd for g in groups] == [None, None]
    assert cost_dict(total) == group({}, 6, 4, 2, 78, 39, 117, None, 6, ["a", "b"])


def test_cost_groups_unknown_column():
    with pytest.raises(UsageError) as info:
        cost_groups(groups_table(), by=["model", "temperature"])
    assert str(info.value) == (
        "--by: no column 'temperature' (columns: model, status, prompt_tokens, "
        "completion_tokens, total_tokens, cost_usd, error_type, param_temperature)"
    )


def test_priced_then_grouped():
    table = output_table([case for case, _ in CASES])
    table = table.append_column("total_tokens", pa.array([0] * len(CASES), pa.int64()))
    groups, total = cost_groups(with_costs(table, PRICES))
    # no job metadata: models in order of first appearance (OUT's order: the run's)
    seen = list(dict.fromkeys(table.column("model").to_pylist()))
    assert [g.key["model"] for g in groups] == seen
    assert sorted(seen, key=str) == [None, "cheap", "gpt-4o", "mystery", "openai/gpt-4o"]
    found = {g.key["model"]: (g.unpriced, g.unknown_usage) for g in groups}
    assert found == {  # gpt-4o's unpriced one: usage unknown
        "cheap": (0, 0), "gpt-4o": (1, 1), "mystery": (1, 0), "openai/gpt-4o": (0, 0), None: (0, 0)
    }  # fmt: skip
    assert total.unpriced_models == {"mystery"}  # not gpt-4o: it has a price


def test_render_cost():
    groups, total = cost_groups(groups_table())
    assert render_cost(groups, total, ["model"]) == [
        "model  requests  ok  errors  tokens in  tokens out     cost  unpriced",
        "a             3   2       1         30          15  $0.7500         0",
        "b             3   2       1         48          24  $0.1250         1",
        "total         6   4       2         78          39  $0.8750         1",
        "no price for: b (cost left empty; add them with --prices FILE)",
    ]
    priced = groups_table().filter(pa.compute.equal(groups_table()["model"], "a"))
    by = ["model", "param_temperature"]
    groups, total = cost_groups(priced, by=by)
    assert render_cost(groups, total, by) == [
        "model  param_temperature  requests  ok  errors  tokens in  tokens out     cost",
        "a      0.5                       2   2       0         30          15  $0.7500",
        "a      1.0                       1   0       1          0           0  $0.0000",
        "total                            3   2       1         30          15  $0.7500",
    ]
    groups, total = cost_groups(groups_table().drop_columns(["cost_usd"]), by=())
    assert render_cost(groups, total, ()) == [
        "       requests  ok  errors  tokens in  tokens out  cost  unpriced",
        "total         6   4       2         78          39     -         6",
        "no price for: a, b (cost left empty; add them with --prices FILE)",
    ]


DETAIL_HEADER = "cached_tokens,cache_write_tokens,reasoning_tokens,search_queries,audio_tokens"
SPLIT_HEADER = ",".join(f"cost_{p}_usd" for p in PARTS) + ",cache_hit_rate,saved_by_cache_usd"


def test_cost_csv():
    by = ["model", "param_temperature"]
    groups, total = cost_groups(groups_table(), by=by)
    assert cost_csv(groups, total, by) == (
        "model,param_temperature,requests,ok,errors,prompt_tokens,completion_tokens,"
        f"total_tokens,{DETAIL_HEADER},cost_usd,{SPLIT_HEADER},unpriced_requests\n"
        "a,0.5,2,2,0,30,15,45,,,,,,0.75,,,,,,,,,0\n"
        "a,1.0,1,0,1,0,0,0,,,,,,0.0,,,,,,,,,0\n"
        "b,0.5,1,1,0,40,20,60,,,,,,,,,,,,,,,1\n"
        "b,1.0,1,0,1,0,0,0,,,,,,0.0,,,,,,,,,0\n"
        "b,,1,1,0,8,4,12,,,,,,0.125,,,,,,,,,0\n"
        "total,,6,4,2,78,39,117,,,,,,0.875,,,,,,,,,1\n"
    )
    _, total = cost_groups(groups_table(), by=())
    assert cost_csv([], total, ()) == (
        f"requests,ok,errors,prompt_tokens,completion_tokens,total_tokens,{DETAIL_HEADER},"
        f"cost_usd,{SPLIT_HEADER},unpriced_requests\n6,4,2,78,39,117,,,,,,0.875,,,,,,,,,1\n"
    )


def test_cost_json():
    groups, total = cost_groups(groups_table())
    doc = cost_json(groups, total, ["model"])
    assert json.loads(json.dumps(doc)) == doc
    assert doc == {
        "by": ["model"],
        "groups": [
            {
                "key": {"model": "a"},
                "requests": 3,
                "ok": 2,
                "errors": 1,
                "prompt_tokens": 30,
                "completion_tokens": 15,
                "total_tokens": 45,
                "cost_usd": 0.75,
                **UNSTATED,
                **UNSTATED,
                "unpriced_requests": 0,
                "unpriced_models": [],
            },
            {
                "key": {"model": "b"},
                "requests": 3,
                "ok": 2,
                "errors": 1,
                "prompt_tokens": 48,
                "completion_tokens": 24,
                "total_tokens": 72,
                "cost_usd": 0.125,
                **UNSTATED,
                **UNSTATED,
                "unpriced_requests": 1,
                "unpriced_models": ["b"],
            },
        ],
        "total": {
            "key": {},
            "requests": 6,
            "ok": 4,
            "errors": 2,
            "prompt_tokens": 78,
            "completion_tokens": 39,
            "total_tokens": 117,
            "cost_usd": 0.875,
            **UNSTATED,
            "unpriced_requests": 1,
            "unpriced_models": ["b"],
        },
        "unpriced_models": ["b"],
    }


def test_cost_groups_by_a_column_that_cannot_be_grouped():
    table = groups_table().append_column("tags", pa.array([[1]] * 6, pa.list_(pa.int64())))
    with pytest.raises(UsageError) as info:
        cost_groups(table, by=["tags"])
    assert str(info.value) == "--by: cannot group by tags (list<item: int64>)"


def test_every_part_priced_exactly_as_row_cost():
    from batcher.analysis.cost import cost_split
    from batcher.prices import Price, PriceTable, row_cost

    price = Price(2.0, 8.0, 0.5, 2.5, 12.0, 0.02)
    table = pa.table(
        {
            "model": ["m", "m", "m"],
            "status": ["ok"] * 3,
            "prompt_tokens": [3000, 1200, 10],
            "completion_tokens": [400, 90, 5],
            "cached_tokens": [2048, None, 0],
            "cache_write_tokens": [512, None, None],
            "reasoning_tokens": [300, 10, None],
            "search_queries": [2, None, 1],
        }
    )
    prices = PriceTable({"m": price})
    got = price_table(table, prices).to_pylist()
    counts = [
        dict(
            prompt_tokens=3000,
            completion_tokens=400,
            cached_tokens=2048,
            cache_write_tokens=512,
            reasoning_tokens=300,
            search_queries=2,
        ),
        dict(prompt_tokens=1200, completion_tokens=90, reasoning_tokens=10),
        dict(prompt_tokens=10, completion_tokens=5, search_queries=1),
    ]
    assert got == [row_cost(price, **c) for c in counts]  # to the last bit
    by_hand = (440 * 2.0 + 2048 * 0.5 + 512 * 2.5 + 100 * 8.0 + 300 * 12.0) / 1e6 + 2 * 0.02
    assert got[0] == pytest.approx(by_hand, rel=1e-15)
    split = {k: v.to_pylist() for k, v in cost_split(table, prices).items()}
    assert split["input"][0] == pytest.approx(440 * 2.0 / 1e6)
    assert split["cached_input"][0] == pytest.approx(2048 * 0.5 / 1e6)
    assert split["cache_write"][0] == pytest.approx(512 * 2.5 / 1e6)
    assert split["output"][0] == pytest.approx(100 * 8.0 / 1e6)
    assert split["reasoning"][0] == pytest.approx(300 * 12.0 / 1e6)
    assert split["search"] == [pytest.approx(0.04), 0.0, pytest.approx(0.02)]
    assert split["saved"][0] == pytest.approx(2048 * 1.5 / 1e6)


def test_searches_without_a_search_price_leave_the_cost_unknown():
    from batcher.prices import Price, PriceTable

    table = pa.table(
        {
            "model": ["m", "m"],
            "prompt_tokens": [10, 10],
            "completion_tokens": [5, 5],
            "search_queries": [1, 0],
        }
    )
    got = price_table(table, PriceTable({"m": Price(2.0, 8.0)})).to_pylist()
    assert got == [None, (10 * 2.0 + 5 * 8.0) / 1e6]
