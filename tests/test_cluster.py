"""A real coordinator and real worker processes over TCP: exact results despite failures."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import (
    SAMPLE,
    WAIT_S,
    EventLog,
    Procs,
    Record,
    free_port,
    reference_output,
    split_round_robin,
)
from tally.coordinator import Coordinator, CoordinatorConfig
from tally.job import JobSpec
from tally.jobs.tasks import JobConfig
from tally.protocol import QuerySpec, Task
from tally.storage.sources import expand_source

TOP25 = QuerySpec("top", k=25)
LEASE_S = 2.0
STRAGGLER_DELAY_S = 5.0


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


def test_events_are_written_as_they_happen(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    log = EventLog(events)

    async def job() -> list[Record]:
        coordinator = Coordinator(CoordinatorConfig(events=str(events)))
        tasks = [Task(url) for url in expand_source(str(sample_filelist))]
        spec = JobSpec(tasks, QuerySpec("all"), JobConfig(min_workers=2))
        port = await coordinator.start()
        running = asyncio.create_task(coordinator.run_one(spec))
        first = procs.worker(port, env={"TALLY_TOKEN": ""})
        joined = await asyncio.to_thread(log.wait, "joined")
        assert joined["worker"] == 1 and joined["name"].endswith(f":{first.pid}")
        assert not running.done() and not log.select("ready")  # it waits for a second one
        procs.worker(port, env={"TALLY_TOKEN": ""})
        ready = await asyncio.to_thread(log.wait, "ready")
        assert ready["workers"] == 2 and ready["t"] == log.wait("joined", count=2)["t"]
        outcome = await running
        assert outcome.result is not None and outcome.result.complete
        return outcome.timeline

    timeline = asyncio.run(job())
    # the file holds the job's whole record, line by line, as it would be written at the end
    assert events.read_text() == "".join(json.dumps(r) + "\n" for r in timeline)
    assert Counter(r["partition"] for r in log.select("committed")) == Counter(range(100))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_events_file_that_cannot_be_written_fails_the_job(procs: Procs, tmp_path: Path) -> None:
    split_round_robin(SAMPLE, tmp_path / "parts", 4)
    run = procs.start("run", str(tmp_path / "parts"), "--workers", "1", "--events", "/dev/full")
    code, out = procs.finish(run)
    assert (code, out) == (1, "")
    assert (
        "tally: job failed: cannot write --events /dev/full: No space left on device"
        in procs.stderr(run).splitlines()
    )


def test_top25_with_a_worker_killed_mid_job(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats, events = tmp_path / "stats.json", tmp_path / "events.jsonl"
    coord = procs.coordinator(
        sample_filelist, port, "--min-workers", "4", "--top", "25",
        "--stats", str(stats), "--events", str(events),
    )  # fmt: skip
    log = procs.events(coord, events)
    workers = [procs.worker(port, "--task-delay", "0.1") for _ in range(4)]
    victim = log.worker_id(workers[0])
    log.wait("committed", worker=victim)  # at work: it holds its next partitions
    workers[0].kill()
    lost = log.wait("lost", worker=victim)
    assert lost["reason"].startswith("connection closed")
    code, out = procs.finish(coord)
    assert code == 0
    assert out == reference_output(SAMPLE, TOP25)
    taken = {r["partition"] for r in log.select("attempt_lost", worker=victim)}
    assert taken, "killed while holding partitions"
    committed = Counter(r["partition"] for r in log.select("committed"))
    assert committed == Counter(range(100))  # each partition once, the victim's elsewhere
    assert all(r["worker"] != victim for r in log.select("committed") if r["partition"] in taken)
    record = stats_of(stats)
    assert record["workers_lost"] == 1
    assert record["reassigned"] == len(log.select("requeued")) >= 1
    assert sum(w["partitions"] for w in record["workers"]) == 100


def test_four_workers_share_the_work_fairly(
    procs: Procs, repeated_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats = tmp_path / "stats.json"
    coord = procs.coordinator(
        repeated_filelist, port, "--min-workers", "4", "--domain", "go.mail", "--stats", str(stats)
    )
    # tasks of a realistic length (a few ms of scanning would let whoever is scheduled first
    # on a busy machine take them all): pull-based assignment then shares them out
    for _ in range(4):
        procs.worker(port, "--task-delay", "0.02")
    code, out = procs.finish(coord)
    assert (code, out) == (0, f"{28 * 10 * 100}\n")
    served = [w["partitions"] for w in stats_of(stats)["workers"]]
    assert len(served) == 4 and sum(served) == 100
    assert min(served) > 10, served


def test_stopped_worker_is_lost_and_its_late_result_dropped(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats, events = tmp_path / "stats.json", tmp_path / "events.jsonl"
    coord = procs.coordinator(
        sample_filelist, port, "--min-workers", "4", "--no-speculation",
        "--lease-timeout", str(LEASE_S), "--stats", str(stats), "--events", str(events),
    )  # fmt: skip
    log = procs.events(coord, events)
    # stopped just after its first commit, the victim is in the middle of a 1 s task; the
    # others take 0.3 s a task, so the job outlasts the lease and the victim's return
    stopped = procs.worker(port, "--task-delay", "1.0")
    others = [procs.worker(port, "--task-delay", "0.3") for _ in range(3)]
    victim = log.worker_id(stopped)
    log.wait("committed", worker=victim)
    stopped_at = time.time()
    stopped.send_signal(signal.SIGSTOP)
    lost = log.wait("lost", worker=victim, timeout=LEASE_S + WAIT_S)
    assert lost["reason"].startswith("silent for")
    stopped.send_signal(signal.SIGCONT)  # it finishes its task and delivers it, too late
    code, out = procs.finish(coord)
    assert code == 0
    assert out == reference_output(SAMPLE, QuerySpec("top", k=25))
    assert [w.wait(timeout=WAIT_S) for w in [stopped, *others]] == [0, 0, 0, 0]
    record = stats_of(stats)
    # detected within the lease after the stop, plus a tick, a heartbeat and room for load
    detected_after = lost["t"] - (stopped_at - record["started_at"])
    assert detected_after < LEASE_S + max(1.5, LEASE_S / 2), detected_after
    # the victim joined again and delivered the attempt it was computing: dropped
    name = log.select("joined", worker=victim)[0]["name"]
    assert len(log.select("joined", name=name)) == 2
    lost_attempts = {r["attempt"] for r in log.select("attempt_lost", worker=victim)}
    [dropped] = log.select("duplicate_dropped")
    assert dropped["attempt"] in lost_attempts
    assert record["workers_lost"] == 1
    assert record["duplicates_dropped"] == 1
    assert sum(w["partitions"] for w in record["workers"]) == 100
    assert Counter(r["partition"] for r in log.select("committed")) == Counter(range(100))


def test_all_workers_killed_then_a_new_one_finishes(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats, events = tmp_path / "stats.json", tmp_path / "events.jsonl"
    coord = procs.coordinator(
        sample_filelist, port, "--min-workers", "4", "--all",
        "--stats", str(stats), "--events", str(events),
    )  # fmt: skip
    log = procs.events(coord, events)
    workers = [procs.worker(port, "--task-delay", "0.2") for _ in range(4)]
    log.wait("ready")  # all four joined and at work
    for w in workers:
        w.kill()
    last_lost = log.wait("lost", count=4)
    assert coord.poll() is None  # it waits for workers rather than exits
    late = procs.worker(port)
    joined = log.wait("joined", count=5)
    assert joined["name"].endswith(f":{late.pid}") and joined["t"] >= last_lost["t"]
    code, out = procs.finish(coord)
    assert code == 0
    assert out == reference_output(SAMPLE, QuerySpec("all"))
    assert stats_of(stats)["workers_lost"] == 4
    assert Counter(r["partition"] for r in log.select("committed")) == Counter(range(100))


def test_worker_leaves_cleanly_on_sigterm(
    procs: Procs, sample_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats, events = tmp_path / "stats.json", tmp_path / "events.jsonl"
    coord = procs.coordinator(
        sample_filelist, port, "--domain", "go.mail", "--stats", str(stats), "--events", str(events)
    )
    log = procs.events(coord, events)
    leaving = procs.worker(port, "--task-delay", "0.2")
    first = log.worker_id(leaving)
    log.wait("committed", worker=first)  # at work: it holds its next partitions
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(timeout=WAIT_S) == 0
    left = log.wait("left", worker=first)
    returned = log.select("requeued", t=left["t"])  # handed back without counting a failure
    assert returned
    procs.worker(port)
    code, out = procs.finish(coord)
    assert (code, out) == (0, "28\n")
    record = stats_of(stats)
    assert record["workers_lost"] == 0 and record["failed_attempts"] == 0
    assert record["reassigned"] == len(returned)


def test_backup_attempts_overtake_a_straggler(
    procs: Procs, repeated_filelist: Path, tmp_path: Path
) -> None:
    port = free_port()
    stats, events = tmp_path / "stats.json", tmp_path / "events.jsonl"
    coord = procs.coordinator(
        repeated_filelist, port, "--min-workers", "3", "--domain", "go.mail",
        "--stats", str(stats), "--events", str(events),
    )  # fmt: skip
    log = procs.events(coord, events)
    straggler = procs.worker(port, "--task-delay", str(STRAGGLER_DELAY_S))  # holds two
    procs.worker(port)
    procs.worker(port)
    code, out = procs.finish(coord)
    assert (code, out) == (0, f"{28 * 10 * 100}\n")
    record = stats_of(stats)
    slow = log.worker_id(straggler)
    assert [w["partitions"] for w in record["workers"] if w["id"] == slow] == [0]
    assert record["backup_attempts"] >= 2
    assert len(log.select("assigned", backup=True)) == record["backup_attempts"]
    # the job ends before the straggler could have finished its first partition
    ready = log.select("ready")[0]["t"]
    assert max(r["t"] for r in log.select("committed")) - ready < STRAGGLER_DELAY_S
