"""`--engine ray` on a local Ray, measured against the mock server (issue 15's targets).

    python benchmarks/ray_scale.py              # every scenario (about 8 minutes)
    python benchmarks/ray_scale.py ideal rpm    # or some: ideal rpm memory

- ideal: 2 actors x 64 in flight against 0.5 s latency: the ideal rate is 2 x 64 / 0.5 s =
  256 req/s. Measured from the server's log (first to last arrival: the sending) and over the
  whole command (Ray's start-up, the checking pass and OUT included), beside a minimal
  aiohttp client at 128 in flight in the same run (the floor: what one process reaches);
  medians of alternating rounds. Target: >= 90% of the ideal rate, end to end.
- rpm: --rpm 6000 across 2 actors, against a server enforcing 6,000 a minute over every
  second (100 in any second). Targets: >= 95% of the rate while sending, <= 1% 429s.
- memory: the peak RSS of each sender actor with 4,000 and 16,000 requests (zero latency).
  Target: flat (the larger within 10% or 20 MiB of the smaller).

Each scenario prints one line of figures and whether it met its targets; --json writes all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH_TMP,
    MockServer,
    batcher_cmd,
    child_env,
    log,
    machine,
    make_jsonl,
    run_child,
    snapshot_code,
)

LATENCY, ACTORS, CONCURRENCY = 0.5, 2, 64
IDEAL = ACTORS * CONCURRENCY / LATENCY  # requests a second
RPM = 6000


def arrivals(path: Path) -> list[tuple[float, int]]:
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted((e["t"], e["status"]) for e in entries)


def ray_job(url: str, data: Path, out: Path, *extra: str, env: dict) -> dict:
    cmd = [*batcher_cmd(), "run", str(data), "-o", str(out), "--base-url", url, "-m", "mock-1"]
    cmd += ["--engine", "ray", "--actors", str(ACTORS), "--fresh", "-q", *extra]
    done = run_child(cmd, env=env)
    return {"code": done.returncode, "wall_s": done.wall_s, "stderr": done.stderr[-2000:]}


def floor_job(url: str, data: Path, env: dict) -> float:
    """The minimal aiohttp client at ACTORS x CONCURRENCY in flight: its requests a second
    (first POST to last reply)."""
    script = Path(__file__).resolve().parent / "floor_client.py"
    cmd = [sys.executable, str(script), str(data), "--url", url]
    done = run_child([*cmd, "-c", str(ACTORS * CONCURRENCY)], env=env)
    if done.returncode != 0:
        raise RuntimeError(f"floor client failed: {done.stderr[-500:]}")
    return json.loads(done.stdout)["rps"]


def scenario_ideal(env: dict, rounds: int, requests: int) -> list[dict]:
    ours, sending, floors = [], [], []
    with tempfile.TemporaryDirectory(dir=BENCH_TMP) as tmp:
        tmp = Path(tmp)
        data = make_jsonl(tmp / "in.jsonl", requests)
        for i in range(rounds):
            logged = tmp / f"log-{i}.jsonl"
            options = ("--log", str(logged))
            with MockServer(LATENCY, env=env, options=options) as server:
                ran = ray_job(
                    server.url, data, tmp / "out.parquet", "-c", str(CONCURRENCY), env=env
                )
            if ran["code"] != 0:
                raise RuntimeError(f"ray job failed: {ran['stderr']}")
            times = [t for t, _ in arrivals(logged)]
            ours.append(requests / ran["wall_s"])
            sending.append((len(times) - 1) / (times[-1] - times[0]))
            with MockServer(LATENCY, env=env) as server:
                floors.append(floor_job(server.url, data, env))
            log(
                f"  round {i + 1}: {ours[-1]:.0f} req/s end to end, {sending[-1]:.0f} while "
                f"sending; floor {floors[-1]:.0f}"
            )
    end_to_end, while_sending = statistics.median(ours), statistics.median(sending)
    floor = statistics.median(floors)
    met = end_to_end >= 0.9 * IDEAL
    log(
        f"ideal: {end_to_end / IDEAL:.1%} of {IDEAL:.0f} req/s end to end "
        f"({while_sending / IDEAL:.1%} while sending; the floor client {floor / IDEAL:.1%}); "
        f"{requests} requests -> {'met' if met else 'NOT MET'}"
    )
    return [
        {
            "scenario": "ideal",
            "requests": requests,
            "end_to_end_of_ideal": end_to_end / IDEAL,
            "sending_of_ideal": while_sending / IDEAL,
            "floor_of_ideal": floor / IDEAL,
            "rounds": rounds,
            "met": met,
        }
    ]


def scenario_rpm(env: dict, requests: int) -> list[dict]:
    with tempfile.TemporaryDirectory(dir=BENCH_TMP) as tmp:
        tmp = Path(tmp)
        data = make_jsonl(tmp / "in.jsonl", requests)
        logged = tmp / "log.jsonl"
        options = ("--rpm", str(RPM), "--rpm-window", "1", "--log", str(logged))
        with MockServer(0.2, env=env, options=options) as server:
            ran = ray_job(
                server.url, data, tmp / "out.parquet", "-c", "64", "--rpm", str(RPM), env=env
            )
        entries = arrivals(logged)
    times = [t for t, _ in entries]
    throttled = sum(s == 429 for _, s in entries) / len(entries)
    rate = (len(times) - 1) / (times[-1] - times[0]) * 60 / RPM
    met = ran["code"] == 0 and rate >= 0.95 and throttled <= 0.01
    log(
        f"rpm: {rate:.1%} of --rpm {RPM} while sending, {throttled:.2%} 429s of "
        f"{len(entries)} requests -> {'met' if met else 'NOT MET'}"
    )
    return [{"scenario": "rpm", "rate": rate, "share_429": throttled, "met": met}]


def actor_peaks(stop: threading.Event, into: dict[int, int]) -> None:
    """Peak RSS (KiB) of every sender actor process, sampled until `stop`."""
    while not stop.is_set():
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if b"MapBatches(Sender)" not in (proc / "cmdline").read_bytes():
                    continue
                status = (proc / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    into[int(proc.name)] = max(into.get(int(proc.name), 0), int(line.split()[1]))
        time.sleep(0.2)


def scenario_memory(env: dict) -> list[dict]:
    peaks = {}
    for requests in (4000, 16000):
        with tempfile.TemporaryDirectory(dir=BENCH_TMP) as tmp:
            tmp = Path(tmp)
            data = make_jsonl(tmp / "in.jsonl", requests)
            seen: dict[int, int] = {}
            stop = threading.Event()
            sampler = threading.Thread(target=actor_peaks, args=(stop, seen))
            sampler.start()
            with MockServer(0.0, env=env) as server:
                ran = ray_job(server.url, data, tmp / "out.parquet", "-c", "64", env=env)
            stop.set()
            sampler.join()
            if ran["code"] != 0 or not seen:
                raise RuntimeError(f"memory job failed: {ran['stderr']}")
            peaks[requests] = max(seen.values()) / 1024
            log(f"  {requests} requests: actors' peak RSS {sorted(seen.values())} KiB")
    small, large = peaks[4000], peaks[16000]
    met = large <= max(small * 1.1, small + 20)
    log(
        f"memory: peak RSS per actor {small:.0f} MiB at 4,000 requests, {large:.0f} MiB at "
        f"16,000 -> {'met' if met else 'NOT MET'}"
    )
    return [{"scenario": "memory", "peak_mib": peaks, "met": met}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=["ideal", "rpm", "memory"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    code = snapshot_code()
    env = child_env(code=Path(code["path"]) if code["path"] else None)
    results = []
    for name in args.scenarios:
        if name == "ideal":
            results += scenario_ideal(env, args.rounds, args.requests)
        elif name == "rpm":
            results += scenario_rpm(env, 3000)
        elif name == "memory":
            results += scenario_memory(env)
        else:
            parser.error(f"unknown scenario {name!r}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    return 0 if all(r["met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
