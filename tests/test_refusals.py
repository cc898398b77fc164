"""Peers that must be refused: wrong token, other version, garbage, oversized or undecodable
frames. The coordinator logs why, keeps serving everyone else, and the job completes exactly."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from conftest import POLL_S, SAMPLE, WAIT_S, Procs, free_port, reference_output
from tally import protocol as p
from tally.net import PIECE, proof

TOKEN = "s3cret-token"


def connect(port: int) -> socket.socket:
    """Connect, waiting for a coordinator that is still starting."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_S)


def read_frame(sock: socket.socket) -> p.AnyMessage | None:
    header = sock.recv(4, socket.MSG_WAITALL)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    payload = b""
    while len(payload) < length:
        more = sock.recv(length - len(payload))
        if not more:
            return None
        payload += more
    return p.decode(payload)


def closed_by_peer(sock: socket.socket) -> bool:
    """True if the peer closes the connection (which this then closes too)."""
    with sock:
        try:
            while sock.recv(4096):
                pass
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def wait_challenge(port: int) -> tuple[socket.socket, p.Challenge]:
    sock = connect(port)
    challenge = read_frame(sock)
    assert isinstance(challenge, p.Challenge)
    return sock, challenge


def say_hello(port: int, version: int = p.PROTOCOL_VERSION) -> tuple[socket.socket, p.AnyMessage]:
    """Handshake as a worker that knows the token; the coordinator's answer."""
    sock, challenge = wait_challenge(port)
    nonce = os.urandom(16)
    mine = proof(TOKEN.encode(), b"worker", challenge.nonce, nonce)
    sock.sendall(p.encode(p.Hello(version, nonce, mine, "x", 1)))
    answer = read_frame(sock)
    if isinstance(answer, p.Welcome):  # the coordinator proves the token in turn
        assert answer.proof == proof(TOKEN.encode(), b"coordinator", nonce, challenge.nonce)
    return sock, answer


def join(port: int) -> tuple[socket.socket, p.Welcome, p.Assign]:
    """Join as a worker and take the first assignment."""
    sock, welcome = say_hello(port)
    plan, assign = read_frame(sock), read_frame(sock)
    assert isinstance(welcome, p.Welcome) and isinstance(plan, p.JobPlan)
    assert isinstance(assign, p.Assign) and assign.job_id == plan.job_id
    return sock, welcome, assign


