"""What the dashboard and the metrics show, kept up to date from the coordinator's event
records as they happen: the attempts' timeline (a ring of recent records, each with a
sequence number for the server-sent events), work done per worker, throughput over time,
and the Prometheus counters.

Every attempt shown as running ends with exactly one record: ``committed``, ``cancelled``
(a rival won, or its job ended), ``failed``, ``attempt_lost`` (its worker was lost) or
``returned`` (its worker left cleanly and handed it back). The last two of those that the
scheduler does not record itself (``returned``, and ``cancelled`` when a job ends) are
written here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from tally.service.metrics import Metrics

RECORDS_KEPT = 5000
THROUGHPUT_POINTS = 600  # one a second: ten minutes
SHOWN = {
    "assigned",
    "committed",
    "cancelled",
    "failed",
    "attempt_lost",
    "returned",
    "duplicate_dropped",
    "joined",
    "lost",
    "left",
}
ENDS_ATTEMPT = {"committed", "cancelled", "failed", "attempt_lost"}
FIELDS = ("t", "event", "job", "worker", "attempt", "partition", "backup", "bytes")


@dataclass
class WorkerTotals:
    partitions: int = 0
    bytes: int = 0


class LiveView:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.records: deque[dict[str, Any]] = deque(maxlen=RECORDS_KEPT)
        self.seq = 0
        self.open: dict[int, dict[str, Any]] = {}  # attempt id -> its "assigned" record
        self.workers: dict[int, WorkerTotals] = {}
        self.bytes_total = 0
        self.throughput: deque[tuple[float, float]] = deque(maxlen=THROUGHPUT_POINTS)
        self._last_sample: tuple[float, int] | None = None

    def on_record(self, record: dict[str, Any]) -> None:
        kind = record["event"]
        t = record["t"]
        m = self.metrics
        if kind == "assigned":
            m.attempts.inc()
            self.open[record["attempt"]] = record
        elif kind in ENDS_ATTEMPT:
            started = self.open.pop(record["attempt"], None)
            if kind == "committed":
                nbytes = int(record.get("bytes") or 0)
                m.partitions.inc()
                m.bytes.inc(nbytes)
                self.bytes_total += nbytes
                totals = self.workers.setdefault(record["worker"], WorkerTotals())
                totals.partitions += 1
                totals.bytes += nbytes
                if started is not None:
                    m.latency.observe(max(0.0, t - started["t"]))
        elif kind == "duplicate_dropped":
            m.duplicates.inc()
        elif kind == "lost":
            m.workers_lost.inc()
        elif kind == "left":  # its attempts went back to their queues without a record
            self._close(lambda a: a["worker"] == record["worker"], t, "returned")
        if kind in SHOWN:
            self._keep(record)

    def job_ended(self, job_id: str, t: float) -> None:
        """A job ended: attempts of it still shown as running were cancelled with it."""
        self._close(lambda a: a.get("job") == job_id, t, "cancelled")

    def _close(self, which: Any, t: float, kind: str) -> None:
        for attempt, started in list(self.open.items()):
            if which(started):
                del self.open[attempt]
                self._keep({"t": t, "event": kind, "job": started.get("job"),
                            "worker": started["worker"], "attempt": attempt,
                            "partition": started.get("partition")})  # fmt: skip

    def _keep(self, record: dict[str, Any]) -> None:
        self.seq += 1
        kept = {key: record[key] for key in FIELDS if record.get(key) is not None}
        kept["seq"] = self.seq
        self.records.append(kept)

    def records_since(self, seq: int) -> list[dict[str, Any]]:
        if not self.records or self.records[-1]["seq"] <= seq:
            return []
        first = self.records[0]["seq"]
        start = max(0, seq - first + 1)
        return [self.records[i] for i in range(start, len(self.records))]

    def sample(self, now: float) -> None:
        """Add a throughput point: MB/s committed since the previous sample."""
        last, self._last_sample = self._last_sample, (now, self.bytes_total)
        if last is not None and now > last[0]:
            rate = (self.bytes_total - last[1]) / (now - last[0]) / 1e6
            self.throughput.append((round(now, 3), round(rate, 3)))
