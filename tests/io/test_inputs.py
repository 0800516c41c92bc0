"""Tests of batcher.io.inputs: streaming JSONL/CSV/Parquet rows, their errors, schema inference."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.errors import InputError
from batcher.io.input_schema import SchemaBuilder, compact_json, input_schema, rows_table
from batcher.io.inputs import BATCH_BYTES, RowBatch, read_batches

EXPECTED_TYPES = (
    "(expected .jsonl, .parquet or .csv, also compressed: .jsonl.gz, .csv.zst;"
    " or say --input-format)"
)


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def read_all(path: Path, **kwargs) -> tuple[list[dict], list[int]]:
    rows: list[dict] = []
    lines: list[int] = []
    for batch in read_batches(path, **kwargs):
        rows += batch.rows
        lines += batch.lines
    return rows, lines


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        read_all(path, **kwargs)
    return str(info.value)


# -- JSONL -------------------------------------------------------------------------------


def test_jsonl_rows_lines_and_batches(tmp_path):
    path = write(tmp_path, "in.jsonl", "".join(f'{{"i": {i}}}\n' for i in range(5)))
    batches = list(read_batches(path, batch_rows=2))
    assert [b.start for b in batches] == [0, 2, 4]
    assert [b.rows for b in batches] == [[{"i": 0}, {"i": 1}], [{"i": 2}, {"i": 3}], [{"i": 4}]]
    assert [b.lines for b in batches] == [[1, 2], [3, 4], [5]]
    assert batches[1].where(1) == "line 4"
    assert all(b.kind == "jsonl" and b.bad == {} and b.arrow is None for b in batches)


def test_ndjson_and_uppercase_extension(tmp_path):
    for name in ("in.ndjson", "IN.JSONL"):
        path = write(tmp_path, name, '{"a": 1}\n')
        assert read_all(path) == ([{"a": 1}], [1])


def test_blank_lines_skipped_but_counted_bom_and_crlf(tmp_path):
    data = b'\xef\xbb\xbf{"a": 1}\r\n\r\n   \r\n{"a": "x"}\r\n\n\t\n{"a": null}'
    path = write(tmp_path, "in.jsonl", data)
    assert read_all(path) == ([{"a": 1}, {"a": "x"}, {"a": None}], [1, 4, 7])


def test_limit(tmp_path):
    path = write(tmp_path, "in.jsonl", "".join(f'{{"i": {i}}}\n' for i in range(10)))
    batches = list(read_batches(path, limit=3, batch_rows=2))
    assert [(b.start, b.rows) for b in batches] == [(0, [{"i": 0}, {"i": 1}]), (2, [{"i": 2}])]
    assert read_all(path, limit=4, batch_rows=2)[1] == [1, 2, 3, 4]
    assert read_all(path, limit=100)[1] == list(range(1, 11))


def test_bad_arguments(tmp_path):
    path = write(tmp_path, "in.jsonl", '{"a": 1}\n')
    with pytest.raises(ValueError, match="limit must be at least 1, got 0"):
        list(read_batches(path, limit=0))
    with pytest.raises(ValueError, match="errors must be 'raise' or 'row', got 'skip'"):
        list(read_batches(path, errors="skip"))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"prompt": "x"\n', "invalid JSON: unexpected end of data at column 15"),
        (b'{"a" 1}\n', "invalid JSON: unexpected character, expected ':' after key at column 6"),
        (b'{"a": 1}\x00\n', "invalid JSON: unexpected content after document at column 9"),
        (b"[1, 2]\n", "expected a JSON object, got a list"),
        (b'"text"\n', "expected a JSON object, got a string"),
        (b"3\n", "expected a JSON object, got a number"),
        (b"null\n", "expected a JSON object, got null"),
        (b'{"prompt": "caf\xe9"}\n', "invalid UTF-8"),
        (
            b'{"deep": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
            "invalid JSON: nested too deeply (more than 1024 levels)",
        ),
    ],
)
def test_jsonl_bad_line_messages(tmp_path, data, problem):
    path = write(tmp_path, "in.jsonl", b'{"a": 1}\n\n' + data + b'{"a": 2}\n')
    assert error_of(path, errors="raise") == f"{path}: line 3: {problem}"
    batches = list(read_batches(path))  # errors="row": the bad line comes through as a row
    assert [b.rows for b in batches] == [[{"a": 1}, {}, {"a": 2}]]
    assert batches[0].lines == [1, 3, 4]
    assert batches[0].bad == {1: f"{path}: line 3: {problem}"}


def test_limit_counts_bad_lines_as_rows(tmp_path):
    path = write(tmp_path, "in.jsonl", b'{"a": 1}\nnope\n{"a": 2}\n')
    (batch,) = read_batches(path, limit=2)
    assert batch.rows == [{"a": 1}, {}]
    assert list(batch.bad) == [1]


def test_enormous_line(tmp_path):
    prompt = "x" * 10_000_000
    path = write(tmp_path, "in.jsonl", orjson.dumps({"prompt": prompt}) + b"\n")
    rows, lines = read_all(path)
    assert len(rows[0]["prompt"]) == 10_000_000
    assert lines == [1]


def test_batches_are_bounded_by_bytes_too(tmp_path):
    row = orjson.dumps({"p": "x" * (BATCH_BYTES // 3)}) + b"\n"
    path = write(tmp_path, "in.jsonl", row * 4)
    assert [len(b.rows) for b in read_batches(path)] == [3, 1]


# -- file-level problems -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["in.jsonl", "in.csv", "in.parquet"])
def test_empty_file_has_no_rows(tmp_path, name):
    data = b"" if name != "in.parquet" else parquet_bytes(pa.table({"a": pa.array([], pa.int64())}))
    path = write(tmp_path, name, data)
    assert error_of(path) == f"{path}: no rows"


def test_blank_jsonl_and_header_only_csv_have_no_rows(tmp_path):
    assert error_of(write(tmp_path, "a.jsonl", "\n \n\r\n")).endswith("a.jsonl: no rows")
    assert error_of(write(tmp_path, "a.csv", "id,prompt\n\n")).endswith("a.csv: no rows")


def test_unknown_extension(tmp_path):
    path = write(tmp_path, "in.json", "{}")
    assert error_of(path) == f"{path}: unknown file type '.json' {EXPECTED_TYPES}"
    path = write(tmp_path, "noext", "{}")
    assert error_of(path) == f"{path}: unknown file type '' {EXPECTED_TYPES}"


def test_missing_file_and_directory(tmp_path):
    assert error_of(tmp_path / "gone.jsonl") == f"{tmp_path / 'gone.jsonl'}: no such file"
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    assert error_of(folder) == f"{folder}: is a directory, not a file"


def test_permission_denied(tmp_path, monkeypatch):
    path = write(tmp_path, "in.jsonl", '{"a": 1}\n')

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("batcher.io.inputs.open", denied, raising=False)
    assert error_of(path) == f"{path}: permission denied"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, "in.jsonl", '{"a": 1}\n')
    path.chmod(0)
    assert error_of(path) == f"{path}: permission denied"


def test_path_with_newline_stays_one_line(tmp_path):
    path = write(tmp_path, "a\nb.jsonl", "")
    message = error_of(path)
    assert "\n" not in message
    assert message.endswith("a\\nb.jsonl: no rows")


# -- CSV ---------------------------------------------------------------------------------


def test_csv_values_are_strings_and_short_records_get_none(tmp_path):
    path = write(tmp_path, "in.csv", "id,prompt,n\n1,hello,3\n2,bye\n")
    rows, lines = read_all(path)
    assert rows == [
        {"id": "1", "prompt": "hello", "n": "3"},
        {"id": "2", "prompt": "bye", "n": None},
    ]
    assert lines == [2, 3]
    assert next(read_batches(path)).where(0) == "line 2"


def test_csv_quoted_multiline_fields_keep_line_numbers(tmp_path):
    data = 'id,prompt\n1,"two\nlines"\n\n2,"three\r\nline\nfield"\r\n3,"a ""quote"""\n'
    rows, lines = read_all(write(tmp_path, "in.csv", data))
    assert [r["prompt"] for r in rows] == ["two\nlines", "three\r\nline\nfield", 'a "quote"']
    assert lines == [2, 5, 8]


