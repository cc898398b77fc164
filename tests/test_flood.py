"""A flood of peers that never prove the token: the job finishes exactly, the held
connections are capped and closed quietly, and the log stays short."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from conftest import SAMPLE, Procs, free_port, reference_output
from tally import protocol as p
from tally.gate import Gate, raise_fd_limit

TOKEN = "flood-token"


def connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=30)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the coordinator never listened"
            time.sleep(0.02)


def test_500_silent_connections_and_garbage_leave_the_job_exact_and_the_log_short(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats = tmp_path / "stats.json"
    env = {"TALLY_TOKEN": TOKEN}
    coord = procs.coordinator(sample_filelist, port, "--min-workers", "2", "--top", "25",
                              "--stats", str(stats), env=env)  # fmt: skip
    held = [connect(port)]
    try:
        held += [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(499)]
        for sock in held[:50]:  # some say something that is not a Tally frame
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        procs.worker(port, env=env)
        procs.worker(port, env=env)
        code, out = procs.finish(coord, timeout=120)
    finally:
        for sock in held:
            sock.close()
    assert (code, out) == (0, reference_output(SAMPLE, p.QuerySpec("top", k=25)))
    stderr = procs.stderr(coord)
    assert "Traceback" not in stderr
    refusals = [line for line in stderr.splitlines() if " refused " in line]
    assert len(refusals) < 20, "\n".join(refusals)
    record = json.loads(stats.read_text())
    assert record["peers_refused"] >= 50  # the garbage at least, every one counted
    assert record["workers_lost"] == 0


def test_the_gate_caps_handshakes_and_counts_every_refusal() -> None:
    gate = Gate(max_handshakes=2)
    assert gate.admit() and gate.admit()
    assert not gate.admit()  # a third waits for nobody: refused at once
    gate.done()
    assert gate.admit()
    for _ in range(10):
        gate.refuse("1.2.3.4:5", "bad token")
    assert gate.refused == 11 and gate.handshaking == 2


def test_the_file_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    soft = raise_fd_limit()
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or soft == hard
