"""Sources (file lists, folders, globs, http) and the command line contract."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SAMPLE, Procs, free_port, reference_output, serve_http, split_round_robin
from tally.errors import ConfigError, PartitionError
from tally.protocol import QuerySpec
from tally.storage.sources import expand_source, open_partition

STATS_KEYS = {
    "wall_s", "partitions", "attempts", "reassigned", "duplicates_dropped", "workers_lost",
    "malformed_lines", "workers",
}  # fmt: skip


def tally(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args], capture_output=True, timeout=60, check=False
    )


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    split_round_robin(SAMPLE, tmp_path / "parts", 10)
    return tmp_path / "parts"


@pytest.fixture
def http_root(parts: Path) -> Iterator[str]:
    with serve_http(parts) as root:
        yield root


def test_folder_glob_and_list_name_the_same_partitions(parts: Path) -> None:
    expected = [str(parts / f"part-{i:03d}.tsv") for i in range(10)]
    (parts / "_SUCCESS").write_text("")
    (parts / ".hidden").write_text("")
    assert expand_source(str(parts)) == expected
    assert expand_source(str(parts / "part-*.tsv")) == expected
    assert expand_source(f"file://{parts}/part-00*.tsv") == expected
    listed = [u.removeprefix("file://") for u in expand_source(str(parts / "filelist.csv"))]
    assert listed == expected
    relative = parts / "relative.txt"
    relative.write_text("# a comment\n\npart-000.tsv\n  part-001.tsv  \n")
    assert expand_source(str(relative)) == expected[:2]


def test_bad_sources_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        expand_source(str(tmp_path / "nope.csv"))
    with pytest.raises(ConfigError, match="names no partitions"):
        expand_source(str(tmp_path))
    (tmp_path / "empty.csv").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="names no partitions"):
        expand_source(str(tmp_path / "empty.csv"))


def test_missing_partition_is_a_retryable_partition_error(tmp_path: Path) -> None:
    with pytest.raises(PartitionError) as info:
        open_partition(str(tmp_path / "missing.tsv"))
    assert info.value.retryable


def test_http_partitions_and_http_file_list(parts: Path, http_root: str, tmp_path: Path) -> None:
    listing = tmp_path / "http-list.csv"
    listing.write_text("".join(f"{http_root}/part-{i:03d}.tsv\n" for i in range(10)))
    (parts / "remote-list.csv").write_text("".join(f"part-{i:03d}.tsv\n" for i in range(10)))
    assert expand_source(f"{http_root}/remote-list.csv") == [
        f"{http_root}/part-{i:03d}.tsv" for i in range(10)
    ]
    for source in (str(listing), f"{http_root}/remote-list.csv"):
        done = tally("run", source, "--workers", "2", "--domain", "google.ru", "-q")
        assert (done.returncode, done.stdout) == (0, b"5\n"), done.stderr


def test_missing_partition_fails_the_job_naming_it(parts: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    missing = parts / "part-999.tsv"
    listing.write_text((parts / "filelist.csv").read_text() + f"{missing}\n")
    done = tally("run", str(listing), "--workers", "2", "-q")
    assert done.returncode == 1 and done.stdout == b""
    assert f"partition 10 failed 3 time(s); last error: PartitionError: cannot open {missing}" in (
        done.stderr.decode()
    )
    stats = tmp_path / "stats.json"
    done = tally("run", str(listing), "--workers", "2", "--skip-failed", "--all", "-q",
                 "--stats", str(stats), "--format", "json")  # fmt: skip
    assert done.returncode == 3
    doc = json.loads(done.stdout)
    assert doc["complete"] is False and doc["failed_partitions"] == [str(missing)]
    assert sum(row["count"] for row in doc["rows"]) == 200
    record = json.loads(stats.read_text())
    assert record["failed_partitions"] == [str(missing)] and record["failed_attempts"] == 3
    assert "partial result: 1 partition(s) skipped" in done.stderr.decode()


def test_run_prints_reference_result_and_writes_stats(parts: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    done = tally("run", str(parts), "--workers", "3", "--top", "10", "--stats", str(stats))
    assert done.returncode == 0
    assert done.stdout.decode() == reference_output(SAMPLE, QuerySpec("top", k=10))
    record = json.loads(stats.read_text())
    assert set(record) >= STATS_KEYS
    assert record["partitions"] == 10 and record["malformed_lines"] == 0
    assert {"id", "partitions", "bytes", "busy_s"} <= set(record["workers"][0])
    assert sum(w["bytes"] for w in record["workers"]) == SAMPLE.stat().st_size
    assert b"done in" in done.stderr  # progress and summary on stderr only


def test_json_output_and_malformed_lines_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.tsv").write_bytes(b"1\thttp://\xff.ru/\nbroken\n1\thttp:///x\n2\tvk.com\n")
    done = tally("run", str(data), "--workers", "1", "--all", "--format", "json")
    assert done.returncode == 0
    doc = json.loads(done.stdout)
    assert doc["rows"] == [{"domain": "vk.com", "count": 1}, {"domain": "\\xff.ru", "count": 1}]
    assert (doc["lines"], doc["malformed_lines"], doc["complete"]) == (4, 2, True)
    text = tally("run", str(data), "--workers", "1", "--all")
    assert text.stdout == b"vk.com 1\n\\xff.ru 1\n"
    assert b"2 malformed (skipped)" in text.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "x", "--top", "0"],
        ["run", "x", "--top", "3", "--all"],
        ["coordinator", "x", "notaport"],
        ["bogus"],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    done = tally(*args)
    assert done.returncode == 2 and done.stdout == b""


def test_missing_source_is_one_line_on_stderr(tmp_path: Path) -> None:
    done = tally("coordinator", str(tmp_path / "nope.csv"), str(free_port()))
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        f"tally: source {tmp_path / 'nope.csv'} does not exist"
    ]


def test_worker_gives_up_on_a_coordinator_that_never_comes(procs: Procs) -> None:
    worker = procs.start("worker", "127.0.0.1", str(free_port()), "--connect-timeout", "1")
    assert worker.wait(timeout=20) == 1
    assert "cannot connect" in procs.stderr(worker)


def test_gen_then_run_prints_the_published_top25(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    done = tally("gen", str(out), "--partitions", "4", "--partition-size", "1MiB", "--seed", "7")
    assert done.returncode == 0, done.stderr
    published = (SAMPLE.parent / "clickbench-top25-expected.txt").read_text().split("\n")
    run = tally("run", str(out / "filelist.csv"), "--workers", "2")
    assert run.returncode == 0
    domains = [line.rsplit(" ", 1)[0] for line in run.stdout.decode().splitlines()]
    assert domains == [line.rsplit(" ", 1)[0] for line in published if line]
    assert run.stdout.decode() == reference_output_of_folder(out)


def reference_output_of_folder(folder: Path) -> str:
    joined = folder / "joined.data"
    joined.write_bytes(b"".join(p.read_bytes() for p in sorted(folder.glob("part-*.tsv"))))
    return reference_output(joined, QuerySpec("top", k=25))


def test_run_fails_when_all_its_workers_die(procs: Procs, repeated_filelist: Path) -> None:
    run = procs.start("run", str(repeated_filelist), "--workers", "2")
    deadline = time.monotonic() + 20
    children: list[str] = []
    while len(children) < 2 and time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True)
        children = found.stdout.split()
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    code, out = procs.finish(run)
    assert (code, out) == (1, "")
    assert "worker processes exited (status -9" in procs.stderr(run)


def test_an_oversized_line_is_a_counted_skip_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    huge = b"9\thttp://huge.ru/" + b"x" * (5 << 20) + b"\n"
    (data / "a.tsv").write_bytes(b"1\thttp://a.ru/\n" + huge + b"2\thttp://a.ru/x\n")
    (data / "b.tsv").write_bytes(b"3\thttp://b.ru/\n")
    done = tally("run", str(data), "--workers", "2", "--all", "--format", "json", "-q")
    assert done.returncode == 0
    doc = json.loads(done.stdout)
    assert doc["rows"] == [{"domain": "a.ru", "count": 2}, {"domain": "b.ru", "count": 1}]
    assert (doc["lines"], doc["malformed_lines"]) == (4, 1)


def test_sigterm_while_connecting_exits_zero_at_once(procs: Procs) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)
        port = server.getsockname()[1]
        worker = procs.start("worker", "127.0.0.1", str(port), "--connect-timeout", "60")
        first, _ = server.accept()  # it runs, SIGTERM handled, and waits for a challenge
    first.close()  # none comes and nobody listens now: it is connecting again
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0  # long before its 60 s of connecting are over


@pytest.mark.parametrize(
    "args",
    [
        ["coordinator", "x", "70000"],
        ["run", "x", "--record-limit", str(4 << 30)],
        ["run", "x", "--lease-timeout", "0.01"],
    ],
)
def test_out_of_range_arguments_exit_2(args: list[str]) -> None:
    done = tally(*args)
    assert done.returncode == 2 and done.stdout == b""
    assert b"Traceback" not in done.stderr


def test_an_unwritable_stats_path_fails_before_the_job(parts: Path, tmp_path: Path) -> None:
    done = tally("run", str(parts), "--workers", "1", "--stats", str(tmp_path / "no" / "s.json"))
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr.decode().strip().startswith("tally: cannot write --stats")
