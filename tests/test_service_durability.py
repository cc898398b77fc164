"""``tally serve`` killed (SIGKILL) at random moments, twenty times, while jobs arrive and
run: after each restart on the same ``--state`` every acknowledged job is there, unfinished
ones resume, and every job ends with exactly the reference result. The same two workers
stay up throughout and reconnect by themselves."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from pathlib import Path

from conftest import SAMPLE, Procs, split_round_robin
from tally.service.bodies import ServiceError
from tally.service.client import Client
from test_service_support import (
    QUERIES,
    expected_result,
    start_server,
    start_workers,
    wait_until,
    workers_alive,
)

KILLS = 20
NAMES = sorted(QUERIES)


class Submitter(threading.Thread):
    """Submits one or two jobs at random moments; records the ones acknowledged."""

    def __init__(
        self, client: Client, source: str, rng: random.Random, acknowledged: dict[str, str]
    ) -> None:
        super().__init__()
        self.client, self.source, self.rng, self.acknowledged = client, source, rng, acknowledged
        self.stopped = threading.Event()

    def run(self) -> None:
        for _ in range(self.rng.randint(1, 2)):
            if self.stopped.wait(self.rng.uniform(0.0, 0.25)):
                return
            name = self.rng.choice(NAMES)
            with contextlib.suppress(ServiceError):  # killed before it answered: not acknowledged
                self.acknowledged[self.client.submit(self.source, QUERIES[name][0])] = name

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def name_of(query: dict[str, object]) -> str:
    [name] = [name for name, (body, _) in QUERIES.items() if body == query]
    return name


def test_killed_at_random_moments_every_job_ends_with_the_exact_result(
    procs: Procs, tmp_path: Path
) -> None:
    source = split_round_robin(SAMPLE, tmp_path / "parts", 20)
    state = tmp_path / "state.db"
    server = start_server(procs, state)
    port, http_port = server.worker_port, int(server.url.rsplit(":", 1)[1])
    workers = start_workers(procs, port, 2, "--task-delay", "0.01", "--connect-timeout", "60")
    with server.client() as client:
        wait_until(workers_alive(client, 2), what="two workers joined")
    acknowledged: dict[str, str] = {}  # job id -> query name: every 201 the client saw
    for run in range(KILLS):
        rng = random.Random(run)
        submitter = Submitter(server.client(), str(source), rng, acknowledged)
        submitter.start()
        time.sleep(rng.uniform(0.0, 0.6))  # the moment of the kill, whatever is under way
        server.proc.kill()
        server.proc.wait()
        submitter.stop()
        server = start_server(procs, state, port=port, http_port=http_port)

    with server.client() as client:
        listed = {job["id"]: job for job in client.jobs()}
        assert set(acknowledged) <= set(listed)
        assert len(acknowledged) >= KILLS // 2
        resumed_jobs = 0
        for job_id in listed:
            doc = client.wait(job_id, timeout=120)
            name = name_of(doc["query"])
            assert acknowledged.get(job_id, name) == name
            assert (doc["state"], doc["result"]) == ("succeeded", expected_result(name)), job_id
            resumed = doc["stats"]["partitions_resumed"]
            assert resumed + sum(w["partitions"] for w in doc["stats"]["workers"]) == 20
            resumed_jobs += resumed > 0
        assert resumed_jobs > 0  # kills came mid-job, and those jobs did not start over
    assert [w.poll() for w in workers] == [None, None]  # never restarted: they reconnected
    assert server.terminate() == 0
