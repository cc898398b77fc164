"""A coordinator and workers on separate hosts: real network namespaces joined by veth pairs
(see ``netns.py``), with link faults injected under one worker mid-job. Every test asserts
the exact result and the job's accounting (``--stats``, ``--events``).

The jobs run without speculation, so that every attempt beyond one per partition is there
because of the fault under test.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import netns
from conftest import SAMPLE, reference_output
from netns import Events, Network, wait_until
from tally.coordinator import TICK_S
from tally.protocol import QuerySpec

ALL = QuerySpec("all")
PORT = 7000  # each hub is a namespace of its own: the port is always free there
JOIN_S = 30.0  # generous deadlines: the suite must pass on a loaded machine
JOB_S = 90.0
LOAD_SLACK_S = 2.0  # how late a loaded machine may notice something that is due


@pytest.fixture(scope="module")
def netns_ok() -> None:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    netns.sweep_stale()


@pytest.fixture(scope="module")
def iptables(netns_ok: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    netns.ensure_iptables(tmp_path_factory.mktemp("apt") / "apt-get.log")


@pytest.fixture
def make_network(netns_ok: None, tmp_path: Path) -> Iterator[Callable[[int], Network]]:
    """Builds networks of N worker hosts; deletes them (and kills their processes) after the
    test, whatever its outcome."""
    made: list[Network] = []

    def make(hosts: int) -> Network:
        net = Network(tmp_path, hosts)
        made.append(net)
        return net

    yield make
    problems = []
    for net in made:
        try:
            net.close()
        except RuntimeError as exc:
            problems.append(str(exc))
    assert not problems, problems


class Job:
    """A coordinator on the hub with its --stats and --events files."""

    def __init__(self, net: Network, tmp: Path, source: Path | str, *args: str) -> None:
        self.net = net
        self.stats_path = tmp / "stats.json"
        self.events = Events(tmp / "events.jsonl")
        self.proc = net.coordinator(
            source, PORT, "--stats", str(self.stats_path), "--events", str(self.events.path),
            "--no-speculation", *args,
        )  # fmt: skip

    def finish(self) -> tuple[int, str]:
        try:
            out, _ = self.proc.communicate(timeout=JOB_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"job not over in {JOB_S}s:\n{self.log}") from None
        return self.proc.returncode, out.decode()

    @property
    def log(self) -> str:
        return self.net.stderr(self.proc)

    @property
    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text())  # type: ignore[no-any-return]

    def worker_id(self, host: int, nth: int = 0) -> int:
        """The id of the ``nth`` session of the worker on ``host``, once it joined."""
        ids = wait_until(
            lambda: self.net.worker_ids(self.proc, host)[nth:],
            JOIN_S,
            lambda: f"host {host} joining (time {nth + 1}):\n{self.log}",
        )
        return int(ids[0])

    def count(self, kind: str, **fields: Any) -> int:
        return len(self.events.of(kind, **fields))


def by_worker(stats: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {w["id"]: w for w in stats["workers"]}


def assert_accounting(job: Job, partitions: int) -> dict[str, Any]:
    """What holds after every complete job: each partition committed once, and the --stats
    counters agree with the --events record of the same run."""
    stats = job.stats
    assert stats["complete"] and stats["partitions"] == partitions
    assert sum(w["partitions"] for w in stats["workers"]) == partitions
    assert job.count("committed") == partitions
    assert len({r["partition"] for r in job.events.of("committed")}) == partitions
    assert stats["attempts"] == job.count("assigned")
    assert stats["reassigned"] == job.count("requeued")
    assert stats["duplicates_dropped"] == job.count("duplicate_dropped")
    assert stats["workers_lost"] == job.count("lost")
    assert stats["failed_attempts"] == 0 and stats["backup_attempts"] == 0
    return stats


def served_partitions(net: Network, tmp: Path, count: int, copies: int) -> tuple[Path, Path]:
    """``count`` partitions of ``copies`` times the real sample each, served over HTTP from
    the coordinator's host: every worker reads its partitions across its own link. Returns
    the file list and one file holding all of them (for the reference result)."""
    data = tmp / "data"
    data.mkdir()
    partition = SAMPLE.read_bytes() * copies
    for i in range(count):
        (data / f"part-{i:03d}.tsv").write_bytes(partition)
    (tmp / "all.tsv").write_bytes(partition * count)
    url = net.serve_files(data, 8000)
    filelist = data / "filelist.csv"
    filelist.write_text("".join(f"{url}/part-{i:03d}.tsv\n" for i in range(count)))
    return filelist, tmp / "all.tsv"


def lost_within_lease(job: Job, worker: int, lease: float, fault_at: float) -> dict[str, Any]:
    """Wait for ``worker`` to be declared lost; check that it was not before its lease ran
    out, nor later than the lease plus a tick (and room for a loaded machine)."""
    latest = lease + TICK_S + LOAD_SLACK_S
    lost = job.events.wait_for("lost", latest + JOIN_S, worker=worker)
    noticed_after = time.monotonic() - fault_at
    said = re.fullmatch(r"silent for ([\d.]+)s \(lease .*\)", lost["reason"])
    assert said is not None, lost
    silent = float(said[1])
    heartbeat = lease / 6  # the last message may have come up to one heartbeat before the fault
    assert lease <= silent + 0.05 <= latest + 0.1, lost
    assert lease - heartbeat - 0.1 <= noticed_after <= latest, (noticed_after, lost)
    return lost


# --- the tests ---------------------------------------------------------------------------------


def test_three_workers_on_three_hosts(
    make_network: Callable[[int], Network], sample_filelist: Path, tmp_path: Path
) -> None:
    net = make_network(3)
    job = Job(net, tmp_path, sample_filelist, "--all", "--min-workers", "3")
    workers = [net.worker(host, PORT, "--task-delay", "0.02") for host in range(3)]
    code, out = job.finish()
    assert (code, out) == (0, reference_output(SAMPLE, ALL))
    stats = assert_accounting(job, 100)
    assert (stats["attempts"], stats["reassigned"], stats["workers_lost"]) == (100, 0, 0)
    assert stats["duplicates_dropped"] == 0 and stats["peers_refused"] == 0
    # three workers, each from its own host's address, each did part of the job
    assert sorted(net.joined(job.proc).values()) == [net.address(h) for h in range(3)]
    assert all(w["partitions"] > 0 for w in stats["workers"]), stats["workers"]
    assert [w.wait(timeout=JOIN_S) for w in workers] == [0, 0, 0]


def test_a_cut_link_loses_the_worker_and_its_late_result_is_dropped(
    make_network: Callable[[int], Network], sample_filelist: Path, tmp_path: Path
) -> None:
    lease = 2.0
    net = make_network(3)
    job = Job(net, tmp_path, sample_filelist, "--all", "--min-workers", "3",
              "--lease-timeout", str(lease))  # fmt: skip
    # host 0 holds one partition at a time for 8 s: its first one is still computing when the
    # link is back and the worker has rejoined, so its result arrives late on the new session
    # (a result finished while the link is down goes into the dead connection and is lost)
    cut_worker = net.worker(0, PORT, "--task-delay", "8", "--slots", "1")
    for host in (1, 2):
        net.worker(host, PORT, "--task-delay", "0.2")
    first = job.worker_id(0)
    held = job.events.wait_for("assigned", JOIN_S, worker=first)
    cut_at = time.monotonic()
    net.cut(0)
    assert net.link_state(0) != "UP"  # the host sees no carrier
    lost_within_lease(job, first, lease, cut_at)
    # its partition finishes elsewhere, while the link is still down
    job.events.wait_for("committed", JOB_S, partition=held["partition"])
    committer = job.events.of("committed", partition=held["partition"])[0]["worker"]
    assert committer != first
    net.heal(0)
    # the worker notices the dead connection at its next retransmission, rejoins, and
    # delivers the result of its old attempt: it is dropped and counted
    again = job.worker_id(0, nth=1)
    job.events.wait_for("duplicate_dropped", JOB_S, worker=again, attempt=held["attempt"])
    cut_worker.send_signal(signal.SIGTERM)  # it would hold its next partition for 8 s more
    assert cut_worker.wait(timeout=JOIN_S) == 0
    code, out = job.finish()
    assert (code, out) == (0, reference_output(SAMPLE, ALL))
    stats = assert_accounting(job, 100)
    assert stats["workers_lost"] == 1 and stats["duplicates_dropped"] == 1
    assert (by_worker(stats)[first]["partitions"], by_worker(stats)[first]["lost"]) == (0, True)
    assert job.count("attempt_lost") == 1  # the one attempt it held
    assert job.count("left", worker=again) == 1  # and its new session left cleanly


def test_a_black_hole_under_a_worker_is_detected_within_the_lease(
    make_network: Callable[[int], Network], iptables: None, sample_filelist: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    lease = 2.0
    net = make_network(3)
    job = Job(net, tmp_path, sample_filelist, "--all", "--min-workers", "3",
              "--lease-timeout", str(lease))  # fmt: skip
    for host in range(3):
        net.worker(host, PORT, "--task-delay", "0.2")
    victim = job.worker_id(0)
    job.events.wait_for("committed", JOB_S, worker=victim)  # mid-job, holding two attempts
    holes_at = time.monotonic()
    net.black_hole(0)
    lost_within_lease(job, victim, lease, holes_at)
    code, out = job.finish()
    assert (code, out) == (0, reference_output(SAMPLE, ALL))
    stats = assert_accounting(job, 100)
    assert stats["workers_lost"] == 1 and stats["duplicates_dropped"] == 0
    held = job.count("attempt_lost", worker=victim)
    assert 1 <= held <= 2  # its two slots (one may have been between results)
    assert stats["attempts"] == 100 + held
    assert len(net.joined(job.proc)) == 3  # nothing crossed the hole: it never rejoined
    at_hub, at_host = net.dropped(0)
    assert at_hub > 0 and at_host > 0  # both ways


def test_a_lossy_link_costs_time_not_correctness(
    make_network: Callable[[int], Network], iptables: None, tmp_path: Path
) -> None:
    # 10% of the packets each way are dropped (about one round trip in five fails), on the
    # worker's connection to the coordinator and on its reads of the partitions (20 KB each,
    # over HTTP from the coordinator's host); TCP retransmits. A lease of 15 s outlasts the
    # backoff of six retransmissions (0.2 + 0.4 + ... + 6.4 s): the worker would be declared
    # lost only if a message and its next six retransmissions all failed, for each loss about
    # one chance in 20,000 at this rate
    net = make_network(3)
    net.lose(0, 0.10)
    filelist, everything = served_partitions(net, tmp_path, 60, copies=1)
    job = Job(net, tmp_path, filelist, "--all", "--min-workers", "3", "--lease-timeout", "15")
    for host in range(3):
        net.worker(host, PORT, "--task-delay", "0.05")
    code, out = job.finish()
    assert (code, out) == (0, reference_output(everything, ALL))
    stats = assert_accounting(job, 60)
    assert (stats["attempts"], stats["reassigned"], stats["workers_lost"]) == (60, 0, 0)
    assert stats["duplicates_dropped"] == 0
    lossy = job.worker_id(0)
    assert by_worker(stats)[lossy]["partitions"] > 0
    at_hub, at_host = net.dropped(0)
    assert at_hub > 0 and at_host > 0, (at_hub, at_host)  # packets were lost, both ways


def test_a_slow_link_gives_its_worker_less_work(
    make_network: Callable[[int], Network], tmp_path: Path
) -> None:
    # partitions of 60 KB over HTTP from the coordinator's host: half a second each over the
    # 1 Mbit/s link, milliseconds over the others
    net = make_network(3)
    net.slow(0, "1mbit")
    filelist, everything = served_partitions(net, tmp_path, 40, copies=3)
    job = Job(net, tmp_path, filelist, "--all", "--min-workers", "3")
    for host in range(3):
        net.worker(host, PORT, "--task-delay", "0.1")
    code, out = job.finish()
    assert (code, out) == (0, reference_output(everything, ALL))
    stats = assert_accounting(job, 40)
    assert (stats["attempts"], stats["workers_lost"], stats["duplicates_dropped"]) == (40, 0, 0)
    done = {net.joined(job.proc)[w]: n["partitions"] for w, n in by_worker(stats).items()}
    slow, fast = done[net.address(0)], [done[net.address(h)] for h in (1, 2)]
    assert slow > 0 and 2 * slow < min(fast), done


def test_a_wide_partial_over_a_slow_link_keeps_its_worker(
    make_network: Callable[[int], Network], tmp_path: Path
) -> None:
    # one partition of 20,000 distinct domains: its partial (about 600 KB) takes longer than
    # the lease over 1 Mbit/s, with the worker's heartbeats queued behind it
    lease = 2.0
    wide = tmp_path / "wide.tsv"
    wide.write_text("".join(f"{i}\thttp://d{i}.example.org/p\n" for i in range(20_000)))
    net = make_network(1)
    net.slow(0, "1mbit")
    job = Job(net, tmp_path, wide, "--top", "3", "--lease-timeout", str(lease))
    net.worker(0, PORT)
    code, out = job.finish()
    assert (code, out) == (0, reference_output(wide, QuerySpec("top", k=3))), job.log
    stats = assert_accounting(job, 1)
    assert (stats["attempts"], stats["workers_lost"]) == (1, 0)
    assert stats["wall_s"] > lease  # the partial did take longer than the lease to arrive
