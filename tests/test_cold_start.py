"""What a cold `tally run` / `tally sql` does before and around its first task: workers started
before the query is planned (and stopped whatever happens next), and a group-by's engine that
never drags pandas in (PyArrow and DuckDB import it, when installed, to check their inputs)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import Procs


def processes_marked(mark: str) -> list[int]:
    """Running processes whose environment holds TALLY_TEST_MARK=``mark``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"TALLY_TEST_MARK={mark}".encode() in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("SELECT nope( FROM 'x.tbl'", "tally: cannot parse SQL"),
        ("SELECT count(*) FROM '{missing}'", "tally: source {missing} does not exist"),
        ("SELECT count(*) FROM '{data}' WHERE c9 > 1", "tally: "),
    ],
)
def test_a_job_that_cannot_start_stops_the_workers_started_for_it(
    procs: Procs, tmp_path: Path, query: str, error: str
) -> None:
    data = tmp_path / "t.tbl"
    data.write_bytes(b"1|a|\n2|b|\n")
    names = {"missing": tmp_path / "nope.tbl", "data": data}
    mark = secrets.token_hex(8)
    run = procs.start(
        "sql", query.format(**names), "--workers", "2", "-q", env={"TALLY_TEST_MARK": mark}
    )
    code, out = procs.finish(run)
    assert (code, out) == (2, "")
    [line] = procs.stderr(run).splitlines()
    assert line.startswith(error.format(**names))
    assert processes_marked(mark) == []  # the workers had started: they are gone with it


def test_a_group_by_task_merge_and_answer_never_import_pandas(tmp_path: Path) -> None:
    if importlib.util.find_spec("pandas") is None:
        pytest.skip("pandas is not installed: nothing could import it")
    data = tmp_path / "t.tbl"
    data.write_bytes(b"".join(b"%d|k%d|%d.25|1998-01-0%d|\n" % (i, i % 3, i, 1 + i % 9)
                              for i in range(1000)))  # fmt: skip
    program = textwrap.dedent(f"""
        import sys
        from tally.kernels.delimited import compute_partial, warm_up
        from tally.queries import from_ipc, kind_of, to_ipc
        from tally.queries.infer import bind
        from tally.queries.sql import parse_sql

        warm_up()
        _, plan = parse_sql(
            "SELECT c2, count(*), sum(c3), avg(c3), min(c4), count(DISTINCT c1) "
            "FROM '{data}' WHERE c3 > 10 GROUP BY c2 ORDER BY c2"
        )
        plan = bind(plan, open({str(data)!r}, "rb").read())
        kind = kind_of(plan)
        merger = kind.merger(plan)
        for half in (0, 1):
            with open({str(data)!r}, "rb") as stream:
                partial = compute_partial(plan, stream)
            merger.add(from_ipc(to_ipc(partial.table)), partial.lines, partial.malformed)
        for fmt in ("text", "json", "csv"):
            print(kind.format(merger.finalize(), fmt))
        print("pandas" in sys.modules)
    """)
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "error"}, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False"
    # k0: i = 12, 15, ..., 999 (c3 > 10), in both halves
    row = ["k0", "660", "333795.00", "505.75", "1998-01-01", "330"]
    assert done.stdout.splitlines()[1].split() == row


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("fork", ["1", "0"])
def test_local_workers_are_forked_from_the_command_unless_told_not_to(
    procs: Procs, tmp_path: Path, fork: str
) -> None:
    """Forked, a worker starts with the command's modules loaded (its command line is the
    command's); with TALLY_FORK=0 it is a new interpreter (`python -m tally worker`). Either
    way a signal to the command stops them all."""
    data = tmp_path / "t.tbl"
    data.write_bytes(b"1|a|\n2|b|\n1|c|\n")
    query = f"SELECT c1, count(*) AS n FROM '{data}' GROUP BY c1"
    run = procs.start("sql", query, "--workers", "2", "--task-delay", "60",
                      env={"TALLY_FORK": fork})  # fmt: skip
    procs.wait_for_log(run, "worker 2 joined", timeout=30)
    workers = children(run.pid)
    assert len(workers) == 2
    command = Path(f"/proc/{run.pid}/cmdline").read_bytes().split(b"\0")
    for pid in workers:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert (argv == command, b"worker" in argv) == (
            (True, False) if fork == "1" else (False, True)
        )
    run.send_signal(signal.SIGTERM)
    code, out = procs.finish(run)
    assert (code, out) == (128 + signal.SIGTERM, "")
    assert [pid for pid in workers if running(pid)] == []


def test_a_forked_worker_killed_mid_task_loses_nothing(procs: Procs, tmp_path: Path) -> None:
    """kill -9 of a forked worker holding a task: the other one computes it again, and the
    answer is exact."""
    data = tmp_path / "t.tbl"
    data.write_bytes(b"".join(b"%d|k%d|\n" % (i, i % 3) for i in range(4000)))
    events = tmp_path / "events.jsonl"
    query = f"SELECT c2, count(*) AS n, sum(c1) AS s FROM '{data}' GROUP BY c2 ORDER BY c2"
    run = procs.start("sql", query, "--workers", "2", "--split-size", "8KiB", "--task-delay",
                      "0.5", "--events", str(events), "--format", "csv")  # fmt: skip
    log = procs.events(run, events)
    log.wait("started", worker=1)
    victim = int(log.wait("joined", worker=1)["name"].rsplit(":", 1)[1])
    assert victim in children(run.pid)
    os.kill(victim, signal.SIGKILL)
    code, out = procs.finish(run, timeout=120)
    assert code == 0, procs.stderr(run)
    sums = [sum(i for i in range(4000) if i % 3 == k) for k in range(3)]
    assert out.splitlines() == ["c2,n,s", *(f"k{k},{1334 - (k > 0)},{sums[k]}" for k in range(3))]
    assert log.select("lost", worker=1)
