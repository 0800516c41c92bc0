"""`--engine ray` and `batcher.ray` on a local Ray bound to 127.0.0.1: one Ray for the module
(its start-up is seconds), the CLI in this process joining it, a subprocess driver for
kill -9. Skip them with `pytest -m "not ray"`; CI runs them."""

from __future__ import annotations

import bisect
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from ray_helpers import run_on_ray

from batcher.io import output
from batcher.io.jobdir import JobDir
from tests.cli.test_costs_cli import assert_stopped_within_budget
from tests.cli.test_costs_cli import setup as costs_setup

pytestmark = pytest.mark.ray

LOOPBACK = ("0100007F", "0000000000000000FFFF00000100007F")  # 127.0.0.1 in /proc/net/tcp{,6}
TIMINGS = {"latency_s", "created", "response_id"}  # what two runs of one job may differ in


def rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"question number {i}"} for i in range(n)]


def table(path: Path):
    return pq.read_table(path)


def test_the_ray_engine_writes_what_the_local_engine_writes(
    cluster, cli, make_api, tmp_path, monkeypatch
):
    """Row for row, the local engine's file and Ray's dataset folder (files of 100 rows)."""
    monkeypatch.setattr(output, "DATASET_FILE_ROWS", 100)
    api = make_api()
    data = write_jsonl(tmp_path / "in.jsonl", rows(120))
    args = ("--base-url", api.url, "-m", "a", "-m", "b", "--template", "Q: {prompt}", "-q")
    local = cli("run", data, "-o", tmp_path / "local.parquet", *args)
    on_ray = cli("run", data, "-o", tmp_path / "ray", *args, "--engine", "ray")
    assert (local.exit_code, on_ray.exit_code) == (0, 0)
    assert on_ray.stdout == f"{tmp_path / 'ray'}\n"
    assert len(output.files(tmp_path / "ray")) == 3
    a, b = table(tmp_path / "local.parquet"), output.read_output(tmp_path / "ray")
    assert a.schema.remove_metadata() == b.schema.remove_metadata()
    assert a.num_rows == b.num_rows == 240
    names = [n for n in a.column_names if n not in TIMINGS]
    assert a.select(names).to_pylist() == b.select(names).to_pylist()
    assert len(api.log) == 480  # every request once per run


def test_faults_and_a_rate_limit_through_the_cli(cluster, cli, make_api, tmp_path):
    api = make_api(fail_rate=0.15, faults=("429", "500", "503", "drop"), rpm=1200, rpm_window=1.0)
    data = write_jsonl(tmp_path / "in.jsonl", rows(200))
    out = tmp_path / "out.parquet"
    ran = run_on_ray(
        cli,
        data,
        out,
        api,
        "--actors",
        "2",
        "-c",
        "8",
        "--rpm",
        "1200",
        "-q",
    )
    assert ran.exit_code == 0, ran.stderr
    result = table(out)
    assert result.column("id").to_pylist() == [f"r{i}" for i in range(200)]
    assert set(result.column("status").to_pylist()) == {"ok"}
    attempts = sum(result.column("attempts").to_pylist())
    assert attempts == len(api.log)  # every attempt counted on its row
    answered = [e.t for e in api.log if e.fault is None]
    assert max_in_a_second(answered) <= 20  # 1200 a minute, across both actors


def test_two_actors_hold_one_rpm_on_a_server_enforcing_it(cluster, cli, make_api, tmp_path):
    api = make_api(latency=0.05, rpm=1800, rpm_window=1.0)
    data = write_jsonl(tmp_path / "in.jsonl", rows(300))
    out = tmp_path / "out.parquet"
    ran = run_on_ray(
        cli,
        data,
        out,
        api,
        "--actors",
        "2",
        "-c",
        "16",
        "--rpm",
        "1800",
        "-q",
    )
    assert ran.exit_code == 0, ran.stderr
    times = sorted(e.t for e in api.log)
    # The server holds 30 a second over any second, a request beyond it a 429: at most 1%
    # (one late permit on a loaded machine can meet the next in the same second).
    throttled = sum(e.status == 429 for e in api.log)
    assert throttled <= 3
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 0.9 * 30 <= rate <= 30


def test_process_adds_the_result_columns_to_any_dataset_lazily(cluster, make_api):
    import ray

    import batcher.ray

    api = make_api(fail_rate=0.2, faults=("500", "503"))
    items = [{"prompt": "one"}, {"prompt": "two"}, {"prompt": "one"}, {"prompt": None}]
    ds = batcher.ray.process(ray.data.from_items(items), base_url=api.url, models=["a"])
    assert len(api.log) == 0  # nothing runs before the Dataset is read
    out = sorted(ds.take_all(), key=lambda r: (r["prompt"] is None, r["prompt"] or ""))
    assert [(r["prompt"], r["model"], r["status"]) for r in out] == [
        ("one", "a", "ok"),
        ("one", "a", "ok"),
        ("two", "a", "ok"),
        (None, "a", "error"),
    ]
    assert out[0]["id"] == out[1]["id"] != out[2]["id"]  # the row's content names it
    assert out[0]["id"].startswith("row-") and len(out[0]["id"]) == 20
    assert out[3]["error_type"] == "bad_input"
    assert out[3]["error_message"].endswith("'prompt' must be a string, got null")
    assert len(api.log) >= 3 and out[0]["attempts"] >= 1
    assert out[0]["content"] and out[0]["total_tokens"] > 0


