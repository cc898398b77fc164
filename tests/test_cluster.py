"""A real coordinator and real worker processes over TCP: exact results despite failures."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from conftest import SAMPLE, Procs, free_port, reference_output
from tally.protocol import QuerySpec

TOP25 = QuerySpec("top", k=25)


def stats_of(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_domain_count_with_four_workers(procs: Procs, sample_filelist: Path) -> None:
    port = free_port()
    coord = procs.coordinator(sample_filelist, port, "--domain", "google.ru")
    for _ in range(4):
        procs.worker(port)
    code, out = procs.finish(coord)
    assert (code, out) == (0, "5\n")


def test_workers_exit_zero_when_the_job_ends(procs: Procs, sample_filelist: Path) -> None:
    port = free_port()
    coord = procs.coordinator(sample_filelist, port, "--min-workers", "3", "--all")
    workers = [procs.worker(port) for _ in range(3)]
    code, out = procs.finish(coord)
    assert (code, out) == (0, reference_output(SAMPLE, QuerySpec("all")))
    assert [w.wait(timeout=10) for w in workers] == [0, 0, 0]


def test_top25_matches_reference(procs: Procs, sample_filelist: Path) -> None:
    port = free_port()
    coord = procs.coordinator(sample_filelist, port, "--top", "25")
    for _ in range(4):
        procs.worker(port)
    code, out = procs.finish(coord)
    assert code == 0
    assert out == reference_output(SAMPLE, TOP25)
    assert len(out.splitlines()) == 25


def test_top25_with_a_worker_killed_after_one_second(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats = tmp_path / "stats.json"
    coord = procs.coordinator(sample_filelist, port, "--top", "25", "--stats", str(stats))
    workers = [procs.worker(port, "--task-delay", "0.1") for _ in range(4)]
    time.sleep(1.0)
    workers[0].kill()
    code, out = procs.finish(coord)
    assert code == 0
    assert out == reference_output(SAMPLE, TOP25)
    record = stats_of(stats)
    assert record["workers_lost"] == 1
    assert record["reassigned"] >= 1
    assert sum(w["partitions"] for w in record["workers"]) == 100


def test_four_workers_share_the_work_fairly(
    procs: Procs, repeated_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats = tmp_path / "stats.json"
    coord = procs.coordinator(
        repeated_filelist, port, "--min-workers", "4", "--domain", "go.mail", "--stats", str(stats)
    )
    for _ in range(4):
        procs.worker(port)
    code, out = procs.finish(coord)
    assert (code, out) == (0, f"{28 * 10 * 100}\n")
    served = [w["partitions"] for w in stats_of(stats)["workers"]]
    assert len(served) == 4 and sum(served) == 100
    assert min(served) > 10, served


def test_stopped_worker_is_lost_and_its_late_result_dropped(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats = tmp_path / "stats.json"
    coord = procs.coordinator(
        sample_filelist, port, "--min-workers", "4", "--no-speculation", "--stats", str(stats)
    )
    workers = [procs.worker(port, "--task-delay", "0.3") for _ in range(4)]
    time.sleep(1.0)
    stopped_at = time.monotonic()
    workers[0].send_signal(signal.SIGSTOP)
    procs.wait_for_log(coord, "lost: silent", timeout=10)
    detected_after = time.monotonic() - stopped_at
    assert detected_after < 3.0 + 1.0  # the lease, plus one tick and a heartbeat interval
    time.sleep(1.5)  # the stopped worker's partitions finish elsewhere meanwhile
    workers[0].send_signal(signal.SIGCONT)
    code, out = procs.finish(coord)
    assert code == 0
    assert out == reference_output(SAMPLE, QuerySpec("top", k=25))
    record = stats_of(stats)
    assert record["workers_lost"] == 1
    assert record["duplicates_dropped"] == 1
    assert sum(w["partitions"] for w in record["workers"]) == 100


def test_all_workers_killed_then_a_new_one_finishes(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats = tmp_path / "stats.json"
    coord = procs.coordinator(sample_filelist, port, "--all", "--stats", str(stats))
    workers = [procs.worker(port, "--task-delay", "0.2") for _ in range(4)]
    procs.wait_for_log(coord, "worker 4 joined")
    time.sleep(0.5)
    for w in workers:
        w.kill()
    procs.wait_for_log(coord, "connection closed", timeout=5)
    time.sleep(1.0)
    assert coord.poll() is None  # it waits for workers rather than exits
    procs.worker(port)
    code, out = procs.finish(coord)
    assert code == 0
    assert out == reference_output(SAMPLE, QuerySpec("all"))
    assert stats_of(stats)["workers_lost"] == 4


def test_worker_leaves_cleanly_on_sigterm(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats = tmp_path / "stats.json"
    coord = procs.coordinator(sample_filelist, port, "--domain", "go.mail", "--stats", str(stats))
    leaving = procs.worker(port, "--task-delay", "0.2")
    procs.wait_for_log(coord, "worker 1 joined")
    time.sleep(0.5)
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(timeout=5) == 0
    procs.wait_for_log(coord, "leaving, returning")
    procs.worker(port)
    code, out = procs.finish(coord)
    assert (code, out) == (0, "28\n")
    record = stats_of(stats)
    assert record["workers_lost"] == 0
    assert record["reassigned"] >= 1


def test_backup_attempts_overtake_a_straggler(
    procs: Procs, repeated_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats = tmp_path / "stats.json"
    coord = procs.coordinator(
        repeated_filelist, port, "--min-workers", "3", "--domain", "go.mail", "--stats", str(stats)
    )
    procs.worker(port, "--task-delay", "5")  # holds two partitions for ten seconds
    procs.worker(port)
    procs.worker(port)
    code, out = procs.finish(coord)
    assert (code, out) == (0, f"{28 * 10 * 100}\n")
    record = stats_of(stats)
    assert sorted(w["partitions"] for w in record["workers"])[0] == 0  # the straggler
    assert record["backup_attempts"] >= 2
    assert record["wall_s"] < 5  # the straggler's first partition alone takes 5 s
