"""The evaluation report (batcher/report.py): groups, accuracy, text, JSON and HTML."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from html import escape
from html.parser import HTMLParser

import pyarrow as pa
import pytest

from batcher.analysis.html import render_html
from batcher.analysis.report import (
    LATENCY_SAMPLE,
    Report,
    build_report,
    group_label,
    render_report,
    report_dict,
)
from batcher.analysis.text import in_ms, seconds
from batcher.analysis.totals import model_order
from batcher.errors import UsageError
from tests.analysis.test_cost import UNSTATED

WHEN = datetime(2025, 3, 4, 5, 6, tzinfo=timezone.utc)

# id, model, temp, status, error_type, prompt, completion, cost, latency, cached, expected,
# sentiment, content
ROWS = [
    ("1", "m1", 0.0, "ok", None, 10, 5, 0.25, 1.0, False, "positive", "Positive ", "a"),
    ("2", "m1", 0.0, "ok", None, 20, 5, 0.5, 2.0, False, "negative", "positive", "b"),
    ("3", "m1", 0.0, "ok", None, 30, 5, None, 3.0, False, None, "neutral", "c"),
    ("4", "m1", 0.0, "error", "timeout", 0, 0, None, 4.0, False, "neutral", None, None),
    ("5", "m1", 0.0, "ok", None, 7, 3, 0.0, None, True, "neutral", "NEUTRAL", "d"),
    ("1", "m1", 0.7, "ok", None, 10, 2, 0.125, 5.0, False, "positive", "positive", "e"),
    ("2", "m1", 0.7, "error", "rate_limited", 0, 0, None, 0.5, False, "negative", None, None),
    ("3", "m1", 0.7, "error", None, 0, 0, None, None, False, "positive", None, None),
    ("1", "m2", 0.0, "ok", None, 5, 1, None, 0.25, False, "positive", "negative", "POSITIVE"),
    ("2", "m2", 0.0, "ok", None, 5, 1, None, 0.75, False, "", "", "x"),
]
NAMES = [
    "id",
    "model",
    "param_temperature",
    "status",
    "error_type",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "cached",
    "expected_sentiment",
    "sentiment",
    "content",
]
TYPES = [pa.string()] * 2 + [pa.float64()] + [pa.string()] * 2 + [pa.int64()] * 2
TYPES += [pa.float64()] * 2 + [pa.bool_()] + [pa.string()] * 3


def make_table(rows=ROWS, drop=()) -> pa.Table:
    columns = {
        name: pa.array([r[i] for r in rows], kind)
        for i, (name, kind) in enumerate(zip(NAMES, TYPES))
        if name not in drop
    }
    if "sentiment" in columns:
        columns["sentiment"] = columns["sentiment"].dictionary_encode()
    return pa.table(columns)


def report(**kwargs) -> Report:
    kwargs.setdefault("source", "out.parquet")
    return build_report(make_table(), reference="expected_sentiment", **kwargs)


# --- Building ---------------------------------------------------------------------------------


def test_default_groups_by_model_and_every_param_column():
    r = report()
    assert r.by == ("model", "param_temperature")
    assert r.reference == "expected_sentiment"
    assert r.answer == "sentiment"  # the typed column named like the reference without expected_
    assert [g.key for g in r.groups] == [
        {"model": "m1", "param_temperature": 0.0},
        {"model": "m1", "param_temperature": 0.7},
        {"model": "m2", "param_temperature": 0.0},
    ]
    assert [g.label for g in r.groups] == [
        "m1, temperature=0.0",
        "m1, temperature=0.7",
        "m2, temperature=0.0",
    ]
    a, b, c = r.groups
    assert report_dict(a) == {
        "key": {"model": "m1", "param_temperature": 0.0},
        "label": "m1, temperature=0.0",
        "requests": 5,
        "ok": 4,
        "errors": 1,
        "errors_by_type": {"timeout": 1},
        "prompt_tokens": 67,
        "completion_tokens": 18,
        "cost_usd": 0.75,
        "latency_p50": 2.0,  # rows 1-3: the error row and the cached row have no latency here
        "latency_p95": pytest.approx(2.9, rel=1e-12),
        "accuracy": 0.5,  # right: 1 (stripped, case), 5 (cached); wrong: 2, 4 (error); 3 skipped
        "accuracy_n": 4,
        **UNSTATED,
    }
    assert (b.requests, b.ok, b.errors) == (3, 1, 2)
    assert b.errors_by_type == {"rate_limited": 1, "unknown": 1}
    assert (b.prompt_tokens, b.completion_tokens, b.cost_usd) == (10, 2, 0.125)
    assert (b.latency_p50, b.latency_p95) == (5.0, 5.0)  # the error row's 0.5 s left out
    assert (b.accuracy, b.scored) == (1 / 3, 3)
    assert (c.requests, c.ok, c.errors, c.errors_by_type) == (2, 2, 0, {})
    assert c.cost_usd is None  # no row's cost known
    assert (c.latency_p50, c.latency_p95) == (0.5, pytest.approx(0.725, rel=1e-12))
    assert (c.accuracy, c.scored) == (0.0, 1)  # an empty reference is no reference


def test_total_sums_every_row():
    t = report().total
    assert t.key == {} and t.label == "total"
    assert (t.requests, t.ok, t.errors) == (10, 7, 3)
    assert t.errors_by_type == {"rate_limited": 1, "timeout": 1, "unknown": 1}
    assert (t.prompt_tokens, t.completion_tokens, t.cost_usd) == (87, 22, 0.875)
    assert (t.latency_p50, t.latency_p95) == (1.5, pytest.approx(4.5, rel=1e-12))
    assert (t.accuracy, t.scored) == (3 / 8, 8)


def test_errors_by_type_most_frequent_first():
    rows = [(*r[:3], "error", "timeout", *r[5:]) for r in ROWS[:2]] + ROWS[6:7]
    r = build_report(make_table(rows), source="x", by=[])
    assert list(r.total.errors_by_type.items()) == [("timeout", 2), ("rate_limited", 1)]


def test_explicit_by_and_latency_samples():
    r = report(by=["model"])
    assert r.by == ("model",)
    assert [(g.key, g.requests) for g in r.groups] == [({"model": "m1"}, 8), ({"model": "m2"}, 2)]
    assert [g.label for g in r.groups] == ["m1", "m2"]
    assert r.latencies == {"m1": [1.0, 2.0, 3.0, 5.0], "m2": [0.25, 0.75]}
    assert r.groups[0].cost_usd == 0.875


def with_meta(table: pa.Table, meta) -> pa.Table:
    """`table` with job metadata as a batcher OUT's footer holds it (key `batcher`)."""
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return table.replace_schema_metadata({b"batcher": raw})


