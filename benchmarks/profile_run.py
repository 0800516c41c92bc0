"""Where `batcher run` spends its time: a py-spy profile of one job, aggregated as text.

    pip install py-spy
    python benchmarks/profile_run.py [--rows 20000] [-c 64] [--rate 250] [--native]
    python benchmarks/profile_run.py --raw FILE    # aggregate an existing raw profile

Starts the zero-latency mock server in its own process, then runs
`py-spy record --format raw --threads -- batcher run IN.jsonl -o OUT.parquet --base-url URL
-m mock-1 -c 64 -q --max-retries 0` (idle samples left out, so samples are CPU time of the
batcher process, all threads). The collapsed stacks are kept in
/tmp/batcher-bench/profile-raw.txt and summarised:

- phase: imports, the checking pass, resume index, part flushes, assembly (worker
  threads), and the sending phase on the event loop split into request producer, engine
  workers, results consumer and bare event-loop callbacks (by the function on the stack);
- inside the sending phase: by the innermost batcher function on the stack (time in the
  libraries it calls included), and by the library at the leaf (aiohttp, asyncio...);
- top functions by self time and by inclusive time (file:function).

Percentages are of all samples. Prints text, or JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections import Counter, defaultdict
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
    remove,
    run_child,
    snapshot_code,
)

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (phase, module file, function): the first rule whose function is on the stack wins.
PHASES = [
    ("imports (start-up and lazy)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("check pass (scan, worker thread)", "batcher/requests.py", "scan"),
    ("resume index (worker thread)", "batcher/job.py", "Job._resume_index"),
    (
        "part flush (results -> parquet part, worker thread)",
        "batcher/results.py",
        "PartWriter.flush",
    ),
    (
        "part flush (results -> parquet part, worker thread)",
        "batcher/results.py",
        "PartWriter.write",
    ),
    ("assembly (parts + input -> OUT, worker thread)", "batcher/job.py", "Job._assemble"),
    ("part flush (results -> parquet part, worker thread)", "batcher/results.py", "write_atomic"),
    (
        "send: request producer (read, build, hash, resume check)",
        "batcher/engine.py",
        "_taker.<locals>.take_next",  # workers read a plain iterator themselves
    ),
    (
        "send: request producer (read, build, hash, resume check)",
        "batcher/engine.py",
        "_taker.<locals>.produce",  # an async iterator: a producer task
    ),
    (
        "send: engine workers (engine, limits, client, aiohttp request)",
        "batcher/engine.py",
        "Engine.run_batches.<locals>.work",
    ),
    ("send: results consumer (Job._send: tally, part buffer)", "batcher/job.py", "Job._send"),
    (
        "send: event loop callbacks (aiohttp protocol, transports)",
        "asyncio/events.py",
        "Handle._run",
    ),
    ("event loop (select, scheduling)", "asyncio/base_events.py", "BaseEventLoop._run_once"),
]
# Leaf frames that are a blocked wait which py-spy takes for work (thread pool queue.get).
IDLE_LEAVES = {("concurrent/futures/thread.py", "_worker", "81")}
SEND = "send: "
IDLE_SAMPLES = [0]  # samples dropped as idle by the last parse()


def short(path: str) -> str:
    """A readable file name: batcher/x.py, aiohttp/x.py, asyncio/x.py."""
    path = path.replace("\\", "/")
    if "/batcher/" in path and "site-packages" not in path:
        return "batcher/" + path.rsplit("/batcher/", 1)[1]
    for marker in ("site-packages/", "/python3.11/", "/python3.12/", "/python3.10/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def parse(raw: Path) -> list[tuple[str, list[tuple[str, str]], int]]:
    """(thread, [(file, function) root first], samples) per collapsed stack."""
    stacks = []
    labels: dict[str, str] = {}
    idle = [0]
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        body, _, count = line.rpartition(" ")
        frames = body.split(";")
        thread = frames[0] if frames and frames[0].startswith("thread ") else "thread ?"
        tid = thread.split(")", 1)[0] + ")"  # "thread (123): MainThread" -> "thread (123)"
        labels[tid] = max(labels.get(tid, ""), thread, key=len)
        out = []
        leaf_line = None
        for f in frames[1:] if thread != "thread ?" else frames:
            m = FRAME.match(f)
            if m:
                out.append((short(m["file"]), m["func"]))
                leaf_line = m["line"]
            else:
                out.append(("?", f))
                leaf_line = None
        if out and (*out[-1], leaf_line) in IDLE_LEAVES:
            idle[0] += int(count)
            continue
        stacks.append((tid, out, int(count)))
    IDLE_SAMPLES[0] = idle[0]
    return [(labels[tid], out, n) for tid, out, n in stacks]


def phase_of(frames: list[tuple[str, str]]) -> str:
    names = set(frames)
    for phase, file, func in PHASES:
        if (file, func) in names:
            return phase
    if any(f.startswith("batcher/") for f, _ in frames):
        return "other batcher (cli, job set-up)"
    return "other (interpreter start/exit, threads)"


def innermost_batcher(frames: list[tuple[str, str]]) -> str | None:
    """The deepest batcher function on the stack, below the event loop's callback."""
    for file, func in reversed(frames):
        if (file, func) == ("asyncio/events.py", "Handle._run"):
            return None
        if file.startswith("batcher/"):
            return f"{file}:{func}"
    return None


