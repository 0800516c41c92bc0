"""A flood of 429s pauses every actor of a Ray job, not only the one that met it: the job's
coordinator hears the 429s and every actor holds its new requests back until the pause ends.

The mock's log cannot tell the actors apart, so the mock here also notes, for each request,
which Sender actor's process holds the connection it came on (/proc: the socket's inode
among the actor's open files)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import prompts, write_jsonl
from ray_helpers import run_on_ray

from batcher.mock import MockConfig, MockServerThread

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("cluster")]

# rows: 24 blocks of 32. Ray Data lets an actor hold 16 blocks at most, so each actor still
# has rows to send when the pause ends (with 12, one actor could take them all).
N = 768
CONCURRENCY = 32  # per actor
LATENCY = 0.5  # every reply, 429s too: an actor sends 32 new requests each half second
FLOOD_AT, FLOOD_FOR = 1.0, 2.0  # seconds after the first request: every request a 429
# Seconds after the flood's start in which no actor may send: its first 429s came back at
# 0.5 s saying retry after 2 s (the pause ends at 2.5 s at the earliest), and every actor
# hears of the pause with its next lease (each 0.25 s) or sync (0.5 s): 1.4 s leaves room
# for a loaded machine. An actor the pause missed would send 32 new rows at 1.5 and at 2 s.
HELD = (1.4, 2.4)


def sender_of(client_port: int, server_port: int, senders: set[int]) -> int | None:
    """The pid of the Sender actor whose socket is 127.0.0.1:client_port ->
    127.0.0.1:server_port (`senders`: the actors' pids found so far, refreshed if need be)."""
    ends = (f"0100007F:{client_port:04X}", f"0100007F:{server_port:04X}")
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    inode = next((f[9] for f in map(str.split, lines) if (f[1], f[2]) == ends), None)
    if inode is None:
        return None
    socket = f"socket:[{inode}]"
    for fresh in (False, True):
        if fresh or not senders:
            senders.clear()
            senders.update(int(p) for p in os.listdir("/proc") if p.isdigit() and is_sender(p))
        for pid in senders:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            if any(readlink(f"/proc/{pid}/fd/{fd}") == socket for fd in fds):
                return pid
    return None


def is_sender(pid: str) -> bool:
    try:
        return b"MapBatches(Sender)" in Path("/proc", pid, "cmdline").read_bytes()
    except OSError:
        return False


def readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


@pytest.fixture
def flooded_api():
    """The mock (each reply after LATENCY), every request a 429 from FLOOD_AT for FLOOD_FOR
    seconds: its rpm, 10,000 a second before and after, drops to 1 in a 2 s window, so each
    429 says retry-after 2 s (the last request let through leaves the window then). Yields
    the server and, per request, (arrival, the sending actor's pid, status, prompt).

    The first requests wait until both actors have sent one: the mock's schedule, which
    starts with its first request, starts with both actors busy (Ray starts one first)."""
    config = MockConfig(
        latency=LATENCY,
        rpm=600_000,
        rpm_window=2.0,
        rpm_schedule=((FLOOD_AT, 1), (FLOOD_AT + FLOOD_FOR, 600_000)),
    )
    server = MockServerThread(config)
    seen: list[tuple[float, int | None, int, str]] = []
    owners: dict[int, int | None] = {}
    senders: set[int] = set()

    both = asyncio.Event()  # both actors have sent a request

    @web.middleware
    async def note_the_sender(request: web.Request, handler):
        port = request.transport.get_extra_info("peername")[1]
        if owners.get(port) is None:  # a new connection: whose is it
            owners[port] = sender_of(port, server.port, senders)
        if len(set(owners.values()) - {None}) >= 2:
            both.set()
        with contextlib.suppress(asyncio.TimeoutError):  # (the test then says why)
            await asyncio.wait_for(both.wait(), 30)
        t = time.time()
        response = await handler(request)
        if request.method == "POST":
            prompt = json.loads(await request.read())["messages"][0]["content"]
            seen.append((t, owners[port], response.status, prompt))
        return response

    server.server.app.middlewares.append(note_the_sender)
    server.start()
    try:
        yield server, seen
    finally:
        server.stop()


def test_a_429_flood_pauses_every_actor_until_it_ends(cli, flooded_api, tmp_path):
    api, seen = flooded_api
    data = write_jsonl(tmp_path / "in.jsonl", prompts(N, "r"))
    out = tmp_path / "out.parquet"
    ran = run_on_ray(cli, data, out, api, "--actors", "2", "-c", str(CONCURRENCY), "-q")
    assert ran.exit_code == 0, ran.stderr
    log = list(api.log)
    assert len(seen) == len(log)
    actors = Counter(pid for _, pid, _, _ in seen)
    assert len(actors) == 2 and None not in actors, f"requests by actor pid: {actors}"

    # Every row once, ok: each 429 was retried once, after the pause, and got through.
    result = pq.read_table(out)
    assert result.column("id").to_pylist() == [f"r{i}" for i in range(N)]
    assert set(result.column("status").to_pylist()) == {"ok"}
    throttled = sum(e.status == 429 for e in log)
    assert Counter(e.status for e in log) == {200: N, 429: throttled}
    assert Counter(result.column("attempts").to_pylist()) == {1: N - throttled, 2: throttled}

    start = log[0].t + FLOOD_AT  # the mock's schedule runs from its first request
    assert all(start <= e.t < start + FLOOD_FOR for e in log if e.status == 429)
    held = (start + HELD[0], start + HELD[1])
    # Nothing reached the server while the pause held: both actors held back.
    assert [round(e.t - start, 2) for e in log if held[0] <= e.t < held[1]] == []
    resumed = min(e.t for e in log if e.t >= held[1]) - start
    assert resumed < 5.0  # the pause ended (a Retry-After of 2 s, not a minute)

    first_sent: dict[str, tuple[float, int | None]] = {}
    for t, pid, _, prompt in seen:
        first_sent.setdefault(prompt, (t, pid))
    figures = []
    for pid in actors:
        times = [t - start for t, p, _, _ in seen if p == pid]
        assert min(times) < 0  # busy when the flood came
        assert [round(t, 2) for t in times if HELD[0] <= t < HELD[1]] == [], pid
        # Its quiet was the pause's, not a full house: its 429s (waiting to retry) never
        # filled its room for retries (4 per slot), so it had workers free all along, and
        # rows still to send, as the rows it first sent after the pause show.
        limited = sum(s == 429 for _, p, s, _ in seen if p == pid)
        assert limited < 4 * CONCURRENCY
        later = sum(p == pid and t >= held[1] for t, p in first_sent.values())
        assert later >= CONCURRENCY, (pid, later)
        quiet = (max(t for t in times if t < HELD[0]), min(t for t in times if t >= HELD[1]))
        figures.append(f"{limited} 429s, quiet {quiet[0]:.2f}-{quiet[1]:.2f} s, {later} new after")
    print(f"\n{throttled} 429s, resumed at {resumed:.2f} s; by actor: {'; '.join(figures)}")
