"""Progress off a terminal (nohup, cron, CI): a line on stderr every --log-every seconds."""

from __future__ import annotations

import re

import click
from conftest import prompts, write_jsonl

from batcher.cli.run import ProgressLines
from batcher.progress import Progress

LINE = re.compile(
    r"progress: (\d+)/40 requests \(\d+%\), (\d+) ok, 0 errors, [\d,]+ tokens, \$\d+\.\d{4}, "
    r"\d+\.\d req/s(, ETA \d+\.\ds)?"
)


def test_a_line_every_log_every_seconds_off_a_terminal_and_none_with_quiet(cli, make_api, tmp_path):
    api = make_api(latency=0.05)
    data = write_jsonl(tmp_path / "in.jsonl", prompts(40))
    prices = tmp_path / "prices.toml"
    prices.write_text('["mock-1"]\ninput_per_million = 2.0\noutput_per_million = 8.0\n')
    args = ("run", data, "--base-url", api.url, "-m", "mock-1", "-c", "2", "--prices", prices)
    ran = cli(*args, "-o", tmp_path / "a.parquet", "--log-every", "0.2")
    assert ran.exit_code == 0, ran.stderr
    lines = [line for line in ran.stderr.splitlines() if line.startswith("progress: ")]
    assert len(lines) >= 3  # 40 requests, 2 at a time, 50 ms each: a second
    said = [LINE.fullmatch(line) for line in lines]
    assert None not in said, lines
    done = [int(m.group(1)) for m in said if m]
    assert (
        done == sorted(done)
        and done[-1] <= 40
        and [m.group(2) for m in said] == [str(n) for n in done]
    )
    quiet = cli(*args, "-o", tmp_path / "b.parquet", "--log-every", "0.2", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert cli(*args, "-o", tmp_path / "c.parquet", "--log-every", "0").exit_code == 2


def test_each_line_says_counts_tokens_cost_rate_eta_and_the_note(monkeypatch):
    now = [0.0]
    lines = ProgressLines(60, clock=lambda: now[0])
    said = []
    monkeypatch.setattr(click, "echo", lambda text, err: said.append(text))
    lines.update(Progress(100, 10_000, 99, 1, 2000, 1000))  # before 60 s: nothing
    now[0] = 60.0
    lines.update(Progress(1200, 10_000, 1198, 2, 40_000, 21_000, "~590 rpm from 429s", 0.421))
    now[0] = 90.0
    lines.update(Progress(1500, 10_000, 1500, 0, 50_000, 25_000))  # 30 s after: nothing
    now[0] = 200.0
    lines.update(Progress(9990, 10_000, 9990, 0, 1, 2, None, None))
    assert said == [
        "progress: 1,200/10,000 requests (12%), 1,198 ok, 2 errors, 61,000 tokens, $0.4210, "
        "20.0 req/s, ETA 7m 20s, ~590 rpm from 429s",
        "progress: 9,990/10,000 requests (99%), 9,990 ok, 0 errors, 3 tokens, 62.8 req/s, ETA 0.2s",
    ]
