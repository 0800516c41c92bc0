"""Promise: the API key leaves batcher only inside the headers of a request.

Every command (`run`, `run --dry-run`, `estimate`, `status`, `cost`, `report`), successful
and failing, with `-v` where it exists, is run with a known key (from `--api-key-env` and from
`--api-key-file`); stdout, stderr and every file under the test's folder (Parquet files also
decoded: rows and key-value metadata; the kept job directory; the response cache's SQLite
rows) are searched for any 12-character piece of the key's random part. Errors and logs never
show exception reprs or request headers; redirects are never followed with the key; a plain
http base URL to a host other than loopback prints a warning.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from reliability_support import (
    AppThread,
    Ran,
    clean_env,
    like,
    read_rows,
    rows,
    run_batcher,
    write_jsonl,
)

SECRET = secrets.token_hex(16)
KEY = f"sk-reliability-{SECRET}"
KEY_ENV = "RELIABILITY_TEST_KEY"
PIECES = [SECRET[i : i + 12].encode() for i in range(len(SECRET) - 11)]
# exception reprs and header names that must not reach error messages or logs
NOT_IN_ERRORS = (
    "ClientResponseError(",
    "ClientConnectorError(",
    "ServerDisconnectedError(",
    "ClientOSError(",
    "Authorization",
    "x-api-key:",
    "CIMultiDict",
)


def leaked(data: bytes) -> bool:
    return any(piece in data for piece in PIECES)


def env_with_key(key: str = KEY) -> dict[str, str]:
    return clean_env(**{KEY_ENV: key})


@pytest.fixture
def key_file(tmp_path_factory) -> Path:
    """The key in a file outside the folder that is searched."""
    path = tmp_path_factory.mktemp("keys") / "api.key"
    path.write_text(KEY + "\n")
    return path


def check_ran(ran: Ran, what: str) -> None:
    assert not leaked(ran.out), f"{what}: the key is on stdout"
    assert not leaked(ran.err), f"{what}: the key is on stderr"
    for word in NOT_IN_ERRORS:
        assert word not in ran.stderr, f"{what}: {word!r} on stderr: {ran.stderr[-500:]}"
    assert "Traceback" not in ran.stderr, f"{what}: {ran.stderr[-800:]}"


def check_files(folder: Path) -> int:
    """Search every file under `folder`; returns how many were searched."""
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        count += 1
        assert not leaked(path.read_bytes()), f"the key is in {path}"
        if path.suffix == ".parquet" and not path.name.startswith("."):
            check_parquet(path)
        if path.name.endswith(".sqlite3"):
            check_sqlite(path)
    return count


def check_parquet(path: Path) -> None:
    metadata = pq.read_metadata(path).metadata or {}
    assert not leaked(b"".join(k + v for k, v in metadata.items())), f"key in {path} metadata"
    table = pq.read_table(path)
    assert not leaked(json.dumps(table.to_pylist(), default=str).encode()), f"key in {path} rows"
    if "error_message" in table.column_names:
        for message in table.column("error_message").to_pylist():
            for word in NOT_IN_ERRORS:
                assert word not in (message or ""), f"{path}: {word!r} in {message!r}"


def check_sqlite(path: Path) -> None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for (name,) in db.execute("select name from sqlite_master where type = 'table'"):
            for row in db.execute(f"select * from {name}"):  # our own table names
                assert not leaked(repr(row).encode()), f"key in {path} table {name}"
    finally:
        db.close()


# --- every command, working ---------------------------------------------------------------


def test_every_command_with_the_key_leaks_nothing(make_api, tmp_path, key_file):
    api = make_api(api_key=KEY)  # only the right key gets answers
    items = rows(6)
    items[2]["prompt"] += " [[mock:500x1]]"  # one retry, logged at -v if anything is
    data = write_jsonl(tmp_path / "in.jsonl", items)
    cache = tmp_path / "cache"
    out1, out2 = tmp_path / "out1.parquet", tmp_path / "out2.parquet"
    url = ("--base-url", api.url)
    env_key = ("--api-key-env", KEY_ENV)
    file_key = ("--api-key-file", key_file)
    runs = {
        "run (env key)": ("run", data, "-o", out1, *url, *env_key, "-m", "mock-1", "-v",
                          "--keep-job-dir", "--cache", cache),
        "run (key file, x-api-key, cache)": ("run", data, "-o", out2, *url, *file_key,
                                             "--auth-header", "x-api-key", "-m", "mock-1",
                                             "-m", "mock-2", "-v", "--cache", cache),
        "run --dry-run (env key)": ("run", data, "-o", tmp_path / "d.parquet", *url, *env_key,
                                    "-m", "mock-1", "--dry-run", "-v"),
        "run --dry-run (key file)": ("run", data, "-o", tmp_path / "d.parquet", *url, *file_key,
                                     "--auth-header", "x-api-key", "-m", "mock-1", "--dry-run"),
        "estimate": ("estimate", data, *url, *env_key, "-m", "mock-1"),
        "estimate --json": ("estimate", data, *url, *file_key, "-m", "mock-1", "--json"),
        "status OUT": ("status", out1),
        "status JOB_DIR --json": ("status", tmp_path / "out1.parquet.batcher", "--json"),
        "cost": ("cost", out2),
        "cost --json": ("cost", out2, "--json"),
        "report": ("report", out1),
        "report --json --html": ("report", out2, "--json", "--html", tmp_path / "r.html"),
    }  # fmt: skip
    for what, args in runs.items():
        ran = run_batcher(*args, env=env_with_key())
        assert ran.code == 0, f"{what}: {ran.stderr}"
        check_ran(ran, what)
        if "--dry-run" in args:
            assert "***" in ran.stdout, f"{what}: no redacted header shown: {ran.stdout[:300]}"
    # the key was really in play: the mock answers nothing without it
    assert {(e.status, e.auth) for e in api.log} >= {(200, "bearer"), (200, "x-api-key")}
    assert all(e.status in (200, 500) for e in api.log), {e.status for e in api.log}
    assert [r["cached"] for r in read_rows(out2)] == [True, False] * 6
    assert (tmp_path / "out1.parquet.batcher").is_dir()
    searched = check_files(tmp_path)
    assert searched >= 8, f"only {searched} files searched"
    print(f"\n{len(runs)} commands, {searched} files searched, {len(api.log)} requests sent")


# --- failing ------------------------------------------------------------------------------


async def echo_key(request: web.Request) -> web.Response:
    """A server that puts the credential it got into its 401 message."""
    got = request.headers.get("Authorization") or request.headers.get("x-api-key") or ""
    message = f"Incorrect API key provided: {got}. You can find your API key at example.com."
    return web.json_response({"error": {"message": message, "code": "invalid_api_key"}}, status=401)


def test_failing_commands_leak_nothing(make_api, tmp_path, key_file):
    wrong_key_api = make_api(api_key="the-server-wants-another-key")
    data = write_jsonl(tmp_path / "in.jsonl", rows(30))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "fine"}\n{"prompt": \n')
    common = ("--api-key-env", KEY_ENV, "-m", "m", "-v", "--max-retries", "0")
    with AppThread({"/v1/chat/completions": echo_key}) as echo:
        runs = {
            "401 from the mock": (
                1, ("run", data, "-o", tmp_path / "o401.parquet", "--base-url",
                    wrong_key_api.url, *common),
            ),
            "401 echoing the key (x-api-key)": (
                1, ("run", data, "-o", tmp_path / "echo.parquet", "--base-url",
                    echo.url + "/v1", "--auth-header", "x-api-key", *common),
            ),
            "401 echoing the key (bearer)": (
                1, ("run", data, "-o", tmp_path / "echo2.parquet", "--base-url",
                    echo.url + "/v1", *common, "--limit", "3"),
            ),
            "connection refused": (
                1, ("run", data, "-o", tmp_path / "refused.parquet", "--base-url",
                    "http://127.0.0.1:9/v1", *common, "--limit", "3"),
            ),
            "bad input file": (
                2, ("run", bad, "-o", tmp_path / "bad.parquet", "--base-url",
                    wrong_key_api.url, *common),
            ),
            "bad input file, estimate": (
                2, ("estimate", bad, "--base-url", wrong_key_api.url, "--api-key-env",
                    KEY_ENV, "-m", "m"),
            ),
            "unreadable key file": (
                2, ("run", data, "-o", tmp_path / "nokey.parquet", "--base-url",
                    wrong_key_api.url, "--api-key-file", tmp_path / "missing.key", "-m", "m"),
            ),
            "status of nothing": (2, ("status", tmp_path / "nothing.parquet")),
        }  # fmt: skip
        results = {}
        for what, (code, args) in runs.items():
            ran = run_batcher(*args, env=env_with_key())
            assert ran.code == code, f"{what}: exit {ran.code}: {ran.stderr}"
            check_ran(ran, what)
            results[what] = ran
    one_line = {  # "..." stands for orjson's words (see reliability_support.like)
        "bad input file": f"Error: {bad}: line 2: invalid JSON: ...",
        "unreadable key file": (f"Error: --api-key-file {tmp_path / 'missing.key'}: no such file"),
        "status of nothing": (
            f"Error: {tmp_path / 'nothing.parquet'}: no such output or job directory"
        ),
    }
    for what, message in one_line.items():
        assert like(results[what].stderr, f"{message}\n"), (what, results[what].stderr)
    stopped = results["401 from the mock"].stderr.splitlines()
    assert (
        "stopped early: 20 requests in a row failed with HTTP 401 auth_error"
        " (Incorrect API key provided)"
    ) in stopped, stopped
    assert all(e.status == 401 for e in wrong_key_api.log)
    echoed = read_rows(tmp_path / "echo.parquet")[0]["error_message"]
    assert echoed == "Incorrect API key provided: ***. You can find your API key at example.com."
    searched = check_files(tmp_path)
    print(f"\n{len(runs)} failing commands, {searched} files searched")


async def echo_key_late(request: web.Request) -> web.Response:
    """The key echoed at the end of a long message: it straddles a 500-character cut."""
    got = request.headers.get("x-api-key", "")
    message = "Your key is invalid: ".ljust(475, ".") + got  # 25 of its characters fit
    return web.json_response({"error": {"message": message, "code": "invalid_api_key"}}, status=401)


def test_a_key_echoed_across_the_message_cut_is_scrubbed(tmp_path):
    """Until a fix during this suite's writing, the message was cut to 500 characters before
    the key was replaced, leaving 'sk-reliability-' and 10 secret characters in the output."""
    data = write_jsonl(tmp_path / "in.jsonl", rows(1))
    out = tmp_path / "out.parquet"
    with AppThread({"/v1/chat/completions": echo_key_late}) as echo:
        ran = run_batcher(
            "run", data, "-o", out, "--base-url", echo.url + "/v1", "--api-key-env", KEY_ENV,
            "--auth-header", "x-api-key", "-m", "m", "--max-retries", "0",
            env=env_with_key(),
        )  # fmt: skip
    assert ran.code == 1, ran.stderr
    message = read_rows(out)[0]["error_message"]
    assert not any(SECRET[:n] in message for n in range(4, len(SECRET))), message[-40:]


# --- redirects ----------------------------------------------------------------------------


class Redirects:
    """`first` answers 301/302/303/307/308 (from the prompt) pointing at `second`, which
    records the headers of anything that reaches it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.second_url = ""

    async def redirect(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = int(body["messages"][-1]["content"].split()[0])
        location = f"{self.second_url}/v1/chat/completions"
        return web.Response(status=status, headers={"Location": location})

    async def record(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        return web.json_response({"choices": [{"message": {"content": "followed"}}]})


@pytest.mark.parametrize("auth", ["bearer", "x-api-key"])
def test_redirects_are_never_followed_with_the_key(tmp_path, auth):
    codes = [301, 302, 303, 307, 308]
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": str(c), "prompt": f"{c} go"} for c in codes])
    out = tmp_path / "out.parquet"
    servers = Redirects()
    route = "/v1/chat/completions"
    with (
        AppThread({route: servers.record}) as second,
        AppThread({route: servers.redirect}) as first,
    ):
        servers.second_url = second.url
        ran = run_batcher(
            "run", data, "-o", out, "--base-url", first.url + "/v1", "--api-key-env", KEY_ENV,
            "--auth-header", auth, "-m", "m", "-v", env=env_with_key(),
        )  # fmt: skip
    assert servers.seen == [], f"the second server got {len(servers.seen)} requests"
    assert ran.code == 1, ran.stderr
    check_ran(ran, f"redirect ({auth})")
    got = [(r["id"], r["status"], r["error_type"], r["http_status"]) for r in read_rows(out)]
    assert got == [(str(c), "error", "http_error", c) for c in codes], got
    for row in read_rows(out):
        assert row["error_message"] == (
            f"redirect to {servers.second_url}{route} not followed (check --base-url)"
        )
    check_files(tmp_path)


# --- plain http ---------------------------------------------------------------------------

WARNING = "sending over plain http to {host}: the API key crosses the network unencrypted"


@pytest.mark.parametrize(
    "base_url, host",
    [
        ("http://10.255.255.1/v1", "10.255.255.1"),
        ("http://api.example.com:8080/v1", "api.example.com"),
        ("http://localhost.example.com/v1", "localhost.example.com"),
        ("http://127.0.0.1:8000/v1", None),
        ("http://127.8.9.10/v1", None),
        ("http://localhost:8000/v1", None),
        ("http://[::1]:8000/v1", None),
        ("https://10.255.255.1/v1", None),
    ],
)
def test_plain_http_to_a_host_other_than_loopback_warns(cli, tmp_path, base_url, host):
    data = write_jsonl(tmp_path / "in.jsonl", rows(2))
    result = cli(
        "run", data, "-o", tmp_path / "o.parquet", "--base-url", base_url,
        "--api-key-env", KEY_ENV, "-m", "m", "--dry-run", env=env_with_key(),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "2 requests from 2 rows" in result.stdout
    if host is None:
        assert result.stderr == ""
    else:
        assert result.stderr == f"WARNING batcher.providers: {WARNING.format(host=host)}\n"
    assert not leaked(result.stdout_bytes) and not leaked(result.stderr_bytes)
    assert not (tmp_path / "o.parquet").exists()


def test_plain_http_warning_without_run_logging(tmp_path):
    """`estimate` sets up no logging of its own: the warning still reaches stderr."""
    data = write_jsonl(tmp_path / "in.jsonl", rows(2))
    ran = run_batcher(
        "estimate", data, "--base-url", "http://10.255.255.1/v1", "--api-key-env", KEY_ENV,
        "-m", "m", env=env_with_key(),
    )  # fmt: skip
    assert ran.code == 0, ran.stderr
    assert ran.stderr == f"{WARNING.format(host='10.255.255.1')}\n"
    check_ran(ran, "estimate over plain http")


# --- a key that cannot be sent --------------------------------------------------------------


def test_a_key_that_cannot_be_sent_is_refused_or_stops_the_job(api, tmp_path):
    key_file = tmp_path / "two.key"
    key_file.write_text(f"{KEY}\nsk-reliability-second-line\n")
    n, concurrency = 60, 4
    data = write_jsonl(tmp_path / "in.jsonl", rows(n))
    out = tmp_path / "out.parquet"
    ran = run_batcher(
        "run", data, "-o", out, "--base-url", api.url, "--api-key-file", key_file, "-m", "m",
        "-c", concurrency, "--max-retries", "0", env=clean_env(),
    )  # fmt: skip
    check_ran(ran, "a key with a line break")
    assert api.log == []
    if ran.code == 2:  # refused before sending: one clear line
        assert ran.stderr == (
            f"Error: --api-key-file {key_file}: "
            "the key holds a line break, space or control character\n"
        )
        return
    assert ran.code == 1, ran.stderr
    # not reached while batcher refuses such a key (above), so its stop reason is unknown
    assert "stopped early" in ran.stderr, ran.stderr
    kinds = [r["error_type"] for r in read_rows(out)]
    tried = sum(1 for k in kinds if k != "not_sent")
    assert tried <= 20 + concurrency, f"{tried} of {n} rows tried"
