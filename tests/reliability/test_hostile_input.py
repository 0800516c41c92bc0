"""Promise: bad input gets a clear answer before anything is sent.

Whatever the input file holds (random bytes, NUL bytes, invalid UTF-8, a BOM, CRLF, huge or
deeply nested values, duplicate or odd ids, odd `messages`, template fields reaching for
attributes), `batcher run` either works or exits 2 with exactly one stderr line starting
"Error: ": never a traceback, never an output file or a job directory, nothing sent.

The property tests run the CLI in-process (click's runner, `catch_exceptions=False`: an
unexpected exception fails the test) with `--dry-run`; the example tests run real jobs, and a
few run `python -m batcher` as a subprocess to see the real stderr.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reliability_support import error_lines, like, read_rows, run_batcher

# When a property fails, hypothesis's report imports mypy_extensions, whose DeprecationWarning
# (an error under filterwarnings=error) would replace the falsifying example with an
# INTERNALERROR.
pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)
FUZZ = settings(
    # more for a long local hunt: RELIABILITY_EXAMPLES=2000 pytest tests/reliability
    max_examples=int(os.environ.get("RELIABILITY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DRY_RUN_HEAD = re.compile(r"^(\d+) requests from (\d+) rows to http://127\.0\.0\.1:\d+/v1/")
# what str.format attribute or item access would leak into a prompt
LEAKS = ("<class ", "<built-in", "<method", "method-wrapper", "<bound method")


class Runner:
    """Runs `batcher run FILE -o OUT --base-url MOCK -m m ...` and checks the promise."""

    def __init__(self, run_job, api, folder: Path) -> None:
        self.run_job, self.api, self.folder = run_job, api, folder
        self.out = folder / "out.parquet"
        self.fuzzing = False

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def run(self, path: Path, *extra: str, dry_run: bool = True):
        dry = ("--dry-run",) if dry_run else ()
        result = self.run_job(path, self.out, "-q", *extra, *dry, model="m")
        self.check(result, dry_run)
        return result

    def check(self, result, dry_run: bool) -> None:
        if self.fuzzing:  # pytest --hypothesis-show-statistics shows the mix
            event(f"exit {result.exit_code}")
        if result.exit_code == 0:
            if dry_run:
                head = result.stdout.splitlines()[0]
                assert DRY_RUN_HEAD.match(head), head
                assert not any(leak in result.stdout for leak in LEAKS), result.stdout[:500]
            return
        if result.exit_code == 1 and not dry_run:  # some rows ended in error: written
            assert self.out.exists(), result.stderr
            return
        assert result.exit_code == 2, (result.exit_code, result.stdout[-500:], result.stderr)
        lines = error_lines(result.stderr)
        # fuzzed input: only the message's shape is known here (BAD below checks whole ones)
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        assert "Traceback" not in result.stderr
        assert self.api.log == [], f"{len(self.api.log)} requests sent for bad input"
        assert self.leftovers() == [], f"left behind after exit 2: {self.leftovers()}"

    def leftovers(self) -> list[str]:
        """OUT, its job directory or a temporary OUT (a lock file is neither)."""
        return sorted(
            p.name
            for p in self.folder.iterdir()
            if p.name.startswith("out") or (p.name.startswith(".out") and p.suffix == ".tmp")
        )


@pytest.fixture
def runner(run_job, api, tmp_path):
    folder = tmp_path / "fuzz"
    folder.mkdir()
    fuzz = Runner(run_job, api, folder)
    fuzz.fuzzing = True
    return fuzz


# --- strategies ---------------------------------------------------------------------------

SURROGATES = st.characters(categories=["Cs"])
ODD_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\x00", "\r", "\n", "\ufeff", "\u2028", "{", "}", '"', ","]),
        SURROGATES,
    ),
    max_size=12,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    ODD_TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ODD_TEXT, inner, max_size=3),
    max_leaves=8,
)
IDS = st.one_of(
    st.sampled_from(["a", "b", "1", "", "1.0", "True", "[1]"]),
    st.integers(min_value=0, max_value=2),
    st.sampled_from([1.0, 1.5, -0.0]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=0, max_value=1), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 1), max_size=2),
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "system", "assistant", "developer"]) | JSON_VALUES,
        "content": ODD_TEXT | JSON_VALUES,
        "tool_calls": JSON_VALUES,
        "name": JSON_VALUES,
    },
)
MESSAGES = st.one_of(JSON_VALUES, st.lists(MESSAGE | JSON_VALUES, max_size=3))
ROWS = st.fixed_dictionaries(
    {},
    optional={
        "id": IDS,
        "custom_id": IDS,
        "prompt": ODD_TEXT | JSON_VALUES,
        "messages": MESSAGES,
        "text": JSON_VALUES,
        "model": st.sampled_from(["m", "m2", ""]) | JSON_VALUES,
        "temperature": JSON_VALUES,
        "metadata": JSON_VALUES,
        "body": JSON_VALUES | st.fixed_dictionaries({"messages": MESSAGES}),
        "url": st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]) | JSON_VALUES,
        "status": JSON_VALUES,
    },
)
TEMPLATES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "{0.__class__}",
            "{text.__init__}",
            "{text.__class__.__mro__[1].__subclasses__}",
            "{text[0]}",
            "{text!r}",
            "{text!s:>{width}}",
            "{0}",
            "{}",
            "{text}",
            "{prompt}",
            "{text:>5}",
            "{text:%}",
            "{{text}}",
            "{ text }",
            "{text",
            "}",
            "{id}{model}",
        ]
    ),
    st.text(alphabet="{}!:.[]0_atexr >s", max_size=14),
)
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])


def encode(text: str) -> bytes:
    """UTF-8, lone surrogates written as their (invalid) 3-byte forms."""
    return text.encode("utf-8", "surrogatepass")


@st.composite
def jsonl_files(draw) -> bytes:
    lines = []
    for row in draw(st.lists(ROWS, min_size=1, max_size=5)):
        kind = draw(st.sampled_from(["json", "json", "json", "ascii", "garbage", "blank"]))
        if kind == "garbage":
            lines.append(draw(st.binary(max_size=30)).replace(b"\n", b" "))
        elif kind == "blank":
            lines.append(b"  ")
        else:
            lines.append(encode(json.dumps(row, ensure_ascii=kind == "ascii")))
    end = encode(draw(LINE_ENDS))
    data = end.join(lines) + (end if draw(st.booleans()) else b"")
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + data


def options(draw) -> list[str]:
    extra = []
    template = draw(TEMPLATES)
    if template is not None:
        extra += ["--template", template]
    if draw(st.booleans()):
        extra += ["--system", draw(st.sampled_from(["Be brief.", "{text}", "{0.__doc__}"]))]
    if draw(st.booleans()):
        extra += ["--on-bad-row", "skip"]
    return extra


@st.composite
def jsonl_cases(draw):
    return draw(jsonl_files()), options(draw)


@st.composite
def csv_cases(draw):
    header = draw(st.sampled_from(["id,prompt", "prompt", "id,messages", "text", "id,id", ""]))
    cell = st.text(alphabet=st.sampled_from(list('ab,"\r\n\x00{}[]:\ufeff é')), max_size=12)
    lines = [header, *draw(st.lists(cell, min_size=0, max_size=5))]
    end = draw(LINE_ENDS)
    data = encode(end.join(lines) + end)
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(data)))
        data = (
            data[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80"]))
            + data[at:]
        )
    extra = ["--template", "{text}"] if header == "text" else []
    return data, extra + options(draw)


PARQUET_COLUMNS = {
    "string": (pa.string(), ODD_TEXT.map(lambda s: s.encode("utf-8", "replace").decode())),
    "large_string": (pa.large_string(), st.text(max_size=8)),
    "binary": (pa.binary(), st.binary(max_size=8)),
    "int64": (pa.int64(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    "float64": (pa.float64(), st.floats()),
    "bool": (pa.bool_(), st.booleans()),
    "list": (pa.list_(pa.string()), st.lists(st.text(max_size=4), max_size=3)),
    "messages": (
        pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
        st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system"]) | st.none(), "content": ODD_TEXT}
            ).map(lambda m: {**m, "content": m["content"].encode("utf-8", "replace").decode()}),
            max_size=2,
        ),
    ),
    "struct": (pa.struct([("a", pa.int64())]), st.fixed_dictionaries({"a": st.integers(0, 9)})),
    "decimal": (pa.decimal128(5, 2), st.decimals(min_value=-999, max_value=999, places=2)),
    "timestamp": (pa.timestamp("ms"), st.datetimes()),
    "null": (pa.null(), st.none()),
}


@st.composite
def parquet_cases(draw):
    n = draw(st.integers(0, 4))
    names = draw(
        st.lists(
            st.sampled_from(["id", "prompt", "messages", "text", "model", "temperature", "x"]),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    columns = {}
    for name in names:
        kind = draw(st.sampled_from(sorted(PARQUET_COLUMNS)))
        dtype, values = PARQUET_COLUMNS[kind]
        cells = draw(st.lists(st.none() | values, min_size=n, max_size=n))
        if kind == "decimal":
            cells = [None if c is None else Decimal(c) for c in cells]
        columns[name] = pa.array(cells, type=dtype)
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    data = buf.getvalue()
    if draw(st.integers(0, 5)) == 0:  # damaged: cut short or a byte flipped
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] if draw(st.booleans()) else data[:at] + b"\x00" + data[at + 1 :]
    template = ["--template", "{text}"] if "text" in names and draw(st.booleans()) else []
    return data, template + options(draw)


# --- properties ---------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".csv", ".parquet"]))
def test_random_bytes_never_crash(runner, data, suffix):
    runner.run(runner.write("in" + suffix, data))


@FUZZ
@given(case=jsonl_cases())
def test_hostile_jsonl_works_or_exits_2(runner, case):
    data, extra = case
    runner.run(runner.write("in.jsonl", data), *extra)


@FUZZ
@given(case=csv_cases())
def test_hostile_csv_works_or_exits_2(runner, case):
    data, extra = case
    runner.run(runner.write("in.csv", data), *extra)


@FUZZ
@given(case=parquet_cases())
def test_hostile_parquet_works_or_exits_2(runner, case):
    data, extra = case
    runner.run(runner.write("in.parquet", data), *extra)


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 2))
@given(
    case=st.one_of(
        jsonl_cases().map(lambda c: ("in.jsonl", c)),
        csv_cases().map(lambda c: ("in.csv", c)),
        parquet_cases().map(lambda c: ("in.parquet", c)),
    )
)
def test_hostile_input_that_passes_the_check_runs_to_the_end(runner, case):
    """Input the dry run accepts also survives a real job: sending, durable parts and the
    assembly of OUT with the input's own (odd) columns; one output row per request."""
    name, (data, extra) = case
    path = runner.write(name, data)
    runner.api.reset()
    dry = runner.run(path, *extra)
    if dry.exit_code != 0:
        return
    requests = int(DRY_RUN_HEAD.match(dry.stdout).group(1))
    real = runner.run(path, *extra, dry_run=False)
    assert real.exit_code in (0, 1), (real.exit_code, real.stderr)
    table = pq.read_table(runner.out)
    assert table.num_rows == requests, (table.num_rows, requests)
    assert set(table.column("status").to_pylist()) <= {"ok", "error"}
    event(f"real run: exit {real.exit_code}")
    runner.out.unlink()
    shutil.rmtree(runner.folder / "out.parquet.batcher", ignore_errors=True)