def test_a_bad_key_stops_every_actor_after_a_few_requests(cluster, cli, make_api, tmp_path):
    # 100 rows: the stop comes with few requests left, and every call must still return
    api = make_api(api_key="right-key-123")
    data = write_jsonl(tmp_path / "in.jsonl", rows(100))
    out = tmp_path / "out.parquet"
    ran = run_on_ray(
        cli,
        data,
        out,
        api,
        "--actors",
        "2",
        "-c",
        "4",
        "--api-key-env",
        "WRONG_KEY",
        env={"WRONG_KEY": "wrong-key-456"},
    )
    assert ran.exit_code == 1
    said = re.fullmatch(
        r"stopped early: (\d+) requests in a row failed with HTTP 401 auth_error "
        r"\(Incorrect API key provided\)",
        ran.stderr.splitlines()[-2],
    )
    assert said is not None and 20 <= int(said.group(1)) <= len(api.log)
    assert 20 <= len(api.log) <= 40  # 20 in a row over both actors, and what was in flight
    errors = table(out).column("error_type").to_pylist()
    assert len(errors) == 100 and errors.count("auth_error") == len(api.log)
    assert errors.count("not_sent") == 100 - len(api.log)


def test_max_cost_holds_over_every_actor_and_a_rerun_goes_on(cluster, cli, make_api, tmp_path):
    """As on one machine (tests/cli/test_costs_cli.py): the job stops within one request's
    worst case of the budget, however many actors share it, and resumes with a higher one."""
    api = make_api(latency=0.05)
    data, prices = costs_setup(tmp_path, n=200)
    out = tmp_path / "o.parquet"
    args = ("run", data, "-o", out, "--base-url", api.url, "-m", "priced-a", "--engine", "ray")
    args += ("--prices", prices, "--max-tokens", "100", "-c", "4", "--actors", "2")
    assert_stopped_within_budget(cli(*args, "--max-cost", "0.02"), out, len(api.log))
    again = cli(*args, "--max-cost", "1")
    assert again.exit_code == 0, again.stderr
    assert len(api.log) == 200
    assert {r["status"] for r in table(out).to_pylist()} == {"ok"}


def test_the_cache_answers_on_the_driver_and_ray_sends_the_rest(cluster, cli, make_api, tmp_path):
    api = make_api()
    cache = tmp_path / "cache"
    first = write_jsonl(tmp_path / "first.jsonl", rows(60))
    assert run_on_ray(cli, first, tmp_path / "first.parquet", api, "--cache", cache).exit_code == 0
    assert len(api.log) == 60
    data = write_jsonl(tmp_path / "in.jsonl", rows(100))
    ran = run_on_ray(cli, data, tmp_path / "out.parquet", api, "--cache", cache)
    assert ran.exit_code == 0, ran.stderr
    assert len(api.log) == 100  # the 40 rows the cache has not seen
    result = table(tmp_path / "out.parquet")
    assert result.column("cached").to_pylist() == [True] * 60 + [False] * 40
    reused = {"cached", "attempts", "http_status", "cost_usd"}  # a cache hit: no call, no cost
    assert result.column("cost_usd").to_pylist()[:60] == [0.0] * 60
    names = [n for n in result.column_names if n not in TIMINGS | reused]
    earlier = table(tmp_path / "first.parquet").select(names).to_pylist()
    assert result.select(names).slice(0, 60).to_pylist() == earlier
    # all of it cached: nothing goes to Ray, nothing is sent
    again = run_on_ray(cli, data, tmp_path / "again.parquet", api, "--cache", cache)
    assert again.exit_code == 0, again.stderr
    assert len(api.log) == 100
    assert table(tmp_path / "again.parquet").column("cached").to_pylist() == [True] * 100


def test_the_key_stays_out_of_ray_logs_the_job_folder_and_the_output(
    cluster, cli, make_api, tmp_path
):
    key = "sk-ray-secret-7f3a9c"
    api = make_api(api_key=key)
    data = write_jsonl(tmp_path / "in.jsonl", rows(40))
    out = tmp_path / "out.parquet"
    ran = run_on_ray(
        cli,
        data,
        out,
        api,
        "--api-key-env",
        "MY_KEY",
        "--keep-job-dir",
        "-v",
        env={"MY_KEY": key},
    )
    assert ran.exit_code == 0, ran.stderr
    assert key not in ran.stdout + ran.stderr
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    places = [tmp_path, session / "logs"]
    leaked = [
        str(path)
        for place in places
        for path in place.rglob("*")
        if path.is_file() and key.encode() in path.read_bytes()
    ]
    assert leaked == []


