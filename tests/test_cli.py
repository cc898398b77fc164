"""The command line as a user meets it: help, version, argument errors, formats, signals, gen."""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLE, Procs, reference_output, split_round_robin
from tally import cli
from tally.protocol import QuerySpec
from tally.queries import FORMATS

COMMANDS = ("coordinator", "worker", "run", "sql", "gen", "report")


def tally(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args], capture_output=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "parts"
    split_round_robin(SAMPLE, folder, 10)
    return folder


@pytest.fixture
def malformed(tmp_path: Path) -> Path:
    data = tmp_path / "malformed"
    data.mkdir()
    (data / "a.tsv").write_bytes(b"1\thttp://a.ru/\nbroken\n2\thttp:///x\n3\thttp://a.ru/y\n")
    return data


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# --- help, version, names ----------------------------------------------------------------


def test_version() -> None:
    done = tally("--version")
    assert (done.returncode, done.stdout.decode()) == (
        0,
        f"tally {importlib.metadata.version('tally')}\n",
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_shows_its_default(command: str) -> None:
    parser = subparsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.dest} has no help"
        takes_value = action.nargs != 0
        if action.option_strings and takes_value and not action.required:
            assert "(default: " in action.help, (
                f"{command} {action.option_strings} hides its default"
            )
    assert not parser.allow_abbrev
    text = parser.format_help()
    assert not re.search(r"\b[A-Z]+\.md\b", text)  # no document outside the command line


def test_help_on_the_command_line_names_no_internal_document() -> None:
    for args in (["--help"], *([c, "--help"] for c in COMMANDS)):
        done = tally(*args)
        assert done.returncode == 0 and b"usage: tally" in done.stdout
        assert not re.search(rb"\b[A-Z]+\.md\b", done.stdout)


def test_formats_offered_are_the_formats_printed() -> None:
    assert cli.FORMATS == FORMATS


@pytest.mark.parametrize(
    ("args", "unknown"),
    [
        (["run", "src", "--worker", "2"], "--worker"),
        (["run", "src", "--rec", "5"], "--rec"),
        (["gen", "out", "--part", "3"], "--part"),
        (["worker", "h", "1", "--slot", "2"], "--slot"),
    ],
)
def test_abbreviated_options_are_refused(args: list[str], unknown: str) -> None:
    done = tally(*args)
    assert (done.returncode, done.stdout) == (2, b"")
    assert f"unrecognized arguments: {unknown}" in done.stderr.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "x", "--top", "ten"], "argument --top: expected a whole number, got 'ten'"),
        (["run", "x", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (["run", "x", "--lease-timeout", "soon"], "expected a number of seconds, got 'soon'"),
        (["run", "x", "--record-limit", "1.5MiB"], "argument --record-limit: bad size '1.5MiB'"),
        (["run", "x", "--record-limit", "2GiB"], "must be from 1 byte to 1 GiB, got 2GiB"),
        (["coordinator", "x", "http"], "argument port: expected a TCP port number, got 'http'"),
        (["worker", "h", "1", "--task-delay", "-1"], "must be at least 0 seconds, got -1"),
        (["worker", "h", "1", "--slowdown", "nan"], "expected a positive number, got 'nan'"),
        (["gen", "o", "--seed", "x"], "argument --seed: expected a whole number, got 'x'"),
        (["gen", "o", "--partition-size", "lots"], "argument --partition-size: bad size 'lots'"),
    ],
)
def test_argument_errors_say_what_is_expected(args: list[str], message: str) -> None:
    done = tally(*args)
    assert (done.returncode, done.stdout) == (2, b"")
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith(f"tally {args[0]}: error: ") and message in last
    assert "invalid" not in last and "_" not in last.split(": error: ")[1].replace("--", "")


@pytest.mark.parametrize(
    "args", [["gen", "o", "--token-file", "t"], ["run", "x", "--token-file", "t"],
             ["report", "--out", "o", "--token-file", "t"]],
)  # fmt: skip
def test_token_file_only_where_it_means_something(args: list[str]) -> None:
    done = tally(*args)
    assert done.returncode == 2 and b"unrecognized arguments: --token-file" in done.stderr
    for command in ("coordinator", "worker"):
        assert "--token-file" in subparsers()[command].format_help()


def test_min_workers_above_workers_is_refused_at_once(parts: Path) -> None:
    done = tally("run", str(parts), "--workers", "2", "--min-workers", "3")
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr.decode().splitlines() == [
        "tally: min workers 3 is more than the 2 workers started: the job would never start"
    ]


def test_a_coordinator_beyond_loopback_needs_a_token(parts: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TALLY_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "tally", "coordinator", str(parts), "0", "--host", "0.0.0.0"],
        capture_output=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr.decode().splitlines() == [
        "tally: refusing to listen on 0.0.0.0 without a cluster token: "
        "set TALLY_TOKEN or pass --token-file"
    ]