def component_of(phase: str, frames: list[tuple[str, str]]) -> str:
    """One bucket per part of batcher (C calls such as orjson, hashlib and pyarrow count
    for the Python function that made them)."""
    if not phase.startswith(SEND) and not phase.startswith("event loop"):
        return phase
    if phase.startswith("event loop"):
        return "asyncio event loop (select, scheduling)"
    owner = innermost_batcher(frames)
    if owner is None:
        return "aiohttp/asyncio callbacks (protocol data_received, transport writes)"
    file, func = owner.split(":", 1)
    if owner == "batcher/client.py:Client.post" and frames[-1][0] != "batcher/client.py":
        return "aiohttp request/response (ClientSession under Client.post)"
    if file == "batcher/client.py":
        return "client: post, read, parse reply (orjson.loads)"
    if func in ("request_hash", "_hash"):
        return "request hash (orjson.dumps sorted + sha256), producer"
    if file in ("batcher/requests.py", "batcher/inputs.py"):
        return "producer: read input again, build request bodies"
    if file == "batcher/resume.py":
        return "resume lookups per request (DoneIndex.is_done, blake2b)"
    if file == "batcher/engine.py":
        return "engine (queues, _process, _send, to_result, orjson.dumps)"
    if file == "batcher/limits.py":
        return "limits (ConcurrencyLimit, RateLimiter.observe)"
    if file == "batcher/retry.py":
        return "retry (with_retries)"
    if file == "batcher/job.py":
        return "job consumer (Job._send: tally, part buffer)"
    return owner


def library_of(file: str) -> str:
    if file.startswith("batcher/"):
        return file
    head = file.split("/", 1)[0]
    if head.endswith(".py"):
        head = head[:-3]
    if file.startswith("<frozen"):
        return "importlib"
    return head