def labels(table: pa.Table, by=None) -> list[str]:
    return [g.label for g in build_report(table, source="x", by=by).groups]


def test_groups_follow_the_model_order_of_the_run():
    table = with_meta(make_table(), {"settings": {"models": ["m2", "m1"]}})
    assert model_order(table) == ["m2", "m1"]
    assert labels(table) == ["m2, temperature=0.0", "m1, temperature=0.0", "m1, temperature=0.7"]
    assert labels(table, ["model"]) == ["m2", "m1"]
    # model keeps its place among the key columns; other columns sort by value
    assert labels(table, ["param_temperature", "model"]) == [
        "temperature=0.0, m2",
        "temperature=0.0, m1",
        "temperature=0.7, m1",
    ]
    # JSON and HTML list the groups in the same order
    r = build_report(table, source="x", by=["model"])
    assert [g["label"] for g in r.to_dict()["groups"]] == ["m2", "m1"]
    page = render_html(r, generated=WHEN)
    assert page.index("<td>m2</td>") < page.index("<td>m1</td>")
    # a dictionary-encoded model column (as Parquet often reads) is ordered the same
    coded = table.set_column(1, "model", table["model"].dictionary_encode())
    assert labels(coded, ["model"]) == ["m2", "m1"]


def test_models_the_metadata_does_not_list_follow_by_first_appearance():
    m3 = [("9", "m3", *r[2:]) for r in ROWS[:2]]
    table = make_table([*m3, *ROWS])  # m3 first, m1, then m2
    assert labels(with_meta(table, {"settings": {"models": ["m2", "gone"]}}), ["model"]) == [
        "m2",
        "m3",
        "m1",
    ]
    # job.json's form, a top-level list of models, is read too
    assert model_order(with_meta(table, {"models": ["m1", "m2"], "settings": {}})) == ["m1", "m2"]


