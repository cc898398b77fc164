"""``tally serve`` latencies: submission to first task started on a warm server, 100 small
jobs submitted at once, and restart (after SIGKILL) to resumed.

    .venv/bin/python bench/serve.py [--workers 2] [--rounds 50] [--jobs 100] [--restarts 5]

Prints one JSON document. Everything runs on 127.0.0.1 with a fresh --state in a
temporary folder; the data is the real 200-line sample under tests/data, split into small
partitions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tally import Client

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "clickbench-sample-200.tsv"
READY = re.compile(r"serving: workers on [^:]+:(\d+), HTTP on (http://[^ ]+), state")
TOKEN = "bench-serve"
ENV = {**os.environ, "TALLY_TOKEN": TOKEN}


def split(out: Path, parts: int, copies: int = 1) -> Path:
    """The sample (``copies`` times over) in ``parts`` files, and their file list."""
    out.mkdir(parents=True, exist_ok=True)
    lines = SAMPLE.read_bytes().splitlines(keepends=True) * copies
    listing = out / "filelist.csv"
    with listing.open("w") as fl:
        for i in range(parts):
            (out / f"p{i:04d}.tsv").write_bytes(b"".join(lines[i::parts]))
            fl.write(f"p{i:04d}.tsv\n")
    return listing


class Cluster:
    def __init__(self, tmp: Path, workers: int, worker_args: list[str]) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp, self.state = tmp, tmp / "state.db"
        self.log = tmp / "serve.log"
        self.server: subprocess.Popen[bytes] | None = None
        self.port, self.url = 0, ""
        self.start_server()
        command = [sys.executable, "-m", "tally", "worker", "127.0.0.1", str(self.port), "-q"]
        self.workers = [
            subprocess.Popen(
                [*command, *worker_args],
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        self.client = Client(self.url, TOKEN)
        self.wait(lambda: sum(w["state"] == "alive" for w in self.client.workers()) == workers)

    def start_server(self) -> float:
        """Start ``tally serve`` (same ports on a restart); return its start time."""
        http_port = self.url.rsplit(":", 1)[1] if self.url else "0"
        ports = ["--port", str(self.port), "--http-port", http_port]
        self.log.write_bytes(b"")
        started = time.perf_counter()
        with self.log.open("wb") as err:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "tally", "serve", "--state", str(self.state), *ports],
                env=ENV, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        match = self.wait(lambda: READY.search(self.log.read_text()))
        self.port, self.url = int(match.group(1)), match.group(2)
        return started

    @staticmethod
    def wait(check: Any, timeout: float = 60, every: float = 0.001) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := check()):
            if time.monotonic() > deadline:
                raise TimeoutError(str(check))
            time.sleep(every)
        return value

    def close(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(30)
        for w in self.workers:
            try:
                w.wait(10)
            except subprocess.TimeoutExpired:
                w.kill()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(values, 50) * 1e3, 2),
        "p99_ms": round(pct(values, 99) * 1e3, 2),
        "mean_ms": round(statistics.fmean(values) * 1e3, 2),
    }


def first_task(cluster: Cluster, source: Path, rounds: int) -> dict[str, Any]:
    """Client-side: POST sent -> the server assigns the job's first attempt (its "started")."""
    client = cluster.client
    for _ in range(5):  # warm up
        client.wait(client.submit(str(source)), timeout=60)
    total, server_side, answered = [], [], []
    for _ in range(rounds):
        sent = time.time()
        job = client.submit(str(source))
        answered.append(time.time() - sent)
        doc = client.wait(job, timeout=60)
        total.append(doc["started"] - sent)
        server_side.append(doc["started"] - doc["submitted"])
    return {
        "rounds": rounds,
        "post_to_first_task": ms(total),
        "accepted_to_first_task": ms(server_side),
        "post_answered": ms(answered),
    }


def burst(cluster: Cluster, source: Path, jobs: int) -> dict[str, Any]:
    """``jobs`` jobs submitted at once (from 16 threads); each polled until it ends."""
    client = cluster.client

    def one(_: int) -> tuple[float, float, dict[str, Any]]:
        sent = time.time()
        job = client.submit(str(source))
        return sent, time.time(), client.wait(job, timeout=300)

    began = time.time()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(jobs)))
    ended = max(doc["finished"] for _, _, doc in results)
    assert all(doc["state"] == "succeeded" for _, _, doc in results)
    return {
        "jobs": jobs,
        "partitions_each": results[0][2]["progress"]["partitions"],
        "wall_s": round(ended - began, 3),
        "jobs_per_s": round(jobs / (ended - began), 1),
        "submit_answered": ms([answered - sent for sent, answered, _ in results]),
        "submit_to_finished": ms([doc["finished"] - sent for sent, _, doc in results]),
        "submit_to_first_task": ms([doc["started"] - sent for sent, _, doc in results]),
    }


def restart(cluster: Cluster, source: Path, restarts: int) -> dict[str, Any]:
    """SIGKILL mid-job, restart on the same state: until the HTTP API answers, and until the
    resumed job commits its first task (the workers reconnect by themselves)."""
    up, resumed = [], []
    for _ in range(restarts):
        job = cluster.client.submit(str(source), {"domain": "go.mail"})
        cluster.wait(lambda: cluster.client.job(job)["progress"]["partitions_done"] >= 20)  # noqa: B023
        assert cluster.server is not None
        cluster.server.kill()
        cluster.server.wait()
        started = cluster.start_server()
        up.append(time.perf_counter() - started)
        before = cluster.client.job(job)["progress"]["partitions_done"]
        progress = cluster.client.job
        cluster.wait(lambda: progress(job)["progress"]["partitions_done"] > before)  # noqa: B023
        resumed.append(time.perf_counter() - started)
        doc = cluster.client.wait(job, timeout=300)
        assert doc["state"] == "succeeded" and doc["stats"]["partitions_resumed"] >= 20
    return {"restarts": restarts, "restart_to_api_up_s": up, "restart_to_resumed_s": resumed,
            "max_restart_to_resumed_s": max(resumed)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tally-bench-serve-") as folder:
        tmp = Path(folder)
        one = split(tmp / "one", 1)
        small = split(tmp / "small", 4)
        long = split(tmp / "long", 200, copies=5)
        report: dict[str, Any] = {"workers": args.workers, "cpus": os.cpu_count()}
        cluster = Cluster(tmp / "a", args.workers, [])
        try:
            report["first_task"] = first_task(cluster, one, args.rounds)
            report["burst"] = burst(cluster, small, args.jobs)
        finally:
            cluster.close()
        cluster = Cluster(tmp / "b", args.workers, ["--task-delay", "0.01"])
        try:
            report["restart"] = restart(cluster, long, args.restarts)
        finally:
            cluster.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
