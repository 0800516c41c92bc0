"""Promise: options that contradict each other are an error naming both, and every failure
of the surroundings (a full disk, a closed stream, a lock that is a folder, a hang-up) ends
in one line and its documented exit code, with nothing lost (issue 13, items 17-18).

Each case runs `python -m batcher` against the mock API on loopback.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from reliability_support import (
    Batcher,
    clean_env,
    error_lines,
    read_rows,
    rows,
    run_args,
    run_batcher,
    wait_for,
    write_jsonl,
)
from test_trust_data import FULL_DISK, durable, job_dir_of

# --- 17. contradicting options --------------------------------------------------------------

TEXT_ROWS = [{"id": i, "text": f"t{i}", "prompt": f"p{i}"} for i in range(3)]
MESSAGE_ROWS = [{"id": i, "messages": [{"role": "user", "content": "hi"}]} for i in range(3)]
BATCH_LINES = [
    {
        "custom_id": f"c{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    }
    for i in range(3)
]

# (rows of the input, arguments, the one error line)
CONFLICTS = {
    "template_and_messages_template": (
        TEXT_ROWS,
        ("-m", "m", "--template", "{{text}}", "--messages-template", "{templates}/t.json"),
        "give --template or --messages-template, not both",
    ),
    "param_and_named_option": (
        TEXT_ROWS,
        ("-m", "m", "--param", "temperature=2", "--temperature", "0.5"),
        "--param temperature and --temperature both set 'temperature'; give one",
    ),
    "sweep_and_named_option": (
        TEXT_ROWS,
        ("-m", "m", "--sweep", "temperature=0,1", "--temperature", "1"),
        "--sweep temperature and --temperature both set 'temperature'; give one",
    ),
    "sweep_and_param": (
        TEXT_ROWS,
        ("-m", "m", "--sweep", "temperature=0,1", "--param", "temperature=1"),
        "--sweep temperature and --param temperature both set 'temperature'; give one",
    ),
    "empty_sweep_value": (
        TEXT_ROWS,
        ("-m", "m", "--sweep", "temperature=,"),
        "Invalid value for --sweep: 'temperature=,' has an empty value; write each one out "
        "(\"\" for an empty string) (see 'batcher run --help')",
    ),
    "template_over_a_conversation": (
        MESSAGE_ROWS,
        ("-m", "m", "--template", "x"),
        "{input}: line 1: the row has 'messages' and --template would replace them; drop "
        "--template, or name another --messages-column",
    ),
    "models_over_batch_api_lines": (
        BATCH_LINES,
        ("-m", "a", "-m", "b"),
        "{input}: line 1: the Batch API line names its own model ('gpt-4o') and -m names 'a', "
        "'b'; give one of them",
    ),
    "text_output": (
        TEXT_ROWS,
        ("-m", "m", "-o", "{tmp}/out.txt"),
        "{tmp}/out.txt: name the output .parquet (a file), a name without a suffix (a Parquet "
        "dataset folder), .jsonl or .csv; not .txt",
    ),
    "actors_on_the_local_engine": (
        TEXT_ROWS,
        ("-m", "m", "--actors", "4"),
        "--actors is for --engine ray; add --engine ray or drop it",
    ),
    "ray_address_on_the_local_engine": (
        TEXT_ROWS,
        ("-m", "m", "--ray-address", "auto"),
        "--ray-address is for --engine ray; add --engine ray or drop it",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFLICTS))
def test_contradicting_options_exit_2_naming_both(api, tmp_path, case):
    items, args, message = CONFLICTS[case]
    (tmp_path / "t.json").write_text(json.dumps([{"role": "user", "content": "{text}"}]))
    data = write_jsonl(tmp_path / "in.jsonl", items)
    fill = {"templates": tmp_path, "input": data, "tmp": tmp_path}
    args = tuple(a.format(**fill) for a in args)
    output = () if "-o" in args else ("-o", tmp_path / "out.parquet")
    ran = run_batcher("run", data, *output, "--base-url", api.url, *args)
    assert (ran.code, error_lines(ran.stderr)) == (2, ["Error: " + message.format(**fill)])
    assert len(api.log) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == []


def test_cost_json_and_csv_contradict(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(3))
    out = tmp_path / "out.parquet"
    assert run_batcher("run", data, "-o", out, "--base-url", api.url, "-m", "m", "-q").code == 0
    ran = run_batcher("cost", out, "--json", "--csv")
    assert (ran.code, error_lines(ran.stderr)) == (2, ["Error: give --json or --csv, not both"])


def test_batcher_json_is_the_variable_users_type(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(1))
    out = tmp_path / "out.parquet"
    ran = run_batcher(
        *run_args(data, out, api.url),
        "-q",
        env=clean_env(BATCHER_JSON="1"),
    )
    assert ran.code == 0, ran.stderr
    assert api.log[0].body["response_format"] == {"type": "json_object"}


def test_estimate_counts_the_sweep_and_hides_run_only_options(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(3))
    ran = run_batcher(
        "estimate", data, "-m", "a", "-m", "b", "--sweep", "temperature=0,1", "--samples", "2"
    )
    assert ran.code == 0, ran.stderr
    assert ran.stdout.splitlines()[0] == (
        "requests: 24 (3 rows x 2 models x 2 combinations x 2 samples)"
    )
    shown = run_batcher("estimate", "--help").stdout
    for run_only in ("--max-cost", "--fresh", "--cache", "--keep-job-dir", "--output", "--flush"):
        assert run_only not in shown, run_only


def test_an_interrupted_fresh_run_says_to_resume_without_fresh(make_api, tmp_path):
    api = make_api(latency=0.02)
    data = write_jsonl(tmp_path / "in.jsonl", rows(600))
    out = tmp_path / "out.parquet"
    args = ("run", data, "-o", out, "--base-url", api.url, "-m", "m", "-c", "4")
    job = Batcher(*args, "--fresh", "--flush-rows", "20")
    wait_for(lambda: durable(out) > 0, what="a first part")
    job.send_signal(signal.SIGINT)
    ran = job.wait()
    assert ran.code == 130, ran.stderr
    assert error_lines(ran.stderr)[-1] == (
        f"interrupted: finished results are saved in {job_dir_of(out)}; run the same command "
        "again without --fresh to resume"
    )
    saved = durable(out)
    api.reset()
    assert run_batcher(*args, "-q").code == 0
    assert len(api.log) == 600 - saved  # what was saved was not sent again


# --- 18. the surroundings fail --------------------------------------------------------------


def test_a_full_disk_at_the_start_sends_nothing(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(10))
    out = tmp_path / "out.parquet"
    full = tmp_path / "disk-is-full"
    full.touch()
    ran = run_batcher(
        *run_args(data, out, api.url),
        prelude=FULL_DISK,
        env=clean_env(FULL_DISK=str(full)),
    )
    assert (ran.code, error_lines(ran.stderr)) == (
        74,
        [
            f"Error: disk full writing {job_dir_of(out)}/job.json: nothing was sent; free space "
            "and run the same command again"
        ],
    )
    assert len(api.log) == 0 and not out.exists()


# OUT (and only OUT) cannot be written: the disk fills once every result is saved.
FULL_AT_ASSEMBLY = """
import errno, os
import pyarrow.parquet as pq
init, write = pq.ParquetWriter.__init__, pq.ParquetWriter.write_table
def init_out(self, where, *args, **kwargs):
    self.out = "part-" not in str(where)
    init(self, where, *args, **kwargs)
