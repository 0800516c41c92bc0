"""Rows to requests (batcher.io.rows), templates, ids, hashes and the checking pass
(batcher.io.check)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.errors import InputError, UsageError
from batcher.io.check import InputScan, ModelCount, check_input
from batcher.io.rows import RequestSpec
from batcher.io.templates import compile_template
from batcher.types import Request, canonical_json
from batcher.types import request_hash as payload_hash

SPEC = RequestSpec(models=("m",))


def jsonl(tmp_path: Path, *rows: Any, name: str = "in.jsonl") -> Path:
    """Rows as JSONL; a str or bytes row is written as is."""
    lines = []
    for row in rows:
        if isinstance(row, str):
            row = row.encode()
        lines.append(row if isinstance(row, bytes) else orjson.dumps(row))
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def scan(spec: RequestSpec, path: Path, **kwargs) -> InputScan:
    return check_input(spec, path, **kwargs)


def requests_of(spec: RequestSpec, path: Path, **kwargs) -> list[Request]:
    """Every request of the input, as the checking pass hands them to its sink."""
    out: list[Request] = []
    check_input(spec, path, sink=lambda batch, requests, todo: out.extend(requests), **kwargs)
    return out


def request_hash(body: dict, base_url: str, *, sample: int = 0) -> str:
    return payload_hash(canonical_json(body), base_url, sample=sample)


def bodies(spec: RequestSpec, path: Path) -> list[dict]:
    return [r.body for r in requests_of(spec, path)]


def input_error(spec: RequestSpec, path: Path) -> str:
    """The message of the bad input, from the checking pass."""
    with pytest.raises(InputError) as found:
        scan(spec, path)
    return str(found.value)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# -- row shapes --------------------------------------------------------------------------


def test_prompt_row(tmp_path):
    path = jsonl(tmp_path, {"prompt": "Hi"})
    (r,) = requests_of(SPEC, path)
    assert r.body == {"model": "m", "messages": [user("Hi")]}
    assert (r.row_index, r.row_id, r.model, r.model_index, r.sample) == (0, "0", "m", 0, 0)
    assert r.est_prompt_tokens == 1
    assert r.max_tokens is None
    assert r.bad_input is None
    assert r.request_hash == request_hash(r.body, "")


def test_messages_row_and_system(tmp_path):
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]},
        {"role": "tool", "content": "4", "tool_call_id": "t", "name": None},
        {"role": "user", "content": [{"type": "text", "text": "and 3+3?"}, {"type": "image"}]},
    ]
    path = jsonl(tmp_path, {"messages": messages})
    spec = RequestSpec(models=("m",), system="Be brief.")
    (body,) = bodies(spec, path)
    assert body == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            messages[0],
            messages[1],
            {"role": "tool", "content": "4", "tool_call_id": "t"},  # null keys dropped
            messages[3],
        ],
    }
    # 9 + 12 + 1 + 8 characters of text
    assert requests_of(spec, path)[0].est_prompt_tokens == 30 // 4


def test_system_not_added_before_a_system_message(tmp_path):
    messages = [{"role": "system", "content": "own"}, user("x")]
    dev = [{"role": "developer", "content": "own"}, user("x")]
    path = jsonl(tmp_path, {"messages": messages}, {"messages": dev})
    spec = RequestSpec(models=("m",), system="job")
    assert [b["messages"] for b in bodies(spec, path)] == [messages, dev]


def test_prompt_with_system(tmp_path):
    path = jsonl(tmp_path, {"prompt": "Hi", "topic": "cats"})
    spec = RequestSpec(models=("m",), system="You know {topic}.")
    assert bodies(spec, path)[0]["messages"] == [
        {"role": "system", "content": "You know cats."},
        user("Hi"),
    ]


def test_null_messages_fall_back_to_prompt(tmp_path):
    path = jsonl(tmp_path, {"messages": None, "prompt": "Hi"})
    assert bodies(SPEC, path)[0]["messages"] == [user("Hi")]


def test_custom_columns(tmp_path):
    path = jsonl(tmp_path, {"q": "Hi"}, {"conv": [user("yo")]})
    spec = RequestSpec(models=("m",), prompt_column="q", messages_column="conv")
    assert [b["messages"] for b in bodies(spec, path)] == [[user("Hi")], [user("yo")]]


def test_batch_api_line(tmp_path):
    line = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-x", "messages": [user("Hi")], "temperature": 0.2, "seed": None},
    }
    no_model = {"custom_id": "req-2", "body": {"messages": [user("Yo")], "max_tokens": 7}}
    path = jsonl(tmp_path, line, no_model)
    # the models a line without its own goes to (the provider's default: no -m given)
    spec = RequestSpec(
        models=("a", "b"), params={"temperature": 1.0, "seed": 3}, models_given=False
    )
    got = requests_of(spec, path)
    assert [(r.row_id, r.model, r.model_index) for r in got] == [
        ("req-1", "gpt-x", 2),
        ("req-2", "a", 0),
        ("req-2", "b", 1),
    ]
    assert got[0].body == {
        "model": "gpt-x",
        "messages": [user("Hi")],
        "temperature": 0.2,  # the line's own keys win over the job's
        "seed": 3,  # null in the line: no override
    }
    assert got[1].body == {
        "model": "a",
        "messages": [user("Yo")],
        "temperature": 1.0,
        "seed": 3,
        "max_tokens": 7,
    }
    assert got[1].max_tokens == 7


def test_batch_lines_with_their_own_model_and_m_contradict(tmp_path):
    line = {"custom_id": "r1", "body": {"model": "gpt-x", "messages": [user("Hi")]}}
    path = jsonl(tmp_path, line)
    assert input_error(RequestSpec(models=("a", "b")), path) == (
        f"{path}: line 1: the Batch API line names its own model ('gpt-x') and -m names "
        "'a', 'b'; give one of them"
    )


def test_batch_line_checks(tmp_path):
    bad_url = {"custom_id": "1", "url": "/v1/embeddings", "body": {"messages": [user("x")]}}
    path = jsonl(tmp_path, bad_url)
    assert input_error(SPEC, path) == (
        f"{path}: line 1: batch request url '/v1/embeddings' is not /v1/chat/completions"
    )
    path = jsonl(tmp_path, {"custom_id": "1", "body": {"input": "x"}})
    assert input_error(SPEC, path) == f"{path}: line 1: batch request body has no 'messages'"
    path = jsonl(tmp_path, {"custom_id": "1", "body": {"model": 5, "messages": [user("x")]}})
    assert input_error(SPEC, path) == f"{path}: line 1: 'body.model' must be a string, got int"


def test_template_row(tmp_path):
    row = {"text": "good", "n": 3, "x": 1.5, "tags": ["a", "b"], "meta": {"k": 1}, "none": None}
    path = jsonl(tmp_path, row)
    tpl = "Classify {{literally}}: {text} n={n} x={x} {tags} {meta} [{none}] {n:>3}|{x:.2f}"
    spec = RequestSpec(models=("m",), template=tpl, system="S {text}")
    assert bodies(spec, path)[0]["messages"] == [
        {"role": "system", "content": "S good"},
        user('Classify {literally}: good n=3 x=1.5 ["a","b"] {"k":1} []   3|1.50'),
    ]


def test_template_wins_over_prompt_but_never_replaces_messages(tmp_path):
    path = jsonl(tmp_path, {"prompt": "p", "text": "t"})
    spec = RequestSpec(models=("m",), template="T: {text}")
    assert bodies(spec, path)[0]["messages"] == [user("T: t")]
    path = jsonl(tmp_path, {"prompt": "p", "messages": [user("m")], "text": "t"})
    assert input_error(spec, path) == (
        f"{path}: line 1: the row has 'messages' and --template would replace them;"
        " drop --template, or name another --messages-column"
    )


def test_template_field_names_no_column(tmp_path):
    path = jsonl(tmp_path, {"id": 1, "text": "a"}, {"id": 2, "txt": "b"})
    spec = RequestSpec(models=("m",), template="Say {text}")
    assert input_error(spec, path) == (
        f"{path}: line 2: template field 'text' names no column (columns: id, txt)"
    )
    spec = RequestSpec(models=("m",), system="{who}", prompt_column="text")
    assert input_error(spec, path) == (
        f"{path}: line 1: system field 'who' names no column (columns: id, text)"
    )


@pytest.mark.parametrize(
    "field", ["{0.__class__}", "{text.__init__}", "{}", "{0}", "{text[0]}", "{text!r}", "{a:{b}}"]
)
def test_forbidden_template_fields(tmp_path, field):
    path = jsonl(tmp_path, {"text": "a"})
    spec = RequestSpec(models=("m",), template=f"Say {field} now")
    message = f"template: field {field!r} is not allowed: only plain column names such as {{text}}"
    assert input_error(spec, path) == message
    spec = RequestSpec(models=("m",), system=field)
    assert input_error(spec, path) == "system" + message.removeprefix("template")


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("Say {text", "expected '}' before end of string"),
        ("Say text}", "Single '}' encountered in format string"),
    ],
)
def test_malformed_template(tmp_path, template, problem):
    assert input_error(
        RequestSpec(models=("m",), template=template), jsonl(tmp_path, {"text": "a"})
    ) == (f"template: {problem}")


def test_template_format_spec_that_does_not_fit(tmp_path):
    path = jsonl(tmp_path, {"text": "a"})
    spec = RequestSpec(models=("m",), template="{text:.2f}")
    assert input_error(spec, path) == (
        f"{path}: line 1: template field 'text': Unknown format code 'f' for object of type 'str'"
    )


def test_compiled_template_pieces():
    tpl = compile_template("a {x} {{b}} {y:>2}")
    assert tpl.fields == ("x", "y")
    assert tpl.render({"x": None, "y": 1}) == "a  {b}  1"


# -- ids ---------------------------------------------------------------------------------


def test_ids(tmp_path):
    path = jsonl(tmp_path, {"id": "abc", "prompt": "a"}, {"id": 12, "prompt": "b"})
    assert [r.row_id for r in requests_of(SPEC, path)] == ["abc", "12"]
    path = jsonl(tmp_path, {"id": 12.0, "prompt": "a"}, {"id": 1.5, "prompt": "b"})
    assert [r.row_id for r in requests_of(SPEC, path)] == ["12", "1.5"]
    path = jsonl(tmp_path, {"custom_id": "c1", "prompt": "a"}, {"prompt": "b"})
    assert [r.row_id for r in requests_of(SPEC, path)] == ["c1", "1"]
    path = jsonl(tmp_path, {"id": "x", "custom_id": "c1", "prompt": "a"})
    assert [r.row_id for r in requests_of(SPEC, path)] == ["x"]


def test_id_column(tmp_path):
    path = jsonl(tmp_path, {"id": 1, "uid": "u1", "prompt": "a"}, {"id": 2, "prompt": "b"})
    spec = RequestSpec(models=("m",), id_column="uid")
    assert input_error(spec, path) == f"{path}: line 2: row has no id column 'uid'"
    path = jsonl(tmp_path, {"id": 1, "uid": 7, "prompt": "a"})
    assert [r.row_id for r in requests_of(spec, path)] == ["7"]


def test_null_and_empty_id(tmp_path):
    path = jsonl(tmp_path, {"id": 1, "prompt": "a"}, "", {"id": None, "prompt": "b"})
    assert input_error(SPEC, path) == f"{path}: line 3: null id"
    path = jsonl(tmp_path, {"id": "", "prompt": "b"})
    assert input_error(SPEC, path) == f"{path}: line 1: empty id"


def test_duplicate_ids(tmp_path):
    path = jsonl(
        tmp_path,
        {"id": "abc", "prompt": "a"},
        {"id": "x", "prompt": "a"},
        "",
        {"id": "abc", "prompt": "b"},
    )
    with pytest.raises(InputError) as info:
        scan(SPEC, path)
    assert str(info.value) == f"{path}: line 4: duplicate id 'abc' (first at line 1)"


def test_int_id_and_row_index_collide(tmp_path):
    path = jsonl(tmp_path, {"prompt": "a"}, {"id": 0, "prompt": "b"})
    with pytest.raises(InputError) as info:
        scan(SPEC, path)
    assert str(info.value) == f"{path}: line 2: duplicate id '0' (first at line 1)"


def test_duplicate_id_among_20000_rows(tmp_path):
    lines = [b'{"id": "r%d", "prompt": "p"}' % i for i in range(20_000)]
    lines[17_345] = b'{"id": "r123", "prompt": "again"}'
    path = jsonl(tmp_path, *lines)
    with pytest.raises(InputError) as info:
        scan(SPEC, path)
    assert str(info.value) == f"{path}: line 17346: duplicate id 'r123' (first at line 124)"
    lines[17_345] = b'{"id": "unique", "prompt": "again"}'
    assert scan(SPEC, jsonl(tmp_path, *lines)).rows == 20_000


def test_duplicate_ids_in_parquet(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [5, 6, 5], "prompt": ["a", "b", "c"]}), path)
    with pytest.raises(InputError) as info:
        scan(SPEC, path)
    assert str(info.value) == f"{path}: row 3: duplicate id '5' (first at row 1)"


def test_long_duplicate_id_is_cut(tmp_path):
    long_id = "i" * 100
    path = jsonl(tmp_path, {"id": long_id, "prompt": "a"}, {"id": long_id, "prompt": "a"})
    with pytest.raises(InputError) as info:
        scan(SPEC, path)
    assert str(info.value) == f"{path}: line 2: duplicate id '{'i' * 60}...' (first at line 1)"


# -- models, params and row overrides ----------------------------------------------------


def test_overrides_params_and_model_order(tmp_path):
    path = jsonl(
        tmp_path,
        {"prompt": "a", "temperature": 0.9, "response_format": {"type": "json_object"}},
        {"prompt": "b", "model": "z", "temperature": None},
        {"prompt": "c", "model": "y"},
        {"prompt": "d", "model": "z", "max_tokens": 5},
        {"prompt": "e", "model": "b"},
    )
    columns = ("model", "temperature", "max_tokens", "response_format")
    spec = RequestSpec(
        models=("a", "b"), params={"temperature": 0.1, "max_tokens": 100}, body_columns=columns
    )
    got = requests_of(spec, path)
    assert [(r.row_index, r.model, r.model_index) for r in got] == [
        (0, "a", 0),
        (0, "b", 1),
        (1, "z", 2),
        (2, "y", 3),
        (3, "z", 2),
        (4, "b", 1),
    ]
    assert got[0].body == {
        "model": "a",
        "messages": [user("a")],
        "temperature": 0.9,
        "max_tokens": 100,
        "response_format": {"type": "json_object"},
    }
    assert got[2].body == {
        "model": "z",
        "messages": [user("b")],
        "temperature": 0.1,  # null: no override
        "max_tokens": 100,
    }
    assert got[4].body["max_tokens"] == 5
    assert got[4].max_tokens == 5


def test_columns_are_body_keys_only_when_named(tmp_path):
    """A row's `model`, `user`, `n`, `metadata` are data unless --body-columns names them:
    sending them unasked leaked personal data and multiplied bills."""
    row = {"text": "Kettle", "user": "alice@example.com", "n": 5, "metadata": "crm", "model": "X"}
    path = jsonl(tmp_path, row)
    spec = RequestSpec(models=("m",), template="Classify: {text}")
    assert bodies(spec, path) == [{"model": "m", "messages": [user("Classify: Kettle")]}]
    named = RequestSpec(models=("m",), template="Classify: {text}", body_columns=("user", "n"))
    assert bodies(named, path) == [
        {"model": "m", "messages": [user("Classify: Kettle")], "user": "alice@example.com", "n": 5}
    ]
    # an object `body` column holds the row's own body keys
    path = jsonl(tmp_path, {"prompt": "Hi", "body": {"temperature": 0.3, "seed": None}})
    assert bodies(SPEC, path) == [{"model": "m", "messages": [user("Hi")], "temperature": 0.3}]
    # a column read as the prompt, messages, id or a template field is not a body key too
    with pytest.raises(UsageError) as info:
        bodies(RequestSpec(models=("m",), template="{text}", body_columns=("text",)), path)
    assert str(info.value) == (
        "--body-columns: 'text' is read as the prompt, messages, id or a template field "
        "already; a column is one or the other"
    )


def test_max_completion_tokens_bound(tmp_path):
    path = jsonl(tmp_path, {"prompt": "a", "max_completion_tokens": 9})
    spec = RequestSpec(models=("m",), body_columns=("max_completion_tokens",))
    assert requests_of(spec, path)[0].max_tokens == 9


def test_no_model(tmp_path):
    path = jsonl(tmp_path, {"prompt": "a", "model": "x"}, {"prompt": "b"})
    assert input_error(RequestSpec(body_columns=("model",)), path) == (
        f"{path}: line 2: no model: pass -m/--model or give the row a 'model'"
    )


def test_bad_model_column(tmp_path):
    spec = RequestSpec(models=("m",), body_columns=("model",))
    path = jsonl(tmp_path, {"prompt": "a", "model": 4})
    assert input_error(spec, path) == f"{path}: line 1: 'model' must be a string, got int"
    path = jsonl(tmp_path, {"prompt": "a", "model": ""})
    assert input_error(spec, path) == f"{path}: line 1: 'model' is empty"


def test_samples_with_and_without_seed(tmp_path):
    path = jsonl(tmp_path, {"prompt": "a"}, {"prompt": "b", "seed": None})
    spec = RequestSpec(models=("m", "n"), params={"seed": 10}, samples=3)
    got = requests_of(spec, path)
    assert [(r.row_index, r.model, r.sample, r.body["seed"]) for r in got[:6]] == [
        (0, "m", 0, 10),
        (0, "m", 1, 11),
        (0, "m", 2, 12),
        (0, "n", 0, 10),
        (0, "n", 1, 11),
        (0, "n", 2, 12),
    ]
    assert len(got) == 12
    assert got[1].request_hash == request_hash(got[1].body, "", sample=1)
    unseeded = requests_of(RequestSpec(models=("m",), samples=2), path)
    assert unseeded[0].body == unseeded[1].body
    assert unseeded[0].request_hash != unseeded[1].request_hash
    assert unseeded[0].request_hash == requests_of(SPEC, path)[0].request_hash


# -- request hash ------------------------------------------------------------------------


def test_request_hash_is_canonical():
    a = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.5}
    b = {"temperature": 0.5, "messages": [{"content": "x", "role": "user"}], "model": "m"}
    h = request_hash(a, "http://h/v1")
    assert h == request_hash(b, "http://h/v1/")
    assert len(h) == 64
    assert h != request_hash(a, "http://other/v1")
    assert h != request_hash(a, "http://h/v1", sample=1)
    assert h == request_hash(a, "http://h/v1", sample=0)


def test_hash_depends_on_base_url_and_system(tmp_path):
    path = jsonl(tmp_path, {"prompt": "a"})
    plain = requests_of(SPEC, path)[0].request_hash
    assert plain == requests_of(RequestSpec(models=("m",)), path)[0].request_hash
    assert (
        plain != requests_of(RequestSpec(models=("m",), base_url="http://x"), path)[0].request_hash
    )
    assert plain != requests_of(RequestSpec(models=("m",), system="s"), path)[0].request_hash


# -- bad rows ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"text": "x"}, "row has neither 'prompt' nor 'messages'"),
        ({"prompt": 5}, "'prompt' must be a string, got int"),
        ({"prompt": None}, "'prompt' must be a string, got null"),
        ({"prompt": ["a"]}, "'prompt' must be a string, got list"),
        ({"messages": "hi"}, "'messages' must be a non-empty list, got str"),
        ({"messages": {"role": "user"}}, "'messages' must be a non-empty list, got object"),
        ({"messages": []}, "'messages' is an empty list"),
        ({"messages": ["hi"]}, "'messages[0]' must be an object, got str"),
        ({"messages": [user("a"), {"content": "b"}]}, "'messages[1]' has no 'role'"),
        (
            {"messages": [{"role": 1, "content": "b"}]},
            "'messages[0].role' must be a string, got int",
        ),
        ({"messages": [{"role": "user"}]}, "'messages[0]' has no 'content'"),
        ({"messages": [{"role": "user", "content": None}]}, "'messages[0]' has no 'content'"),
        (
            {"messages": [{"role": "user", "content": 3}]},
            "'messages[0].content' must be a string or a list of parts, got int",
        ),
        (
            {"messages": [{"role": "user", "content": ["a"]}]},
            "'messages[0].content[0]' must be an object, got str",
        ),
        (
            '{"prompt": "x", "body": {"metadata": ' + "[" * 300 + "]" * 300 + "}}",
            "request body is not JSON-serialisable: Recursion limit reached",
        ),
    ],
)
def test_bad_row_messages(tmp_path, row, problem):
    path = jsonl(tmp_path, {"prompt": "fine"}, row)
    assert input_error(SPEC, path) == f"{path}: line 2: {problem}"


def test_bad_row_with_custom_columns(tmp_path):
    path = jsonl(tmp_path, {"prompt": "x"})
    spec = RequestSpec(models=("m",), prompt_column="q", messages_column="conv")
    assert input_error(spec, path) == f"{path}: line 1: row has neither 'q' nor 'conv'"


def test_malformed_line_is_a_bad_input(tmp_path):
    path = jsonl(tmp_path, {"prompt": "a"}, '{"prompt": "b"', {"prompt": "c"})
    assert input_error(SPEC, path) == (
        f"{path}: line 2: invalid JSON: unexpected end of data at column 15"
    )


def test_on_bad_row_skip(tmp_path):
    path = jsonl(
        tmp_path,
        {"id": "a", "prompt": "ok"},
        {"id": "b", "prompt": 1},
        "[1]",
        {"id": None, "prompt": "x"},
        {"id": "e", "prompt": 2, "model": "own"},
    )
    spec = RequestSpec(models=("m", "n"), on_bad_row="skip", body_columns=("model",))
    got = requests_of(spec, path)
    assert [(r.row_index, r.row_id, r.model, r.model_index) for r in got] == [
        (0, "a", "m", 0),
        (0, "a", "n", 1),
        (1, "b", "m", 0),
        (1, "b", "n", 1),
        (2, "(line 3)", "m", 0),  # its id cannot be read: named by its line, never a real id
        (2, "(line 3)", "n", 1),
        (3, "(line 4)", "m", 0),
        (3, "(line 4)", "n", 1),
        (4, "e", "own", 2),
    ]
    bad = got[2]
    assert bad.bad_input == f"{path}: line 2: 'prompt' must be a string, got int"
    assert (bad.body, bad.request_hash, bad.est_prompt_tokens, bad.max_tokens) == ({}, "", 0, None)
    assert got[4].bad_input == f"{path}: line 3: expected a JSON object, got a list"
    assert got[6].bad_input == f"{path}: line 4: null id"
    found = scan(spec, path)
    assert (found.rows, found.requests, found.bad_rows) == (5, 9, 4)
    assert found.per_model == {
        "m": ModelCount(1, 1, None),
        "n": ModelCount(1, 1, None),
        "own": ModelCount(0, 0, None),
    }


def test_the_id_of_an_unreadable_row_never_stands_for_a_real_one(tmp_path):
    """ids 1..4 and an unreadable line 3: it was given id "2" (its row number), like the real
    row 2, and every rerun failed; its "(line 3)" joins the duplicate check instead."""
    rows = [
        {"id": 1, "prompt": "a"},
        {"id": 2, "prompt": "b"},
        "not json",
        {"id": 4, "prompt": "d"},
    ]
    path = jsonl(tmp_path, *rows)
    got = requests_of(RequestSpec(models=("m",), on_bad_row="skip"), path)
    assert [r.row_id for r in got] == ["1", "2", "(line 3)", "4"]
    clash = jsonl(tmp_path, "not json", {"id": "(line 1)", "prompt": "x"}, name="clash.jsonl")
    assert input_error(RequestSpec(models=("m",), on_bad_row="skip"), clash) == (
        f"{clash}: line 2: duplicate id '(line 1)' (first at line 1)"
    )


def test_skip_without_models_uses_an_empty_model(tmp_path):
    path = jsonl(tmp_path, {"prompt": "a", "model": "x"}, {"prompt": "b"})
    got = requests_of(RequestSpec(on_bad_row="skip", body_columns=("model",)), path)
    assert [(r.model, r.model_index, r.bad_input is None) for r in got] == [
        ("x", 0, True),
        ("", 0, False),
    ]


def test_duplicate_ids_raise_even_under_skip(tmp_path):
    path = jsonl(tmp_path, {"id": 1, "prompt": "a"}, {"id": 1, "prompt": 2})
    with pytest.raises(InputError, match="line 2: duplicate id '1' \\(first at line 1\\)"):
        scan(RequestSpec(models=("m",), on_bad_row="skip"), path)


def test_file_problems_raise_even_under_skip(tmp_path):
    spec = RequestSpec(models=("m",), on_bad_row="skip")
    with pytest.raises(InputError, match="no such file"):
        scan(spec, tmp_path / "gone.jsonl")
    with pytest.raises(InputError, match="no rows"):
        scan(spec, jsonl(tmp_path, ""))


# -- scan --------------------------------------------------------------------------------


def test_scan_counts_and_schema(tmp_path):
    path = jsonl(
        tmp_path,
        {"id": 1, "prompt": "x" * 40, "flag": True},
        {"id": 2, "prompt": "y" * 8, "model": "own", "max_tokens": 50},
    )
    spec = RequestSpec(
        models=("a", "b"),
        params={"max_tokens": 10},
        samples=2,
        body_columns=("model", "max_tokens"),
    )
    found = scan(spec, path)
    assert found.fingerprint is not None
    assert found.fingerprint.size == path.stat().st_size
    assert found == InputScan(
        rows=2,
        requests=6,
        bad_rows=0,
        est_prompt_tokens=4 * 10 + 2 * 2,
        max_tokens_total=4 * 10 + 2 * 50,
        per_model={
            "a": ModelCount(2, 20, 20),
            "b": ModelCount(2, 20, 20),
            "own": ModelCount(2, 4, 100),
        },
        schema=found.schema,
        columns=("id", "prompt", "flag", "model", "max_tokens"),
        fingerprint=found.fingerprint,
    )
    assert found.schema == pa.schema(
        [
            ("id", pa.int64()),
            ("prompt", pa.string()),
            ("flag", pa.bool_()),
            ("model", pa.string()),
            ("max_tokens", pa.int64()),
        ]
    )
    assert scan(SPEC, path).max_tokens_total is None


def test_scan_limit(tmp_path):
    path = jsonl(tmp_path, {"prompt": "a"}, {"prompt": "b"}, {"prompt": 3})
    assert scan(SPEC, path, limit=2).rows == 2
    assert len(requests_of(SPEC, path, limit=2)) == 2


def test_rows_own_models_come_after_the_jobs_in_first_seen_order(tmp_path):
    path = jsonl(
        tmp_path,
        {"prompt": "a", "model": "q"},
        {"prompt": "b"},
        {"prompt": 1, "model": "r"},
        {"prompt": "c", "model": "s"},
    )
    spec = RequestSpec(models=("m",), on_bad_row="skip", body_columns=("model",))
    found = scan(spec, path)
    got = requests_of(spec, path)
    assert found.requests == len(got)
    assert list(found.per_model) == ["m", "q", "r", "s"]
    assert {r.model: r.model_index for r in got} == {"m": 0, "q": 1, "r": 2, "s": 3}


def test_ten_megabyte_prompt(tmp_path):
    path = jsonl(tmp_path, {"id": "big", "prompt": "z" * 10_000_000})
    assert scan(SPEC, path).est_prompt_tokens == 2_500_000
    (r,) = requests_of(SPEC, path)
    assert len(r.body["messages"][0]["content"]) == 10_000_000


# -- other formats -----------------------------------------------------------------------


def test_csv_rows(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        "id,prompt,temperature,model,stop,response_format,messages\n"
        '1,Hi,0.2,,"[""x""]","{""type"":""json_object""}",\n'
        "2,Yo,,m2,END,,\n"
        '3,,,,,,"[{""role"":""user"",""content"":""J""}]"\n'
    )
    columns = ("temperature", "model", "stop", "response_format")
    spec = RequestSpec(models=("m",), params={"temperature": 1}, body_columns=columns)
    got = requests_of(spec, path)
    assert [r.body for r in got] == [
        {
            "model": "m",
            "messages": [user("Hi")],
            "temperature": 0.2,
            "stop": ["x"],
            "response_format": {"type": "json_object"},
        },
        {"model": "m2", "messages": [user("Yo")], "temperature": 1, "stop": "END"},
        {"model": "m", "messages": [user("J")], "temperature": 1},
    ]
    assert [r.row_id for r in got] == ["1", "2", "3"]
    assert scan(SPEC, path).schema == pa.schema(
        [
            (name, pa.string())
            for name in (
                "id",
                "prompt",
                "temperature",
                "model",
                "stop",
                "response_format",
                "messages",
            )
        ]
    )


def test_csv_bad_rows(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,prompt,messages\n1,a\n2,"multi\nline",[oops\n')
    assert input_error(SPEC, path) == (
        f"{path}: line 3: 'messages' is not valid JSON: unexpected character, expected a JSON value"
    )
    path.write_text("id,prompt\n1,a,b\n")
    assert input_error(SPEC, path) == f"{path}: line 2: 3 fields, but the header has 2 columns"


def test_parquet_rows(tmp_path):
    path = tmp_path / "in.parquet"
    messages = pa.array(
        [[{"role": "user", "content": "a", "name": None}], None],
        pa.list_(
            pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string())])
        ),
    )
    table = pa.table({"id": [10, 11], "messages": messages, "prompt": [None, "b"]})
    pq.write_table(table, path)
    got = requests_of(SPEC, path)
    assert [(r.row_id, r.body["messages"]) for r in got] == [
        ("10", [user("a")]),
        ("11", [user("b")]),
    ]
    found = scan(SPEC, path)
    assert found.schema.equals(table.schema)
    pq.write_table(pa.table({"prompt": ["a", None]}), path)
    assert input_error(SPEC, path) == f"{path}: row 2: 'prompt' must be a string, got null"


# -- spec checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_bad_row": "ignore"}, "--on-bad-row must be 'error' or 'skip'"),
        ({"samples": 0}, "samples must be at least 1, got 0"),
        ({"params": {"model": "x"}}, "--param model is not allowed: use -m/--model or the input"),
        ({"models": ("a", "b", "a")}, "model 'a' is listed twice"),
    ],
)
def test_spec_checks(kwargs, message):
    with pytest.raises(UsageError) as info:
        RequestSpec(**kwargs)
    assert str(info.value) == message


# -- never a raw exception ---------------------------------------------------------------

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
keys = st.sampled_from(
    [
        "id",
        "prompt",
        "messages",
        "model",
        "custom_id",
        "body",
        "role",
        "content",
        "temperature",
        "seed",
        "text",
        "url",
    ]
)
rows = st.dictionaries(keys, values, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(rows | st.binary(max_size=20), min_size=1, max_size=6),
    ext=st.sampled_from([".jsonl", ".csv"]),
    skip=st.booleans(),
)
def test_any_rows_give_requests_or_input_error(lines, ext, skip):
    spec = RequestSpec(
        models=("m",),
        template=None if ext == ".jsonl" else "{prompt}",
        on_bad_row=("skip" if skip else "error"),
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"in{ext}"
        if ext == ".jsonl":
            path.write_bytes(
                b"\n".join(x if isinstance(x, bytes) else orjson.dumps(x) for x in lines)
            )
        else:
            path.write_bytes(
                b"prompt,id\n" + b"\n".join(x if isinstance(x, bytes) else b"a" for x in lines)
            )
        try:
            found = scan(spec, path)
            got = requests_of(spec, path)
            assert found.requests == len(got)
            assert found.bad_rows == len({r.row_index for r in got if r.bad_input})
        except InputError as exc:
            assert "\n" not in str(exc)