# --- examples -----------------------------------------------------------------------------

DEEP = b"[" * 5000 + b"]" * 5000


def deep_parquet(depth: int = 1000) -> bytes:
    """Lists nested `depth` deep (Parquet readers stop at 100; building a 5,000-deep Arrow
    type alone takes ~5 s)."""
    kind, value = pa.string(), "x"
    for _ in range(depth):
        kind, value = pa.list_(kind), [value]
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["hi"], "deep": pa.array([value], type=kind)}), buf)
    return buf.getvalue()


# name: (data, options, the message after "Error: ", {path} for the input file); each "..."
# stands for words of orjson or pyarrow (see reliability_support.like)
BAD = {
    "nul_in_json_line.jsonl": (
        b'{"prompt": "a\x00b"}\n',
        (),
        "{path}: line 1: invalid JSON: unexpected control character...",
    ),
    "nul_after_json.jsonl": (b'{"prompt": "ab"}\x00\n', (), "{path}: line 1: invalid JSON: ..."),
    "nul.csv": (b"id,prompt\n1,a\x00b\n", (), "{path}: line 2: contains a NUL byte"),
    "invalid_utf8.jsonl": (
        b'{"prompt": "a"}\n{"prompt": "\xff\xfe"}\n',
        (),
        "{path}: line 2: invalid UTF-8",
    ),
    "invalid_utf8.csv": (b"prompt\nok\n\xc3(\n", (), "{path}: line 3: invalid UTF-8"),
    "surrogate.jsonl": (b'{"prompt": "\\ud800"}\n', (), "{path}: line 1: invalid JSON: ..."),
    "deep_5000.jsonl": (
        b'{"prompt": "x", "extra": ' + DEEP + b"}\n",
        (),
        "{path}: line 1: invalid JSON: nested too deeply (more than 1024 levels)",
    ),
    "deep_messages_5000.csv": (
        b'id,messages\n1,"' + DEEP + b'"\n',
        (),
        "{path}: line 2: 'messages' is not valid JSON: ...",
    ),
    "deep_body_key.jsonl": (
        b'{"prompt": "x", "metadata": ' + b"[" * 1000 + b"]" * 1000 + b"}\n",
        ("--body-columns", "metadata"),
        "{path}: line 1: request body is not JSON-serialisable: ...",
    ),
    "duplicate_ids.jsonl": (
        b'{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n',
        (),
        "{path}: line 2: duplicate id 'a' (first at line 1)",
    ),
    "int_and_str_ids.jsonl": (
        b'{"id": 1, "prompt": "x"}\n{"id": "1", "prompt": "y"}\n',
        (),
        "{path}: line 2: duplicate id '1' (first at line 1)",
    ),
    "float_and_int_ids.jsonl": (
        b'{"id": 1.0, "prompt": "x"}\n{"id": 1, "prompt": "y"}\n',
        (),
        "{path}: line 2: duplicate id '1' (first at line 1)",
    ),
    "null_id.jsonl": (b'{"id": null, "prompt": "x"}\n', (), "{path}: line 1: null id"),
    "empty_messages.jsonl": (
        b'{"messages": []}\n',
        (),
        "{path}: line 1: 'messages' is an empty list",
    ),
    "string_messages.jsonl": (
        b'{"messages": "hi"}\n',
        (),
        "{path}: line 1: 'messages' must be a non-empty list, got str",
    ),
    "object_messages.jsonl": (
        b'{"messages": {"role": "user", "content": "hi"}}\n',
        (),
        "{path}: line 1: 'messages' must be a non-empty list, got object",
    ),
    "number_message.jsonl": (
        b'{"messages": [1]}\n',
        (),
        "{path}: line 1: 'messages[0]' must be an object, got int",
    ),
    "empty.jsonl": (b"", (), "{path}: no rows"),
    "only_blank_lines.jsonl": (b"\r\n \n\n", (), "{path}: no rows"),
    "random.parquet": (b"PAR1 not really", (), "{path}: not a readable Parquet file: ..."),
    "deep_1000.parquet": (
        deep_parquet,
        (),
        "{path}: not a readable Parquet file: ...too deeply nested...",
    ),
    "class.jsonl": (
        b'{"text": "hi"}\n',
        ("--template", "{0.__class__}"),
        "template: field '{0.__class__}' is not allowed: only plain column names such as {text}",
    ),
    "init.jsonl": (
        b'{"text": "hi"}\n',
        ("--template", "{text.__init__}"),
        "template: field '{text.__init__}' is not allowed: only plain column names such as {text}",
    ),
    "index.jsonl": (
        b'{"text": "hi"}\n',
        ("--template", "{text[0]}"),
        "template: field '{text[0]}' is not allowed: only plain column names such as {text}",
    ),
    "conversion.jsonl": (
        b'{"text": "hi"}\n',
        ("--template", "{text!r}"),
        "template: field '{text!r}' is not allowed: only plain column names such as {text}",
    ),
    "system_attr.jsonl": (
        b'{"text": "hi"}\n',
        ("--system", "{text.__class__}"),
        "system: field '{text.__class__}' is not allowed: only plain column names such as {text}",
    ),
    "missing_field.jsonl": (
        b'{"text": "hi"}\n',
        ("--template", "{nope}"),
        "{path}: line 1: template field 'nope' names no column (columns: text)",
    ),
}


