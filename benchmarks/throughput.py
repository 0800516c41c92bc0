"""Throughput of `batcher run` against the floor of a minimal aiohttp client.

    python benchmarks/throughput.py [--quick] [--runs 3] [--case zero-latency-c64]

For each case a mock server (`python -m batcher mock-server --port 0 --latency L`, uvloop)
runs in its own process, and in every round the clients take turns (the order rotates
from round to round) on the same N requests at the same concurrency:

- floor: `benchmarks/floor_client.py` (one aiohttp session, C workers, bodies pre-built,
  `resp.read()` + `orjson.loads`, nothing written; uvloop); its own requests/s, first POST
  to last reply;
- floor-asyncio: the same on asyncio's default loop (batcher's loop), to tell how much of
  the gap is the event loop (--no-asyncio-floor leaves it out);
- batcher: `batcher run IN.jsonl -o OUT.parquet --base-url URL -m mock-1 -c C -q
  --max-retries 0 --keep-job-dir`, timed from spawn to exit (wall requests/s). The kept job
  directory gives the sending phase from the job's own figures: it starts at the earliest
  `_done_at - latency_s` of the parts, ends at the last `_done_at`; `job.json` (written
  once the checking pass is done) splits what comes before it.

Every client's CPU time (wait4 rusage) and the server's (/proc) are recorded too: CPU
milliseconds per request are far steadier than requests/s on a shared machine.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_TMP,
    HERE,
    MockServer,
    batcher_cmd,
    child_env,
    log,
    machine,
    make_jsonl,
    median,
    remove,
    rnd,
    run_child,
    snapshot_code,
)

MODEL = "mock-1"
CASES = {
    "zero-latency-c64": {"n": 20_000, "quick_n": 3_000, "concurrency": 64, "latency": 0.0},
    "latency-0.5s-c1000": {"n": 10_000, "quick_n": 3_000, "concurrency": 1000, "latency": 0.5},
}


def run_floor(inp: Path, url: str, c: int, env: dict, *, uvloop: bool = True) -> dict:
    cmd = [sys.executable, str(HERE / "floor_client.py"), str(inp), "--url", url]
    cmd += ["-m", MODEL, "-c", str(c)]
    if not uvloop:
        cmd.append("--no-uvloop")
    done = run_child(cmd, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"floor client failed ({done.returncode}): {done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "rps": out["rps"],
        "elapsed_s": out["elapsed_s"],
        "ok": out["ok"],
        "errors": out["errors"],
        "loop": out["loop"],
        "wall_s": done.wall_s,
        "wall_rps": out["n"] / done.wall_s,
        "cpu_s": done.cpu_s,
        "maxrss_mib": done.maxrss_kib / 1024,
    }


def run_batcher(inp: Path, url: str, c: int, n: int, env: dict, out_dir: Path, tag: str) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = out_dir / f"out-{tag}.parquet"
    job_dir = out.with_name(out.name + ".batcher")
    remove(out)
    remove(job_dir)
    cmd = [*batcher_cmd(), "run", str(inp), "-o", str(out), "--base-url", url, "-m", MODEL]
    cmd += ["-c", str(c), "-q", "--max-retries", "0", "--keep-job-dir"]
    done = run_child(cmd, env=env)
    row: dict = {
        "returncode": done.returncode,
        "wall_s": done.wall_s,
        "rps": n / done.wall_s,
        "cpu_s": done.cpu_s,
        "maxrss_mib": done.maxrss_kib / 1024,
    }
    if done.returncode not in (0, 1) or not out.exists():
        row["error"] = f"batcher run exited {done.returncode}: {done.stderr[-2000:]}"
        log("  batcher run FAILED:", " ".join(cmd), "\n", done.stderr[-2000:])
        return row
    meta = json.loads(pq.read_metadata(out).metadata[b"batcher"])
    rows_out = pq.read_metadata(out).num_rows
    row.update(ok=meta.get("ok"), errors=meta.get("errors"), rows_out=rows_out)
    parts = sorted(job_dir.glob("part-*.parquet"))
    if parts:
        t = pa.concat_tables([pq.read_table(p, columns=["_done_at", "latency_s"]) for p in parts])
        done_at, latency = t.column("_done_at"), t.column("latency_s")
        send_start = pc.min(pc.subtract(done_at, pc.fill_null(latency, 0.0))).as_py()
        send_end = pc.max(done_at).as_py()
        scanned = (job_dir / "job.json").stat().st_mtime
        row.update(
            send_s=send_end - send_start,
            send_rps=t.num_rows / (send_end - send_start),
            phases={
                "start_and_check_s": scanned - done.started,  # start-up, imports, checking pass
                "to_first_send_s": send_start - scanned,  # engine start, first request built
                "send_s": send_end - send_start,
                "after_send_s": done.ended - send_end,  # last flush, assembly, exit
            },
        )
    remove(out)
    remove(job_dir)
    return row


def summarise(name: str, spec: dict, n: int, runs: dict[str, list[dict]]) -> dict:
    c, latency = spec["concurrency"], spec["latency"]
    floor, bat = runs["floor"], runs["batcher"]
    good = [r for r in bat if "error" not in r]  # a failed run is reported, never averaged
    fr = [r["rps"] for r in floor]
    br = [r["rps"] for r in good]
    bs = [r["send_rps"] for r in good if r.get("send_rps")]
    paired = [b["rps"] / f["rps"] for f, b in zip(floor, bat) if "error" not in b]
    paired_send = [b["send_rps"] / f["rps"] for f, b in zip(floor, bat) if b.get("send_rps")]
    out = {
        "name": name,
        "n": n,
        "concurrency": c,
        "latency": latency,
        "floor_rps": [rnd(x, 1) for x in fr],
        "batcher_rps": [rnd(x, 1) for x in br],
        "batcher_send_rps": [rnd(x, 1) for x in bs],
        "floor_median": rnd(median(fr), 1),
        "batcher_median": rnd(median(br), 1),
        "batcher_send_median": rnd(median(bs), 1),
        "ratio": rnd(median(br) / median(fr)) if br and fr else None,
        "ratio_send": rnd(median(bs) / median(fr)) if bs and fr else None,
        "paired_ratio_median": rnd(median(paired)),
        "paired_ratio_send_median": rnd(median(paired_send)),
        "cpu_ms_per_request": {
            "floor": rnd(median([r["cpu_s"] / n * 1000 for r in floor]), 4),
            "batcher": rnd(median([r["cpu_s"] / n * 1000 for r in good]), 4),
        },
        "server_cpu_share": {  # server CPU seconds / the client's wall time
            "floor": rnd(median([r["server_cpu_s"] / r["elapsed_s"] for r in floor])),
            "batcher_send": rnd(
                median([r["server_cpu_s"] / r["send_s"] for r in good if r.get("send_s")])
            ),
        },
        "batcher_phases_median_s": {
            k: rnd(median([r["phases"][k] for r in good if "phases" in r]))
            for k in ("start_and_check_s", "to_first_send_s", "send_s", "after_send_s")
        },
        "batcher_wall_median_s": rnd(median([r["wall_s"] for r in good])),
        "batcher_maxrss_mib_median": rnd(median([r["maxrss_mib"] for r in good]), 1),
        "floor_wall_rps_median": rnd(median([r["wall_rps"] for r in floor]), 1),
    }
    if "floor-asyncio" in runs:
        fa = [r["rps"] for r in runs["floor-asyncio"]]
        out["floor_asyncio_rps"] = [rnd(x, 1) for x in fa]
        out["floor_asyncio_median"] = rnd(median(fa), 1)
        out["cpu_ms_per_request"]["floor-asyncio"] = rnd(
            median([r["cpu_s"] / n * 1000 for r in runs["floor-asyncio"]]), 4
        )
    if latency > 0:
        ideal = min(c, n) / latency
        out["ideal_rps"] = ideal
        out["share_of_ideal"] = {
            "floor": rnd(median(fr) / ideal),
            "batcher": rnd(median(br) / ideal) if br else None,
            "batcher_send": rnd(median(bs) / ideal) if bs else None,
        }
        if "floor-asyncio" in runs:
            out["share_of_ideal"]["floor-asyncio"] = rnd(out["floor_asyncio_median"] / ideal)
    bad = [r for r in bat if "error" in r or r.get("errors")]
    bad += [r for k in runs if k.startswith("floor") for r in runs[k] if r["errors"]]
    if bad:
        out["failures"] = bad
    return out


def run_case(name: str, spec: dict, n: int, rounds: int, clients: list[str], env: dict) -> dict:
    c, latency = spec["concurrency"], spec["latency"]
    inp = make_jsonl(BENCH_TMP / f"prompts-{n}.jsonl", n)
    warm = make_jsonl(BENCH_TMP / "prompts-warmup.jsonl", 500)
    out_dir = BENCH_TMP / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {k: [] for k in clients}
    with MockServer(latency, env=env) as server:
        log(f"[{name}] server {server.url}; n={n} c={c} latency={latency}; warm-up")
        run_floor(warm, server.url, c, env)
        warmup = run_batcher(warm, server.url, c, 500, env, out_dir, "warmup")
        if "error" in warmup:
            raise SystemExit(f"batcher run fails on the warm-up input: {warmup['error']}")
        for r in range(rounds):
            order = clients[r % len(clients) :] + clients[: r % len(clients)]
            for client in order:
                cpu0 = server.cpu_s()
                if client == "batcher":
                    row = run_batcher(inp, server.url, c, n, env, out_dir, f"{name}-{r}")
                    shown = f"{row['rps']:.0f} req/s wall"
                    if "send_rps" in row:
                        shown += f", {row['send_rps']:.0f} req/s sending"
                else:
                    row = run_floor(inp, server.url, c, env, uvloop=client == "floor")
                    shown = f"{row['rps']:.0f} req/s"
                row["server_cpu_s"] = server.cpu_s() - cpu0
                runs[client].append(row)
                log(f"[{name}] round {r + 1}/{rounds} {client}: {shown}, cpu {row['cpu_s']:.2f}s")
    return summarise(name, spec, n, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description="batcher run vs a minimal aiohttp client")
    parser.add_argument("--quick", action="store_true", help="small N, for a smoke run")
    parser.add_argument("--runs", type=int, default=3, help="rounds per case (default 3)")
    parser.add_argument("--case", action="append", choices=list(CASES), help="repeatable")
    parser.add_argument("--n", type=int, help="override N for every case")
    parser.add_argument(
        "--no-asyncio-floor", action="store_true", help="leave out the asyncio-loop floor"
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="run the source tree as it is now, not a snapshot taken at the start",
    )
    parser.add_argument(
        "--no-pyc-cache",
        action="store_true",
        help="keep the environment as is (PYTHONDONTWRITEBYTECODE compiles batcher every run)",
    )
    args = parser.parse_args()

    code = snapshot_code(live=args.live)
    env = child_env(not args.no_pyc_cache, code["path"])
    clients = ["floor", "batcher"] + ([] if args.no_asyncio_floor else ["floor-asyncio"])
    result = {"machine": machine(), "code": code, "settings": vars(args), "cases": []}
    started = time.time()
    for name in args.case or list(CASES):
        spec = CASES[name]
        n = args.n or (spec["quick_n"] if args.quick else spec["n"])
        result["cases"].append(run_case(name, spec, n, args.runs, clients, env))
    result["machine"]["loadavg_at_end"] = list(__import__("os").getloadavg())
    result["elapsed_s"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
