"""Cost and duration estimates before sending (batcher/estimate.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from batcher.analysis.estimate import Estimate, ModelEstimate, estimate, render_estimate
from batcher.analysis.prefixes import SharedPrefix, SharedPrefixes
from batcher.errors import UsageError
from batcher.io.check import InputScan, ModelCount
from batcher.prices import Price, PriceTable

PRICES = PriceTable({"gpt-4o": Price(2.5, 10.0, cached_input_per_million=1.25)})


def make_scan(per_model: dict[str, ModelCount], *, rows: int = 10, bad_rows: int = 0):
    requests = sum(c.requests for c in per_model.values()) + bad_rows * len(per_model)
    maxes = [c.max_tokens_total for c in per_model.values()]
    schema = pa.schema([("prompt", pa.string())])
    return InputScan(
        rows=rows,
        requests=requests,
        bad_rows=bad_rows,
        est_prompt_tokens=sum(c.est_prompt_tokens for c in per_model.values()),
        max_tokens_total=None if None in maxes else sum(maxes),
        per_model=per_model,
        schema=schema,
        columns=tuple(schema.names),
    )


def two_models(max_tokens: int | None = 200):
    """10 rows x 2 models, prompts of 40 characters (10 tokens), max_tokens each."""
    total = None if max_tokens is None else 10 * max_tokens
    return make_scan(
        {
            "openai/gpt-4o": ModelCount(10, 100, total),
            "mystery": ModelCount(10, 100, total),
        }
    )


def run(scan, prices=PRICES, **kw):
    kw = {"concurrency": 32, "rpm": None, "tpm": None, **kw}
    return estimate(scan, prices, **kw)


def test_tokens_and_cost_per_model_and_total():
    est = run(two_models())
    gpt, mystery = est.models
    # typical: 10 x 150 = 1500; low: (100 * 2.5 + 1500 * 10) / 1e6; high: (250 + 2000 * 10) / 1e6
    assert gpt == ModelEstimate("openai/gpt-4o", 10, 100, 2000, 1500, 0.01525, 0.02025)
    assert mystery == ModelEstimate("mystery", 10, 100, 2000, 1500, None, None)
    assert (est.rows, est.requests, est.bad_rows) == (10, 20, 0)
    assert (est.prompt_tokens, est.completion_tokens_max, est.completion_tokens_typical) == (
        200,
        4000,
        3000,
    )
    assert (est.cost_low, est.cost_high) == (0.01525, 0.02025)  # priced models only
    assert est.unpriced == ["mystery"]


def test_typical_reply_is_capped_by_max_tokens():
    est = run(two_models(max_tokens=100), typical_reply_tokens=150)
    gpt = est.models[0]
    assert gpt.completion_tokens_typical == 1000  # 10 x min(150, 100)
    assert gpt.cost_low == gpt.cost_high == 0.01025  # (250 + 1000 * 10) / 1e6
    est = run(two_models(max_tokens=100), typical_reply_tokens=50)
    assert est.models[0].completion_tokens_typical == 500
    assert est.models[0].cost_low == 0.00525


def test_without_max_tokens_the_high_end_is_unknown():
    est = run(two_models(max_tokens=None))
    gpt = est.models[0]
    assert (gpt.completion_tokens_max, gpt.completion_tokens_typical) == (None, 1500)
    assert (gpt.cost_low, gpt.cost_high) == (0.01525, None)
    assert (est.completion_tokens_max, est.cost_low, est.cost_high) == (None, 0.01525, None)


def test_totals_sum_the_priced_models():
    prices = PriceTable({"m1": Price(1.0, 2.0), "m2": Price(0.5, 4.0)})
    scan = make_scan({"m1": ModelCount(10, 100, 2000), "m2": ModelCount(10, 100, None)})
    est = run(scan, prices)
    assert [(m.cost_low, m.cost_high) for m in est.models] == [
        (0.0031, 0.0041),  # (100 + 1500 * 2) / 1e6, (100 + 2000 * 2) / 1e6
        (0.00605, None),  # (50 + 1500 * 4) / 1e6
    ]
    assert est.cost_low == pytest.approx(0.00915)
    assert est.cost_high is None  # m2 has no bound
    assert est.unpriced == []
    nothing = run(two_models(), PriceTable())
    assert (nothing.cost_low, nothing.cost_high) == (None, None)
    assert nothing.unpriced == ["openai/gpt-4o", "mystery"]


# --- Duration ---------------------------------------------------------------------------------
# two_models(): 20 requests; tokens charged per model 100 + 2000 = 2100, 4200 in all.


def test_duration_bound_by_rpm():
    est = run(two_models(), rpm=10, tpm=1_000_000)  # 120 s vs 0.252 s vs 20 x 2 / 32
    assert (est.duration_s, est.duration_basis) == (120.0, "rpm 10")


def test_duration_bound_by_tpm():
    est = run(two_models(), rpm=600, tpm=4200)  # 2 s vs 60 s
    assert (est.duration_s, est.duration_basis) == (60.0, "tpm 4200")
    # no max_tokens: each request is charged the allowance, 100 + 10 * 256 per model
    est = run(two_models(max_tokens=None), tpm=5320)
    assert (est.duration_s, est.duration_basis) == (60.0, "tpm 5320")
    est = run(two_models(max_tokens=None), tpm=5320, completion_allowance=522)  # 10640
    assert (est.duration_s, est.duration_basis) == (120.0, "tpm 5320")


def test_duration_bound_by_concurrency():
    est = run(two_models(), concurrency=4, rpm=600, tpm=1_000_000, seconds_per_request=3.0)
    assert (est.duration_s, est.duration_basis) == (15.0, "concurrency 4 x 3 s per request")
    est = run(two_models())
    assert (est.duration_s, est.duration_basis) == (1.25, "concurrency 32 x 2 s per request")
    est = run(two_models(), concurrency=1, seconds_per_request=0.5)
    assert (est.duration_s, est.duration_basis) == (10.0, "concurrency 1 x 0.5 s per request")


def test_duration_bound_by_a_model_limit():
    limits = {"openai/gpt-4o": {"rpm": 5}, "mystery": {"tpm": 1050}}
    est = run(two_models(), rpm=600, model_limits=limits)  # 10 / 5 * 60; 2100 / 1050 * 60
    assert (est.duration_s, est.duration_basis) == (120.0, "openai/gpt-4o rpm 5")
    est = run(two_models(), rpm=600, model_limits={"mystery": {"tpm": 1050, "rpm": 600}})
    assert (est.duration_s, est.duration_basis) == (120.0, "mystery tpm 1050")


def test_no_requests_and_bad_input():
    scan = make_scan({"gpt-4o": ModelCount(0, 0, None)}, rows=3, bad_rows=3)
    est = run(scan, rpm=10)
    assert (est.requests, est.bad_rows, est.duration_s, est.duration_basis) == (
        0,
        3,
        0.0,
        "no requests",
    )
    assert est.models == [ModelEstimate("gpt-4o", 0, 0, 0, 0, 0.0, 0.0)]
    for kw, message in [
        ({"concurrency": 0}, "concurrency must be at least 1, got 0"),
        ({"rpm": 0}, "rpm must be greater than 0, got 0"),
        ({"tpm": -1.5}, "tpm must be greater than 0, got -1.5"),
    ]:
        with pytest.raises(UsageError) as info:
            run(scan, **kw)
        assert str(info.value) == message


# --- Output -----------------------------------------------------------------------------------


def test_to_dict():
    est = run(two_models(), rpm=10)
    doc = est.to_dict()
    assert json.loads(json.dumps(doc)) == doc
    assert doc == {
        "rows": 10,
        "requests": 20,
        "bad_rows": 0,
        "prompt_tokens": 200,
        "completion_tokens_typical": 3000,
        "completion_tokens_max": 4000,
        "typical_reply_tokens": 150,
        "cost_low": 0.01525,
        "cost_high": 0.02025,
        "cached_tokens": None,
        "cost_low_cached": None,
        "cost_high_cached": None,
        "shared_prefixes": None,
        "unpriced": ["mystery"],
        "duration_s": 120.0,
        "duration_basis": "rpm 10",
        "models": [
            {
                "model": "openai/gpt-4o",
                "requests": 10,
                "prompt_tokens": 100,
                "completion_tokens_max": 2000,
                "completion_tokens_typical": 1500,
                "cost_low": 0.01525,
                "cost_high": 0.02025,
                "cached_tokens": None,
                "cost_low_cached": None,
                "cost_high_cached": None,
            },
            {
                "model": "mystery",
                "requests": 10,
                "prompt_tokens": 100,
                "completion_tokens_max": 2000,
                "completion_tokens_typical": 1500,
                "cost_low": None,
                "cost_high": None,
                "cached_tokens": None,
                "cost_low_cached": None,
                "cost_high_cached": None,
            },
        ],
    }


def test_render_estimate():
    assert render_estimate(run(two_models(), rpm=10)) == [
        "requests: 20 (10 rows x 2 models)",
        "prompt tokens: ~200 (characters / 4)",
        "reply tokens: ~3000 typical (150 per request, at most max_tokens), "
        "at most 4000 (max_tokens)",
        "model          requests  prompt tokens  cost low  cost high",
        "openai/gpt-4o        10            100   $0.0152    $0.0203",
        "mystery              10            100         -          -",
        "total                20            200   $0.0152    $0.0203",
        "(totals cover priced models only)",
        "duration: ~2m 00s (rpm 10)",
        "no price for: mystery (cost left empty; add them with --prices FILE)",
    ]


def test_render_estimate_without_max_tokens_and_with_bad_rows():
    scan = make_scan({"gpt-4o": ModelCount(9, 90, None)}, rows=10, bad_rows=1)
    assert render_estimate(run(scan, tpm=100)) == [
        "requests: 9 (9 rows x 1 model)",
        "bad rows: 1 (not sent)",
        "prompt tokens: ~90 (characters / 4)",
        "reply tokens: ~1350 typical (150 per request, at most max_tokens)",
        "model   requests  prompt tokens  cost low  cost high",
        "gpt-4o         9             90   $0.0137          -",
        "total          9             90   $0.0137          -",
        "cost high: unknown without max_tokens on every request (--max-tokens)",
        "duration: ~23m 56s (tpm 100)",
    ]


def test_estimate_is_frozen():
    est = run(two_models())
    assert isinstance(est, Estimate)
    with pytest.raises(AttributeError):
        est.requests = 1  # type: ignore[misc]


# --- --mode batch -----------------------------------------------------------------------------


def test_batch_costs_beside_the_online_ones():
    prices = PriceTable({"openai/gpt-4o": Price(2.5, 10.0, batch_discount=0.25)})
    est = run(two_models(), prices, rpm=10, batch=True)
    gpt, mystery = est.models
    assert (gpt.batch_discount, mystery.batch_discount) == (0.25, None)
    assert gpt.at_batch(gpt.cost_low) == pytest.approx(0.01525 * 0.75)
    assert mystery.at_batch(mystery.cost_low) is None  # unpriced: unknown, never 0
    doc = est.to_dict()
    assert json.loads(json.dumps(doc)) == doc
    assert (doc["cost_low_batch"], doc["cost_high_batch"]) == (
        pytest.approx(0.0114375),
        pytest.approx(0.0151875),
    )
    assert (doc["cost_low_cached_batch"], doc["cost_high_cached_batch"]) == (None, None)
    assert doc["models"][0]["batch_discount"] == 0.25
    assert doc["models"][0]["cost_high_batch"] == pytest.approx(0.0151875)
    assert {k: v for k, v in doc["models"][1].items() if "batch" in k} == {
        "batch_discount": None,
        "cost_low_batch": None,
        "cost_high_batch": None,
        "cost_low_cached_batch": None,
        "cost_high_cached_batch": None,
    }
    online = run(two_models(), prices, rpm=10).to_dict()  # no batch keys without --mode batch
    assert not [k for k in [*online, *online["models"][0]] if "batch" in k]


def test_render_estimate_in_batch_mode():
    prices = PriceTable({"openai/gpt-4o": Price(2.5, 10.0), "cheap": Price(2.1, 4.0)})
    scan = make_scan({**two_models().per_model, "cheap": ModelCount(10, 100, 2000)})
    assert render_estimate(run(scan, prices, rpm=10, batch=True)) == [
        "requests: 30 (10 rows x 3 models)",
        "prompt tokens: ~300 (characters / 4)",
        "reply tokens: ~4500 typical (150 per request, at most max_tokens), "
        "at most 6000 (max_tokens)",
        "model          requests  prompt tokens  online low  online high  batch low  batch high",
        "openai/gpt-4o        10            100     $0.0152      $0.0203    $0.0076     $0.0101",
        "mystery              10            100           -            -          -           -",
        "cheap                10            100     $0.0062      $0.0082    $0.0031     $0.0041",
        "total                30            300     $0.0215      $0.0285    $0.0107     $0.0142",
        "batch: the price --mode batch is billed, 50% off the online price",
        "(totals cover priced models only)",
        "duration online: ~3m 00s (rpm 10)",
        "duration in batch mode: up to 24h (the Batch API's window; often less)",
        "no price for: mystery (cost left empty; add them with --prices FILE)",
    ]
    nothing = render_estimate(run(two_models(), PriceTable(), batch=True))
    assert nothing[3:7] == [
        "model          requests  prompt tokens  online low  online high  batch low  batch high",
        "openai/gpt-4o        10            100           -            -          -           -",
        "mystery              10            100           -            -          -           -",
        "total                20            200           -            -          -           -",
    ]
    assert nothing[7] == "batch: the price --mode batch is billed"


def test_cache_hits_in_batch_mode():
    group = SharedPrefix("openai/gpt-4o", 10, 1024, "the system prompt", "0")
    shared = SharedPrefixes({"openai/gpt-4o": 40}, [group], shared=1, sharing=10)
    est = run(two_models(), batch=True, shared=shared)
    # 40 of the 100 prompt tokens at 1.25 instead of 2.5: $0.00005 less online, half batch
    assert est.models[0].at_batch(est.models[0].cost_low_cached) == pytest.approx(0.0076)
    assert render_estimate(est)[8:12] == [
        "(totals cover priced models only)",
        "shared prefixes: 1 of 1,024+ tokens, over 10 requests:",
        "  10 requests to openai/gpt-4o share their first 1,024+ tokens "
        "(the system prompt, first at row '0')",
        "with cache hits: $0.0152 to $0.0202 online, $0.0076 to $0.0101 batch "
        "(~40+ prompt tokens cached, at the cached-input price)",
    ]


def test_estimate_mode_batch_cli(cli, tmp_path):
    """--mode batch via the CLI: a custom batch_discount from --prices and an unpriced model."""
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '["priced-a"]\ninput_per_million = 2.0\noutput_per_million = 8.0\n'
        'batch_discount = 0.3\n\n["priced-b"]\ninput_per_million = 2.0\n'
        "output_per_million = 4.0\n"
    )
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"prompt": "x" * 40}) + "\n" for _ in range(10)))
    args = ["estimate", data, "-m", "priced-a", "-m", "priced-b", "-m", "unpriced"]
    args += ["--prices", prices, "--max-tokens", "100", "--typical-reply-tokens", "50"]
    result = cli(*args, "--mode", "batch")
    assert result.exit_code == 0, result.stderr
    # priced-a: (100 x 2 + 500 x 8) / 1e6 = 0.0042 low, (200 + 1000 x 8) / 1e6 = 0.0082 high
    # priced-b: (100 x 2 + 500 x 4) / 1e6 = 0.0022 low, (200 + 1000 x 4) / 1e6 = 0.0042 high
    assert result.stdout.splitlines()[3:10] == [
        "model     requests  prompt tokens  online low  online high  batch low  batch high",
        "priced-a        10            100     $0.0042      $0.0082    $0.0029     $0.0057",
        "priced-b        10            100     $0.0022      $0.0042    $0.0011     $0.0021",
        "unpriced        10            100           -            -          -           -",
        "total           30            300     $0.0064      $0.0124    $0.0040     $0.0078",
        "batch: the price --mode batch is billed; off the online price: priced-a 30%, priced-b 50%",
        "(totals cover priced models only)",
    ]
    doc = json.loads(cli(*args, "--mode", "batch", "--json").stdout)
    assert doc["cost_low_batch"] == pytest.approx(0.0042 * 0.7 + 0.0022 * 0.5)
    assert doc["cost_high_batch"] == pytest.approx(0.0082 * 0.7 + 0.0042 * 0.5)
    assert [m["batch_discount"] for m in doc["models"]] == [0.3, 0.5, None]
    assert doc["models"][2]["cost_low_batch"] is None
    online = cli(*args).stdout.splitlines()
    assert online[3] == "model     requests  prompt tokens  cost low  cost high"
    assert not [line for line in online if "batch" in line]
    assert "--mode [online|batch]" in cli("estimate", "--help").stdout
