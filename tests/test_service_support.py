"""Real ``tally serve`` processes for the service tests, and the checks they all use; plus
the tests of starting one (ports, refusals)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from conftest import SAMPLE, Procs, reference_output
from tally.kernels.reference import count_domains
from tally.protocol import QuerySpec
from tally.queries import format_result, merger_for
from tally.queries.domains import to_table
from tally.service.client import Client

T = TypeVar("T")
TOKEN = "service-test-token"
READY = re.compile(r"serving: workers on [^:]+:(\d+), HTTP on (http://[^ ]+), state")
QUERIES: dict[str, tuple[dict[str, Any], QuerySpec]] = {
    "top25": ({"top": 25}, QuerySpec("top", k=25)),
    "all": ({"all": True}, QuerySpec("all")),
    "google": ({"domain": "google.ru"}, QuerySpec("domain", domain=b"google.ru")),
    "top3": ({"top": 3}, QuerySpec("top", k=3)),
}


def expected_result(name: str) -> dict[str, Any]:
    """The ``result`` document a job of query ``name`` over the sample must have, from the
    plain-Python reference kernel."""
    plan = QUERIES[name][1]
    if plan.kind != "domain":
        doc: dict[str, Any] = json.loads(reference_output(SAMPLE, plan, "json"))
        return doc
    with SAMPLE.open("rb") as f:
        counts = count_domains(f, only=plan.domain)
    merger = merger_for(plan)
    merger.add(to_table(counts), counts.lines, counts.malformed)
    doc = json.loads(format_result(merger.finalize(), "json"))
    return doc


def wait_until(check: Callable[[], T | None], timeout: float = 30, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        time.sleep(0.02)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    worker_port: int
    url: str
    procs: Procs

    def client(self, token: str | None = TOKEN) -> Client:
        return Client(self.url, token)

    def log(self) -> str:
        return self.procs.stderr(self.proc)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def start_server(
    procs: Procs,
    state: Path,
    *args: str,
    port: int = 0,
    http_port: int = 0,
    token: str = TOKEN,
    timeout: float = 30,
) -> Server:
    """``tally serve`` on loopback; returns once it listens (ports read from its log)."""
    proc = procs.start(
        "serve",
        "--port",
        str(port),
        "--http-port",
        str(http_port),
        "--state",
        str(state),
        *args,
        env={"TALLY_TOKEN": token},
        stdout=subprocess.DEVNULL,
    )

    def ready() -> re.Match[str] | None:
        if proc.poll() is not None:
            raise AssertionError(f"tally serve exited {proc.returncode}:\n{procs.stderr(proc)}")
        return READY.search(procs.stderr(proc))

    match = wait_until(ready, timeout, "tally serve listening")
    return Server(proc, int(match.group(1)), match.group(2), procs)


def start_workers(
    procs: Procs, port: int, count: int, *args: str, token: str = TOKEN
) -> list[subprocess.Popen[bytes]]:
    return [procs.worker(port, *args, env={"TALLY_TOKEN": token}) for _ in range(count)]


def workers_alive(client: Client, count: int) -> Callable[[], bool]:
    return lambda: sum(w["state"] == "alive" for w in client.workers()) >= count


# --- tests of starting a server ----------------------------------------------------------------


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(
    procs: Procs, tmp_path: Path
) -> None:
    proc = procs.start(
        "serve", "--host", "0.0.0.0", "--state", str(tmp_path / "s.db"), env={"TALLY_TOKEN": ""}
    )
    code, out = procs.finish(proc)
    assert (code, out) == (2, "")
    assert "tally: refusing to listen on 0.0.0.0 without a cluster token" in procs.stderr(proc)
    assert not (tmp_path / "s.db").exists()


def test_serve_refuses_a_port_in_use_and_an_unusable_state(procs: Procs, tmp_path: Path) -> None:
    server = start_server(procs, tmp_path / "state.db")
    http_port = server.url.rsplit(":", 1)[1]
    clash = procs.start("serve", "--port", "0", "--http-port", http_port,
                        "--state", str(tmp_path / "other.db"))  # fmt: skip
    assert procs.finish(clash)[0] == 2
    assert f"tally: cannot listen for HTTP on 127.0.0.1:{http_port}" in procs.stderr(clash)
    (tmp_path / "dir.db").mkdir()
    bad = procs.start(
        "serve", "--port", "0", "--http-port", "0", "--state", str(tmp_path / "dir.db")
    )
    assert procs.finish(bad)[0] == 2
    assert f"tally: cannot open state {tmp_path / 'dir.db'}" in procs.stderr(bad)
    assert server.terminate() == 0


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON document written whole (atomically), or None while there is none."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return doc
    except FileNotFoundError:
        return None
