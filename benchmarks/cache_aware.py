"""Prompt-cache hits and cost with and without `--cache-aware`, against the mock server.

    python benchmarks/cache_aware.py [--rows 16000] [--prefixes 4000] [--rounds 3]

The input is a few-shot labelling job: every row is one of `--prefixes` long contexts
(about 1,500 mock tokens each, drawn at random per row, so the rows sharing one are
scattered through the file) followed by its own question. The mock server reports cached
tokens the way providers do: a prefix of 1,024+ tokens is cached once its first request has
been answered, in 128-token steps, and forgotten `--window` seconds after its last use.

Prompt caches live for minutes (OpenAI and Anthropic: 5 or more) and a job comes back to a
prefix after (rows between two uses) / (request rate): whether it is still cached depends on
that against the lifetime. The run is scaled down 60x: 0.2 s latency at -c 64 (~320
requests/s) and a 5 s lifetime stand for 12 s at 320 requests/s and 5 minutes; 16,000 rows
over 4,000 contexts (4 rows each, scattered) are a document-QA or few-shot job that comes
back to a context every ~12 s (every ~12 minutes at full scale), on average.

Figures per mode (medians of alternating rounds): the hit rate (cached over prompt tokens),
the cost at gpt-4.1's list prices ($2 input, $0.50 cached input, $8 output per million),
the cost without any cache hit, and the wall time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH_TMP,
    WORDS,
    MockServer,
    batcher_cmd,
    child_env,
    log,
    machine,
    run_child,
    snapshot_code,
)

PRICES = """["mock-1"]
input_per_million = 2.0
cached_input_per_million = 0.5
output_per_million = 8.0
"""


def make_input(path: Path, rows: int, prefixes: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    contexts = []
    for k in range(prefixes):
        shots = [f"Context {k}. Label each ticket as billing, shipping or other."]
        while sum(len(s) for s in shots) < 6000:
            words = " ".join(rng.choice(WORDS) for _ in range(12))
            shots.append(f"Ticket: {words}\nLabel: {rng.choice(['billing', 'shipping'])}")
        contexts.append("\n\n".join(shots))
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            system = contexts[rng.randrange(prefixes)]
            question = " ".join(rng.choice(WORDS) for _ in range(10))
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Ticket {i}: {question}"},
            ]
            f.write(json.dumps({"id": f"r{i}", "messages": messages}) + "\n")


def run_mode(url: str, data: Path, mode: str, env: dict, prices: Path) -> dict:
    out = BENCH_TMP / f"cache-{mode}.parquet"
    cmd = [*batcher_cmd(), "run", str(data), "-o", str(out), "--base-url", url, "-m", "mock-1"]
    cmd += ["-c", "64", "--fresh", "-q", f"--{mode}", "--prices", str(prices)]
    done = run_child(cmd, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"batcher run --{mode} failed: {done.stderr[-800:]}")
    cost = run_child([*batcher_cmd(), "cost", str(out), "--json", "--prices", str(prices)], env=env)
    total = json.loads(cost.stdout)["total"]
    uncached = total["cost_usd"] + total["saved_by_cache_usd"]
    return {
        "hit_rate": total["cache_hit_rate"],
        "cost_usd": total["cost_usd"],
        "cost_without_hits_usd": uncached,
        "ok": total["ok"],
        "wall_s": done.wall_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16000)
    parser.add_argument("--prefixes", type=int, default=4000)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--live", action="store_true", help="Run the tree as it is.")
    args = parser.parse_args()
    code = snapshot_code(args.live)
    env = child_env(True, Path(code["path"]) if code["path"] else None)
    BENCH_TMP.mkdir(parents=True, exist_ok=True)
    data = BENCH_TMP / f"cache-{args.rows}-{args.prefixes}.jsonl"
    make_input(data, args.rows, args.prefixes)
    prices = BENCH_TMP / "cache-prices.toml"
    prices.write_text(PRICES, encoding="utf-8")
    modes = ["no-cache-aware", "cache-aware"]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    options = ("--cache-window", str(args.window))
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            with MockServer(0.2, env=env, options=options) as server:  # a cold cache each run
                runs[mode].append(run_mode(server.url, data, mode, env, prices))
            log(f"round {r + 1} {mode}: {runs[mode][-1]}")
    result = {
        "rows": args.rows,
        "prefixes": args.prefixes,
        "window_s": args.window,
        "rounds": args.rounds,
        "code": code["digest"],
        "machine": machine(),
    }
    for mode in modes:
        result[mode] = {
            key: round(statistics.median(run[key] for run in runs[mode]), 4)
            for key in ("hit_rate", "cost_usd", "cost_without_hits_usd", "wall_s")
        }
    on, off = result["cache-aware"], result["no-cache-aware"]
    result["cost_ratio"] = round(on["cost_usd"] / off["cost_usd"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