def test_without_metadata_groups_keep_the_first_appearance_order():
    rows = [r for r in ROWS if r[1] == "m2"] + [r for r in ROWS if r[1] == "m1"]
    assert labels(make_table(rows), ["model"]) == ["m2", "m1"]  # not alphabetical
    for meta in (b"not json", {"settings": None}, {"models": "m1"}, {"settings": {"models": []}}):
        table = with_meta(make_table(rows), meta)
        assert model_order(table) == []
        assert labels(table, ["model"]) == ["m2", "m1"]


def test_other_key_columns_sort_by_value_whatever_comes_first():
    error, ok = ROWS[3], ROWS[0]
    assert labels(make_table([ok, error]), ["status"]) == ["error", "ok"]
    assert labels(make_table([error, ok]), ["status"]) == ["error", "ok"]
    hot_first = [ROWS[5], ROWS[0]]  # temperature 0.7 met first
    assert labels(make_table(hot_first), ["param_temperature"]) == [
        "0.0",
        "0.7",
    ]


def test_by_nothing_gives_the_total_alone():
    r = report(by=[])
    assert r.groups == [] and r.total.requests == 10
    assert r.latencies == {"total": [0.25, 0.75, 1.0, 2.0, 3.0, 5.0]}
    assert r.chart_groups == [r.total]


def test_default_by_is_model_alone_without_param_columns():
    r = build_report(make_table(drop={"param_temperature"}), source="x")
    assert r.by == ("model",)
    assert r.reference is None and r.answer is None
    assert all(g.accuracy is None and g.scored == 0 for g in [*r.groups, r.total])


def test_dictionary_encoded_keys_group_like_strings():
    table = make_table()
    table = table.set_column(1, "model", table["model"].dictionary_encode())
    r = build_report(table, source="x", by=["model"], reference="expected_sentiment")
    assert [g.key for g in r.groups] == [{"model": "m1"}, {"model": "m2"}]
    assert [g.scored for g in r.groups] == [7, 1]


def test_answer_defaults_to_content_without_a_bare_column():
    table = make_table(drop={"sentiment"})
    r = build_report(table, source="x", by=["model"], reference="expected_sentiment")
    assert r.answer == "content"
    # m2 row 1: content "POSITIVE" equals "positive" when case is ignored
    assert [(g.accuracy, g.scored) for g in r.groups] == [(0.0, 7), (1.0, 1)]
    table = make_table().rename_columns(
        ["label" if n == "expected_sentiment" else n for n in NAMES]
    )
    assert build_report(table, source="x", reference="label").answer == "content"


def test_explicit_answer_column_and_non_string_columns():
    table = pa.table(
        {
            "model": ["m", "m", "m"],
            "status": ["ok", "ok", "ok"],
            "expected": pa.array([1, 2, 3], pa.int64()),
            "guess": pa.array([1.0, 2.5, 3.0], pa.float64()),
        }
    )
    r = build_report(table, source="x", reference="expected", answer="guess")
    assert (r.answer, r.total.accuracy, r.total.scored) == ("guess", 2 / 3, 3)
    # optional columns missing: zero tokens, unknown cost, no latency, no errors
    t = r.total
    assert (t.prompt_tokens, t.completion_tokens, t.cost_usd, t.latency_p50) == (0, 0, None, None)


