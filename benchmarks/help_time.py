"""Start-up time: `batcher --help`, `batcher run --help` and `python -c "import batcher"`.

    python benchmarks/help_time.py [--runs 10]

Each command runs `--runs` times (interleaved, after one untimed warm-up each) in a fresh
subprocess; the median wall time is reported, with min and max. Two environments:

- cached: bytecode cached under /tmp (PYTHONPYCACHEPREFIX), as for an installed package;
- as_is: the environment unchanged. Where PYTHONDONTWRITEBYTECODE is set and the source
  tree has no __pycache__ (an editable install here), every start compiles batcher again.

Also `python -c "pass"` (the interpreter alone) and `python -X importtime` top entries
for `batcher --help`. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_TMP, batcher_cmd, child_env, log, machine, median, rnd, snapshot_code

PY = sys.executable


def commands() -> dict[str, list[str]]:
    return {
        "python -c pass": [PY, "-c", "pass"],
        "python -c 'import batcher'": [PY, "-c", "import batcher"],
        "batcher --help": [*batcher_cmd(), "--help"],
        "batcher run --help": [*batcher_cmd(), "run", "--help"],
        "python -c 'import batcher.job'": [PY, "-c", "import batcher.job"],
    }


def time_once(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        cmd,
        env=env,
        cwd=BENCH_TMP,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - t0


def time_all(env: dict, runs: int) -> dict:
    cmds = commands()
    samples: dict[str, list[float]] = {name: [] for name in cmds}
    for cmd in cmds.values():
        time_once(cmd, env)  # warm-up: page cache, and the bytecode cache when enabled
    for _ in range(runs):
        for name, cmd in cmds.items():
            samples[name].append(time_once(cmd, env))
    return {
        name: {
            "median_s": rnd(median(s), 4),
            "min_s": rnd(min(s), 4),
            "max_s": rnd(max(s), 4),
        }
        for name, s in samples.items()
    }


def import_profile(env: dict, top: int = 25) -> list[dict]:
    """The slowest imports (cumulative, any depth; depth 0 is imported by the command) of
    what `batcher run` loads before it reads the input (`batcher.cli`, `batcher.job`),
    from -X importtime."""
    cmd = [PY, "-X", "importtime", "-c", "import batcher.cli, batcher.job"]
    done = subprocess.run(cmd, env=env, cwd=BENCH_TMP, capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|")
        depth = (len(name) - len(name.lstrip())) // 2  # 0 for the top-level imports
        rows.append(
            {
                "module": name.strip(),
                "depth": depth,
                "cumulative_ms": int(cum_us) / 1000,
                "self_ms": int(self_us) / 1000,
            }
        )
    tops = list(rows)
    tops.sort(key=lambda r: -r["cumulative_ms"])
    return tops[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description="start-up time of batcher")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--live", action="store_true", help="no snapshot of the code")
    args = parser.parse_args()
    code = snapshot_code(live=args.live)
    result: dict = {"machine": machine(), "code": code, "runs": args.runs}
    cached, as_is = child_env(True, code["path"]), child_env(False, code["path"])
    for label, env in (("cached", cached), ("as_is", as_is)):
        log(f"timing ({label})...")
        result[label] = time_all(env, args.runs)
    result["env_as_is"] = {
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "batcher_source_has_pycache": any(
            (Path(p) / "__pycache__").exists() for p in _batcher_dirs(as_is)
        ),
    }
    result["import_profile_cached"] = import_profile(cached)
    print(json.dumps(result, indent=2))


def _batcher_dirs(env: dict) -> list[str]:
    out = subprocess.run(
        [PY, "-c", "import batcher, os; print(os.path.dirname(batcher.__file__))"],
        env=env,
        cwd=BENCH_TMP,
        capture_output=True,
        text=True,
    )
    return [out.stdout.strip()] if out.returncode == 0 else []


if __name__ == "__main__":
    main()
