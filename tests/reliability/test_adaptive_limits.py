"""Promise: without being told a limit, batcher finds it and stays near it; a few unlucky
rows never drag the job out; a failing server is spared.

Each test runs `python -m batcher` against the mock on loopback. The mock enforces its rpm
over a short window (`rpm_window`), as real servers do. Figures are bounds with room for a
noisy machine, never timings of the test itself; the targets are in benchmarks/adaptive.py.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter

import pyarrow.parquet as pq
from reliability_support import Batcher, rows, run_args, run_batcher, wait_for, write_jsonl

RPM = 6000  # 100 a second, enforced over each second


def job(api, tmp_path, n, *extra, prompt="question number {i}"):
    data = write_jsonl(tmp_path / "in.jsonl", rows(n, text=prompt))
    out = tmp_path / "out.parquet"
    args = (*run_args(data, out, api.url, "mock-1"), *extra)
    return args, out


def statuses(out) -> Counter:
    return Counter(pq.read_table(out).column("status").to_pylist())


def one_row_faulty(api, tmp_path, n, index, directive):
    """Run n rows at -c 4, row `index` carrying a mock fault directive."""
    data = rows(n)
    data[index]["prompt"] += f" {directive}"
    path = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "out.parquet"
    ran = run_batcher(*run_args(path, out, api.url, "mock-1"), "-c", "4")
    return ran, out


def learned_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("learned "))


def test_bare_429s_the_rate_is_found_and_said(make_api, tmp_path):
    """No header, no --rpm (Octen's case): the job finds ~6,000 rpm from 429s, says so, and
    far fewer requests meet a 429 than rows (one burst, then a probe now and then)."""
    api = make_api(rpm=RPM, rpm_window=1.0, ratelimit_style="bare", latency=0.005)
    args, out = job(api, tmp_path, 800)
    ran = run_batcher(*args, "-c", "32", timeout=120)
    assert ran.code == 0, ran.stderr
    assert statuses(out) == {"ok": 800}
    limited = sum(1 for e in api.log if e.status == 429)
    assert limited <= 120, f"{limited} 429s for 800 rows"
    match = re.fullmatch(r"learned ~([\d,]+) rpm from 429s for mock-1", learned_line(ran.stderr))
    assert match, ran.stderr
    assert 3000 <= int(match[1].replace(",", "")) <= 9000, match[0]


def test_limit_headers_set_the_rate_without_a_single_429(make_api, tmp_path):
    """OpenAI-style x-ratelimit-* on every reply: the limit is read from the first reply."""
    api = make_api(rpm=RPM, rpm_window=1.0, ratelimit_style="headers", latency=0.005)
    args, out = job(api, tmp_path, 400)
    ran = run_batcher(*args, "-c", "8", timeout=120)
    assert ran.code == 0, ran.stderr
    assert statuses(out) == {"ok": 400}
    assert learned_line(ran.stderr) == "learned ~6,000 rpm from headers for mock-1"
    limited = sum(1 for e in api.log if e.status == 429)
    assert limited <= 8, f"{limited} 429s with the limit in every reply's headers"


def test_a_stray_429_holds_back_its_own_row_only(make_api, tmp_path):
    """One row's 429 says retry-after 3 s: that row waits 3 s, the others go on at once (a
    job-wide pause used to hold every worker for it)."""
    api = make_api(latency=0.005)
    ran, out = one_row_faulty(api, tmp_path, 60, 5, "[[mock:429x1:retry=3]]")
    assert ran.code == 0, ran.stderr
    assert statuses(out) == {"ok": 60}
    log = list(api.log)
    retry = [e for e in log if "[[mock:" in json.dumps(e.body)][-1]
    others = [e.t for e in log if "[[mock:" not in json.dumps(e.body)]
    assert max(others) < retry.t - 2.0, "the other rows waited for the stray 429's retry-after"


def test_transient_failures_are_retried_soon_while_the_server_is_healthy(make_api, tmp_path):
    """Three 500s in a row for one row, every other row fine: its four attempts come within a
    second (the backoff used to be 1 + 2 + 4 s)."""
    api = make_api(latency=0.005)
    ran, out = one_row_faulty(api, tmp_path, 40, 7, "[[mock:500x3]]")
    assert ran.code == 0, ran.stderr
    table = pq.read_table(out).to_pylist()
    assert [r["attempts"] for r in table if r["id"] == "r7"] == [4]
    tries = [e.t for e in api.log if "[[mock:" in json.dumps(e.body)]
    assert len(tries) == 4 and tries[-1] - tries[0] < 1.5, [round(t - tries[0], 2) for t in tries]


def test_a_server_failing_everything_gets_a_trickle(make_api, tmp_path):
    """Every attempt a 503: once the retry quota is spent, one attempt a second goes out,
    new rows included; Ctrl-C still ends the job at once with nothing lost."""
    api = make_api(latency=0.005, fail_rate=1.0, faults=("503",))
    args, _ = job(api, tmp_path, 2000)
    proc = Batcher(*args, "-c", "64")
    wait_for(lambda: api.log and api.log[-1].t - api.log[0].t > 8, timeout=60, what="8 s")
    t0 = api.log[0].t
    late = [e.t for e in api.log if e.t - t0 > 4]
    proc.send_signal(signal.SIGINT)
    ran = proc.wait(30)
    assert ran.code == 130, ran.stderr
    assert len(late) <= 8, f"{len(late)} attempts between 4 s and 8 s"
    assert len(api.log) < 2000, f"{len(api.log)} attempts for 2,000 rows"


def test_a_rerun_starts_at_the_rate_learned(make_api, tmp_path):
    """Interrupted after it found the limit, the job folder keeps it (limits.json); the rerun
    paces from its first request instead of bursting into 429s again."""
    api = make_api(rpm=RPM, rpm_window=1.0, ratelimit_style="bare", latency=0.005)
    args, out = job(api, tmp_path, 3000)
    proc = Batcher(*args, "-c", "32")
    wait_for(lambda: sum(1 for e in api.log if e.status == 200) > 600, timeout=60, what="600 ok")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30).code == 130
    saved = json.loads((tmp_path / "out.parquet.batcher" / "limits.json").read_text())
    [(endpoint, models)] = saved.items()
    assert endpoint == api.url and list(models) == ["mock-1"]
    rpm, source = models["mock-1"]["rpm"]
    assert source == "429s" and 3000 <= rpm <= 9000, saved
    time.sleep(1.1)  # the server's window empties
    api.reset()
    ran = run_batcher(*args, "-c", "32", timeout=120)
    assert ran.code == 0, ran.stderr
    first_second = [e for e in api.log if e.t - api.log[0].t < 1.0]
    limited = sum(1 for e in first_second if e.status == 429)
    assert limited <= 3, f"{limited} 429s in the rerun's first second"
    assert statuses(out) == {"ok": 3000}