def test_cached_rows_have_no_latency_even_when_recorded():
    rows = [(*ROWS[0][:8], 9.0, True, *ROWS[0][10:]), ROWS[1]]
    r = build_report(make_table(rows), source="x", by=[])
    assert (r.total.latency_p50, r.total.latency_p95) == (2.0, 2.0)


def test_latency_sample_is_capped_and_deterministic():
    n = 5001
    table = pa.table(
        {
            "model": ["m"] * n,
            "status": ["ok"] * n,
            "latency_s": pa.array([float((i * 7919) % n) for i in range(n)]),  # 0..5000 shuffled
        }
    )
    r = build_report(table, source="x")
    sample = r.latencies["m"]
    assert len(sample) == LATENCY_SAMPLE
    assert sample == sorted(sample) and sample[0] == 0.0 and sample[-1] == 5000.0
    assert build_report(table, source="x").latencies == r.latencies
    g = r.groups[0]
    assert (g.latency_p50, g.latency_p95) == (2500.0, 4750.0)  # over every row, not the sample


def test_empty_table():
    r = build_report(make_table(rows=[]), source="x")
    assert r.groups == []
    t = r.total
    assert (t.requests, t.ok, t.errors, t.cost_usd, t.latency_p50) == (0, 0, 0, None, None)
    assert render_report(r)[-1].split() == ["total", "0", "0", "0", "0", "-", "-", "-"]
    assert "No errors." in render_html(r, generated=WHEN)


def test_usage_errors_name_the_column():
    table = make_table()
    with pytest.raises(UsageError, match=r"^--by: no column 'nope' \(columns: id, model, "):
        build_report(table, source="x", by=["model", "nope"])
    with pytest.raises(UsageError, match=r"^--reference-column: no column 'gold' \(columns: id"):
        build_report(table, source="x", reference="gold")
    with pytest.raises(UsageError, match=r"no answer column 'reply' to compare with 'content'"):
        build_report(table, source="x", reference="content", answer="reply")
    with pytest.raises(UsageError, match=r"no answer column 'content' to compare with 'ref'"):
        plain = pa.table({"model": ["m"], "status": ["ok"], "ref": ["a"]})
        build_report(plain, source="x", reference="ref")
    with pytest.raises(UsageError, match="without a reference column"):
        build_report(table, source="x", answer="content")
    with pytest.raises(UsageError, match="no column status"):
        build_report(table.drop_columns(["status"]), source="x")
    listed = table.append_column("tags", pa.array([[1]] * table.num_rows))
    with pytest.raises(UsageError, match=r"--by: cannot group by tags \(list<item: int64>\)"):
        build_report(listed, source="x", by=["tags"])


def test_group_label():
    assert group_label({}) == "total"
    assert group_label({"param_temperature": None}) == "(none)"
    assert group_label({"model": "m", "param_top_p": 1.0, "lang": "de"}) == "m, top_p=1.0, lang=de"


def test_to_dict_is_json_ready():
    d = report().to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"source", "by", "reference", "answer", "groups", "total"}
    assert d["by"] == ["model", "param_temperature"]
    assert d["groups"][0] == {
        "key": {"model": "m1", "param_temperature": 0.0},
        "label": "m1, temperature=0.0",
        "requests": 5,
        "ok": 4,
        "errors": 1,
        "errors_by_type": {"timeout": 1},
        "prompt_tokens": 67,
        "completion_tokens": 18,
        "cost_usd": 0.75,
        "latency_p50": 2.0,
        "latency_p95": pytest.approx(2.9, rel=1e-12),
        "accuracy": 0.5,
        "accuracy_n": 4,
        **UNSTATED,
    }
    assert d["total"]["key"] == {} and d["total"]["accuracy_n"] == 8


