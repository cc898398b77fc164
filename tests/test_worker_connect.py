"""A worker's connection life, with real worker processes: finding its coordinator (or finding
that a peer is not one), waiting for one that is not there yet, and leaving when the job is
over, with exit 0 unless the worker itself could not do its part."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import SAMPLE, Procs, free_port, reference_output, serve_http
from tally import protocol as p
from tally.joining import (
    FIRST_DELAY_S,
    GONE_AFTER_S,
    MAX_DELAY_S,
    Failure,
    GiveUp,
    Gone,
    Patience,
    Retry,
)
from tally.net import proof
from test_service_support import wait_until

TOKEN = "connect-token"


def seconds_between(first: str, then: str) -> float:
    """Seconds from one log line to a later one, by their time stamps (``HH:MM:SS.mmm ...``)."""

    def clock(line: str) -> float:
        hours, minutes, seconds = line.split()[0].split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)

    return (clock(then) - clock(first)) % 86400  # across midnight too


def log_lines(procs: Procs, proc: subprocess.Popen[bytes]) -> list[str]:
    return procs.stderr(proc).splitlines()


def read_frame(sock: socket.socket) -> p.AnyMessage | None:
    """The next message, or None when the peer closed."""
    header = sock.recv(4, socket.MSG_WAITALL)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    payload = sock.recv(length, socket.MSG_WAITALL) if length else b""
    return p.decode(payload) if len(payload) == length else None


def read_message(sock: socket.socket) -> p.AnyMessage | None:
    """The next message that is not a heartbeat."""
    while isinstance(message := read_frame(sock), p.Heartbeat):
        pass
    return message


@contextlib.contextmanager
def peer(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers every connection with ``answer`` and holds it
    open until the end; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            with contextlib.suppress(OSError):
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()
        for conn in held:
            conn.close()


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel does, into the backlog) and says nothing."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


class FakeCoordinator:
    """The coordinator's side of the handshake on a plain socket; then what the test says."""

    def __init__(self, lease_s: float = 3.0, heartbeat_s: float = 0.5) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(30)
        self.port: int = self.server.getsockname()[1]
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.conns: list[socket.socket] = []

    def welcome(self) -> socket.socket:
        conn, _ = self.server.accept()
        self.conns.append(conn)
        conn.settimeout(30)
        nonce = os.urandom(16)
        conn.sendall(p.encode(p.Challenge(p.PROTOCOL_VERSION, nonce)))
        hello = read_frame(conn)
        assert isinstance(hello, p.Hello)
        mine = proof(TOKEN.encode(), b"coordinator", hello.nonce, nonce)
        conn.sendall(p.encode(p.Welcome(mine, 1, self.heartbeat_s, self.lease_s)))
        return conn

    def close(self) -> None:
        self.server.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def fake() -> Iterator[FakeCoordinator]:
    coordinator = FakeCoordinator()
    try:
        yield coordinator
    finally:
        coordinator.close()


# --- a peer that is not a coordinator --------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "said"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "it sent b'SSH-'..., not a Tally frame"),
        (
            struct.pack(">I", 5) + b"hello",
            "it sent b'\\x00\\x00\\x00\\x05hello', not a Tally message",
        ),
        (p.encode(p.Heartbeat(1)), "its first message is Heartbeat, not a challenge"),
    ],
    ids=["ssh-banner", "garbage-frame", "not-a-challenge"],
)
def test_a_peer_speaking_something_else_is_named_at_once(
    procs: Procs, sent: bytes, said: str
) -> None:
    with peer(lambda conn: conn.sendall(sent)) as port:
        worker = procs.worker(port, "--connect-timeout", "60")
        assert worker.wait(timeout=30) == 1  # long before the connect timeout
    [line] = log_lines(procs, worker)
    assert line.endswith(f" ERROR 127.0.0.1:{port} is not a Tally coordinator: {said}")


