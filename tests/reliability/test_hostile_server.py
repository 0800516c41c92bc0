"""Promise: whatever a server answers, each row records an error with a clear `error_type`
(or an ok reply), the other rows are ok, the job goes on, and memory stays bounded.

Broken bodies come from the mock's faults (`[[mock:KIND]]` on every attempt of a row); what
the mock cannot send (mistyped fields, chunked or gzip-encoded giant bodies) comes from a small
aiohttp server in this module. Jobs run as `python -m batcher` subprocesses, reaped with
`os.wait4` so each one's own peak RSS is known.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections import Counter

import pytest
from aiohttp import web
from reliability_support import MB, AppThread, like, read_rows, run_batcher, write_jsonl

RSS_LIMIT_MB = 400
OK_ROWS = [{"id": f"ok{i}", "prompt": f"fine question {i}"} for i in range(10)]


def job_rows(kinds, directive=True) -> list[dict]:
    """OK rows around one row per kind; with `directive`, the mock fails every attempt of it."""
    bad = [
        {"id": k, "prompt": f"{k}: reply badly" + (f" [[mock:{k}]]" if directive else "")}
        for k in kinds
    ]
    return OK_ROWS[:5] + bad + OK_ROWS[5:]


def run_job(url, tmp_path, items, *extra):
    data = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "out.parquet"
    ran = run_batcher(
        "run", data, "-o", out, "--base-url", url, "-m", "m", "-q", *extra, measure_rss=True
    )
    return ran, out


def assert_other_rows_ok(rows_out, kinds) -> None:
    others = [(r["id"], r["status"]) for r in rows_out if r["id"] not in kinds]
    assert others == [(r["id"], "ok") for r in OK_ROWS], others


# --- the mock's broken replies ------------------------------------------------------------

# kind: (error_type, http_status, error_message); "..." stands for orjson's words (see
# reliability_support.like)
BROKEN = {
    "nochoices": ("bad_response", 200, "reply has no choices"),
    "badjson": ("bad_response", 200, "reply is not valid JSON: ..."),
    "empty": ("bad_response", 200, "empty reply body"),
    "truncated": ("bad_response", 200, "reply is not valid JSON: ..."),
    "invalid_utf8": ("bad_response", 200, "reply is not valid JSON: ...not valid UTF-8..."),
    "html": ("server_error", 502, "HTTP 502"),
}


def test_broken_replies_end_in_a_clear_error_and_the_rest_is_ok(api, tmp_path):
    kinds = [*BROKEN, "nousage"]
    ran, out = run_job(api.url, tmp_path, job_rows(kinds), "--max-retries", "1")
    assert ran.code == 1, ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr
    by_id = {r["id"]: r for r in read_rows(out)}
    for kind, (error_type, status, message) in BROKEN.items():
        row = by_id[kind]
        seen = (row["status"], row["error_type"], row["http_status"], row["attempts"])
        assert seen == ("error", error_type, status, 2), (kind, seen, row["error_message"])
        assert like(row["error_message"], message), (kind, row["error_message"])
        assert "<html" not in row["error_message"].lower(), row["error_message"]
    # A reply without `usage` is still a reply: ok, with its content, tokens counted as 0.
    nousage = by_id["nousage"]
    assert nousage["status"] == "ok" and nousage["content"].startswith("Mock reply to: nousage")
    assert nousage["total_tokens"] in (0, None), nousage["total_tokens"]
    assert_other_rows_ok(by_id.values(), kinds)


def test_a_reply_that_drips_times_out_and_the_job_goes_on(api, tmp_path):
    ran, out = run_job(
        api.url, tmp_path, job_rows(["drip"]), "--timeout", "1", "--max-retries", "1"
    )
    assert ran.code == 1, ran.stderr
    rows_out = read_rows(out)
    drip = next(r for r in rows_out if r["id"] == "drip")
    assert (drip["status"], drip["error_type"], drip["attempts"]) == ("error", "timeout", 2), drip
    assert drip["latency_s"] < 1.5, f"an attempt lasted {drip['latency_s']:.2f}s with --timeout 1"
    assert_other_rows_ok(rows_out, ["drip"])
    # two 1 s attempts and one backoff (1-2 s), plus the interpreter's start
    assert ran.seconds < 8, f"the job took {ran.seconds:.1f}s"
    print(f"\ndrip: timeout after {drip['attempts']} attempts, job {ran.seconds:.1f}s")


def test_a_100_mb_reply_is_refused_and_memory_stays_bounded(api, tmp_path):
    ran, out = run_job(api.url, tmp_path, job_rows(["huge"]), "--max-retries", "0")
    assert ran.code == 1, ran.stderr
    rows_out = read_rows(out)
    huge = next(r for r in rows_out if r["id"] == "huge")
    assert (huge["status"], huge["error_type"]) == ("error", "response_too_large"), huge
    assert huge["error_message"] == "reply larger than 32 MiB"  # 1 GiB / -c 32, in flight
    assert_other_rows_ok(rows_out, ["huge"])
    assert ran.max_rss_mb < RSS_LIMIT_MB, f"peak RSS {ran.max_rss_mb:.0f} MB"
    print(f"\nhuge (Content-Length 100 MB): refused, peak RSS {ran.max_rss_mb:.0f} MB")


# --- a server of our own ------------------------------------------------------------------

BASE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}


def altered(change) -> bytes:
    reply = json.loads(json.dumps(BASE))
    out = change(reply)
    return json.dumps(reply if out is None else out).encode()


def set_in(path: str, value):
    def change(reply):
        *parents, last = path.split(".")
        node = reply
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value

    return change


MISTYPED = {  # prompt prefix: (body, expected status, expected error_type)
    "ok": (altered(lambda r: None), "ok", None),
    "choices_string": (altered(set_in("choices", "nope")), "error", "bad_response"),
    "choices_object": (altered(set_in("choices", {"0": {}})), "error", "bad_response"),
    "choice_string": (altered(set_in("choices", ["nope"])), "error", "bad_response"),
    "message_string": (altered(set_in("choices.0.message", "hi")), "error", "bad_response"),
    "message_null": (altered(set_in("choices.0.message", None)), "error", "bad_response"),
    "top_list": (json.dumps([BASE]).encode(), "error", "bad_response"),
    "top_string": (b'"hello"', "error", "bad_response"),
    "top_null": (b"null", "error", "bad_response"),
    "nan": (
        b'{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":NaN}}',
        "error",
        "bad_response",
    ),
    "deep": (b'{"choices":[],"x":' + b"[" * 3000 + b"]" * 3000 + b"}", "error", "bad_response"),
    "error_on_200": (b'{"error":{"message":"boom","code":500}}', "error", "server_error"),
    "content_number": (altered(set_in("choices.0.message.content", 42)), "ok", None),
    "content_object": (altered(set_in("choices.0.message.content", {"a": 1})), "ok", None),
    "content_parts": (altered(set_in("choices.0.message.content", [{"text": "a"}, 5])), "ok", None),
    "finish_number": (altered(set_in("choices.0.finish_reason", 3)), "ok", None),
    "tool_calls_string": (altered(set_in("choices.0.message.tool_calls", "x")), "ok", None),
    "usage_string": (altered(set_in("usage", "lots")), "ok", None),
    "tokens_string": (altered(set_in("usage.prompt_tokens", "12")), "ok", None),
    "tokens_negative": (altered(set_in("usage.prompt_tokens", -5)), "ok", None),
    "tokens_bool": (altered(set_in("usage.total_tokens", True)), "ok", None),
    "cost_string": (altered(set_in("usage.cost", "0.1")), "ok", None),
    "created_string": (altered(set_in("created", "yesterday")), "ok", None),
    "created_negative": (altered(set_in("created", -1e15)), "ok", None),
    "id_number": (altered(set_in("id", 5)), "ok", None),
    "model_list": (altered(set_in("model", [1, 2])), "ok", None),
    "search_odd": (altered(set_in("search_results", {"a": [1, None]})), "ok", None),
}
NONSENSE = {  # usage that is not a count: unknown (null), with a warning
    "usage_string": {"prompt_tokens", "total_tokens"},
    "tokens_string": {"prompt_tokens"},
    "tokens_negative": {"prompt_tokens"},
    "tokens_bool": set(),  # total_tokens: true is no count, but prompt + completion say it
}
OVERFLOW = {  # token counts no int64 column can hold
    "tokens_1e300": altered(set_in("usage.prompt_tokens", 1e300)),
    "tokens_2_to_64": altered(set_in("usage.prompt_tokens", 2**64 - 1)),
    "tokens_sum_past_int64": altered(
        lambda r: r.update(usage={"prompt_tokens": 2**63 - 1, "completion_tokens": 2**63 - 1})
    ),
}
GIANT_MB = 100
BOMB_MB = 80  # decompressed; over the 64 MiB cap, ~80 KB on the wire


@functools.lru_cache(maxsize=1)
def gzip_bomb(megabytes: int = BOMB_MB) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    parts = [packer.compress(b'{"choices":[{"message":{"content":"')]
    chunk = b"x" * MB
    parts += [packer.compress(chunk) for _ in range(megabytes)]
    parts += [packer.compress(b'"}}]}'), packer.flush()]
    return b"".join(parts)


async def hostile(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    name = body["messages"][-1]["content"].split(":")[0]
    if name == "giant_chunked":  # 100 MB, no Content-Length
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"choices":[{"message":{"content":"')
        try:
            for _ in range(GIANT_MB):
                await response.write(b"x" * MB)
            await response.write(b'"}}]}')
        except ConnectionError:
            pass
        return response
    if name == "gzip_bomb":
        return web.Response(
            body=gzip_bomb(),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    data = OVERFLOW[name] if name in OVERFLOW else MISTYPED.get(name, MISTYPED["ok"])[0]
    return web.Response(body=data, headers={"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def odd_server():
    with AppThread({"/v1/chat/completions": hostile}) as server:
        yield server


def test_mistyped_fields_end_in_a_clear_error_or_an_ok_row(odd_server, tmp_path):
    kinds = [k for k in MISTYPED if k != "ok"]
    ran, out = run_job(
        odd_server.url + "/v1", tmp_path, job_rows(kinds, directive=False), "--max-retries", "0"
    )
    assert ran.code == 1, ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr
    by_id = {r["id"]: r for r in read_rows(out)}
    wrong = {}
    for kind in kinds:
        row = by_id[kind]
        _, status, error_type = MISTYPED[kind]
        if (row["status"], row["error_type"]) != (status, error_type):
            wrong[kind] = (row["status"], row["error_type"], row["error_message"])
        elif status == "ok":
            assert isinstance(row["content"], str), (kind, row["content"])
            unknown = {name for name in ("prompt_tokens", "total_tokens") if row[name] is None}
            assert unknown == NONSENSE.get(kind, set()), (kind, row)  # never a made-up 0
            assert all(row[n] is None or row[n] >= 0 for n in ("prompt_tokens", "total_tokens"))
    assert not wrong, wrong
    assert_other_rows_ok(by_id.values(), kinds)
    print(f"\nmistyped: {dict(Counter((r['status'], r['error_type']) for r in by_id.values()))}")


@pytest.mark.parametrize("kind", sorted(OVERFLOW))
def test_token_counts_beyond_int64_do_not_crash_the_job(odd_server, tmp_path, kind):
    """Until a fix during this suite's writing, such a count was kept as is and the part write
    died with OverflowError ('Python int too large to convert to C long'): a traceback, no
    OUT, the other results of that flush lost, and every rerun crashing the same way."""
    ran, out = run_job(
        odd_server.url + "/v1", tmp_path, job_rows([kind], directive=False), "--max-retries", "0"
    )
    assert "Traceback" not in ran.stderr, ran.stderr[-800:]
    assert ran.code in (0, 1), ran.stderr[-800:]
    rows_out = read_rows(out)
    assert_other_rows_ok(rows_out, [kind])
    row = next(r for r in rows_out if r["id"] == kind)
    assert row["status"] in ("ok", "error"), row
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert row[name] is None or 0 <= row[name] < 2**63, (name, row[name])


def test_a_100_mb_chunked_reply_without_length_is_refused(odd_server, tmp_path):
    ran, out = run_job(
        odd_server.url + "/v1",
        tmp_path,
        job_rows(["giant_chunked"], directive=False),
        "--max-retries",
        "0",
    )
    assert ran.code == 1, ran.stderr
    rows_out = read_rows(out)
    giant = next(r for r in rows_out if r["id"] == "giant_chunked")
    assert (giant["status"], giant["error_type"]) == ("error", "response_too_large"), giant
    assert_other_rows_ok(rows_out, ["giant_chunked"])
    assert ran.max_rss_mb < RSS_LIMIT_MB, f"peak RSS {ran.max_rss_mb:.0f} MB"
    print(f"\nchunked 100 MB: refused, peak RSS {ran.max_rss_mb:.0f} MB")


def test_a_gzip_bomb_is_refused_and_memory_stays_bounded(odd_server, tmp_path):
    """Until a fix during this suite's writing, the cap checked Content-Length (the
    compressed size) and aiohttp inflated the whole body: this reply ended ok with 80 MB of
    content at ~640 MB peak RSS (400 MB inflated: 3.7 GB)."""
    ran, out = run_job(
        odd_server.url + "/v1",
        tmp_path,
        job_rows(["gzip_bomb"], directive=False),
        "--max-retries",
        "0",
    )
    rows_out = read_rows(out)
    bomb = next(r for r in rows_out if r["id"] == "gzip_bomb")
    print(f"\ngzip bomb: {bomb['status']} {bomb['error_type']}, peak RSS {ran.max_rss_mb:.0f} MB")
    assert (bomb["status"], bomb["error_type"]) == ("error", "response_too_large"), (
        bomb["status"],
        len(bomb["content"] or ""),
    )
    assert ran.max_rss_mb < RSS_LIMIT_MB, f"peak RSS {ran.max_rss_mb:.0f} MB"
