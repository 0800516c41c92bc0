"""batcher.structured: schema loading, lenient parsing, validation, re-asks, typed columns."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema.validators import Draft202012Validator

from batcher.errors import InputError
from batcher.structured.columns import JSON_TEXT, arrow_fields, parsed_json, typed_columns
from batcher.structured.schema import JSON_OBJECT, load_schema, response_format
from batcher.structured.validate import LENGTH_PROBLEM, Check, ReplyValidator, extract_json

ROOT = Path(__file__).resolve().parents[2]
REVIEW_SCHEMA = ROOT / "sample_data" / "schemas" / "review_label.json"
DICT = pa.dictionary(pa.int32(), pa.string())
SENTIMENTS = "['positive', 'negative', 'neutral', 'mixed']"

VALID = {
    "sentiment": "positive",
    "topic": "price",
    "confidence": 0.9,
    "mentions_competitor": False,
    "key_phrases": ["good value"],
    "summary": "Cheap and fine.",
}


@pytest.fixture(scope="module")
def review() -> dict:
    return load_schema(REVIEW_SCHEMA)


@pytest.fixture(scope="module")
def validator(review) -> ReplyValidator:
    return ReplyValidator(review)


def dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def write(tmp_path: Path, text: str, name: str = "schema.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def obj(**properties: dict) -> dict:
    return {"type": "object", "properties": properties}


# --- response_format --------------------------------------------------------------------


def test_response_format_body(review):
    body = response_format(review, "review_label")
    assert body == {
        "type": "json_schema",
        "json_schema": {"name": "review_label", "schema": review, "strict": True},
    }
    assert body["json_schema"]["schema"] is review
    assert JSON_OBJECT == {"type": "json_object"}


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("ticket-triage_1", "ticket-triage_1"),
        ("review label.v2", "review_label_v2"),
        ("café / schema", "caf_schema"),
        ("__x__", "x"),
        ("x" * 100, "x" * 64),
        ("???", "response"),
        ("", "response"),
    ],
)
def test_response_format_sanitises_the_name(name, clean):
    assert response_format({}, name)["json_schema"]["name"] == clean


# --- load_schema ------------------------------------------------------------------------


def test_sample_schemas_load(review):
    assert list(review["properties"]) == list(VALID)
    triage = load_schema(str(ROOT / "sample_data" / "schemas" / "ticket_triage.json"))
    assert triage["required"] == ["priority", "team", "needs_human", "reason"]


def schema_error(path: Path) -> str:
    with pytest.raises(InputError) as info:
        load_schema(path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{\n  "type": "object",\n  "properties": {,}\n}\n', "invalid JSON: "
         "unexpected character, expected a string key at line 3"),
        ("  \n", "the file is empty"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ('{"type": "object", "properties": {"a": {"type": "strnig"}}}', "invalid JSON Schema: "
         "'strnig' is not valid under any of the given schemas (at $.properties.a.type)"),
        ('{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", '
         '"properties": {"a": {"type": "strnig"}}}', "invalid JSON Schema: "
         "'strnig' is not valid under any of the given schemas (at $.properties.a.type)"),
        ('{"type": "object", "required": "a"}', "invalid JSON Schema: "
         "'a' is not of type 'array' (at $.required)"),
        ('{"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}',
         "invalid JSON Schema: '(' is not a 'regex' (at $.properties.a.pattern)"),
        ('{"$schema": "https://example.com/mine", "type": "object"}', "unknown $schema "
         "'https://example.com/mine' (name a JSON Schema draft, "
         "e.g. https://json-schema.org/draft/2020-12/schema, or leave it out)"),
        ('{"type": "array", "items": {"type": "string"}}',
         "the schema must describe an object (type: object)"),
        ('{"properties": {"a": {"type": "string"}}}',
         "the schema must describe an object (type: object)"),
        ('{"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}',
         "$ref '#/$defs/missing' does not resolve (at $.properties.a)"),
        ('{"type": "object", "properties": {"enum": {"$ref": "#/$defs/a~1b"}}, '
         '"$defs": {"a/b": {"type": "string"}, "c": {"$ref": "#/$defs/d"}}}',
         "$ref '#/$defs/d' does not resolve (at $['$defs'].c)"),
        ('{"type": "object", "properties": {"my key": {"$ref": "other.json#/x"}}}',
         "only local $ref values (#/...) are supported, not 'other.json#/x' "
         "(at $.properties['my key'])"),
    ],
)  # fmt: skip
def test_load_schema_errors(tmp_path, text, problem):
    path = write(tmp_path, text)
    assert schema_error(path) == f"{path}: {problem}"


def test_load_schema_file_errors(tmp_path):
    missing = tmp_path / "nope.json"
    assert schema_error(missing) == f"{missing}: no such file"
    assert schema_error(tmp_path) == f"{tmp_path}: is a directory, not a file"
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"type": "object", "title": "\xff"}')
    assert schema_error(bad) == f"{bad}: invalid UTF-8"


def test_load_schema_accepts_refs_bom_and_draft_7(tmp_path):
    text = (
        '\ufeff{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", '
        '"properties": {"item": {"$ref": "#/definitions/item"}, "enum": {"type": "string"}}, '
        '"definitions": {"item": {"type": "integer"}}}'
    )
    schema = load_schema(os.fspath(write(tmp_path, text)))
    assert schema["definitions"] == {"item": {"type": "integer"}}


# --- extract_json -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('  \n{"a": 1}\n\n ', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('```\n{"a": 1}\n```', {"a": 1}),
        ('Here you go:\n```json\n{"a": [1, 2]}\n```\nAnything else?', {"a": [1, 2]}),
        ("```json\n[1, 2]\n```", [1, 2]),
        (
            'Sure! Here it is: {"a": {"b": [1, {"c": null}]}} Hope that helps',
            {"a": {"b": [1, {"c": None}]}},
        ),
        (
            'Result: {"t": "use } and { freely", "q": "say \\"}\\" {"} ok',
            {"t": "use } and { freely", "q": 'say "}" {'},
        ),
        ('Use {name} placeholders, e.g. {"name": "Ann"}', {"name": "Ann"}),
        ('He said "hi" then {"a": "x"} and left}', {"a": "x"}),
        ('[1, {"a": 2}]', [1, {"a": 2}]),
        ('"just a string"', "just a string"),
    ],
)
def test_extract_json(text, value):
    assert extract_json(text) == value


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('First {"a": 1} and then {"b": 2}', "found 2 JSON objects"),
        ('```json\n{"a": 1}\n```\n```json\n{"b": 2}\n```', "found 2 JSON objects"),
        ("I cannot help with that.", "no JSON object found"),
        ("", "the reply is empty"),
        ("   \n", "the reply is empty"),
        ('Here: {"a": 1,}', "invalid JSON: trailing comma is not allowed at line 1"),
        ('Here:\n\n{"a": tru}', "invalid JSON: invalid literal, expected 'true' at line 3"),
        ('{"a": "cut off', "found an incomplete JSON object (a '{' is never closed)"),
        (
            '{"a": 1} and {"b": ',
            "found a JSON object and an incomplete one (a '{' is never closed)",
        ),
    ],
)
def test_extract_json_refuses(text, reason):
    with pytest.raises(ValueError) as info:
        extract_json(text)
    assert str(info.value) == reason


# --- ReplyValidator ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        dumps(VALID),
        f"```json\n{dumps(VALID)}\n```",
        f"Sure! Here is the label:\n{dumps(VALID)}\nLet me know if you need more.",
    ],
)
def test_check_valid(validator, content):
    assert validator.check(content, "stop") == Check(VALID, None, None)
    assert validator.check(content, None).ok


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"sentiment": "happy"}, f"$.sentiment: 'happy' is not one of {SENTIMENTS}"),
        ({"confidence": 1.7}, "$.confidence: 1.7 is greater than the maximum of 1"),
        ({"mentions_competitor": "no"}, "$.mentions_competitor: 'no' is not of type 'boolean'"),
        ({"key_phrases": ["a", 2]}, "$.key_phrases[1]: 2 is not of type 'string'"),
        (
            {"sentiment": ["positive"]},
            "$.sentiment: ['positive'] is not of type 'string'; "
            f"$.sentiment: ['positive'] is not one of {SENTIMENTS}",
        ),
        ({"summary": None}, "$: 'summary' is a required property"),
        ({"extra": 1}, "$: Additional properties are not allowed ('extra' was unexpected)"),
        (
            {"sentiment": "happy", "confidence": -1, "summary": None},
            f"$.sentiment: 'happy' is not one of {SENTIMENTS}; "
            "$.confidence: -1 is less than the minimum of 0; $: 'summary' is a required property",
        ),
    ],
)
def test_check_schema_violations(validator, change, problem):
    reply = {**VALID, **change}
    reply = {k: v for k, v in reply.items() if v is not None}
    assert validator.check(dumps(reply), "stop") == Check(None, problem, "schema")


def test_check_lists_at_most_five_problems():
    names = "abcdefg"
    validator = ReplyValidator(
        {**obj(**{n: {"type": "string"} for n in names}), "required": list(names)}
    )
    problem = validator.check("{}", "stop").problem
    assert problem == (
        "$: 'a' is a required property; $: 'b' is a required property; "
        "$: 'c' is a required property; $: 'd' is a required property; "
        "$: 'e' is a required property; and 2 more"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"sentiment": "positive",', "found an incomplete JSON object (a '{' is never closed)"),
        ("Sorry, I can't label this review.", "no JSON object found"),
        ('{"a": 1} {"b": 2}', "found 2 JSON objects"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ('"positive"', "expected a JSON object, got a string"),
        (None, "the reply is empty"),
        ("", "the reply is empty"),
        (" \n ", "the reply is empty"),
    ],
)
def test_check_not_json(validator, content, problem):
    assert validator.check(content, "stop") == Check(None, problem, "not_json")


def test_check_length_is_a_problem_even_when_the_json_parses(validator):
    for content in ('{"sentiment": "pos', dumps(VALID), None):
        assert validator.check(content, "length") == Check(None, LENGTH_PROBLEM, "length")


def test_json_object_mode():
    validator = ReplyValidator(None)
    anything = {"x": [1, {"y": None}], "z": "w"}
    assert validator.check(f"Here: {dumps(anything)}", "stop") == Check(anything, None, None)
    assert validator.check("{}", "stop") == Check({}, None, None)
    assert validator.check("[{}]", "stop") == Check(
        None, "expected a JSON object, got a list", "not_json"
    )


def test_check_with_a_draft_7_schema_and_unsupported_keywords():
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        **obj(n={"oneOf": [{"type": "integer"}, {"type": "string"}]}, m={"multipleOf": 3}),
    }
    validator = ReplyValidator(schema)
    assert validator.check('{"n": 1, "m": 9}', None).ok
    assert validator.check('{"n": "x", "m": 10}', None) == Check(
        None, "$.m: 10 is not a multiple of 3", "schema"
    )


def test_fast_path_is_used_for_common_schemas(validator):
    assert validator._fast is not None
    assert ReplyValidator(obj(a={"not": {"type": "string"}}))._fast is None


# A schema with every keyword of the fast path: its verdicts must always be jsonschema's (it
# must never call an invalid reply valid), at chosen boundaries and for random replies.
WIDE = {
    "type": "object",
    "properties": {
        "s": {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "^a"},
        "e": {"enum": ["x", "y", 1, None, False]},
        "c": {"const": 2},
        "i": {"type": "integer", "minimum": 0, "exclusiveMaximum": 3},
        "n": {"type": ["number", "null"], "exclusiveMinimum": -1, "maximum": 1.5},
        "b": {"type": "boolean"},
        "l": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "q": {"type": "array", "uniqueItems": True},
        "o": {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"],
              "additionalProperties": False, "maxProperties": 1},
        "m": {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 1},
        "u": {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 2}]},
        "a": {"allOf": [{"type": "number"}, {"minimum": 1}]},
        "r": {"$ref": "#/$defs/node"},
        "f": {"type": "string", "format": "date-time"},
    },
    "required": ["s", "i"],
    "additionalProperties": False,
    "$defs": {
        "node": {"type": "object", "properties": {"v": {"type": "integer"},
                 "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}}},
    },
}  # fmt: skip

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 4)
    | st.sampled_from([0.5, 1.0, 2.0, -0.5, 1.5, 2.5])
    | st.sampled_from(["", "a", "ab", "abcd", "b", "x", "y", "2020-01-01"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["k", "v", "next", "z"]), inner, max_size=2)
    ),
    max_leaves=6,
)
NEAR_MISSES = st.sampled_from(
    ["abcd", "b", "", "z", 3, -1, 1.5, 2.5, True, False, 0, "2", None, ["a", "a"], ["a", 1],
     [], {"k": 1, "z": 2}, {"k": 1.5}, {}, {"v": "x"}, {"next": {"v": 1.5}}, {"v": 1, "z": 0}]
)  # fmt: skip
NODES = st.recursive(
    st.fixed_dictionaries({}, optional={"v": st.integers(0, 2), "next": st.none()}),
    lambda inner: st.fixed_dictionaries({}, optional={"v": st.integers(0, 2), "next": inner}),
    max_leaves=4,
)
VALID_REPLIES = st.fixed_dictionaries(
    {"s": st.sampled_from(["a", "ab", "abc"]), "i": st.sampled_from([0, 1, 2, 2.0])},
    optional={
        "e": st.sampled_from(["x", "y", 1, 1.0, None, False]),
        "c": st.sampled_from([2, 2.0]),
        "n": st.sampled_from([None, 0, 1.5, -0.5, 1]),
        "b": st.booleans(),
        "l": st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2),
        "q": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True),
        "o": st.fixed_dictionaries({"k": st.integers(0, 2)}),
        "m": st.dictionaries(st.sampled_from(["k", "z"]), st.sampled_from(["", "a"]), min_size=1),
        "u": st.sampled_from(["s", 2, 3, 2.0]),
        "a": st.sampled_from([1, 2.5, 1.0]),
        "r": NODES,
        "f": st.sampled_from(["2020-01-01", "not a date"]),
    },
)
CHANGES = st.dictionaries(
    st.sampled_from([*WIDE["properties"], "zz"]), NEAR_MISSES | JSON_VALUES, max_size=2
)
DROPS = st.sets(st.sampled_from(["s", "i"]), max_size=1)
REPLIES = st.builds(
    lambda reply, changes, drops: {k: v for k, v in {**reply, **changes}.items() if k not in drops},
    VALID_REPLIES,
    CHANGES,
    DROPS,
)
WIDE_VALIDATOR = ReplyValidator(WIDE)
WIDE_REFERENCE = Draft202012Validator(WIDE)


BOUNDARIES = [
    "", "a", "abc", "abcd", "ba", "x", "z", "s", "2", "2020-01-01",
    -1, 0, 1, 2, 3, -0.99, 0.5, 1.0, 1.5, 1.51, 2.0, 2.5, 3.0, True, False, None,
    [], ["a"], ["a", "b"], ["a", "b", "c"], ["a", "a"], ["a", 1], [None],
    {}, {"k": 1}, {"k": "a"}, {"k": 1.5}, {"z": 1}, {"k": 1, "z": 2}, {"v": 1}, {"v": "x"},
    {"next": None}, {"next": {"v": 1.5}}, {"next": {"next": {"v": "x"}}}, {"v": 1, "next": {}},
]  # fmt: skip


def test_verdicts_agree_with_jsonschema_at_the_boundaries():
    base = {"s": "ab", "i": 1}
    replies = [{**base, key: value} for key in [*WIDE["properties"], "zz"] for value in BOUNDARIES]
    replies += [{"s": "ab"}, {"i": 1}]
    assert len(replies) == (len(WIDE["properties"]) + 1) * len(BOUNDARIES) + 2
    verdicts = [(r, WIDE_VALIDATOR.check(dumps(r), None).ok) for r in replies]
    assert [(r, ok) for r, ok in verdicts if ok != WIDE_REFERENCE.is_valid(r)] == []
    assert sum(ok for _, ok in verdicts) == 77  # both verdicts are well represented


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REPLIES)
def test_verdicts_agree_with_jsonschema(reply):
    """Random replies near the schema: the same verdict as jsonschema, always."""
    check = WIDE_VALIDATOR.check(dumps(reply), "stop")
    assert check.ok == WIDE_REFERENCE.is_valid(reply)
    assert check.kind in (None, "schema")


def test_wide_schema_uses_the_fast_path():
    assert WIDE_VALIDATOR._fast is not None
    good = {"s": "ab", "i": 2, "l": ["a"], "r": {"v": 1, "next": {"v": 2, "next": None}}}
    assert WIDE_VALIDATOR._fast(good)
    assert WIDE_VALIDATOR.check(dumps({"s": "ab", "i": 2.0}), None).ok  # 2.0 is an integer


# --- reask_message ----------------------------------------------------------------------


def test_reask_message(validator):
    check = validator.check(dumps({**VALID, "confidence": 1.7}), "stop")
    assert validator.reask_message(check) == {
        "role": "user",
        "content": "Your previous reply was not valid: $.confidence: 1.7 is greater than the "
        "maximum of 1. Reply again with only a JSON object that follows the schema.",
    }


def test_reask_message_after_a_cut_off_reply(validator):
    message = validator.reask_message(validator.check('{"a": ', "length"))
    assert message == {
        "role": "user",
        "content": f"Your previous reply was cut off: {LENGTH_PROBLEM}. Reply again with only a "
        "JSON object that follows the schema, and answer more briefly so that it fits.",
    }


def test_reask_message_in_json_object_mode():
    validator = ReplyValidator(None)
    message = validator.reask_message(validator.check("no JSON here", "stop"))
    assert message["content"] == (
        "Your previous reply was not valid: no JSON object found. "
        "Reply again with only a JSON object."
    )
    with pytest.raises(ValueError, match="nothing to ask again"):
        validator.reask_message(validator.check("{}", "stop"))


# --- arrow_fields -----------------------------------------------------------------------


def test_arrow_fields_of_the_sample_schema(review):
    assert arrow_fields(review) == [
        ("sentiment", "sentiment", DICT),
        ("topic", "topic", DICT),
        ("confidence", "confidence", pa.float64()),
        ("mentions_competitor", "mentions_competitor", pa.bool_()),
        ("key_phrases", "key_phrases", pa.list_(pa.string())),
        ("summary", "summary", pa.string()),
    ]


ITEM = {
    "type": "object",
    "properties": {"x": {"type": "integer"}, "y": {"type": "string"}},
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("prop", "arrow"),
    [
        ({"type": "string"}, pa.string()),
        ({"type": "string", "format": "date-time", "maxLength": 30}, pa.string()),
        ({"type": "string", "enum": ["a", "b"]}, DICT),
        ({"enum": ["a", "b"]}, DICT),
        ({"type": ["string", "null"], "enum": ["a", None]}, DICT),
        ({"type": "integer"}, pa.int64()),
        ({"type": "number"}, pa.float64()),
        ({"type": "boolean"}, pa.bool_()),
        ({"type": "array", "items": {"type": "string"}}, pa.list_(pa.string())),
        ({"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
         pa.list_(pa.list_(pa.float64()))),
        ({"type": "array", "items": ITEM},
         pa.list_(pa.struct([("x", pa.int64()), ("y", pa.string())]))),
        ({"type": "object", "properties": {"n": {"type": "number"}, "t": {"type": "array",
          "items": {"type": "string"}}}},
         pa.struct([("n", pa.float64()), ("t", pa.list_(pa.string()))])),
        ({"type": "object", "properties": {"free": {}}}, pa.struct([("free", JSON_TEXT)])),
        ({"type": ["integer", "null"]}, pa.int64()),
        ({"type": ["null", "number"]}, pa.float64()),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, pa.string()),
        ({"oneOf": [{"type": "null"}, ITEM]}, pa.struct([("x", pa.int64()), ("y", pa.string())])),
        ({"anyOf": [{"type": "string", "maxLength": 2}, {"type": "string", "minLength": 9}]},
         pa.string()),
        ({"allOf": [{"type": "boolean"}]}, pa.bool_()),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, JSON_TEXT),
        ({"type": ["string", "integer"]}, JSON_TEXT),
        ({"type": ["string", "integer", "null"]}, JSON_TEXT),
        ({}, JSON_TEXT),
        (True, JSON_TEXT),
        ({"enum": ["a", 1]}, JSON_TEXT),
        ({"type": "null"}, JSON_TEXT),
        ({"type": "object"}, JSON_TEXT),
        ({"type": "object", "properties": {}}, JSON_TEXT),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, JSON_TEXT),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {}},
         JSON_TEXT),
        ({"type": "array"}, JSON_TEXT),
        ({"type": "array", "items": {}}, JSON_TEXT),
        ({"type": "array", "items": {"type": ["string", "number"]}}, JSON_TEXT),
        ({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "string"}},
         JSON_TEXT),
    ],
)  # fmt: skip
def test_arrow_types(prop, arrow):
    assert arrow_fields(obj(p=prop)) == [("p", "p", arrow)]


def test_arrow_fields_follow_refs():
    schema = {
        **obj(
            items={"type": "array", "items": {"$ref": "#/$defs/item"}},
            level={"$ref": "#/definitions/level", "description": "how bad"},
            maybe={"anyOf": [{"$ref": "#/$defs/item"}, {"type": "null"}]},
        ),
        "$defs": {"item": ITEM},
        "definitions": {"level": {"type": "string", "enum": ["low", "high"]}},
    }
    item = pa.struct([("x", pa.int64()), ("y", pa.string())])
    assert arrow_fields(schema) == [
        ("items", "items", pa.list_(item)),
        ("level", "level", DICT),
        ("maybe", "maybe", item),
    ]


def test_recursive_refs_become_json_text():
    schema = {
        **obj(
            tree={"$ref": "#/$defs/node"},
            name={"type": "string"},
            wrapper={"type": "object", "properties": {"root": {"$ref": "#"}}},
        ),
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
            }
        },
    }
    assert arrow_fields(schema) == [
        ("tree", "tree", JSON_TEXT),
        ("name", "name", pa.string()),
        ("wrapper", "wrapper", pa.struct([("root", JSON_TEXT)])),
    ]


def test_arrow_fields_rename_taken_columns():
    schema = obj(id={"type": "string"}, status={"type": "string"}, score={"type": "number"})
    taken = ["id", "model", "status", "out_status"]
    assert arrow_fields(schema, taken) == [
        ("id", "out_id", pa.string()),
        ("status", "out_out_status", pa.string()),
        ("score", "score", pa.float64()),
    ]
    clash = obj(a={"type": "string"}, out_a={"type": "string"})
    assert [c for _, c, _ in arrow_fields(clash, {"a"})] == ["out_a", "out_out_a"]
    assert arrow_fields({"type": "object"}) == []


# --- typed_columns ----------------------------------------------------------------------

TYPED = obj(
    label={"type": "string", "enum": ["spam", "ham"]},
    score={"type": "number"},
    count={"type": ["integer", "null"]},
    flag={"type": "boolean"},
    note={"type": "string"},
    tags={"type": "array", "items": {"type": "string"}},
    spans={"type": "array", "items": ITEM},
    meta={"type": "object", "properties": {"lang": {"type": "string"}, "extra": {}}},
    free={},
)


def test_typed_columns_round_trip(tmp_path):
    fields = arrow_fields(TYPED, taken={"note"})
    values = [
        {
            "label": "spam",
            "score": 0.25,
            "count": 3,
            "flag": True,
            "note": "hi",
            "tags": ["a", "b"],
            "spans": [{"x": 1, "y": "q"}, {"x": 2}],
            "meta": {"lang": "en", "extra": {"k": [1, 2]}},
            "free": {"any": "thing"},
        },
        None,
        {"label": "ham", "score": 1, "count": None, "flag": False, "tags": [], "free": "text"},
        {"free": [1, None]},
    ]
    table = pa.table(typed_columns(values, fields))
    assert table.schema == pa.schema(
        [
            ("label", DICT),
            ("score", pa.float64()),
            ("count", pa.int64()),
            ("flag", pa.bool_()),
            ("out_note", pa.string()),
            ("tags", pa.list_(pa.string())),
            ("spans", pa.list_(pa.struct([("x", pa.int64()), ("y", pa.string())]))),
            ("meta", pa.struct([("lang", pa.string()), ("extra", JSON_TEXT)])),
            ("free", JSON_TEXT),
        ]
    )
    rows = [
        {
            "label": "spam",
            "score": 0.25,
            "count": 3,
            "flag": True,
            "out_note": "hi",
            "tags": ["a", "b"],
            "spans": [{"x": 1, "y": "q"}, {"x": 2, "y": None}],
            "meta": {"lang": "en", "extra": '{"k":[1,2]}'},
            "free": '{"any":"thing"}',
        },
        dict.fromkeys(table.column_names),
        {
            **dict.fromkeys(table.column_names),
            **{"label": "ham", "score": 1.0, "flag": False, "tags": [], "free": '"text"'},
        },
        {**dict.fromkeys(table.column_names), "free": "[1,null]"},
    ]
    assert table.to_pylist() == rows
    assert table.column("score").to_pylist()[2] == 1.0
    assert type(table.column("score").to_pylist()[2]) is float

    path = tmp_path / "out.parquet"
    pq.write_table(table, path)
    assert pq.read_table(path).to_pylist() == rows


def test_values_that_do_not_fit_are_null():
    fields = arrow_fields(TYPED)
    values = [
        {"label": 1, "score": "0.5", "count": "3", "flag": 1, "note": 5, "tags": "a",
         "spans": {"x": 1}, "meta": "en"},
        {"count": 2.0, "score": 7, "tags": ["a", 1], "spans": [{"x": "1", "y": 2}, 3],
         "meta": {"lang": 3}},
        {"count": 2.5, "score": True, "flag": None},
        {"count": 2**63, "score": 10**400, "free": 2**70},
        {"count": True, "free": None},
    ]  # fmt: skip
    columns = {k: v.to_pylist() for k, v in typed_columns(values, fields).items()}
    assert columns == {
        "label": [None] * 5,
        "score": [None, 7.0, None, None, None],
        "count": [None, 2, None, None, None],
        "flag": [None] * 5,
        "note": [None] * 5,
        "tags": [None, ["a", None], None, None, None],
        "spans": [None, [{"x": None, "y": None}, None], None, None, None],
        "meta": [None, {"lang": None, "extra": None}, None, None, None],
        "free": [None, None, None, "1180591620717411303424", None],
    }


def test_typed_columns_of_no_rows():
    fields = arrow_fields(TYPED)
    columns = typed_columns([], fields)
    assert [(name, len(a), a.type) for name, a in columns.items()] == [
        (column, 0, arrow) for _, column, arrow in fields
    ]


def test_parsed_json():
    assert parsed_json({"b": 1, "a": [1.5, "é", None, True]}) == '{"b":1,"a":[1.5,"é",null,true]}'
    assert parsed_json({}) == "{}"
    assert parsed_json(None) is None