@pytest.mark.parametrize("kind", ["http-server", "silent-server"])
def test_a_silent_peer_is_given_up_at_the_connect_timeout(
    procs: Procs, tmp_path: Path, kind: str
) -> None:
    with contextlib.ExitStack() as stack:
        if kind == "http-server":
            port = int(stack.enter_context(serve_http(tmp_path)).rsplit(":", 1)[1])
        else:
            port = stack.enter_context(silent_listener())
        worker = procs.worker(port, "--connect-timeout", "2")
        assert worker.wait(timeout=30) == 1
    waiting, gave_up = log_lines(procs, worker)
    assert waiting.endswith(
        f" INFO waiting for coordinator at 127.0.0.1:{port} (connected, but nothing received "
        "in 1s; is it a Tally coordinator?); waiting for up to 2s"
    )
    assert gave_up.endswith(
        f" ERROR 127.0.0.1:{port} is not a Tally coordinator: connected, but nothing received in 2s"
    )


def test_a_peer_closing_every_connection_is_given_up_at_the_connect_timeout(
    procs: Procs,
) -> None:
    with peer(lambda conn: conn.close()) as port:
        worker = procs.worker(port, "--connect-timeout", "2")
        assert worker.wait(timeout=30) == 1
    waiting, gave_up = log_lines(procs, worker)
    assert waiting.endswith(
        f" INFO waiting for coordinator at 127.0.0.1:{port} (connection closed before the "
        "handshake); retrying for up to 2s"
    )
    assert gave_up.endswith(
        f" ERROR 127.0.0.1:{port} is not a Tally coordinator: connection closed before the "
        "handshake, on every try for 2s"
    )
    assert 1.5 <= seconds_between(waiting, gave_up) < 5


# --- an absent coordinator -------------------------------------------------------------------


def test_an_absent_coordinator_is_awaited_quietly_then_given_up(procs: Procs) -> None:
    port = free_port()
    worker = procs.worker(port, "--connect-timeout", "3")
    assert worker.wait(timeout=30) == 1
    waiting, gave_up = log_lines(procs, worker)  # one line while waiting, one to give up
    assert waiting.endswith(
        f" INFO waiting for coordinator at 127.0.0.1:{port} (connection refused); "
        "retrying for up to 3s"
    )
    assert gave_up.endswith(
        f" ERROR cannot connect to coordinator at 127.0.0.1:{port} within 3s (connection refused)"
    )
    # said within a second of the first try, given up at the timeout (give or take a loaded
    # machine's scheduling)
    assert 2.0 <= seconds_between(waiting, gave_up) < 5


def test_a_worker_started_first_joins_when_the_coordinator_comes(
    procs: Procs, sample_filelist: Path
) -> None:
    port = free_port()
    worker = procs.worker(port, "--connect-timeout", "60")
    procs.wait_for_log(worker, f"waiting for coordinator at 127.0.0.1:{port}")
    coord = procs.coordinator(sample_filelist, port, "--domain", "google.ru")
    assert procs.finish(coord) == (0, "5\n")
    assert worker.wait(timeout=20) == 0
    assert procs.stderr(worker).count("waiting for coordinator") == 1


# --- the end of a job ------------------------------------------------------------------------


def test_a_worker_stopped_until_its_job_ended_exits_zero(
    procs: Procs, sample_filelist: Path
) -> None:
    port = free_port()
    coord = procs.coordinator(
        sample_filelist, port, "--min-workers", "2", "--lease-timeout", "1", "--no-speculation"
    )
    # its tasks take 5 s, so it surely holds one when stopped, however slowly the other
    # worker starts (stopped before both joined, it could be lost before the job began)
    stopped = procs.worker(port, "--connect-timeout", "60", "--task-delay", "5")
    procs.worker(port)  # the job starts once both have joined
    wait_until(lambda: procs.stderr(coord).count(" joined: ") >= 2, 30, "both workers joined")
    stopped.send_signal(signal.SIGSTOP)
    procs.wait_for_log(coord, "lost: silent")
    assert procs.finish(coord) == (0, reference_output(SAMPLE, p.QuerySpec("top", k=25)))
    stopped.send_signal(signal.SIGCONT)
    assert stopped.wait(timeout=30) == 0  # not after its 60 s connect timeout
    gone = [line for line in log_lines(procs, stopped) if " is gone (" in line]
    assert len(gone) == 1, log_lines(procs, stopped)
    assert f" WARNING coordinator at 127.0.0.1:{port} is gone (connection refused for " in gone[0]
    assert gone[0].endswith("after this worker had joined): its job is over")
    assert "Traceback" not in procs.stderr(stopped)


