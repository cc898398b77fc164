"""Shared fixtures: the real 200-line sample split into partitions, real tally processes, and
a follower of the coordinator's --events file that waits for records as they are written."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tally.kernels.reference import count_domains
from tally.protocol import QuerySpec
from tally.queries import format_result, merger_for
from tally.queries.domains import to_table

pytest_plugins = ["storage_servers", "queue_servers"]  # Azurite, an S3 server, queues: on demand

# the real reference data: 200 lines of the ClickBench hits log and its published top 25
DATA = Path(__file__).resolve().parent / "data"
SAMPLE = DATA / "clickbench-sample-200.tsv"
TOP25_EXPECTED = DATA / "clickbench-top25-expected.txt"

# how long a test waits for a condition: generous, for a machine loaded many times over
WAIT_S = 30.0
POLL_S = 0.02


def split_round_robin(source: Path, out_dir: Path, partitions: int) -> Path:
    """Split ``source`` line by line round-robin into ``partitions`` files plus a filelist.csv
    of ``file://`` URLs; return the file list's path."""
    lines = source.read_bytes().splitlines(keepends=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts: list[list[bytes]] = [[] for _ in range(partitions)]
    for i, line in enumerate(lines):
        parts[i % partitions].append(line)
    filelist = out_dir / "filelist.csv"
    with filelist.open("w") as fl:
        for i, part in enumerate(parts):
            path = out_dir / f"part-{i:03d}.tsv"
            path.write_bytes(b"".join(part))
            fl.write(f"file://{path}\n")
    return filelist


def reference_output(path: Path, query: QuerySpec, fmt: str = "text") -> str:
    """What tally must print for ``query`` over the single file ``path``."""
    with path.open("rb") as f:
        counts = count_domains(f, only=query.domain if query.kind == "domain" else None)
    merger = merger_for(query)
    merger.add(to_table(counts), counts.lines, counts.malformed)
    return format_result(merger.finalize(), fmt)


@pytest.fixture(scope="session")
def repeated_filelist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 partitions of ~200 KB, each the real sample ten times: tasks of a realistic size."""
    out = tmp_path_factory.mktemp("repeated100")
    data = SAMPLE.read_bytes() * 10
    with (out / "filelist.csv").open("w") as fl:
        for i in range(100):
            (out / f"part-{i:03d}.tsv").write_bytes(data)
            fl.write(f"part-{i:03d}.tsv\n")  # relative to the list
    return out / "filelist.csv"


@pytest.fixture(scope="session")
def sample_filelist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return split_round_robin(SAMPLE, tmp_path_factory.mktemp("sample100"), 100)


@contextlib.contextmanager
def serve_http(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1; yields the root URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Procs:
    """Starts tally processes, logs each one's stderr to a file, and kills leftovers."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def start(
        self, *args: str, env: dict[str, str] | None = None, stdout: int | None = subprocess.PIPE
    ) -> subprocess.Popen[bytes]:
        log = self.tmp / f"proc-{len(self.started)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tally", *args],
                stdout=stdout,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        self.started.append(proc)
        self.logs[proc.pid] = log
        return proc

    def coordinator(self, source: Path | str, port: int, *args: str, **kw: object):  # type: ignore[no-untyped-def]
        return self.start("coordinator", str(source), str(port), *args, **kw)  # type: ignore[arg-type]

    def worker(self, port: int, *args: str, **kw: object):  # type: ignore[no-untyped-def]
        kw.setdefault("stdout", subprocess.DEVNULL)
        return self.start("worker", "127.0.0.1", str(port), "--connect-timeout", "20", *args, **kw)  # type: ignore[arg-type]

    def stderr(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def events(self, coordinator: subprocess.Popen[bytes], path: Path) -> EventLog:
        """Follow the ``--events`` file ``path`` of a coordinator started here."""
        return EventLog(path, coordinator, lambda: self.stderr(coordinator))

    def wait_for_log(self, proc: subprocess.Popen[bytes], text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr(proc):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.stderr(proc)}")
            time.sleep(0.02)

    def finish(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[int, str]:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, (out or b"").decode("utf-8")

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


Record = dict[str, Any]


class EventLog:
    """A coordinator's ``--events`` file, read as it is written: one JSON record per line."""

    def __init__(
        self,
        path: Path,
        coordinator: subprocess.Popen[bytes] | None = None,
        stderr: Callable[[], str] = str,
    ) -> None:
        self.path = path
        self.coordinator = coordinator
        self.stderr = stderr
        self.records: list[Record] = []
        self._offset = 0
        self._partial = b""  # a line still being written

    def read(self) -> list[Record]:
        """Every record written so far, in order."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.records
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        self.records.extend(json.loads(line) for line in lines)
        return self.records

    def select(
        self, event: str, where: Callable[[Record], bool] | None = None, **fields: Any
    ) -> list[Record]:
        """The records of kind ``event`` written so far whose ``fields`` have these values
        and that satisfy ``where``."""
        return [
            r
            for r in self.read()
            if r["event"] == event
            and all(r.get(k) == v for k, v in fields.items())
            and (where is None or where(r))
        ]

    def wait(
        self,
        event: str,
        count: int = 1,
        timeout: float = WAIT_S,
        where: Callable[[Record], bool] | None = None,
        **fields: Any,
    ) -> Record:
        """Wait for the ``count``-th record that :meth:`select` would return, and return it.
        Fails at the deadline, or at once when the coordinator has exited without writing it."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.coordinator is not None and self.coordinator.poll() is not None
            found = self.select(event, where, **fields)  # read after the check: none missed
            if len(found) >= count:
                return found[count - 1]
            if exited or time.monotonic() > deadline:
                why = "the coordinator exited" if exited else f"{timeout:g}s passed"
                raise AssertionError(
                    f"no {event!r} record #{count} with {fields} ({why}); records:\n"
                    + "\n".join(json.dumps(r) for r in self.records[-30:])
                    + f"\ncoordinator stderr:\n{self.stderr()}"
                )
            time.sleep(POLL_S)

    def worker_id(self, worker: subprocess.Popen[bytes], timeout: float = WAIT_S) -> int:
        """The id the coordinator gave the worker process ``worker`` when it first joined (its
        name ends with its pid)."""
        joined = self.wait(
            "joined", timeout=timeout, where=lambda r: r["name"].endswith(f":{worker.pid}")
        )
        return int(joined["worker"])


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()