def assert_error(stderr: str, message: str, path: Path) -> None:
    """stderr is the one line "Error: MESSAGE" (see BAD)."""
    expected = f"Error: {message.replace('{path}', str(path))}\n"
    if "..." in message:
        assert like(stderr, expected), (stderr, expected)
    else:
        assert stderr == expected


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_exits_2_with_one_line_and_sends_nothing(run_job, api, tmp_path, name):
    data, extra, message = BAD[name]
    runner = Runner(run_job, api, tmp_path)
    data = data() if callable(data) else data
    path = runner.write(name, data)
    result = runner.run(path, *extra, dry_run=False)
    assert result.exit_code == 2, result.stderr
    assert_error(result.stderr, message, path)
    assert name in result.stderr or extra, f"the message names no file: {result.stderr}"


def test_errors_in_a_real_process_are_one_line_without_traceback(api, tmp_path):
    """The same promise seen from outside: the real stderr of `python -m batcher run`."""
    for name in ("deep_5000.jsonl", "invalid_utf8.csv", "class.jsonl", "deep_body_key.jsonl"):
        data, extra, message = BAD[name]
        path = tmp_path / name
        path.write_bytes(data)
        out = tmp_path / "out.parquet"
        ran = run_batcher("run", path, "-o", out, "--base-url", api.url, "-m", "m", *extra)
        assert ran.code == 2, ran.stderr
        assert error_lines(ran.stderr) == [ran.stderr.strip()], ran.stderr
        assert_error(ran.stderr, message, path)
        assert ran.stdout == ""
        assert not out.exists() and not (tmp_path / "out.parquet.batcher").exists()
    assert api.log == []