def test_kill_9_of_the_driver_and_a_rerun_sends_only_what_was_not_saved(
    cluster, make_api, tmp_path
):
    api = make_api(latency=0.1)
    data = write_jsonl(tmp_path / "in.jsonl", rows(600))
    out = tmp_path / "out.parquet"
    command = [
        sys.executable, "-m", "batcher", "run", data, "-o", out, "--base-url", api.url,
        "-m", "m", "--engine", "ray", "--ray-address", cluster, "-c", "8", "--flush-seconds",
        "0.2", "-q",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHER_")}
    job = JobDir(out)
    driver = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(saved_ids(job)) < 100:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done = saved_ids(job)
    assert 100 <= len(done) < 600
    before = len(api.log)
    rerun = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr.decode()
    # Nothing saved is sent again. (The killed driver's actors may send a few more of
    # their unsaved blocks' requests until Ray sees the driver gone: never a saved row's.)
    again = {e.body["messages"][0]["content"].rsplit(" ", 1)[1] for e in api.log[before:]}
    assert again.isdisjoint(i.removeprefix("r") for i in done)
    assert len(again) >= 600 - len(done) - 8 * 32
    result = table(out)
    assert result.column("id").to_pylist() == [f"r{i}" for i in range(600)]
    assert set(result.column("status").to_pylist()) == {"ok"}


def test_an_actor_killed_mid_run_is_replaced_and_no_row_is_lost_or_doubled(
    cluster, cli, make_api, tmp_path
):
    api = make_api(latency=0.1)
    data = write_jsonl(tmp_path / "in.jsonl", rows(800))
    out = tmp_path / "out.parquet"
    killed: list[int] = []

    def kill_one_actor() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and len(api.log) < 150:
            time.sleep(0.02)
        for pid in os.listdir("/proc"):
            cmdline = Path("/proc", pid, "cmdline")
            if pid.isdigit() and b"MapBatches(Sender)" in read_or_empty(cmdline):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    ran = run_on_ray(
        cli,
        data,
        out,
        api,
        "--actors",
        "2",
        "-c",
        "8",
        "-q",
    )
    killer.join()
    assert len(killed) == 1
    assert ran.exit_code == 0, ran.stderr
    result = table(out)
    assert result.column("id").to_pylist() == [f"r{i}" for i in range(800)]
    assert set(result.column("status").to_pylist()) == {"ok"}
    # The dead actor's blocks went again: at most what it held (8 calls of 32) is re-sent.
    assert 800 <= len(api.log) <= 800 + 8 * 32


def read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def saved_ids(job: JobDir) -> set[str]:
    """The ids of the results durable in the job folder's parts now."""
    ids: set[str] = set()
    for part in job.parts() if job.exists() else []:
        try:
            ids.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
        except OSError:  # renamed away between the listing and the read
            continue
    return ids


def max_in_a_second(times: list[float]) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


def test_the_local_ray_listens_on_loopback_only(cluster):
    assert cluster.startswith("127.0.0.1:")
    ray_pids = {
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and is_ray_process(Path("/proc", pid, "cmdline"))
    }
    assert ray_pids
    listening = listening_sockets()
    exposed = []
    for pid in ray_pids:
        for fd in Path("/proc", pid, "fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            address = listening.get(target.removeprefix("socket:[").rstrip("]"))
            if address is not None and address not in (
                "0100007F",
                "0000000000000000FFFF00000100007F",
            ):
                exposed.append((pid, address))
    assert exposed == []


def is_ray_process(cmdline: Path) -> bool:
    try:
        text = cmdline.read_bytes().decode(errors="replace")
    except OSError:
        return False
    return any(name in text for name in ("gcs_server", "raylet", "ray::", "ray/_private"))


def listening_sockets() -> dict[str, str]:
    """inode -> local address (hex, as /proc/net shows it) of every TCP socket listening."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                out[fields[9]] = fields[1].split(":")[0]
    return out


def test_a_cluster_address_nothing_answers_on_is_one_line_at_once(make_api, tmp_path):
    api = make_api()
    data = write_jsonl(tmp_path / "in.jsonl", rows(3))
    out = tmp_path / "out.parquet"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHER_", "RAY_"))}
    for address, said in [
        ("127.0.0.1:1", "no Ray at 127.0.0.1:1 (Connection refused)"),
        ("ray://127.0.0.1:1", "no Ray at ray://127.0.0.1:1 (Connection refused)"),
    ]:
        command = [
            sys.executable, "-m", "batcher", "run", data, "-o", out, "--base-url", api.url,
            "-m", "m", "--engine", "ray", "--ray-address", address,
        ]  # fmt: skip
        started = time.monotonic()
        ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert (ran.returncode, ran.stderr) == (2, f"Error: --ray-address {address}: {said}\n")
        assert time.monotonic() - started < 30  # Ray alone retries for minutes
    assert len(api.log) == 0 and not out.exists()