def test_csv_bom_and_crlf(tmp_path):
    path = write(tmp_path, "in.csv", b"\xef\xbb\xbfid,prompt\r\n1,hi\r\n")
    assert read_all(path) == ([{"id": "1", "prompt": "hi"}], [2])


def test_csv_cr_only_line_endings(tmp_path):
    path = write(tmp_path, "in.csv", b"id,prompt\r1,hi\r2,yo\r")
    assert read_all(path) == ([{"id": "1", "prompt": "hi"}, {"id": "2", "prompt": "yo"}], [2, 3])


def test_csv_extra_fields(tmp_path):
    path = write(tmp_path, "in.csv", "id,prompt\n1,a\n2,b,c\n3,d\n")
    assert (
        error_of(path, errors="raise") == f"{path}: line 3: 3 fields, but the header has 2 columns"
    )
    (batch,) = read_batches(path)
    assert batch.rows == [{"id": "1", "prompt": "a"}, {}, {"id": "3", "prompt": "d"}]
    assert batch.bad == {1: f"{path}: line 3: 3 fields, but the header has 2 columns"}


def test_csv_invalid_utf8_names_its_line(tmp_path):
    path = write(tmp_path, "in.csv", b'id,prompt\n1,ok\n2,"multi\nline \xff"\n3,fine\n')
    assert error_of(path, errors="raise") == f"{path}: line 4: invalid UTF-8"
    (batch,) = read_batches(path)
    assert batch.lines == [2, 3, 5]
    assert batch.bad == {1: f"{path}: line 4: invalid UTF-8"}
    assert batch.rows[2] == {"id": "3", "prompt": "fine"}