def test_a_worker_cut_off_when_its_job_ended_exits_zero(
    procs: Procs, fake: FakeCoordinator
) -> None:
    worker = procs.worker(fake.port, "--connect-timeout", "60", env={"TALLY_TOKEN": TOKEN})
    fake.welcome()
    procs.wait_for_log(worker, "joined as worker")
    fake.close()  # the connection and the listener: the job ended while it was cut off
    assert worker.wait(timeout=30) == 0
    *_, lost, gone = log_lines(procs, worker)
    assert " WARNING connection to coordinator lost (" in lost  # closed, or reset
    assert lost.endswith("); reconnecting for up to 60s")
    assert f" WARNING coordinator at 127.0.0.1:{fake.port} is gone (connection refused" in gone
    assert GONE_AFTER_S <= seconds_between(lost, gone) < GONE_AFTER_S + 3


def test_every_worker_of_a_failed_job_is_told_and_exits_zero(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_bytes(b"1\thttp://a.ru/\n")
    filelist = tmp_path / "filelist.csv"
    filelist.write_text("a.tsv\nmissing.tsv\n")
    port = free_port()
    coord = procs.coordinator(filelist, port, "--max-attempts", "1", "--min-workers", "2")
    workers = [procs.worker(port) for _ in range(2)]
    assert procs.finish(coord) == (1, "")
    assert [w.wait(timeout=30) for w in workers] == [0, 0]
    for w in workers:
        assert " INFO coordinator: job failed; " in log_lines(procs, w)[-1]


# --- SIGTERM and a silent coordinator --------------------------------------------------------

LAUNCHERS = {  # `python -m tally` and what the `tally` script runs
    "python-m": [sys.executable, "-m", "tally"],
    "script": [sys.executable, "-c", "import sys; from tally.cli import main; sys.exit(main())"],
}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_sigterm_while_the_worker_starts_exits_zero(tmp_path: Path, launcher: str) -> None:
    args = ["worker", "127.0.0.1", str(free_port()), "--connect-timeout", "60"]
    with (tmp_path / "stderr").open("wb") as err:
        worker = subprocess.Popen([*LAUNCHERS[launcher], *args], stderr=err)
    try:
        # NumPy loads with the worker's modules, before its event loop runs
        maps = Path(f"/proc/{worker.pid}/maps")
        deadline = time.monotonic() + 30
        while "_multiarray_umath" not in maps.read_text():
            assert time.monotonic() < deadline, "the worker never loaded NumPy"
            time.sleep(0.001)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_coordinator_silent_for_longer_than_the_lease_is_waited_for(procs: Procs) -> None:
    fake = FakeCoordinator(lease_s=2.0, heartbeat_s=0.1)
    try:
        worker = procs.worker(fake.port, env={"TALLY_TOKEN": TOKEN})
        conn = fake.welcome()
        for seq in range(1, 26):  # 2.5 s of heartbeats, and not a word from the coordinator
            beat = read_frame(conn)
            assert isinstance(beat, p.Heartbeat) and beat.seq == seq
        conn.sendall(p.encode(p.JobPlan("job", p.QuerySpec("all"), 1 << 20)))
        conn.sendall(p.encode(p.Assign(1, "job", p.Task(str(SAMPLE)))))
        result = read_message(conn)  # on the same connection: the worker did not drop it
        assert isinstance(result, p.Result)
        assert (result.attempt, result.job_id, result.partial.lines) == (1, "job", 200)
        conn.sendall(p.encode(p.Shutdown("job complete")))
        assert worker.wait(timeout=30) == 0
    finally:
        fake.close()
    assert "silent for" not in procs.stderr(worker)


# --- Patience, the pure policy ---------------------------------------------------------------


def run_out(patience: Patience, now: float, kind: Failure, why: str) -> tuple[float, object]:
    """Fail every try the same way until the policy stops retrying; the time and verdict."""
    verdict: object = patience.failed(now, kind, why)
    while isinstance(verdict, Retry):
        assert 0 <= verdict.delay_s <= MAX_DELAY_S
        now += verdict.delay_s
        verdict = patience.failed(now, kind, why)
    return now, verdict


def test_patience_says_once_why_it_waits_and_gives_up_at_the_deadline() -> None:
    patience = Patience("h:7", 3.0, started=100.0)
    first = patience.failed(100.0, Failure.REFUSED, "connection refused")
    assert first == Retry(
        FIRST_DELAY_S, "waiting for coordinator at h:7 (connection refused); retrying for up to 3s"
    )
    second = patience.failed(100.0 + first.delay_s, Failure.REFUSED, "connection refused")
    assert isinstance(second, Retry) and second.notice is None
    now, verdict = run_out(patience, 100.0 + first.delay_s, Failure.REFUSED, "connection refused")
    assert now == pytest.approx(103.0)  # the last try is at the deadline, not before it
    assert verdict == GiveUp("cannot connect to coordinator at h:7 within 3s (connection refused)")


def test_a_rejoining_worker_refused_throughout_the_grace_finds_the_job_over() -> None:
    patience = Patience("h:7", 60.0, started=0.0, rejoining=True)
    now, verdict = run_out(patience, 0.0, Failure.REFUSED, "connection refused")
    assert now == pytest.approx(GONE_AFTER_S)
    assert verdict == Gone(
        "coordinator at h:7 is gone (connection refused for 3.0s after this worker had "
        "joined): its job is over"
    )
    assert not patience.notified  # it said it lost the connection already


def test_anything_but_a_refusal_restarts_the_grace() -> None:
    patience = Patience("h:7", 60.0, started=0.0, rejoining=True)
    assert isinstance(patience.failed(0.0, Failure.REFUSED, "connection refused"), Retry)
    assert isinstance(patience.failed(2.0, Failure.UNREACHABLE, "no answer within 3s"), Retry)
    assert isinstance(patience.failed(4.0, Failure.REFUSED, "connection refused"), Retry)
    assert isinstance(patience.failed(6.9, Failure.REFUSED, "connection refused"), Retry)
    assert isinstance(patience.failed(7.0, Failure.REFUSED, "connection refused"), Gone)


def test_a_grace_longer_than_the_timeout_ends_at_the_timeout_as_gone() -> None:
    patience = Patience("h:7", 1.0, started=0.0, rejoining=True)
    now, verdict = run_out(patience, 0.0, Failure.REFUSED, "connection refused")
    assert (now, type(verdict)) == (pytest.approx(1.0), Gone)


@pytest.mark.parametrize(
    ("kind", "rejoining", "challenged", "reason"),
    [
        (Failure.SILENT, False, False, "h:7 is not a Tally coordinator: WHY"),
        (Failure.CLOSED, False, False, "h:7 is not a Tally coordinator: WHY, on every try for 2s"),
        (Failure.CLOSED, False, True, "cannot join coordinator at h:7 within 2s (WHY)"),
        (Failure.SILENT, True, False, "cannot rejoin coordinator at h:7 within 2s (WHY)"),
        (Failure.HANDSHAKE, False, True, "cannot join coordinator at h:7 within 2s (WHY)"),
        (
            Failure.UNREACHABLE,
            True,
            False,
            "cannot reconnect to coordinator at h:7 within 2s (WHY)",
        ),
    ],
)
def test_the_reason_to_give_up_names_what_the_peer_is(
    kind: Failure, rejoining: bool, challenged: bool, reason: str
) -> None:
    patience = Patience("h:7", 2.0, started=0.0, rejoining=rejoining, challenged=challenged)
    assert patience.failed(2.0, kind, "WHY") == GiveUp(reason)


def test_a_silent_peer_is_mentioned_once() -> None:
    patience = Patience("h:7", 60.0, started=0.0)
    assert patience.silent_notice() == (
        "waiting for coordinator at h:7 (connected, but nothing received in 1s; is it a Tally "
        "coordinator?); waiting for up to 60s"
    )
    assert patience.silent_notice() is None
    retry = patience.failed(1.0, Failure.SILENT, "WHY")
    assert isinstance(retry, Retry) and retry.notice is None
