"""Helpers shared by the benchmark scripts: the mock server, children with their rusage,
input files, machine facts. Nothing here imports batcher (the scripts measure it from
outside, as a user runs it)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH_TMP = Path(os.environ.get("BATCHER_BENCH_TMP", "/tmp/batcher-bench"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

WORDS = (
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "chi",
    "psi",
    "omega",
    "kettle",
    "river",
    "copper",
    "lantern",
    "meadow",
    "harbour",
    "quiet",
)


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def batcher_cmd() -> list[str]:
    """The `batcher` console script of this interpreter (what `pip install` puts on PATH),
    else `python -m batcher`. Never the pyenv shim, whose own start-up is not batcher's."""
    script = Path(sys.executable).parent / "batcher"
    if script.exists() and not os.environ.get("BATCHER_BENCH_CODE"):
        return [str(script)]
    # An earlier snapshot (BATCHER_BENCH_CODE) runs as `python -m batcher`: the installed
    # script's entry point is the current tree's, which the snapshot may not have.
    return [sys.executable, "-m", "batcher"]


def child_env(pyc_cache: bool = True, code: Path | None = None) -> dict[str, str]:
    """The environment of measured children. With `pyc_cache`, bytecode is cached under
    /tmp (PYTHONPYCACHEPREFIX) even when PYTHONDONTWRITEBYTECODE is set, as an installed
    package has its .pyc files; without, the environment is left as it is. With `code`,
    batcher is imported from that folder (a snapshot, see `snapshot_code`)."""
    env = dict(os.environ)
    if pyc_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(BENCH_TMP / "pycache")
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    return env


def source_dir() -> Path:
    """The batcher package folder that `import batcher` finds (the editable tree)."""
    spec = importlib.util.find_spec("batcher")
    if spec is None or spec.origin is None:
        raise RuntimeError("batcher is not installed")
    return Path(spec.origin).parent


def code_digest(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def snapshot_code(live: bool = False, tries: int = 20, wait_s: float = 15.0) -> dict:
    """Freeze the code under test for a whole benchmark run.

    Others may edit batcher/ while a benchmark runs; a run that mixes versions (or meets a
    half-saved file) measures nothing. Unless `live`, the package is copied to
    /tmp/batcher-bench/code-<digest>/batcher, checked to import, and every child imports it
    from there (PYTHONPATH, and cwd outside the source tree). BATCHER_BENCH_CODE=FOLDER
    reuses an earlier snapshot, so several scripts measure the same code. Returns {"path":
    folder for PYTHONPATH or None, "digest", "source", "newest_mtime"}."""
    pinned = os.environ.get("BATCHER_BENCH_CODE")
    if pinned:  # a snapshot folder from an earlier run: measure exactly that code again
        package = Path(pinned) / "batcher"
        if not package.is_dir():
            raise RuntimeError(f"BATCHER_BENCH_CODE={pinned}: no batcher/ folder in it")
        return {
            "source": str(package),
            "digest": code_digest(package),
            "live": False,
            "path": pinned,
        }
    source = source_dir()
    for attempt in range(tries):
        digest = code_digest(source)
        newest = max(p.stat().st_mtime for p in source.rglob("*.py"))
        info = {
            "source": str(source),
            "digest": digest,
            "newest_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest)),
            "live": live,
        }
        if live:
            return {**info, "path": None}
        root = BENCH_TMP / f"code-{digest}"
        if not (root / "batcher").exists():
            tmp = BENCH_TMP / f".code-{digest}-{os.getpid()}"
            remove(tmp)
            shutil.copytree(source, tmp / "batcher", ignore=shutil.ignore_patterns("__pycache__"))
            if code_digest(tmp / "batcher") != digest:  # changed while copying
                remove(tmp)
                continue
            remove(root)
            tmp.rename(root)
        check = subprocess.run(
            [sys.executable, "-c", "import batcher.cli, batcher.job, batcher.mock"],
            env=child_env(True, root),
            cwd=BENCH_TMP,
            capture_output=True,
            text=True,
        )
        if check.returncode == 0:
            return {**info, "path": str(root)}
        last = check.stderr.strip().splitlines()[-1:] or ["?"]
        log(f"code snapshot {digest} does not import ({last[0]}); retry {attempt + 1}/{tries}")
        remove(root)
        time.sleep(wait_s)
    raise RuntimeError("batcher/ never imported cleanly: is someone in the middle of an edit?")


def make_jsonl(path: Path, rows: int, *, prompt_chars: int = 100, seed: int = 1) -> Path:
    """`rows` lines of {"id": "r<i>", "prompt": <about prompt_chars characters>}; reused when
    the file already holds that many lines."""
    if path.exists() and count_lines(path) == rows:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(rows):
            text = f"Question {i}:"
            while len(text) < prompt_chars:
                text += " " + rng.choice(WORDS)
            f.write(json.dumps({"id": f"r{i}", "prompt": text[:prompt_chars]}) + "\n")
    tmp.replace(path)
    return path


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


@dataclass
class Finished:
    """A child that ran to its end: exit code, wall time, its own CPU time and peak RSS."""

    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int
    stdout: str
    stderr: str
    started: float  # time.time() just before the spawn
    ended: float  # time.time() once reaped

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def run_child(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 1800.0,
    cwd: Path = BENCH_TMP,
) -> Finished:
    """Run `cmd` to its end and reap it with wait4, so the rusage is this child's alone."""
    BENCH_TMP.mkdir(parents=True, exist_ok=True)
    out_path = BENCH_TMP / f".child-{os.getpid()}.out"
    err_path = BENCH_TMP / f".child-{os.getpid()}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        ended = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    result = Finished(
        returncode=proc.returncode,
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        maxrss_kib=usage.ru_maxrss,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        started=started,
        ended=ended,
    )
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    return result


class MockServer:
    """`python -m batcher mock-server --port 0 ...` in its own process."""

    def __init__(
        self,
        latency: float = 0.0,
        *,
        env: dict[str, str] | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        self.latency = latency
        self.env = env
        self.options = options  # more `batcher mock-server` options: ("--rpm", "600")
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> MockServer:
        BENCH_TMP.mkdir(parents=True, exist_ok=True)
        self._err = open(BENCH_TMP / f"mock-server-{os.getpid()}.err", "wb")
        cmd = [sys.executable, "-m", "batcher", "mock-server", "--port", "0"]
        cmd += ["--latency", str(self.latency), *self.options]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._err, env=self.env, cwd=BENCH_TMP
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if b"listening on" in line or not line:
                    break
            if self.proc.poll() is not None:
                break
        text = line.decode().strip()
        if "listening on" not in text:
            self.__exit__()
            raise RuntimeError(f"mock server did not start: {text!r}")
        self.url = text.rsplit(" ", 1)[1]
        return self

    def cpu_s(self) -> float:
        """CPU seconds the server has used so far (from /proc; 0 where there is none)."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        with contextlib.suppress(Exception):
            self._err.close()
            if self.url:  # it started: its stderr is of no further interest
                Path(self._err.name).unlink(missing_ok=True)


def version_of(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "batcher": version_of("batcher"),
        "aiohttp": version_of("aiohttp"),
        "uvloop": version_of("uvloop"),
        "orjson": version_of("orjson"),
        "pyarrow": version_of("pyarrow"),
        "loadavg_at_start": list(os.getloadavg()),
        "batcher_cmd": batcher_cmd(),
    }


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
