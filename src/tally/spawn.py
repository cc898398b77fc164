"""The worker processes of ``tally run`` and ``tally sql``, started first thing.

A worker takes a few tenths of a second to start (the interpreter, Arrow, the engine): the
command line starts its workers before it parses the query or imports the coordinator, on a
socket that already listens, so that both start at once. The workers' connections wait in
the socket's backlog until the coordinator accepts them (their handshake allows seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

POLL_S = 0.02  # how often an exit is looked for


class WorkerProcess:
    """A started worker process, awaitable like an ``asyncio.subprocess.Process``."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        while (code := self.popen.poll()) is None:
            await asyncio.sleep(POLL_S)
        return code

    def terminate(self) -> None:
        self.popen.terminate()

    def kill(self) -> None:
        self.popen.kill()


def worker_args(
    kernel: str,
    storage_options: Mapping[str, str],
    task_delay: float,
    cache: str | None = None,
    cache_size: int = 1 << 30,
) -> list[str]:
    """The ``tally worker`` options of a local run's workers."""
    extra = ["--kernel", kernel]
    extra += [a for k, v in storage_options.items() for a in ("--storage-option", f"{k}={v}")]
    if cache is not None:
        extra += ["--cache", os.path.abspath(cache), "--cache-size", str(cache_size)]
    return extra + (["--task-delay", repr(task_delay)] if task_delay else [])


def worker_command(host: str, port: int, extra_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "tally", "worker", host, str(port), "-q",
            "--connect-timeout", "10", *extra_args]  # fmt: skip


@dataclass
class LocalWorkers:
    """``count`` workers started on a listening loopback socket, with a fresh token."""

    count: int
    extra_args: list[str]
    token: bytes = field(default_factory=lambda: secrets.token_hex(16).encode())
    sock: socket.socket | None = None
    processes: list[WorkerProcess] = field(default_factory=list)

    def start(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=max(128, self.count))
        port = self.sock.getsockname()[1]
        env = dict(os.environ, TALLY_TOKEN=self.token.decode())
        for _ in range(self.count):
            popen = subprocess.Popen(
                worker_command("127.0.0.1", port, self.extra_args),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stdout carries the result alone
                start_new_session=True,  # a Ctrl-C at the terminal reaches the command alone
            )
            self.processes.append(WorkerProcess(popen))

    def take_socket(self) -> socket.socket:
        """The listening socket, for the coordinator (which closes it)."""
        sock, self.sock = self.sock, None
        assert sock is not None, "started once, taken once"
        return sock

    def stop(self, grace_s: float = 5.0) -> None:
        """Whatever the job did: every worker still running gets SIGTERM, then SIGKILL past
        ``grace_s``; the socket closes if nobody took it."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        running = [p.popen for p in self.processes if p.popen.poll() is None]
        for popen in running:
            with contextlib.suppress(ProcessLookupError):
                popen.terminate()
        for popen in running:
            try:
                popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