def test_a_port_in_use_is_one_line(parts: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tally("coordinator", str(parts), str(port), "-q")
    assert (done.returncode, done.stdout) == (2, b"")
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tally: cannot listen on 127.0.0.1:{port}: ")


# --- results --------------------------------------------------------------------------------


def test_csv_and_tsv_formats(parts: Path) -> None:
    done = tally("run", str(parts), "--workers", "2", "--top", "5", "--format", "csv", "-q")
    assert (done.returncode, done.stderr) == (0, b"")
    rows = list(csv.reader(io.StringIO(done.stdout.decode(), newline="")))
    expected = reference_output(SAMPLE, QuerySpec("top", k=5))
    assert rows == [["domain", "count"]] + [line.rsplit(" ", 1) for line in expected.splitlines()]
    one = tally("run", str(parts), "--workers", "1", "--domain", "google.ru", "--format", "tsv")
    assert (one.returncode, one.stdout) == (0, b"domain\tcount\r\ngoogle.ru\t5\r\n")


def test_text_output_is_unchanged(parts: Path) -> None:
    top = tally("run", str(parts), "--workers", "2", "-q")
    assert top.stdout.decode() == reference_output(SAMPLE, QuerySpec("top", k=25))
    one = tally("run", str(parts), "--workers", "2", "--domain", "google.ru", "--format", "text")
    assert one.stdout == b"5\n"


def test_the_malformed_count_reaches_stderr_even_when_quiet(malformed: Path) -> None:
    quiet = tally("run", str(malformed), "--workers", "1", "--all", "-q")
    assert (quiet.returncode, quiet.stdout) == (0, b"a.ru 2\n")
    assert quiet.stderr.decode() == "tally: 2 malformed lines skipped\n"
    doc = tally("run", str(malformed), "--workers", "1", "--all", "-q", "--format", "json")
    assert json.loads(doc.stdout)["malformed_lines"] == 2
    assert doc.stderr.decode() == "tally: 2 malformed lines skipped\n"


def test_record_limit_takes_a_unit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.tsv").write_bytes(b"1\thttp://a.ru/" + b"x" * 2000 + b"\n2\thttp://b.ru/\n")
    small = tally("run", str(data), "--workers", "1", "--all", "-q", "--record-limit", "1KiB")
    assert (small.stdout, small.stderr) == (b"b.ru 1\n", b"tally: 1 malformed line skipped\n")
    big = tally("run", str(data), "--workers", "1", "--all", "-q", "--record-limit", "1MiB")
    assert (big.stdout, big.stderr) == (b"a.ru 1\nb.ru 1\n", b"")


# --- signals ----------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_run_stops_its_workers(
    procs: Procs, parts: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    stats = tmp_path / "stats.json"
    run = procs.start(
        "run", str(parts), "--workers", "2", "--task-delay", "30", "--stats", str(stats)
    )
    procs.wait_for_log(run, "worker 2 joined", timeout=30)
    workers = children(run.pid)
    assert len(workers) == 2
    run.send_signal(sig)
    code, out = procs.finish(run)
    assert (code, out) == (128 + sig, "")
    assert procs.stderr(run).endswith(f"tally: interrupted by {sig.name}\n")
    assert [pid for pid in workers if alive(pid)] == []  # stopped before run exited
    assert json.loads(stats.read_text())["error"] == f"interrupted by {sig.name}"


# --- gen ----------------------------------------------------------------------------------------


def test_gen_onto_a_file_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("mine")
    done = tally("gen", str(target), "--partitions", "1", "--partition-size", "16KiB")
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        f"tally: cannot generate into {target}: it is a file, not a folder"
    ]
    assert target.read_text() == "mine"


def test_gen_replaces_the_data_set_it_wrote_before(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    first = tally("gen", str(out), "--partitions", "4", "--partition-size", "16KiB", "-q")
    assert first.returncode == 0, first.stderr
    (out / "notes.txt").write_text("not generated")
    (out / "part-7.tsv").write_text("not a name gen writes")
    again = tally("gen", str(out), "--partitions", "2", "--partition-size", "16KiB", "--seed", "3")
    assert again.returncode == 0, again.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["filelist.csv", "notes.txt", "part-00000.tsv", "part-00001.tsv", "part-7.tsv"]
    assert "2 other file(s) (notes.txt, part-7.tsv)" in again.stderr.decode()
    (out / "notes.txt").unlink()
    (out / "part-7.tsv").unlink()
    folder = tally("run", str(out), "--workers", "2", "--all", "-q")
    listed = tally("run", str(out / "filelist.csv"), "--workers", "2", "--all", "-q")
    assert folder.returncode == 0 and folder.stdout == listed.stdout
    assert "replaced" in tally("gen", "--help").stdout.decode()
