"""The service's journal (SQLite): what it keeps, and what a restarted service reads back."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from tally.coordinator import CoordinatorConfig, JobSpec, TaskPartial
from tally.errors import ConfigError
from tally.jobs.tasks import JobConfig
from tally.protocol import QuerySpec, Task
from tally.queries import QueryResult
from tally.service.jobs import JobService
from tally.service.store import UNFINISHED, StateStore

SPEC = JobSpec(
    [Task("file:///a.tsv"), Task("b.tsv", 10, 20, "etag-1"), Task("c.tsv")],
    QuerySpec("domain", domain=b"\xff.ru"),
    JobConfig(max_attempts=5, skip_failed=True),
    record_limit=4096,
)
TABLE = pa.table({"key": pa.array([b"a.ru", b"b.ru"], pa.binary()), "n": pa.array([3, 1])})


def test_a_job_its_partials_and_its_end_are_read_back_after_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "deep" / "state.db")
    store = StateStore(path)
    assert store.add_job("j1", 1700000000.5, {"source": "s"}, SPEC) == 1
    store.add_partial("j1", 0, TaskPartial(TABLE, 4, 0), 100)
    store.add_partial("j1", 2, TaskPartial(None, 3, 3), 50)
    store.close()

    store = StateStore(path)
    [row] = store.jobs()
    assert (row.id, row.state, row.tasks, row.done, row.bytes) == ("j1", UNFINISHED, 3, 2, 150)
    assert (row.submitted, row.request) == (1700000000.5, {"source": "s"})
    assert store.spec("j1") == SPEC
    partials = store.partials("j1")
    assert sorted(partials) == [0, 2]
    assert partials[0].table.equals(TABLE) and (partials[0].lines, partials[0].malformed) == (4, 0)
    assert (partials[2].table, partials[2].lines, partials[2].malformed) == (None, 3, 3)

    empty = pa.table({"domain": pa.array([], pa.binary()), "count": pa.array([], pa.int64())})
    result = QueryResult(SPEC.plan, empty, 7, 3, ["c.tsv"])
    stats = {"lines": 7, "malformed_lines": 3, "failed_partitions": ["c.tsv"], "wall_s": 1.0}
    store.finish_job("j1", "succeeded", 1700000001.0, None, result, stats)
    store.close()

    store = StateStore(path)
    [row] = store.jobs()
    assert (row.state, row.done, row.bytes, row.stats) == ("succeeded", 2, 150, stats)
    assert store.partials("j1") == {}
    back = store.result("j1")
    assert back is not None and back.table.equals(empty) and back.table.schema == empty.schema
    assert (back.plan, back.lines, back.malformed, back.failed_partitions) == (
        SPEC.plan, 7, 3, ["c.tsv"]
    )  # fmt: skip


def test_the_attempt_reservation_only_grows_and_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    assert store.attempts_below() == 1
    store.reserve_attempts(4097)
    store.reserve_attempts(100)  # never back
    store.close()
    assert StateStore(path).attempts_below() == 4097


def test_a_state_of_another_schema_version_or_not_sqlite_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(ConfigError, match="has schema version 99; this tally reads 1"):
        StateStore(str(newer))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match=f"cannot open state {garbage}"):
        StateStore(str(garbage))


def test_a_restarted_service_issues_attempt_ids_past_the_reservation(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "state.db"))
    store.reserve_attempts(8193)

    async def first_id() -> tuple[int, bool]:
        service = JobService(store, CoordinatorConfig())
        await service.start()
        try:
            coordinator = service.coordinator
            return coordinator.scheduler.next_attempt, coordinator.config.serving
        finally:
            await service.close()

    assert asyncio.run(first_id()) == (8193, True)
