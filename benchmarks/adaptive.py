"""Adaptive rate and retry control, measured against the mock server (issue 14's targets).

    python benchmarks/adaptive.py            # every scenario (about 10 minutes)
    python benchmarks/adaptive.py styles     # or some: styles rpm change faults outage

- styles: no --rpm, against 600 rpm enforced per second, in each header style (`headers`:
  x-ratelimit-* on every reply; `retry-after-ms`: 429s with retry-after-ms and limit headers;
  `bare`: 429s with no header). Targets: every row ok, >= 90% of the allowed rate after the
  first 10 s, <= 5% of all requests answered 429, <= 2% after the first 20 s.
- rpm: --rpm 600 against the same server. Targets: >= 98% of the allowed rate, <= 1% 429s.
- change: bare 429s, 600 rpm dropping to 200 at 20 s and back to 600 at 80 s. Target: each
  change followed within 10 s (down: the 429 share of a 2 s span back under 10%; up: the ok
  rate back at 90% of 600 rpm).
- faults: 2,000 rows, 5 ms latency, -c 64, about 20% faults (5xx, drops, truncated and bad
  JSON bodies, 2% 429s), against the same job with no faults and with the 429s replaced by
  500s; medians of alternating rounds. Targets: every row ok, <= 3x the no-fault job, and
  the 429 job within 1.2x of the 500 job.
- outage: 2,000 rows against 100% 503s. Targets: the request rate down to a trickle (< 2 a
  second) within 10 s, then the job stops early on its own.

Each scenario prints one line of figures and whether it met its targets; --json writes all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH_TMP,
    MockServer,
    batcher_cmd,
    child_env,
    log,
    make_jsonl,
    run_child,
    snapshot_code,
)

LIMIT = 600  # rpm, enforced per second
FAULTS = "429,500,502,503,504,drop,truncated,badjson,empty,529"  # 1 in 10 is a 429


def run_job(url: str, data: Path, out: Path, *extra: str, env: dict) -> dict:
    cmd = [*batcher_cmd(), "run", str(data), "-o", str(out), "--base-url", url, "-m", "mock-1"]
    done = run_child([*cmd, "--fresh", "-q", *extra], env=env)
    return {"code": done.returncode, "wall_s": done.wall_s, "stderr": done.stderr[-2000:]}


def server_log(path: Path) -> list[tuple[float, int]]:
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not entries:
        return []
    t0 = min(e["t"] for e in entries)
    return sorted((e["t"] - t0, e["status"]) for e in entries)


def shares(entries: list[tuple[float, int]], after: float = 0.0) -> tuple[float, int]:
    """(share of 429s among requests arriving after `after`, how many)."""
    late = [s for t, s in entries if t >= after]
    return (sum(s == 429 for s in late) / len(late) if late else 0.0), len(late)


def ok_rate(entries: list[tuple[float, int]], start: float, end: float) -> float:
    """Requests answered 200 per minute between `start` and `end` (arrival times)."""
    ok = sum(1 for t, s in entries if start <= t < end and s == 200)
    return ok * 60.0 / (end - start) if end > start else 0.0


def limited_job(env, rows: int, style: str, *extra: str, schedule: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(dir=BENCH_TMP) as tmp:
        tmp = Path(tmp)
        data = make_jsonl(tmp / "in.jsonl", rows)
        options = ["--rpm", str(LIMIT), "--rpm-window", "1", "--ratelimit-style", style]
        options += ["--log", str(tmp / "log.jsonl")]
        if schedule:
            options += ["--rpm-schedule", schedule]
        with MockServer(0.005, env=env, options=tuple(options)) as server:
            ran = run_job(server.url, data, tmp / "out.parquet", "-c", "32", *extra, env=env)
        entries = server_log(tmp / "log.jsonl")
        ran["entries"] = entries
        ok = sum(1 for _, s in entries if s == 200)
        ran["ok"] = ok == rows and ran["code"] == 0
        return ran


def scenario_styles(env) -> list[dict]:
    results = []
    for style in ("headers", "retry-after-ms", "bare"):
        ran = limited_job(env, 900, style)
        entries = ran.pop("entries")
        end = entries[-1][0]
        rate = ok_rate(entries, 10.0, end) / LIMIT
        share, _ = shares(entries)
        late, _ = shares(entries, 20.0)
        met = ran["ok"] and rate >= 0.9 and share <= 0.05 and late <= 0.02
        results.append(
            {
                "scenario": f"styles/{style}",
                "rate_after_10s": rate,
                "share_429": share,
                "share_429_after_20s": late,
                "requests": len(entries),
                "wall_s": ran["wall_s"],
                "all_ok": ran["ok"],
                "met": met,
            }
        )
        log(
            f"{style:>15}: {rate:.1%} of {LIMIT} rpm after 10 s, {share:.1%} 429s "
            f"({late:.1%} after 20 s) of {len(entries)} requests, all ok: {ran['ok']} -> "
            f"{'met' if met else 'NOT MET'}"
        )
    return results


def scenario_rpm(env) -> list[dict]:
    ran = limited_job(env, 450, "retry-after", "--rpm", str(LIMIT))
    entries = ran.pop("entries")
    rate = ok_rate(entries, 0.0, entries[-1][0]) / LIMIT
    share, _ = shares(entries)
    met = ran["ok"] and rate >= 0.98 and share <= 0.01
    log(
        f"    --rpm {LIMIT}: {rate:.1%} of the allowed rate, {share:.1%} 429s, all ok: "
        f"{ran['ok']} -> {'met' if met else 'NOT MET'}"
    )
    return [{"scenario": "rpm", "rate": rate, "share_429": share, "all_ok": ran["ok"], "met": met}]


def scenario_change(env) -> list[dict]:
    ran = limited_job(env, 750, "bare", schedule="20:200,80:600")
    entries = ran.pop("entries")
    down = up = None
    end = entries[-1][0]
    for t in [20.0 + 0.5 * i for i in range(int((end - 22.0) / 0.5))]:
        span = [s for at, s in entries if t <= at < t + 2.0]
        if down is None and span and sum(s == 429 for s in span) / len(span) < 0.1:
            down = t + 2.0 - 20.0
        if t >= 80.0 and up is None and ok_rate(entries, t, t + 2.0) >= 0.9 * LIMIT:
            up = t + 2.0 - 80.0
    met = ran["ok"] and down is not None and down <= 10 and up is not None and up <= 10
    per_2s = [round(ok_rate(entries, t, t + 2.0)) for t in range(0, int(entries[-1][0]), 2)]
    log(
        f"  limit change: followed down in {down} s, back up in {up} s; ok rpm per 2 s: "
        f"{per_2s} -> {'met' if met else 'NOT MET'}"
    )
    return [
        {
            "scenario": "change",
            "down_s": down,
            "up_s": up,
            "ok_rpm_per_2s": per_2s,
            "all_ok": ran["ok"],
            "met": met,
        }
    ]


def scenario_faults(env, rounds: int) -> list[dict]:
    kinds = {"none": None, "429s": FAULTS, "500s": FAULTS.replace("429", "500")}
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    all_ok = True
    with tempfile.TemporaryDirectory(dir=BENCH_TMP) as tmp:
        tmp = Path(tmp)
        data = make_jsonl(tmp / "in.jsonl", 2000)
        for _ in range(rounds):
            for name, faults in kinds.items():
                options = ("--fail-rate", "0.2", "--faults", faults) if faults else ()
                with MockServer(0.005, env=env, options=options) as server:
                    ran = run_job(server.url, data, tmp / "out.parquet", "-c", "64", env=env)
                all_ok &= ran["code"] == 0
                walls[name].append(ran["wall_s"])
    med = {k: statistics.median(v) for k, v in walls.items()}
    slower = med["429s"] / med["none"]
    vs_500 = med["429s"] / med["500s"]
    met = all_ok and slower <= 3 and vs_500 <= 1.2
    log(
        f"  mixed faults: no faults {med['none']:.2f} s, 20% faults with 2% 429s "
        f"{med['429s']:.2f} s ({slower:.2f}x), with 500s instead {med['500s']:.2f} s "
        f"(429s/500s {vs_500:.2f}x), every row ok: {all_ok} -> {'met' if met else 'NOT MET'}"
    )
    return [
        {
            "scenario": "faults",
            "wall_s": med,
            "rounds": rounds,
            "slower": slower,
            "vs_500": vs_500,
            "all_ok": all_ok,
            "met": met,
        }
    ]


def scenario_outage(env) -> list[dict]:
    with tempfile.TemporaryDirectory(dir=BENCH_TMP) as tmp:
        tmp = Path(tmp)
        data = make_jsonl(tmp / "in.jsonl", 2000)
        options = ("--fail-rate", "1", "--faults", "503", "--log", str(tmp / "log.jsonl"))
        with MockServer(0.005, env=env, options=options) as server:
            ran = run_job(server.url, data, tmp / "out.parquet", "-c", "64", env=env)
        entries = server_log(tmp / "log.jsonl")
    first = sum(1 for t, _ in entries if t < 10)
    later = [t for t, _ in entries if t >= 10]
    span = (entries[-1][0] - 10) if later else 0.0
    trickle = len(later) / span if span > 0 else 0.0
    stopped = ran["code"] == 1 and "stopped early" in ran["stderr"]
    met = stopped and trickle < 2
    log(
        f"  100% 503s: {first} requests in the first 10 s, then {trickle:.2f} a second; "
        f"stopped early after {ran['wall_s']:.0f} s: {stopped} -> {'met' if met else 'NOT MET'}"
    )
    return [
        {
            "scenario": "outage",
            "first_10s": first,
            "per_second_after": trickle,
            "wall_s": ran["wall_s"],
            "stopped_early": stopped,
            "met": met,
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scenarios", nargs="*", default=["styles", "rpm", "change", "faults", "outage"]
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (faults)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    code = snapshot_code()
    env = child_env(code=Path(code["path"]) if code.get("path") else None)
    results = []
    for name in args.scenarios:
        if name == "faults":
            results += scenario_faults(env, args.rounds)
        else:
            results += globals()[f"scenario_{name}"](env)
    if args.json:
        args.json.write_text(json.dumps({"code": code, "results": results}, indent=2))
    print(json.dumps({r["scenario"]: r["met"] for r in results}))


if __name__ == "__main__":
    main()
