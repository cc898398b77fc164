"""The Python API: ``tally.run`` in scripts, in a running event loop, and when interrupted."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tally
from conftest import SAMPLE, reference_output, split_round_robin
from tally.protocol import QuerySpec


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("api") / "parts"
    split_round_robin(SAMPLE, folder, 10)
    return folder


def rows_of(text: str) -> list[tuple[str, int]]:
    return [(d, int(n)) for d, n in (line.rsplit(" ", 1) for line in text.splitlines())]


def test_import_is_cheap_and_names_load_when_used() -> None:
    probe = (
        "import sys, tally\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'pyarrow', 'msgspec', 'asyncio', 'fsspec') or m.startswith('tally.'))\n"
        "print(heavy)\n"
        "print(tally.__version__, callable(tally.run), issubclass(tally.ConfigError, "
        "tally.TallyError), issubclass(tally.JobFailed, tally.TallyError))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    version = importlib.metadata.version("tally")
    assert done.stdout.splitlines() == ["[]", f"{version} True True True"]
    assert "run" in dir(tally)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = tally.nope  # type: ignore[attr-defined]


def test_run_returns_the_result_and_writes_nothing_on_stdout(
    parts: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    stats = tmp_path / "stats.json"
    result = tally.run(parts, top=10, workers=2, stats=stats)
    expected = reference_output(SAMPLE, QuerySpec("top", k=10))
    assert result.rows == rows_of(expected)
    assert (result.query, result.lines, result.malformed, result.complete) == ("top", 200, 0, True)
    assert result.failed_partitions == []
    assert result.format("text") == expected
    assert result.stats["partitions"] == 10 and result.stats["workers"][0]["partitions"] >= 0
    assert json.loads(stats.read_text())["job_id"] == result.stats["job_id"]
    assert repr(result) == "<tally.Result top: 10 rows, 200 lines, 0 malformed, complete>"
    assert capfd.readouterr().out == ""


def test_domain_and_all_queries_and_arrow(parts: Path) -> None:
    one = tally.run(str(parts), domain="google.ru", workers=1)
    assert (one.query, one.rows, one.count) == ("domain", [("google.ru", 5)], 5)
    every = tally.run(parts / "filelist.csv", all=True, workers=2, kernel="reference")
    assert every.rows == rows_of(reference_output(SAMPLE, QuerySpec("all")))
    table = every.to_arrow()
    assert table.column_names == ["domain", "count"]
    assert str(table.schema.field("count").type) == "int64"
    assert list(zip(*table.to_pydict().values(), strict=True)) == every.rows


def test_to_pandas(parts: Path) -> None:
    frame = tally.run(parts, top=3, workers=1).to_pandas()
    assert list(frame.columns) == ["domain", "count"] and len(frame) == 3


def test_to_pandas_without_pandas_says_what_to_install(
    parts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = tally.run(parts, top=3, workers=1)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pandas" else find_spec(name, *a),
    )
    with pytest.raises(ImportError, match="pip install pandas"):
        result.to_pandas()


def test_run_inside_a_running_event_loop(parts: Path) -> None:
    async def notebook_cell() -> tally.Result:
        return tally.run(parts, top=5, workers=2)

    result = asyncio.run(notebook_cell())
    assert result.rows == rows_of(reference_output(SAMPLE, QuerySpec("top", k=5)))


def test_record_limit_takes_a_size(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    long_line = b"2\thttp://long.ru/" + b"x" * (70 << 10) + b"\n"
    (data / "a.tsv").write_bytes(b"1\thttp://a.ru/\n" + long_line)
    result = tally.run(data, all=True, workers=1, record_limit="64KiB")
    assert (result.rows, result.lines, result.malformed) == ([("a.ru", 1)], 2, 1)
    assert tally.run(data, all=True, workers=1, record_limit="1MiB").malformed == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top": 0}, "top must be at least 1, not 0"),
        ({"top": "5"}, "top must be a whole number, not '5'"),
        ({"top": 5, "all": True}, "choose one query: domain, top or all"),
        ({"workers": 0}, "workers must be at least 1, not 0"),
        ({"workers": 2, "min_workers": 3}, "min workers 3 is more than the 2 workers started"),
        ({"record_limit": "1.5MiB"}, "bad size '1.5MiB'"),
        ({"record_limit": 2 << 30}, "record limit must be from 1 to 1073741824"),
        ({"lease_timeout": 0.01}, "lease timeout must be from 0.3 to 86400 seconds"),
        ({"kernel": "turbo"}, "kernel must be one of auto, fast, reference"),
        ({"max_attempts": 0}, "max attempts must be at least 1"),
    ],
)
def test_bad_arguments_raise_config_error(
    parts: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(tally.ConfigError) as info:
        tally.run(parts, **kwargs)  # type: ignore[arg-type]
    assert message in info.value.message


def test_a_bad_source_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(tally.ConfigError, match="does not exist"):
        tally.run(tmp_path / "nope.csv", workers=1)


def test_a_failed_job_raises_job_failed_and_skip_failed_returns_a_partial(
    parts: Path, tmp_path: Path
) -> None:
    listing = tmp_path / "list.csv"
    missing = parts / "part-999.tsv"
    listing.write_text((parts / "filelist.csv").read_text() + f"{missing}\n")
    with pytest.raises(tally.JobFailed) as info:
        tally.run(listing, workers=2, max_attempts=2)
    assert "partition 10 failed 2 time(s)" in info.value.message
    assert str(missing) in info.value.message
    assert info.value.stats["failed_attempts"] == 2
    partial = tally.run(listing, all=True, workers=2, skip_failed=True)
    assert (partial.complete, partial.failed_partitions) == (False, [str(missing)])
    assert partial.count == 200


# --- interruption: the workers are stopped before the caller sees the exception -------------

SCRIPT = """
import asyncio, os, signal, sys
import tally

def job():
    try:
        tally.run(sys.argv[1], workers=2, task_delay=30)
    except tally.Interrupted as exc:
        try:
            os.waitpid(-1, os.WNOHANG)
            print("a worker process is left", flush=True)
        except ChildProcessError:  # every child has exited and been reaped
            print(f"workers stopped, {signal.Signals(exc.signum).name}", flush=True)

async def cell():  # a notebook cell: a loop is running, and Ctrl-C raises KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    job()

asyncio.run(cell()) if sys.argv[2] == "loop" else job()
"""


def wait_for_children(pid: int, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        if len(found.stdout.split()) >= count:
            return [int(p) for p in found.stdout.split()]
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not start {count} children within {timeout}s")


@pytest.mark.parametrize(
    ("mode", "sig"),
    [("script", signal.SIGINT), ("script", signal.SIGTERM), ("loop", signal.SIGINT)],
)
def test_an_interrupted_run_stops_its_workers(
    parts: Path, tmp_path: Path, mode: str, sig: signal.Signals
) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(parts), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_children(proc.pid, 2)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert out == f"workers stopped, {sig.name}\n", err
