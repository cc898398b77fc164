"""Inputs that stall: a server that accepts and then says nothing. The job ends with a reason
instead of hanging while the worker's heartbeat keeps it alive."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def test_a_silent_server_fails_the_job_after_the_task_time_limit(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)  # reads nothing, answers nothing, keeps it open

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    listing = tmp_path / "list.csv"
    listing.write_text(f"http://127.0.0.1:{port}/p.tsv\n")
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tally", "run", str(listing), "--workers", "1",
             "--task-timeout", "1", "--max-attempts", "2", "-q"],
            capture_output=True, text=True, timeout=100, check=False,
        )  # fmt: skip
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.strip().splitlines()[-1] == (
        "tally: job failed: partition 0 failed 2 time(s); "
        "last error: no result within 1s (--task-timeout)"
    )
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60
