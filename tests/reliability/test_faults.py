"""Promise: through a fifth of attempts failing in mixed ways, every row still ends ok, each
request is answered once, the `attempts` column accounts for every request the server saw,
and the output has one row per (id, model) in input order.
"""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest
from reliability_support import rows, run_batcher, write_jsonl

# 429 (with retry-after-ms 50), 5xx, 529, dropped connections, hangs past --timeout,
# truncated, HTML and empty bodies: every retryable way an attempt can fail.
FAULTS = ("429", "500", "502", "503", "529", "drop", "hang", "truncated", "html", "empty")
N = 2000


# The wall time is set by the unluckiest row: exponential backoff (1 s, 2 s, 4 s, ...) after
# each failure, so a row failing 6 times in a row (expected in ~1 run in 2) takes ~35 s and
# one failing 7 times ~65 s. The timeout leaves room for that tail.
@pytest.mark.timeout(300)
def test_every_row_ends_ok_and_attempts_match_the_server_log(make_api, tmp_path):
    api = make_api(fail_rate=0.2, faults=FAULTS, seed=20240617, hang_seconds=5.0)
    data = write_jsonl(tmp_path / "in.jsonl", rows(N))
    out = tmp_path / "out.parquet"
    ran = run_batcher(
        "run",
        data,
        "-o",
        out,
        "--base-url",
        api.url,
        "-m",
        "mock-1",
        "--timeout",
        "0.5",
        "--max-retries",
        "10",
        "-q",
        timeout=280,
    )
    log = list(api.log)
    assert ran.code == 0, ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr

    # The server really failed about a fifth of the attempts, in every one of the ways.
    faults = Counter(e.fault for e in log if e.fault is not None)
    share = sum(faults.values()) / len(log)
    assert 0.15 <= share <= 0.25, f"{sum(faults.values())} of {len(log)} attempts failed"
    assert set(faults) == set(FAULTS), f"fault kinds seen: {dict(faults)}"

    table = pq.read_table(out)
    statuses = Counter(table.column("status").to_pylist())
    assert statuses == {"ok": N}, f"statuses: {dict(statuses)}"

    attempts = table.column("attempts").to_pylist()
    assert sum(attempts) == len(log), (
        f"attempts column sums to {sum(attempts)}, the server logged {len(log)} requests"
    )
    assert min(attempts) >= 1

    # Every request got exactly one good answer: none was sent again after it succeeded.
    answered = Counter(e.request_key for e in log if e.status == 200 and e.fault is None)
    assert len(answered) == N, f"{len(answered)} distinct requests answered, expected {N}"
    assert set(answered.values()) == {1}, f"answered twice: {answered.most_common(3)}"

    keys = list(zip(table.column("id").to_pylist(), table.column("model").to_pylist()))
    twice = [k for k, c in Counter(keys).items() if c > 1]
    assert not twice, f"(id, model) more than once: {twice[:5]}"
    assert [k[0] for k in keys] == [f"r{i}" for i in range(N)], "ids not in input order"
    print(
        f"\n{N} rows ok in {ran.seconds:.1f}s; server saw {len(log)} requests, "
        f"{sum(faults.values())} faults ({share:.1%}): {dict(faults)}; "
        f"attempts per row: {dict(sorted(Counter(attempts).items()))}"
    )
