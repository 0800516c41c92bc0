"""Peak memory of `batcher run` (and `batcher estimate`) as the input grows.

    python benchmarks/memory.py [--rows 1000000] [--sizes 100000,300000] [-c 64]

Generates JSONL inputs in /tmp (reused when present), starts the zero-latency mock server
in its own process, and runs `batcher run IN.jsonl -o OUT.parquet --base-url URL -m mock-1
-c 64 -q --max-retries 0` once per size, each in a fresh child: the peak RSS is that
child's own `ru_maxrss` (wait4). A thread also samples /proc/PID/status every 0.2 s to
tell which phase holds the peak: `check` (until OUT.parquet.batcher/job.json appears),
`send` (until the temporary OUT appears), `assemble` (while it exists), `exit` (after).

`batcher estimate IN.jsonl -m mock-1` is measured the same way when `batcher estimate
--help` works; otherwise it is reported as "not available".

A run over `--max-minutes` (default 15) is stopped; the rate it reached is reported.
Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from _common import (
    BENCH_TMP,
    MockServer,
    batcher_cmd,
    child_env,
    log,
    machine,
    make_jsonl,
    remove,
    rnd,
    run_child,
    snapshot_code,
)

MODEL = "mock-1"
PHASES = ["check", "send", "assemble", "exit"]


class Sampler(threading.Thread):
    """Polls the RSS of the newest `batcher` child and the job's files, to split the peak
    by phase. The authoritative peak is still the child's own ru_maxrss."""

    def __init__(self, output: Path) -> None:
        super().__init__(daemon=True)
        self.output = output
        self.job_json = output.with_name(output.name + ".batcher") / "job.json"
        self.peaks = dict.fromkeys(PHASES, 0.0)
        self.last = "check"
        self.phase_start: dict[str, float] = {}
        self.stop_event = threading.Event()
        self.pid: int | None = None

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            pid = self.pid or newest_child(os.getpid())
            if pid is not None:
                self.pid = pid
                rss = rss_mib(pid)
                phase = self.phase()
                self.phase_start.setdefault(phase, time.monotonic() - t0)
                if rss is not None:
                    self.peaks[phase] = max(self.peaks[phase], rss)
            self.stop_event.wait(0.2)

    def phase(self) -> str:
        """Phases only move forward: after assembly the job directory is removed, which
        must not read as the checking pass again."""
        if any(self.output.parent.glob(f".{self.output.name}.*.tmp")):
            seen = "assemble"
        elif self.job_json.exists():
            seen = "send"
        elif self.last in ("send", "assemble", "exit"):
            seen = "exit"
        else:
            seen = "check"
        if PHASES.index(seen) > PHASES.index(self.last):
            self.last = seen
        return self.last


