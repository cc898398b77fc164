"""``GET /metrics``: the service's Prometheus metrics, in a registry of its own.

Counters and the latency histogram move as event records arrive (:mod:`.live`); the gauges
(jobs by state, workers) are read from the service when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tally.service.bodies import STATES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _Gauges(Collector):
    def __init__(
        self, jobs_by_state: Callable[[], dict[str, int]], workers: Callable[[], int]
    ) -> None:
        self.jobs_by_state = jobs_by_state
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("tally_jobs", "Jobs by state", labels=["state"])
        counts = self.jobs_by_state()
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("tally_workers", "Workers in the pool", value=self.workers())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.partitions = Counter(
            "tally_partitions_committed", "Tasks committed (each once)", registry=r
        )
        self.bytes = Counter("tally_bytes", "Bytes read by committed attempts", registry=r)
        self.attempts = Counter("tally_attempts", "Attempts started", registry=r)
        self.workers_lost = Counter("tally_workers_lost", "Workers declared lost", registry=r)
        self.duplicates = Counter(
            "tally_duplicates_dropped", "Late or stale deliveries dropped", registry=r
        )
        self.latency = Histogram(
            "tally_task_latency_seconds",
            "From an attempt's assignment to its commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def watch(
        self, jobs_by_state: Callable[[], dict[str, int]], workers: Callable[[], int]
    ) -> None:
        self.registry.register(_Gauges(jobs_by_state, workers))

    def text(self) -> bytes:
        return generate_latest(self.registry)