def test_csv_nul_byte(tmp_path):
    path = write(tmp_path, "in.csv", b"id,prompt\n1,a\x00b\n")
    assert error_of(path, errors="raise") == f"{path}: line 2: contains a NUL byte"
    path = write(tmp_path, "nul.csv", b"id,prompt\n\x00\n")
    assert error_of(path, errors="raise") == f"{path}: line 2: contains a NUL byte"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"id,,prompt\n1,2,3\n", "line 1: column 2 of the header has no name"),
        (b"id,prompt,id\n1,2,3\n", "line 1: duplicate column name 'id'"),
        (b"id,pr\xffompt\n1,2\n", "line 1: invalid UTF-8"),
        (b"\n\nid,p\x00\n1,2\n", "line 3: contains a NUL byte"),
    ],
)
def test_csv_bad_header(tmp_path, data, problem):
    path = write(tmp_path, "in.csv", data)
    assert error_of(path) == f"{path}: {problem}"


def test_csv_blank_lines_before_header(tmp_path):
    path = write(tmp_path, "in.csv", "\n\nid,prompt\n\n1,a\n")
    assert read_all(path) == ([{"id": "1", "prompt": "a"}], [5])


def test_csv_huge_field(tmp_path):
    path = write(tmp_path, "in.csv", "id,prompt\n1," + "y" * 10_000_000 + "\n")
    rows, _ = read_all(path)
    assert len(rows[0]["prompt"]) == 10_000_000


# -- Parquet -----------------------------------------------------------------------------


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_parquet_round_trip(tmp_path):
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int32()),
            "prompt": ["a", None, "c"],
            "tags": pa.array([["x"], [], None], pa.list_(pa.string())),
            "score": [0.5, 1.0, None],
        }
    )
    path = write(tmp_path, "in.parquet", parquet_bytes(table))
    batches = list(read_batches(path, batch_rows=2))
    assert [b.start for b in batches] == [0, 2]
    assert batches[0].rows == [
        {"id": 1, "prompt": "a", "tags": ["x"], "score": 0.5},
        {"id": 2, "prompt": None, "tags": [], "score": 1.0},
    ]
    assert batches[1].lines == [3]
    assert batches[1].where(0) == "row 3"
    assert batches[1].kind == "parquet"
    schema = input_schema(path)
    assert schema.equals(table.schema)
    joined = pa.concat_tables([rows_table(b, schema) for b in batches])
    assert joined.equals(table)


def test_parquet_limit(tmp_path):
    path = write(tmp_path, "in.parquet", parquet_bytes(pa.table({"i": list(range(10))})))
    batches = list(read_batches(path, limit=5, batch_rows=3))
    assert [b.lines for b in batches] == [[1, 2, 3], [4, 5]]
    assert rows_table(batches[1], input_schema(path)).column("i").to_pylist() == [3, 4]