def test_bom_crlf_and_odd_ids_work_and_keep_their_ids(run_job, api, tmp_path):
    rows = [
        {"id": "plain", "prompt": "one"},
        {"id": 7, "prompt": "two"},
        {"id": 2.0, "prompt": "three"},
        {"id": [1, "x"], "prompt": "four"},
        {"id": {"k": 1}, "prompt": "five"},
        {"id": True, "prompt": "six"},
        {"id": "nul\u0000inside", "prompt": "seven \u0000 with an escaped NUL"},
        {"id": "deep", "prompt": "eight", "extra": json.loads("[" * 900 + "]" * 900)},
    ]
    data = b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\r\n" for r in rows)
    runner = Runner(run_job, api, tmp_path)
    result = runner.run(runner.write("in.jsonl", data), dry_run=False)
    assert result.exit_code == 0, result.stderr
    out = read_rows(runner.out)
    assert [r["id"] for r in out] == [
        "plain",
        "7",
        "2",
        '[1,"x"]',
        '{"k":1}',
        "True",
        "nul\x00inside",
        "deep",
    ]
    assert {r["status"] for r in out} == {"ok"}
    assert len(api.log) == len(rows)
    assert out[-1]["extra"] == "[" * 900 + "]" * 900


def test_csv_with_crlf_and_quoted_newlines_works(run_job, api, tmp_path):
    data = b'\xef\xbb\xbfid,prompt\r\n1,"line one\r\nline two"\r\n2,"say ""hi"", ok"\r\n'
    runner = Runner(run_job, api, tmp_path)
    result = runner.run(runner.write("in.csv", data), dry_run=False)
    assert result.exit_code == 0, result.stderr
    out = read_rows(runner.out)
    assert [(r["id"], r["status"]) for r in out] == [("1", "ok"), ("2", "ok")]
    sent = sorted(e.body["messages"][0]["content"] for e in api.log)
    assert sent == ["line one\r\nline two", 'say "hi", ok'], sent


