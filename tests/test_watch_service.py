"""``tally serve --watch`` with real processes: files written into the watched folder while
the server runs are processed exactly once, across a SIGKILL of the server too."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from conftest import SAMPLE, Procs, reference_output, split_round_robin
from tally.protocol import QuerySpec
from test_service_support import (
    read_json as read,
)
from test_service_support import start_server, start_workers, wait_until, workers_alive

ALL = QuerySpec("all")
WATCH = ("--poll-interval", "0.05", "--settle", "0.2", "--all")


def expected(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(reference_output(path, ALL, "json"))
    return doc


def upload(src: Path, folder: Path) -> Path:
    """Write a file into the watched folder in place (as a slow upload would)."""
    target = folder / src.name
    with src.open("rb") as f, target.open("wb") as out:
        shutil.copyfileobj(f, out)
    return target


def jobs_by_object(client: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for job in client.jobs():
        found.setdefault(Path(job["source"]).name, []).append(job["state"])
    return found


def test_every_upload_is_processed_once_across_a_sigkill_of_the_server(
    procs: Procs, tmp_path: Path
) -> None:
    parts = sorted(split_round_robin(SAMPLE, tmp_path / "staged", 8).parent.glob("part-*.tsv"))
    watched, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state.db"
    watched.mkdir()
    args = ("--watch", str(watched), "--output", str(out), *WATCH)
    server = start_server(procs, state, *args)
    start_workers(procs, server.worker_port, 2, "--task-delay", "0.3")
    client = server.client()
    wait_until(workers_alive(client, 2), what="two workers")
    for part in parts[:3]:
        upload(part, watched)
    wait_until(lambda: all(read(out / f"{p.name}.json") for p in parts[:3]), what="3 results")
    upload(parts[3], watched)
    wait_until(lambda: "running" in jobs_by_object(client).get(parts[3].name, []),
               what="the fourth object's job running")  # fmt: skip
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    assert read(out / f"{parts[3].name}.json") is None  # killed between upload and result
    for part in parts[4:6]:  # uploaded while the server is down
        upload(part, watched)
    server = start_server(procs, state, *args, port=server.worker_port)
    client = server.client()
    for part in parts[6:]:
        upload(part, watched)
    wait_until(lambda: all(read(out / f"{p.name}.json") for p in parts), 60, "every result")
    wait_until(lambda: (read(out / "_total.json") or {}).get("lines") == 200, 60, "the total")
    for part in parts:
        assert read(out / f"{part.name}.json") == expected(part)
    assert read(out / "_total.json") == expected(SAMPLE)
    assert jobs_by_object(client) == {p.name: ["succeeded"] for p in parts}
    assert "1 running" in server.log()  # the fourth object's job resumed
    assert server.terminate() == 0


def test_a_file_being_written_is_not_read_and_a_changed_object_replaces_its_contribution(
    procs: Procs, tmp_path: Path
) -> None:
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    args = ("--watch", str(watched), "--output", str(out), "--poll-interval", "0.05")
    server = start_server(procs, tmp_path / "state.db", *args, "--settle", "2", "--all")
    start_workers(procs, server.worker_port, 1)
    client = server.client()
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    first = tmp_path / "a.tsv"
    first.write_bytes(b"".join(lines[:50]))
    upload(first, watched)
    growing = watched / "b.tsv"
    deadline = time.monotonic() + 60
    with growing.open("wb") as f:  # b.tsv grows a line every 20 ms until a.tsv is done
        for line in itertools.cycle(lines[50:]):
            f.write(line)
            f.flush()
            if read(out / "a.tsv.json") is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)  # pacing the writes, not waiting for anything
        assert read(out / "a.tsv.json") == expected(first)
        assert read(out / "b.tsv.json") is None, "a file being written was read"
        f.write(b"".join(lines[50:]))
    wait_until(lambda: read(out / "b.tsv.json"), 60, "b's result")
    wait_until(lambda: (read(out / "_total.json") or {}).get("lines", 0) > 50, 60, "the total")
    assert read(out / "b.tsv.json") == expected(growing)
    both = tmp_path / "both.tsv"
    both.write_bytes(first.read_bytes() + growing.read_bytes())
    assert read(out / "_total.json") == expected(both)
    assert jobs_by_object(client)["b.tsv"] == ["succeeded"]  # never read half written
    # a new version of a.tsv replaces the old one in the total
    first.write_bytes(b"".join(lines[:10]))
    upload(first, watched)
    both.write_bytes(first.read_bytes() + growing.read_bytes())
    want = expected(both)
    wait_until(lambda: read(out / "_total.json") == want, 60, "the new total")
    assert read(out / "a.tsv.json") == expected(first)
    assert jobs_by_object(client)["a.tsv"] == ["succeeded", "succeeded"]
    assert server.terminate() == 0


def test_an_output_that_cannot_be_written_is_one_line_at_start(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    watched = tmp_path / "in"
    watched.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "tally", "serve", "--port", "0", "--http-port", "0",
         "--state", str(tmp_path / "state.db"), "--watch", str(watched),
         "--output", str(blocker / "out"), "-q"],
        capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ, TALLY_TOKEN="a-token"),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"tally: cannot write results into {blocker / 'out'}: Not a directory"
    ]