def test_corrupt_parquet(tmp_path):
    path = write(tmp_path, "in.parquet", b"PAR1 this is not parquet at all")
    message = error_of(path)
    assert message.startswith(f"{path}: not a readable Parquet file: ")
    assert "\n" not in message
    good = parquet_bytes(pa.table({"prompt": ["a" * 100] * 100}))
    path = write(tmp_path, "cut.parquet", good[: len(good) // 2])
    assert error_of(path).startswith(f"{path}: not a readable Parquet file: ")


def test_parquet_duplicate_column_names(tmp_path):
    table = pa.table([pa.array([1]), pa.array([2])], names=["a", "a"])
    path = write(tmp_path, "dup.parquet", parquet_bytes(table))
    assert error_of(path) == f"{path}: duplicate column name 'a'"


# -- schema inference and rows_table -------------------------------------------------------


def test_schema_inference_and_to_arrow(tmp_path):
    rows = [
        {"flag": True, "n": 1, "x": 1, "f": 1.5, "s": "a", "mix": "a", "obj": {"k": [1]}},
        {"flag": False, "n": 2, "x": 2.5, "f": None, "s": None, "mix": 5, "obj": None},
        {"flag": None, "n": None, "x": 3, "nothing": None, "mix": [1, "b"], "big": 2**63},
    ]
    path = write(tmp_path, "in.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in rows) + b"[]\n")
    schema = input_schema(path)
    assert schema == pa.schema(
        [
            ("flag", pa.bool_()),
            ("n", pa.int64()),
            ("x", pa.float64()),
            ("f", pa.float64()),
            ("s", pa.string()),
            ("mix", pa.string()),
            ("obj", pa.string()),
            ("nothing", pa.string()),
            ("big", pa.string()),
        ]
    )
    (batch,) = read_batches(path)
    table = rows_table(batch, schema)
    assert table.schema == schema
    assert table.to_pylist() == [
        {
            "flag": True,
            "n": 1,
            "x": 1.0,
            "f": 1.5,
            "s": "a",
            "mix": "a",
            "obj": '{"k":[1]}',
            "nothing": None,
            "big": None,
        },
        {
            "flag": False,
            "n": 2,
            "x": 2.5,
            "f": None,
            "s": None,
            "mix": "5",
            "obj": None,
            "nothing": None,
            "big": None,
        },
        {
            "flag": None,
            "n": None,
            "x": 3.0,
            "f": None,
            "s": None,
            "mix": '[1,"b"]',
            "obj": None,
            "nothing": None,
            "big": "9223372036854775808",
        },
        dict.fromkeys(schema.names),  # the unreadable line: all null
    ]


def test_bool_is_not_int(tmp_path):
    path = write(tmp_path, "in.jsonl", '{"v": 1}\n{"v": true}\n')
    schema = input_schema(path)
    assert schema == pa.schema([("v", pa.string())])
    assert rows_table(next(read_batches(path)), schema).column("v").to_pylist() == ["1", "true"]


def test_schema_is_the_same_for_every_batch(tmp_path):
    path = write(tmp_path, "in.jsonl", '{"v": 1}\n{"v": null}\n{"v": 2.5}\n')
    schema = input_schema(path)
    tables = [rows_table(b, schema) for b in read_batches(path, batch_rows=1)]
    assert [t.schema for t in tables] == [schema] * 3
    assert pa.concat_tables(tables).column("v").to_pylist() == [1.0, None, 2.5]


def test_csv_schema_is_all_strings(tmp_path):
    path = write(tmp_path, "in.csv", "id,n,flag\n1,2,true\n2\n")
    schema = input_schema(path)
    assert schema == pa.schema([("id", pa.string()), ("n", pa.string()), ("flag", pa.string())])
    assert rows_table(next(read_batches(path)), schema).to_pylist() == [
        {"id": "1", "n": "2", "flag": "true"},
        {"id": "2", "n": None, "flag": None},
    ]


def test_schema_builder_keeps_first_seen_order():
    builder = SchemaBuilder()
    builder.add(RowBatch(0, [{"b": 1}, {"a": "x", "b": 2}], [1, 2]))
    builder.add(RowBatch(2, [{"c": True, "a": "y"}], [3]))
    assert builder.schema().names == ["b", "a", "c"]


def test_compact_json_of_deep_values():
    deep: list = []
    for _ in range(1000):
        deep = [deep, {"k": 1}]
    text = compact_json(deep)
    assert text == "[" * 1000 + "[]" + ',{"k":1}]' * 1000
    assert compact_json({"a": [1, None, "é"], "b": b"x"}) == '{"a":[1,null,"é"],"b":"b\'x\'"}'


# -- never a raw exception ---------------------------------------------------------------

PIECES = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b":",
    b",",
    b"\n",
    b"\r\n",
    b"\r",
    b"\x00",
    b"\xff",
    b"\xef\xbb\xbf",
    b"1",
    b"a",
    b" ",
    b'"prompt"',
    b"true",
    b"null",
    b"\\",
    b"\xc3",
]
GOOD_PARQUET = parquet_bytes(pa.table({"id": [1, 2], "prompt": ["a", "b"]}))


def corrupted_parquet(data: st.DataObject) -> bytes:
    raw = bytearray(GOOD_PARQUET)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    return bytes(raw)


contents = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ext=st.sampled_from([".jsonl", ".csv", ".parquet"]), content=contents, data=st.data())
def test_any_bytes_read_fine_or_raise_input_error(ext, content, data):
    if ext == ".parquet" and data.draw(st.booleans()):
        content = corrupted_parquet(data)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"in{ext}"
        path.write_bytes(content)
        for errors in ("raise", "row"):
            try:
                for batch in read_batches(path, errors=errors, batch_rows=3):
                    assert len(batch.rows) == len(batch.lines)
                    assert all("\n" not in m for m in batch.bad.values())
                    rows_table(batch, SchemaBuilder().schema())
            except InputError as exc:
                assert "\n" not in str(exc)
                assert str(exc).startswith(str(path))