# --- Text -------------------------------------------------------------------------------------


def test_render_report_lines():
    assert render_report(report()) == [
        "model  param_temperature  ok  errors  tokens in  tokens out     cost     p50     p95"
        "    accuracy",
        "m1     0.0                 4       1         67          18  $0.7500  2.00 s  2.90 s"
        "  50.0% of 4",
        "m1     0.7                 1       2         10           2  $0.1250  5.00 s  5.00 s"
        "  33.3% of 3",
        "m2     0.0                 2       0         10           2        -  0.50 s  0.72 s"
        "   0.0% of 1",
        "total                      7       3         87          22  $0.8750  1.50 s  4.50 s"
        "  37.5% of 8",
        "errors by type: rate_limited 1, timeout 1, unknown 1",
        "accuracy: sentiment vs expected_sentiment (stripped, case-insensitive; rows without a "
        "reference skipped, errors count wrong)",
    ]


def test_render_report_without_reference_or_errors():
    rows = [r for r in ROWS if r[3] == "ok"]
    lines = render_report(build_report(make_table(rows), source="x", by=["model"]))
    assert lines == [
        "model  ok  errors  tokens in  tokens out     cost     p50     p95",
        "m1      5       0         77          20  $0.8750  2.50 s  4.70 s",
        "m2      2       0         10           2        -  0.50 s  0.72 s",
        "total   7       0         87          22  $0.8750  1.50 s  4.50 s",
    ]


def test_seconds_shows_latencies_under_10_ms_in_ms():
    assert seconds(0.0042) == "4.2 ms"
    assert seconds(0.0099) == "9.9 ms"
    assert seconds(0.00994) == "9.9 ms"
    assert seconds(0.00996) == "0.01 s"  # would round to "10.0 ms": 10 ms and more are seconds
    assert seconds(0.01) == "0.01 s"
    assert seconds(0.0149) == "0.01 s"
    assert seconds(2.9) == "2.90 s"
    assert seconds(0.0) == "0.0 ms"
    assert seconds(0.00004) == "0.0 ms"
    assert seconds(None) == "-"
    assert (in_ms(0.0099), in_ms(0.00996), in_ms(0.01)) == (True, False, False)


def test_render_report_shows_fast_latencies_in_ms():
    rows = [(*r[:8], lat, *r[9:]) for r, lat in zip(ROWS, [0.0042, 0.0099, 0.03, 0.5])]
    r = build_report(make_table(rows[:3]), source="x", by=["model"])
    assert render_report(r)[:2] == [
        "model  ok  errors  tokens in  tokens out     cost     p50     p95",
        "m1      3       0         60          15  $0.7500  9.9 ms  0.03 s",
    ]
    assert r.to_dict()["groups"][0]["latency_p50"] == 0.0099  # JSON keeps raw seconds
    one = build_report(make_table(rows[:1]), source="x", by=[])
    assert render_report(one)[-1].split()[-4:] == ["4.2", "ms", "4.2", "ms"]


