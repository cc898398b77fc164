"""The worker processes of ``tally run`` and ``tally sql``, started first thing.

A worker takes a few tenths of a second of processor time to start (the interpreter, Arrow,
DuckDB), and the command itself needs the same modules. Where the system can fork (POSIX) and
no thread runs yet, the command therefore loads them once and forks its workers from itself:
they start with everything loaded, and the start-up is paid once, not once per process. Else
each worker is a new interpreter (``python -m tally worker``). Either way the workers start
before the command parses the query or starts the coordinator, on a socket that already
listens; their connections wait in its backlog until the coordinator accepts them (their
handshake allows seconds). ``TALLY_FORK=0`` asks for new interpreters.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

POLL_S = 0.02  # how often an exit is looked for


class WorkerProcess:
    """A started worker process, awaitable like an ``asyncio.subprocess.Process``: a new
    interpreter (``popen``) or a child forked from this process (``pid``)."""

    def __init__(self, popen: subprocess.Popen[bytes] | None = None, pid: int = 0) -> None:
        self.popen = popen
        self.pid = popen.pid if popen is not None else pid
        self._code: int | None = None

    @property
    def returncode(self) -> int | None:
        if self.popen is not None:
            return self.popen.poll()
        if self._code is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self._code = os.waitstatus_to_exitcode(status)
        return self._code

    async def wait(self) -> int:
        while (code := self.returncode) is None:
            await asyncio.sleep(POLL_S)
        return code

    def wait_for(self, timeout: float) -> int | None:
        """The exit status, waiting up to ``timeout`` seconds (``None``: still running)."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return code

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)


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
        command = worker_command("127.0.0.1", port, self.extra_args)
        if can_fork():
            preload()
            if threading.active_count() == 1:  # nothing started a thread while loading
                # what is loaded so far stays out of the collector's passes: they would touch,
                # and so copy, every page of it in each worker
                gc.freeze()
                for _ in range(self.count):
                    self.processes.append(WorkerProcess(pid=self._fork(command[3:])))
                return
        env = dict(os.environ, TALLY_TOKEN=self.token.decode())
        for _ in range(self.count):
            popen = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stdout carries the result alone
                start_new_session=True,  # a Ctrl-C at the terminal reaches the command alone
            )
            self.processes.append(WorkerProcess(popen))

    def _fork(self, argv: list[str]) -> int:
        """A child that is ``tally worker argv``, as the new interpreter would be."""
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:  # the child: it never returns into the caller's code
            os.setsid()  # a Ctrl-C at the terminal reaches the command alone
            signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))  # until it runs
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            assert self.sock is not None
            self.sock.close()  # the coordinator's
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)  # stdout carries the result alone
            os.environ["TALLY_TOKEN"] = self.token.decode()
            random.seed()  # not the command's sequence (backoff jitter would be the same)
            logging.getLogger().handlers.clear()  # the worker sets up its own
            from tally.cli import main

            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            with contextlib.suppress(Exception):
                print(f"tally worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(code)

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
        running = [p for p in self.processes if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in running:
            if process.wait_for(grace_s) is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait_for(grace_s)


def can_fork() -> bool:
    return hasattr(os, "fork") and os.environ.get("TALLY_FORK", "1") != "0"


def preload() -> None:
    """The modules a worker loads to compute (each forked worker then has them)."""
    import duckdb  # noqa: F401
    import pyarrow.compute  # type: ignore[import-untyped]
    import pyarrow.csv  # type: ignore[import-untyped]  # noqa: F401

    import tally.kernels.delimited
    import tally.kernels.fast
    import tally.worker  # noqa: F401