def aggregate(stacks: list[tuple[str, list[tuple[str, str]], int]], top: int = 25) -> dict:
    total = sum(n for _, _, n in stacks)
    pct = lambda n: round(100.0 * n / total, 1)  # noqa: E731
    threads: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    self_by_caller: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    send_owner: Counter[str] = Counter()
    send_leaf_lib: Counter[str] = Counter()
    components: Counter[str] = Counter()
    per_thread_phase: dict[str, Counter[str]] = defaultdict(Counter)
    for thread, frames, n in stacks:
        threads[thread] += n
        phase = phase_of(frames)
        phases[phase] += n
        per_thread_phase[thread][phase] += n
        components[component_of(phase, frames)] += n
        if frames:
            leaf = frames[-1]
            self_time[f"{leaf[0]}:{leaf[1]}"] += n
            caller = innermost_batcher(frames) or "-"
            self_by_caller[f"{leaf[0]}:{leaf[1]}  <-  {caller}"] += n
        for name in {f"{file}:{func}" for file, func in frames}:
            inclusive[name] += n
        if phase.startswith(SEND):
            owner = innermost_batcher(frames) or "(no batcher frame: asyncio/aiohttp callbacks)"
            send_owner[owner] += n
            send_leaf_lib[library_of(frames[-1][0]) if frames else "?"] += n
    send = sum(n for p, n in phases.items() if p.startswith(SEND))
    return {
        "samples": total,
        "idle_samples_dropped": IDLE_SAMPLES[0],
        "send_phase_pct": pct(send),
        "threads": {
            t: {"pct": pct(n), "phases": top_of(per_thread_phase[t], pct, 4)}
            for t, n in threads.most_common()
        },
        "phases": top_of(phases, pct, 20),
        "by_component": top_of(components, pct, 30),
        "send_by_innermost_batcher_function": top_of(send_owner, pct, top),
        "send_by_leaf_library": top_of(send_leaf_lib, pct, 15),
        "top_self": top_of(self_time, pct, top),
        "top_self_by_innermost_batcher_caller": top_of(self_by_caller, pct, top),
        "top_inclusive_batcher": top_of(
            Counter({k: v for k, v in inclusive.items() if k.startswith("batcher/")}), pct, top
        ),
        "top_inclusive_all": top_of(inclusive, pct, top),
    }


def top_of(counter: Counter[str], pct, n: int) -> list[list]:
    return [[name, pct(count)] for name, count in counter.most_common(n)]


def render(report: dict) -> str:
    lines = [f"samples: {report['samples']} (CPU time of all threads; % of all samples)"]
    for key, value in report.items():
        if key in ("samples", "machine", "code", "command", "wall_s"):
            continue
        if not isinstance(value, (dict, list)):
            lines.append(f"{key.replace('_', ' ')}: {value}")
            continue
        lines.append("")
        lines.append(key.replace("_", " ") + ":")
        if isinstance(value, dict):
            for name, info in value.items():
                lines.append(f"  {info['pct']:5.1f}%  {name}  {info['phases']}")
        else:
            for name, p in value:
                lines.append(f"  {p:5.1f}%  {name}")
    return "\n".join(lines)


def record(rows: int, c: int, rate: int, native: bool, raw: Path, code: dict) -> dict:
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    env = child_env(True, code["path"])
    inp = make_jsonl(BENCH_TMP / f"prompts-{rows}.jsonl", rows)
    out = BENCH_TMP / "out" / "profile.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    remove(out)
    remove(out.with_name(out.name + ".batcher"))
    with MockServer(0.0, env=env) as server:
        cmd = [*batcher_cmd(), "run", str(inp), "-o", str(out), "--base-url", server.url]
        cmd += ["-m", "mock-1", "-c", str(c), "-q", "--max-retries", "0"]
        # warm the bytecode cache first, so the profile does not show compilation
        run_child([*cmd[:3], str(make_jsonl(BENCH_TMP / "prompts-warmup.jsonl", 500)), *cmd[4:]])
        remove(out)
        spy = ["py-spy", "record", "--format", "raw", "--threads", "-r", str(rate), "-o", str(raw)]
        if native:
            spy.append("--native")
        log("profiling:", " ".join(cmd))
        done = run_child([*spy, "--", *cmd], env=env)
    remove(out)
    if done.returncode != 0:
        raise SystemExit(f"py-spy / batcher failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"command": " ".join(cmd), "wall_s": round(done.wall_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description="py-spy profile of batcher run, as text")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--native", action="store_true", help="C frames too (slower)")
    parser.add_argument("--raw", type=Path, help="aggregate this raw file, run nothing")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", action="store_true", help="JSON instead of text")
    parser.add_argument("--live", action="store_true", help="no snapshot of the code")
    args = parser.parse_args()

    info: dict = {}
    raw = args.raw
    if raw is None:
        raw = BENCH_TMP / "profile-raw.txt"
        code = snapshot_code(live=args.live)
        info = {"machine": machine(), "code": code}
        info.update(record(args.rows, args.concurrency, args.rate, args.native, raw, code))
        log(f"raw profile: {raw}")
    report = {**info, **aggregate(parse(raw), args.top)}
    print(json.dumps(report, indent=2) if args.json else render(report))


if __name__ == "__main__":
    main()
