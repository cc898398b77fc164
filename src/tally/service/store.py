"""The service's durable state: one SQLite file (``--state``) in WAL mode.

- ``jobs``: every accepted job: its request, its spec (MessagePack, the expanded task list
  included, so a resumed job runs over the partitions it was accepted with), its state and,
  once it ends, its result (an Arrow IPC stream of the result table), error and stats.
- ``partials``: the partial of every committed task of an unfinished job, as Arrow IPC,
  with its line accounting and bytes; dropped when the job ends.
- ``meta``: ``attempts_below``, the attempt-id reservation: no id at or past it was issued.
- ``watch_objects``, ``watch_partials``, ``watch_meta``: the storage watcher's checkpoint
  (see :mod:`tally.service.watch_journal`), written in the same transactions as the jobs.

Every write is its own transaction, committed before the caller goes on (a job before its
201, a partial before it is merged). With ``synchronous=NORMAL`` a committed transaction
survives the process dying at any moment (SIGKILL, OOM); the reservation is also synced
to disk (``FULL``), so no attempt id is issued twice even across a power loss.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow as pa  # type: ignore[import-untyped]

from tally.coordinator import JobSpec, TaskPartial
from tally.errors import ConfigError
from tally.queries import QueryResult, from_ipc, to_ipc

SCHEMA_VERSION = 1
UNFINISHED = "unfinished"
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    submitted REAL NOT NULL,
    request TEXT NOT NULL,
    spec BLOB NOT NULL,
    tasks INTEGER NOT NULL,
    state TEXT NOT NULL,
    finished REAL,
    done INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result BLOB,
    stats TEXT
);
CREATE TABLE IF NOT EXISTS partials (
    job TEXT NOT NULL,
    task INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    malformed INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    tbl BLOB,
    PRIMARY KEY (job, task)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS watch_objects (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    job TEXT NOT NULL,
    state TEXT NOT NULL,
    written INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watch_partials (
    name TEXT NOT NULL,
    task INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    malformed INTEGER NOT NULL,
    tbl BLOB,
    PRIMARY KEY (name, task)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watch_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# statements a caller adds to a job's journaling transaction (the watcher's checkpoint)
Statements = Sequence[tuple[str, tuple[Any, ...]]]


@dataclass
class JobRow:
    """A job as the store keeps it (without its spec and result, read on demand)."""

    id: str
    seq: int
    submitted: float
    request: dict[str, Any]
    tasks: int
    state: str  # UNFINISHED, or a final state
    finished: float | None
    done: int  # tasks committed
    bytes: int  # bytes those tasks read
    error: str | None
    stats: dict[str, Any] | None


def table_to_ipc(table: pa.Table) -> bytes:
    """A result table as one IPC stream, its schema kept even when it has no rows."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


class StateStore:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ConfigError(
                    f"state {path} has schema version {version}; this tally reads {SCHEMA_VERSION}"
                )
            self.db.executescript(SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open state {path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    # --- the attempt-id reservation ------------------------------------------------------------

    def attempts_below(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'attempts_below'").fetchone()
        return int(row[0]) if row else 1

    def reserve_attempts(self, below: int) -> None:
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('attempts_below', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                (below,),
            )
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    # --- jobs ----------------------------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        submitted: float,
        request: dict[str, Any],
        spec: JobSpec,
        also: Statements = (),
    ) -> int:
        """Journal an accepted job, and run ``also`` in the same transaction; return the
        job's sequence number."""
        with self.db:
            self.db.execute("BEGIN")
            cursor = self.db.execute(
                "INSERT INTO jobs (id, submitted, request, spec, tasks, state) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    submitted,
                    json.dumps(request),
                    msgspec.msgpack.encode(spec),
                    len(spec.tasks),
                    UNFINISHED,
                ),
            )
            for sql, params in also:
                self.db.execute(sql, params)
        return int(cursor.lastrowid or 0)

    def add_partial(self, job_id: str, task: int, partial: TaskPartial, nbytes: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO partials (job, task, lines, malformed, bytes, tbl) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, task, partial.lines, partial.malformed, nbytes, to_ipc(partial.table)),
        )

    def finish_job(
        self,
        job_id: str,
        state: str,
        finished: float,
        error: str | None,
        result: QueryResult | None,
        stats: dict[str, Any],
        also: Statements = (),
    ) -> None:
        """Record a job's end and drop its partials, in one transaction; ``also`` runs in it
        first (while the partials are still there)."""
        blob = None if result is None else table_to_ipc(result.table)
        with self.db:
            self.db.execute("BEGIN")
            for sql, params in also:
                self.db.execute(sql, params)
            self.db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error = ?, result = ?, stats = ?, "
                "done = (SELECT count(*) FROM partials WHERE job = ?), "
                "bytes = (SELECT coalesce(sum(bytes), 0) FROM partials WHERE job = ?) "
                "WHERE id = ?",
                (state, finished, error, blob, json.dumps(stats), job_id, job_id, job_id),
            )
            self.db.execute("DELETE FROM partials WHERE job = ?", (job_id,))

    def jobs(self) -> list[JobRow]:
        """Every job in submission order; an unfinished one with its progress so far."""
        rows = self.db.execute(
            "SELECT j.id, j.seq, j.submitted, j.request, j.tasks, j.state, j.finished, "
            "CASE WHEN j.state = ? THEN count(p.task) ELSE j.done END, "
            "CASE WHEN j.state = ? THEN coalesce(sum(p.bytes), 0) ELSE j.bytes END, "
            "j.error, j.stats FROM jobs j LEFT JOIN partials p ON p.job = j.id "
            "GROUP BY j.seq ORDER BY j.seq",
            (UNFINISHED, UNFINISHED),
        ).fetchall()
        return [
            JobRow(
                row[0],
                row[1],
                row[2],
                json.loads(row[3]),
                row[4],
                row[5],
                row[6],
                row[7],
                row[8],
                row[9],
                None if row[10] is None else json.loads(row[10]),
            )
            for row in rows
        ]

    def spec(self, job_id: str) -> JobSpec:
        row = self.db.execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return msgspec.msgpack.decode(row[0], type=JobSpec)

    def partials(self, job_id: str) -> dict[int, TaskPartial]:
        rows = self.db.execute(
            "SELECT task, lines, malformed, tbl FROM partials WHERE job = ?", (job_id,)
        )
        return {task: TaskPartial(from_ipc(tbl), lines, bad) for task, lines, bad, tbl in rows}

    def result(self, job_id: str) -> QueryResult | None:
        """A succeeded job's result, as the coordinator finalized it."""
        row = self.db.execute("SELECT result, stats FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        stats = json.loads(row[1])
        table = pa.ipc.open_stream(pa.py_buffer(row[0])).read_all()
        plan = self.spec(job_id).plan
        return QueryResult(
            plan, table, stats["lines"], stats["malformed_lines"], stats["failed_partitions"]
        )

    def result_ipc(self, job_id: str) -> bytes | None:
        row = self.db.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]