def test_bad_peers_are_refused_and_the_job_completes(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats = tmp_path / "stats.json"
    env = {"TALLY_TOKEN": TOKEN}
    coord = procs.coordinator(
        sample_filelist, port, "--min-workers", "2", "--stats", str(stats), env=env
    )
    # 1. a worker with the wrong token gives up with a clear reason
    wrong = procs.worker(port, env={"TALLY_TOKEN": "not-the-token"})
    assert wrong.wait(timeout=20) == 1
    assert "bad token" in procs.stderr(wrong)

    # 2. garbage: an HTTP request reads as an oversized length prefix
    sock, _ = wait_challenge(port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed_by_peer(sock)

    # 3. an oversized frame announced by a well-formed header
    sock, _ = wait_challenge(port)
    sock.sendall(struct.pack(">I", 1 << 30) + b"x" * 1000)
    assert closed_by_peer(sock)

    # 4. a frame of the right size that is not a message
    sock, _ = wait_challenge(port)
    sock.sendall(struct.pack(">I", 16) + os.urandom(16))
    assert closed_by_peer(sock)

    # 5. another protocol version is told why
    sock, answer = say_hello(port, version=99)
    assert isinstance(answer, p.Refused) and "version 99" in answer.reason
    assert closed_by_peer(sock)

    # 6. a worker that joins properly, then sends an oversized frame, is dropped as lost
    sock, welcome = say_hello(port)
    assert isinstance(welcome, p.Welcome)
    sock.sendall(struct.pack(">I", p.MAX_FRAME + 1))
    assert closed_by_peer(sock)

    # real workers still get the job done, exactly
    for _ in range(2):
        procs.worker(port, env=env)
    code, out = procs.finish(coord)
    assert code == 0
    assert out == reference_output(SAMPLE, p.QuerySpec("top", k=25))
    log = procs.stderr(coord)
    for reason in ("bad token", "oversized frame", "undecodable frame", "version 99"):
        assert reason in log, reason
    record = json.loads(stats.read_text())
    assert record["peers_refused"] == 5
    assert record["workers_lost"] == 1


def test_coordinator_without_token_refuses_to_listen_beyond_loopback(
    procs: Procs, sample_filelist: Path
) -> None:
    coord = procs.coordinator(
        sample_filelist, free_port(), "--host", "0.0.0.0", env={"TALLY_TOKEN": ""}
    )
    code, out = procs.finish(coord)
    assert (code, out) == (2, "")
    assert "without a cluster token" in procs.stderr(coord)


@pytest.mark.parametrize("version", [1, 3])
def test_worker_refuses_a_coordinator_of_another_version(procs: Procs, version: int) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    worker = procs.worker(port)
    conn, _ = server.accept()
    with conn, server:
        conn.sendall(p.encode(p.Challenge(version, os.urandom(16))))
        assert worker.wait(timeout=20) == 1
        assert f"protocol version {version}" in procs.stderr(worker)


def test_a_worker_sending_a_malformed_partial_is_dropped(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats = tmp_path / "stats.json"
    coord = procs.coordinator(
        sample_filelist, port, "--stats", str(stats), env={"TALLY_TOKEN": TOKEN}
    )
    sock, _, assign = join(port)
    bad = p.Partial(memoryview(b"\xff\xffnot an Arrow stream"), 3, 0)
    sock.sendall(p.encode(p.Result(assign.attempt, assign.job_id, bad, 4, 0.0)))
    answer = read_frame(sock)
    assert isinstance(answer, p.Refused) and "malformed partial" in answer.reason
    assert closed_by_peer(sock)
    procs.worker(port, env={"TALLY_TOKEN": TOKEN})
    code, out = procs.finish(coord)
    assert (code, out) == (0, reference_output(SAMPLE, p.QuerySpec("top", k=25)))
    record = json.loads(stats.read_text())
    assert record["workers_lost"] == 1 and record["reassigned"] == 1


def test_a_worker_sending_a_large_frame_slowly_stays_alive(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    lease = 1.0
    port = free_port()
    stats, events = tmp_path / "stats.json", tmp_path / "events.jsonl"
    coord = procs.coordinator(
        sample_filelist, port, "--lease-timeout", str(lease), "--stats", str(stats),
        "--events", str(events), env={"TALLY_TOKEN": TOKEN},
    )  # fmt: skip
    log = procs.events(coord, events)
    sock, welcome, assign = join(port)
    # an error report of ten pieces (the coordinator reads a large frame piece by piece), one
    # piece every quarter lease: two and a half leases in all, with no heartbeat between
    error = p.ErrorInfo("PartitionError", "x" * (10 * PIECE), True)
    frame = p.encode(p.Failed(assign.attempt, assign.job_id, error))
    ends = [*range(p.HEADER.size + PIECE, len(frame), PIECE), len(frame)]
    for start, end in zip([0, *ends], ends, strict=False):
        time.sleep(lease / 4)
        sock.sendall(frame[start:end])
    worker = welcome.worker_id
    failed = log.wait("failed", worker=worker)
    assert failed["t"] - log.select("joined", worker=worker)[0]["t"] > 2 * lease
    sock.close()
    assert log.wait("lost", worker=worker)["reason"].startswith("connection closed")
    procs.worker(port, env={"TALLY_TOKEN": TOKEN})
    code, out = procs.finish(coord)
    assert (code, out) == (0, reference_output(SAMPLE, p.QuerySpec("top", k=25)))
    record = json.loads(stats.read_text())
    assert record["failed_attempts"] == 1  # the reported failure; the lost worker is no failure
    assert not log.select("lost", where=lambda r: r["reason"].startswith("silent"))