# --- HTML -------------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Checker(HTMLParser):
    """Records start tags and their attributes; fails on an unbalanced end tag."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.problems: list[str] = []
        self.text: list[str] = []
        self.where: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        self.where.append("/".join(self.stack))


def parse(page: str) -> Checker:
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.problems == [] and checker.stack == []
    return checker


def count(checker: Checker, tag: str) -> int:
    return sum(1 for t, _ in checker.tags if t == tag)


def test_html_is_well_formed_self_contained_and_accessible():
    r = report()
    page = render_html(r, generated=WHEN)
    assert page.startswith('<!DOCTYPE html>\n<html lang="en">')
    checker = parse(page)
    texts = dict(zip(checker.where, checker.text))
    assert texts["html/head/title"] == "batcher report: out.parquet"
    assert texts["html/body/main/h1"] == "batcher report: out.parquet"
    assert "Generated 2025-03-04 05:06 UTC" in page
    # cost, accuracy, latency and errors: one svg each, each an image with a title
    svgs = [a for t, a in checker.tags if t == "svg"]
    assert len(svgs) == 4 and all(a["role"] == "img" for a in svgs)
    assert re.findall(r'<svg[^>]*>\n<title id="(\w+)-t">', page) == [
        "cost",
        "accuracy",
        "latency",
        "errors",
    ]
    for axis in ("cost (USD)", "accuracy (%)", "latency (s)", "error rows (count)"):
        assert axis in page
    for g in r.groups:
        assert page.count(escape(g.label)) >= 4  # in every chart
    assert "http://" not in page and "https://" not in page
    assert count(checker, "script") == 0 and count(checker, "link") == 0
    assert count(checker, "img") == 0
    # the summary table: a row per group and the total
    assert count(checker, "tr") == 1 + 3 + 1
    for name in ("timeout", "rate_limited", "unknown"):
        assert name in page
    assert "$0.8750" in page and "37.5% of 8" in page


def test_html_without_reference_costs_or_errors():
    rows = [(*r[:7], None, *r[8:]) for r in ROWS if r[3] == "ok"]
    page = render_html(build_report(make_table(rows), source="x", by=["model"]), generated=WHEN)
    checker = parse(page)
    assert count(checker, "svg") == 1  # the latency chart alone
    assert "No errors." in page and "No cost known" in page
    assert "Accuracy" not in page


def test_html_escapes_every_text():
    rows = [(r[0], '<script>alert("m")</script>', *r[2:]) for r in ROWS[:3]]
    r = build_report(make_table(rows), source="a&b <x>.parquet", by=["model"])
    page = render_html(r, generated=WHEN)
    parse(page)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;m&quot;)&lt;/script&gt;" in page
    assert "<title>batcher report: a&amp;b &lt;x&gt;.parquet</title>" in page


def test_html_cuts_long_labels_but_keeps_them_whole_in_a_title():
    long = "vendor/" + "x" * 60
    rows = [(r[0], long, *r[2:]) for r in ROWS[:3]]
    page = render_html(build_report(make_table(rows), source="x", by=["model"]), generated=WHEN)
    parse(page)
    assert f"<title>{long}</title>" in page
    assert "vendor/" + "x" * 40 + "…" in page


def test_html_of_the_total_alone():
    r = report(by=[])
    page = render_html(r, generated=WHEN)
    checker = parse(page)
    assert count(checker, "svg") == 4
    assert ">total<" in page


def test_html_shows_latencies_under_10_ms_in_ms():
    rows = [(*r[:8], lat, *r[9:]) for r, lat in zip(ROWS[:3], [0.002, 0.0042, 0.008])]
    page = render_html(build_report(make_table(rows), source="x", by=["model"]), generated=WHEN)
    parse(page)
    assert "<span>latency p50 / p95</span><b>4.2 ms / 7.6 ms</b>" in page
    assert '<td class="n">4.2 ms</td><td class="n">7.6 ms</td>' in page
    assert "<title>m1: p50 4.2 ms, p95 7.6 ms</title>" in page
    assert ">p50 4.2 ms · p95 7.6 ms</text>" in page
    assert "latency (ms)" in page and "latency (s)" not in page
    ticks = re.findall(r'<text class="tick"[^>]*>([^<]*)</text>', page)
    assert ticks[-5:] == ["0", "2", "4", "6", "8"]  # the latency axis, in ms
    # 10 ms and more: the axis and the figures in seconds
    rows = [(*r[:8], lat, *r[9:]) for r, lat in zip(ROWS[:3], [0.002, 0.0042, 0.5])]
    page = render_html(build_report(make_table(rows), source="x", by=["model"]), generated=WHEN)
    assert "<b>4.2 ms / 0.45 s</b>" in page and "latency (s)" in page
