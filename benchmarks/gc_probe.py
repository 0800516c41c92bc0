"""How much of `batcher run` is the cyclic garbage collector, and what a gc setting would
save, without touching batcher.

    python benchmarks/gc_probe.py [--rows 20000] [-c 64] [--runs 3]

Runs the zero-latency case (`batcher run IN.jsonl -o OUT.parquet --base-url URL -m mock-1
-c 64 -q --max-retries 0`) through a wrapper that times every collection (gc.callbacks)
and, per mode, changes one thing before `batcher.cli.main()` starts:

- default: nothing;
- freeze: `import batcher.cli, batcher.job` then `gc.freeze()` (imported modules move to
  the permanent generation, so full collections stop scanning them);
- threshold: `gc.set_threshold(50_000, 20, 20)` (fewer young collections).

Modes alternate within each round (the order rotates); medians are reported. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_TMP,
    MockServer,
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

WRAPPER = r"""
import atexit, gc, json, os, sys, time
mode, stats_path = sys.argv[1], sys.argv[2]
sys.argv = ["batcher", *sys.argv[3:]]
stats = {"mode": mode, "collections": [0, 0, 0], "gc_s": [0.0, 0.0, 0.0]}
_start = [0.0]
def _cb(phase, info):
    if phase == "start":
        _start[0] = time.perf_counter()
    else:
        g = info["generation"]
        stats["collections"][g] += 1
        stats["gc_s"][g] += time.perf_counter() - _start[0]
gc.callbacks.append(_cb)
def _dump():
    stats["tracked_objects_at_exit"] = len(gc.get_objects())
    with open(stats_path, "w") as f:
        json.dump(stats, f)
atexit.register(_dump)
if mode == "freeze":
    import batcher.cli, batcher.job
    gc.freeze()
elif mode == "threshold":
    gc.set_threshold(50_000, 20, 20)
from batcher.cli import main
main()
"""

MODES = ("default", "freeze", "threshold")


def main() -> None:
    parser = argparse.ArgumentParser(description="GC share of batcher run")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--live", action="store_true", help="no snapshot of the code")
    args = parser.parse_args()

    code = snapshot_code(live=args.live)
    env = child_env(True, code["path"])
    inp = make_jsonl(BENCH_TMP / f"prompts-{args.rows}.jsonl", args.rows)
    out = BENCH_TMP / "out" / "gc-probe.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    stats_path = BENCH_TMP / "gc-stats.json"
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with MockServer(0.0, env=env) as server:
        for r in range(args.runs + 1):  # round 0 warms up and is not counted
            order = MODES[r % 3 :] + MODES[: r % 3]
            for mode in order:
                remove(out)
                remove(stats_path)
                cmd = [sys.executable, "-c", WRAPPER, mode, str(stats_path), "run", str(inp)]
                cmd += ["-o", str(out), "--base-url", server.url, "-m", "mock-1"]
                cmd += ["-c", str(args.concurrency), "-q", "--max-retries", "0"]
                done = run_child(cmd, env=env)
                if done.returncode != 0 or not stats_path.exists():
                    raise SystemExit(f"{mode}: exit {done.returncode}\n{done.stderr[-2000:]}")
                stats = json.loads(stats_path.read_text())
                row = {
                    "wall_s": done.wall_s,
                    "cpu_s": done.cpu_s,
                    "gc_s": sum(stats["gc_s"]),
                    "gc_s_by_generation": stats["gc_s"],
                    "collections": stats["collections"],
                    "tracked_objects_at_exit": stats["tracked_objects_at_exit"],
                }
                if r:
                    runs[mode].append(row)
                log(
                    f"round {r}{' (warm-up)' if not r else ''} {mode}: wall {done.wall_s:.2f}s"
                    f" cpu {done.cpu_s:.2f}s gc {row['gc_s']:.2f}s {stats['collections']}"
                )
    remove(out)
    result = {"machine": machine(), "code": code, "settings": vars(args), "modes": {}}
    for mode, rows in runs.items():
        result["modes"][mode] = {
            "wall_s_median": rnd(median([x["wall_s"] for x in rows])),
            "cpu_s_median": rnd(median([x["cpu_s"] for x in rows])),
            "gc_s_median": rnd(median([x["gc_s"] for x in rows])),
            "gc_share_of_cpu_median": rnd(median([x["gc_s"] / x["cpu_s"] for x in rows])),
            "collections_last_run": rows[-1]["collections"],
            "gc_s_by_generation_last_run": [rnd(v) for v in rows[-1]["gc_s_by_generation"]],
            "tracked_objects_at_exit_last_run": rows[-1]["tracked_objects_at_exit"],
            "runs": [
                {k: rnd(v) if isinstance(v, float) else v for k, v in x.items()} for x in rows
            ],
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