@pytest.mark.parametrize("column", ["temperature", "metadata"])
def test_dry_run_with_a_timestamp_body_key(run_job, api, tmp_path, column):
    """A Parquet body-key column of timestamps puts datetimes in the body: the dry run shows
    them as they would be sent (ISO text). Before a fix during this suite's writing, the
    dry run printed bodies with json.dumps and died with a TypeError traceback."""
    when = datetime(2024, 1, 1, 12, 30)
    value = pa.array([when], pa.timestamp("ms")) if column == "temperature" else [{"at": when}]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["hi"], column: value}), path)
    result = Runner(run_job, api, tmp_path).run(path, "--body-columns", column)
    assert result.exit_code == 0, result.stderr
    assert "2024-01-01T12:30:00" in result.stdout, result.stdout


def write_big(path: Path, prompt: str) -> None:
    if path.suffix == ".jsonl":
        rows = [{"id": "big", "prompt": prompt}, {"id": "small", "prompt": "hi"}]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        path.write_text(f"id,prompt\nbig,{prompt}\nsmall,hi\n")
    else:
        pq.write_table(pa.table({"id": ["big", "small"], "prompt": [prompt, "hi"]}), path)


# Warnings are errors here (pyproject): this also proves no ResourceWarning from aiohttp,
# which warns about request bodies over 1 MiB passed as bytes (it did, and under
# warnings-as-errors the job died with a traceback, until a fix during this suite's writing).
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_10_mb_prompt_works(run_job, api, tmp_path, suffix):
    prompt = "x" * (10 * 1024 * 1024)
    path = tmp_path / f"in{suffix}"
    write_big(path, prompt)
    runner = Runner(run_job, api, tmp_path)
    result = runner.run(path, dry_run=False)
    assert result.exit_code == 0, result.stderr
    out = read_rows(runner.out)
    assert [(r["id"], r["status"]) for r in out] == [("big", "ok"), ("small", "ok")]
    sent = sorted(len(e.body["messages"][0]["content"]) for e in api.log)
    assert sent == [2, len(prompt)], sent
    assert out[0]["prompt_tokens"] == len(prompt) // 4