def write_out(self, *args, **kwargs):
    if self.out:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write(self, *args, **kwargs)
pq.ParquetWriter.__init__ = init_out
pq.ParquetWriter.write_table = write_out
"""


def test_a_full_disk_while_out_is_written_keeps_every_result(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(50))
    out = tmp_path / "out.parquet"
    args = ("run", data, "-o", out, "--base-url", api.url, "-m", "m")
    ran = run_batcher(*args, prelude=FULL_AT_ASSEMBLY)
    assert (ran.code, error_lines(ran.stderr)) == (
        74,
        [
            f"Error: disk full writing {out}: every result is saved in {job_dir_of(out)}; free "
            "space and run the same command again"
        ],
    )
    assert not out.exists() and durable(out) == 50
    api.reset()
    assert run_batcher(*args, "-q").code == 0
    assert len(api.log) == 0 and len(read_rows(out)) == 50


def test_the_output_folder_removed_mid_run_is_one_line(make_api, tmp_path):
    api = make_api(latency=0.02)
    data = write_jsonl(tmp_path / "in.jsonl", rows(3000))
    folder = tmp_path / "results"
    folder.mkdir()
    out = folder / "out.parquet"
    job = Batcher(
        "run", data, "-o", out, "--base-url", api.url, "-m", "m", "-c", "4", "--flush-rows", "20"
    )
    wait_for(lambda: durable(out) > 0, what="a first part")
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    ran = job.wait()
    assert ran.code == 74, ran.stderr
    (line,) = error_lines(ran.stderr)
    assert line.startswith(f"Error: no such file or directory writing results to {folder}/")
    assert line.endswith(
        "finished results could not be saved and will be sent again; its folder was removed "
        "while the job ran: make it again, and run the same command again"
    )


def test_a_lock_path_that_is_a_folder_and_a_symlink_loop_are_one_line(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(3))
    out = tmp_path / "out.parquet"
    (tmp_path / ".out.parquet.lock").mkdir()
    ran = run_batcher("run", data, "-o", out, "--base-url", api.url, "-m", "m")
    assert (ran.code, error_lines(ran.stderr)) == (
        2,
        [
            f"Error: {tmp_path}/.out.parquet.lock: cannot lock {out} with it: is a directory, "
            "not a file"
        ],
    )
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    ran = run_batcher("run", loop, "-o", tmp_path / "l.parquet", "--base-url", api.url, "-m", "m")
    assert (ran.code, error_lines(ran.stderr)) == (
        2,
        [f"Error: {loop}: cannot read: too many levels of symbolic links"],
    )
    assert len(api.log) == 0


def shell_run(command: str, cwd) -> subprocess.CompletedProcess:
    """`command` in a shell (for its redirections), `batcher` being this Python's."""
    batcher = f"{sys.executable} -m batcher"
    return subprocess.run(
        command.replace("batcher ", batcher + " ", 1),
        shell=True,
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize("redirect", [">&-", "2>&-", ">&- 2>&-"])
def test_closed_standard_streams_still_write_out(api, tmp_path, redirect):
    write_jsonl(tmp_path / "in.jsonl", rows(20))
    done = shell_run(
        f"batcher run in.jsonl -o out.parquet --base-url {api.url} -m m {redirect}", tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert len(read_rows(tmp_path / "out.parquet")) == 20


def test_stdout_on_a_full_device_is_exit_74_with_out_written(api, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", rows(20))
    done = shell_run(
        f"batcher run in.jsonl -o out.parquet --base-url {api.url} -m m -q > /dev/full", tmp_path
    )
    assert done.returncode == 74, done.stderr
    assert done.stderr.decode().splitlines() == [
        "cannot write to standard output (No space left on device); wrote out.parquet"
    ]
    assert len(read_rows(tmp_path / "out.parquet")) == 20


def test_sighup_stops_like_sigterm_and_the_rerun_resumes(make_api, tmp_path):
    api = make_api(latency=0.02)
    data = write_jsonl(tmp_path / "in.jsonl", rows(600))
    out = tmp_path / "out.parquet"
    args = ("run", data, "-o", out, "--base-url", api.url, "-m", "m", "-c", "4")
    job = Batcher(*args, "--flush-rows", "20")
    wait_for(lambda: durable(out) > 0, what="a first part")
    job.send_signal(signal.SIGHUP)
    ran = job.wait()
    assert ran.code == 129, ran.stderr
    assert error_lines(ran.stderr)[-1] == (
        f"interrupted: finished results are saved in {job_dir_of(out)}; run the same command "
        "again to resume"
    )
    saved, sent = durable(out), len(api.log)
    assert sent - saved <= 4  # only what was in flight is sent again
    api.reset()
    assert run_batcher(*args, "-q").code == 0
    assert len(api.log) == 600 - saved


# A SIGTERM that arrives once OUT is written, while the job folder is being removed.
TERM_AFTER_OUT = """
import os, signal
import batcher.io.jobdir as jobdir
remove = jobdir.JobDir.remove
def remove_and_term(self):
    os.kill(os.getpid(), signal.SIGTERM)
    remove(self)
jobdir.JobDir.remove = remove_and_term
"""


def test_a_signal_after_out_is_written_ends_the_job_normally(api, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", rows(30))
    out = tmp_path / "out.parquet"
    ran = run_batcher(
        "run", data, "-o", out, "--base-url", api.url, "-m", "m", prelude=TERM_AFTER_OUT
    )
    assert ran.code == 0, ran.stderr
    assert ran.stdout == f"{out}\n"
    assert ran.stderr.splitlines()[-1] == f"wrote {out}"
    assert "saved in" not in ran.stderr and "interrupted" not in ran.stderr
    assert len(read_rows(out)) == 30
