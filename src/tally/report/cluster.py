"""Real Tally processes for the experiments: one ``tally coordinator`` and its workers.

Every process is a ``python -m tally`` child with its stderr in a log file; the coordinator
writes ``--stats`` and ``--events``, which are all the experiments read. Leftover processes
are killed by their own pid when a run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tally.errors import TallyError

WORKER_EXIT_GRACE_S = 5.0
PORT_RETRIES = 3
EXIT_USAGE = 2


class ExperimentError(TallyError):
    """An experiment could not produce its figures (a job failed, a process hung)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Fault:
    """A signal sent to a worker: which process, which signal, and when (epoch seconds)."""

    kind: str  # "kill", "stop" or "cont"
    pid: int
    at: float


@dataclass
class JobRun:
    """One finished job: the coordinator's records plus what the harness did to it."""

    name: str
    stats: dict[str, Any]
    events: list[dict[str, Any]]
    output: dict[str, Any]
    worker_pids: list[int]
    faults: list[Fault] = field(default_factory=list)

    @property
    def job_s(self) -> float:
        """Seconds from the moment every expected worker had joined to the end of the job."""
        return float(self.stats["wall_s"]) - float(self.stats["ready_s"] or 0.0)

    def relative(self, epoch: float) -> float:
        """An epoch time as seconds since the coordinator started (the events' clock)."""
        return epoch - float(self.stats["started_at"])

    def pid_of(self, worker_id: int) -> int | None:
        for w in self.stats["workers"]:
            if w["id"] == worker_id:
                return int(str(w["name"]).rsplit(":", 1)[-1])
        return None

    def ids_of(self, pid: int) -> list[int]:
        """The worker ids a process had, in joining order (a reconnect gets a new id)."""
        return sorted(w["id"] for w in self.stats["workers"] if self.pid_of(w["id"]) == pid)


class Cluster:
    """A coordinator on a free port and ``len(workers)`` workers, each with its own args."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        source: Path,
        workers: list[list[str]],
        coordinator_args: list[str],
    ) -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.source = source
        self.worker_args = workers
        self.coordinator_args = coordinator_args
        self.env = {**os.environ, "TALLY_TOKEN": secrets.token_hex(16)}
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.faults: list[Fault] = []
        self.stats_path = self.dir / "stats.json"
        self.events_path = self.dir / "events.jsonl"
        self.output_path = self.dir / "output.json"
        self.port = 0

    # --- processes ---------------------------------------------------------------------------

    def _spawn(self, log_name: str, *args: str, stdout: Path | None) -> subprocess.Popen[bytes]:
        with (
            (self.dir / log_name).open("wb") as err,
            open(stdout or os.devnull, "wb") as out,
        ):
            return subprocess.Popen(
                [sys.executable, "-m", "tally", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )

    def start(self) -> None:
        """Start the coordinator (retrying on a port taken meanwhile), then the workers."""
        for _ in range(PORT_RETRIES):
            self.port = free_port()
            self.coordinator = self._spawn(
                "coordinator.log",
                "coordinator",
                str(self.source),
                str(self.port),
                "--min-workers",
                str(len(self.worker_args)),
                "--format",
                "json",
                "--stats",
                str(self.stats_path),
                "--events",
                str(self.events_path),
                *self.coordinator_args,
                stdout=self.output_path,
            )
            if not self.wait_for_log("listening on"):
                self.coordinator.wait()
                if self.coordinator.returncode == EXIT_USAGE and "cannot listen" in self.log():
                    continue  # the port was taken meanwhile
                raise ExperimentError(f"{self.name}: the coordinator exited:\n{self.log()}")
            for i, extra in enumerate(self.worker_args):
                self.workers.append(
                    self._spawn(
                        f"worker-{i}.log",
                        "worker",
                        "127.0.0.1",
                        str(self.port),
                        "-q",
                        "--connect-timeout",
                        "30",
                        *extra,
                        stdout=None,
                    )
                )
            return
        raise ExperimentError(f"{self.name}: the coordinator could not start:\n{self.log()}")

    def log(self) -> str:
        path = self.dir / "coordinator.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 20) -> bool:
        """True once ``text`` is in the coordinator's log; False if the coordinator exited
        first (``finish`` then tells how). ExperimentError after ``timeout`` seconds."""
        assert self.coordinator is not None
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.coordinator.poll() is not None:
                return text in self.log()
            if time.monotonic() > deadline:
                raise ExperimentError(f"{self.name}: {text!r} not logged in {timeout}s")
            time.sleep(0.01)
        return True

    def signal(self, index: int, kind: str) -> Fault:
        """Send SIGKILL (``kill``), SIGSTOP (``stop``) or SIGCONT (``cont``) to worker ``index``."""
        sig = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "cont": signal.SIGCONT}[kind]
        proc = self.workers[index]
        fault = Fault(kind, proc.pid, time.time())
        proc.send_signal(sig)
        self.faults.append(fault)
        return fault

    def _dead_worker(self) -> str | None:
        """The log of a worker that exited with an error without being signalled, if any."""
        signalled = {f.pid for f in self.faults}
        for i, w in enumerate(self.workers):
            if w.poll() not in (None, 0) and w.pid not in signalled:
                path = self.dir / f"worker-{i}.log"
                return f"worker {i} exited with {w.returncode}:\n{path.read_text(errors='replace')}"
        return None

    def finish(self, timeout: float) -> JobRun:
        """Wait for the job; return its records. ExperimentError if it fails or overruns, or
        if a worker dies on its own."""
        assert self.coordinator is not None
        deadline = time.monotonic() + timeout
        while self.coordinator.poll() is None:
            if time.monotonic() > deadline:
                raise ExperimentError(f"{self.name}: the job took longer than {timeout:g}s")
            dead = self._dead_worker()
            if dead is not None:
                raise ExperimentError(f"{self.name}: {dead[-2000:]}")
            time.sleep(0.02)
        if self.coordinator.returncode != 0:
            raise ExperimentError(
                f"{self.name}: the coordinator exited with {self.coordinator.returncode}:\n"
                f"{self.log()[-2000:]}"
            )
        deadline = time.monotonic() + WORKER_EXIT_GRACE_S
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):  # killed in close()
                w.wait(max(0.1, deadline - time.monotonic()))
        stats = json.loads(self.stats_path.read_text())
        events = [json.loads(line) for line in self.events_path.read_text().splitlines() if line]
        return JobRun(
            self.name,
            stats,
            events,
            json.loads(self.output_path.read_text(encoding="utf-8")),
            [w.pid for w in self.workers],
            list(self.faults),
        )

    def close(self) -> None:
        """Kill what is still running (each process by its own handle) and reap it."""
        procs = [*self.workers, *([self.coordinator] if self.coordinator else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def run_job(
    workdir: Path,
    name: str,
    source: Path,
    workers: list[list[str]],
    coordinator_args: list[str] | None = None,
    timeout: float = 300,
) -> JobRun:
    """A job without faults: start, wait, return its records."""
    with Cluster(workdir, name, source, workers, coordinator_args or []) as cluster:
        cluster.start()
        return cluster.finish(timeout)