def newest_child(ppid: int) -> int | None:
    """The most recent child of `ppid` that is not the mock server (a python process)."""
    try:
        children = Path(f"/proc/{ppid}/task/{ppid}/children").read_text().split()
    except OSError:
        return None
    for pid in reversed(children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mock-server" not in cmdline:
            return int(pid)
    return None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def parts_rows(job_dir: Path) -> int:
    import pyarrow.parquet as pq

    rows = 0
    for part in job_dir.glob("part-*.parquet"):
        with contextlib.suppress(Exception):
            rows += pq.read_metadata(part).num_rows
    return rows


def measure_run(inp: Path, rows: int, url: str, c: int, env: dict, max_s: float) -> dict:
    out = BENCH_TMP / "out" / f"memory-{rows}.parquet"
    job_dir = out.with_name(out.name + ".batcher")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove(out)
    remove(job_dir)
    cmd = [*batcher_cmd(), "run", str(inp), "-o", str(out), "--base-url", url, "-m", MODEL]
    cmd += ["-c", str(c), "-q", "--max-retries", "0"]
    sampler = Sampler(out)
    sampler.start()
    done = run_child(cmd, env=env, timeout=max_s)
    sampler.stop_event.set()
    sampler.join()
    row = {
        "rows": rows,
        "command": " ".join(cmd),
        "returncode": done.returncode,
        "peak_rss_mib": rnd(done.maxrss_kib / 1024, 1),
        "peak_rss_mib_by_phase": {k: rnd(v, 1) for k, v in sampler.peaks.items()},
        "phase_start_s": {k: rnd(v, 1) for k, v in sampler.phase_start.items()},
        "wall_s": rnd(done.wall_s, 1),
        "cpu_s": rnd(done.cpu_s, 1),
        "wall_rps": rnd(rows / done.wall_s, 1),
    }
    if done.returncode not in (0, 1):
        sent = parts_rows(job_dir)
        row["stopped"] = (
            f"exit {done.returncode} after {done.wall_s:.0f}s (timeout {max_s:.0f}s?); "
            f"{sent} results durable, {sent / done.wall_s:.0f} req/s"
        )
        row["stderr"] = done.stderr[-2000:]
    remove(out)
    remove(job_dir)
    return row


def measure_estimate(inp: Path, rows: int, env: dict) -> dict:
    cmd = [*batcher_cmd(), "estimate", str(inp), "-m", MODEL]
    done = run_child(cmd, env=env)
    return {
        "rows": rows,
        "command": " ".join(cmd),
        "returncode": done.returncode,
        "peak_rss_mib": rnd(done.maxrss_kib / 1024, 1),
        "wall_s": rnd(done.wall_s, 2),
        "stdout_tail": done.stdout[-500:],
        "stderr_tail": done.stderr[-500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="peak RSS of batcher run / estimate")
    parser.add_argument("--rows", type=int, default=1_000_000, help="largest input")
    parser.add_argument("--sizes", default="100000,300000", help="smaller inputs, comma-separated")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--max-minutes", type=float, default=15.0, help="per batcher run")
    parser.add_argument("--live", action="store_true", help="no snapshot of the code")
    parser.add_argument("--no-run", action="store_true", help="measure estimate only")
    args = parser.parse_args()

    code = snapshot_code(live=args.live)
    env = child_env(True, code["path"])
    sizes = sorted({int(s) for s in args.sizes.split(",") if s and int(s) < args.rows})
    sizes.append(args.rows)
    inputs = {}
    for n in sizes:
        log(f"input: {n} rows")
        inputs[n] = make_jsonl(BENCH_TMP / f"prompts-{n}.jsonl", n)

    result: dict = {"machine": machine(), "code": code, "settings": vars(args)}
    result.update(run=[], estimate=None)
    probe = run_child([*batcher_cmd(), "estimate", "--help"], env=env)
    has_estimate = probe.returncode == 0
    if not has_estimate:
        result["estimate"] = "not available"
        result["estimate_probe"] = (probe.stderr or probe.stdout).strip().splitlines()[-1:]
    if not args.no_run:
        with MockServer(0.0, env=env) as server:
            for n in sizes:
                log(f"batcher run: {n} rows, c={args.concurrency}")
                row = measure_run(
                    inputs[n], n, server.url, args.concurrency, env, args.max_minutes * 60
                )
                log(f"  peak {row['peak_rss_mib']} MiB, {row['wall_s']} s, {row['wall_rps']} req/s")
                result["run"].append(row)
    if has_estimate:
        result["estimate"] = []
        for n in sizes:
            log(f"batcher estimate: {n} rows")
            result["estimate"].append(measure_estimate(inputs[n], n, env))
    runs = [r for r in result["run"] if r["returncode"] in (0, 1)]
    if len(runs) >= 2:
        first, last = runs[0], runs[-1]
        result["run_growth_mib_per_100k_rows"] = rnd(
            (last["peak_rss_mib"] - first["peak_rss_mib"]) / ((last["rows"] - first["rows"]) / 1e5),
            2,
        )
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
