"""The watcher's decisions (no filesystem, no clock), and its journal on a SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tally.errors import ConfigError
from tally.protocol import QuerySpec
from tally.service import watch_journal as wj
from tally.service.store import StateStore
from tally.service.watch_state import DONE, FAILED, RUNNING, Checkpointed, Listed, WatchState


def obj(name: str, version: str, mtime: float | None = None) -> Listed:
    return Listed(name, f"mem://{name}", version, mtime)


def names(ready: list[Listed]) -> list[str]:
    return [o.name for o in ready]


def test_an_object_is_ready_once_its_version_has_been_stable_for_the_settle_time() -> None:
    state = WatchState(settle_s=1.0)
    assert state.poll([obj("a", "v1")], now=100.0) == []
    assert state.poll([obj("a", "v2")], now=100.6) == []  # still being written
    assert state.poll([obj("a", "v2")], now=101.5) == []
    assert names(state.poll([obj("a", "v2")], now=101.6)) == ["a"]


def test_an_old_mtime_makes_an_object_ready_at_first_sight() -> None:
    state = WatchState(settle_s=1.0)
    assert names(state.poll([obj("a", "v1", mtime=50.0), obj("b", "v1", mtime=99.5)], 100.0)) == [
        "a"
    ]
    assert names(state.poll([obj("b", "v1", mtime=99.5)], 100.5)) == ["b"]


def test_hidden_and_underscore_names_are_left_out() -> None:
    state = WatchState(settle_s=0)
    listing = [obj(".part", "v"), obj("_SUCCESS", "v"), obj("d/.tmp", "v"), obj("_d/x", "v")]
    assert state.poll([*listing, obj("d/x.tsv", "v")], 1.0) == [obj("d/x.tsv", "v")]


def test_each_version_is_submitted_once_and_a_new_one_waits_for_the_running_job() -> None:
    state = WatchState(settle_s=0)
    a1 = obj("a", "v1")
    assert state.poll([a1], 1.0) == [a1]
    assert state.started(a1, "j1") == Checkpointed("v1", "j1", RUNNING)
    assert state.poll([a1], 2.0) == []  # running
    assert state.poll([obj("a", "v2")], 3.0) == []  # changed, but v1's job still runs
    assert state.ended("a", "j1", succeeded=True) == "add"
    assert state.poll([a1], 4.0) == []  # done
    assert state.poll([obj("a", "v2")], 5.0) == [obj("a", "v2")]
    state.started(obj("a", "v2"), "j2")
    assert state.ended("a", "j2", succeeded=True) == "rebuild"  # replaces v1's contribution
    assert state.checkpoint["a"] == Checkpointed("v2", "j2", DONE)


def test_a_failed_version_is_not_retried_and_drops_the_earlier_contribution() -> None:
    state = WatchState(settle_s=0, checkpoint={"a": Checkpointed("v1", "j1", DONE)})
    state.started(obj("a", "v2"), "j2")
    assert state.ended("a", "j2", succeeded=False) == "rebuild"
    assert state.checkpoint["a"] == Checkpointed("v2", "j2", FAILED)
    assert state.poll([obj("a", "v2")], 1.0) == []
    state.started(obj("a", "v3"), "j3")
    assert state.ended("a", "j3", succeeded=False) == "none"  # nothing was in the total
    with pytest.raises(KeyError):
        state.ended("a", "j3", succeeded=True)  # not running any more


def test_a_restart_keeps_the_checkpoint_and_knows_what_is_in_the_total() -> None:
    checkpoint = {
        "a": Checkpointed("v1", "j1", DONE),
        "b": Checkpointed("v2", "j3", RUNNING),  # v1 of b was done before
    }
    state = WatchState(settle_s=0, checkpoint=checkpoint, contributed={"a", "b"})
    assert state.poll([obj("a", "v1"), obj("b", "v2"), obj("c", "v1")], 1.0) == [obj("c", "v1")]
    assert state.ended("b", "j3", succeeded=True) == "rebuild"


def test_the_journal_keeps_the_checkpoint_with_the_jobs(tmp_path: Path) -> None:
    import pyarrow as pa  # type: ignore[import-untyped]

    from tally.coordinator import TaskPartial
    from tally.job import JobSpec
    from tally.protocol import Task
    from tally.queries.domains import SCHEMA

    store = StateStore(str(tmp_path / "s.db"))
    spec = JobSpec([Task("/x/a")], QuerySpec("top", k=3))
    store.add_job("j1", 1.0, {"source": "/x/a"}, spec, wj.started("a", "v1", "j1"))
    assert wj.checkpoint(store) == {"a": (Checkpointed("v1", "j1", RUNNING), False)}
    table = pa.table({"key": [b"x.ru"], "n": [3]}, schema=SCHEMA)
    store.add_partial("j1", 0, TaskPartial(table, 4, 1), 10)
    store.finish_job("j1", "succeeded", 2.0, None, None, {}, wj.ended("a", "j1", True))
    assert wj.checkpoint(store) == {"a": (Checkpointed("v1", "j1", DONE), False)}
    (part,) = wj.partials(store)["a"]
    assert (part.table.to_pylist(), part.lines, part.malformed) == (table.to_pylist(), 4, 1)
    assert store.partials("j1") == {}  # the job's own copy is gone
    wj.written(store, "a", "j1")
    assert wj.checkpoint(store)["a"][1] is True
    store.add_job("j2", 3.0, {"source": "/x/a"}, spec, wj.started("a", "v2", "j2"))
    store.finish_job("j2", "failed", 4.0, "boom", None, {}, wj.ended("a", "j2", False))
    assert wj.checkpoint(store) == {"a": (Checkpointed("v2", "j2", FAILED), False)}
    assert wj.partials(store) == {}
    wj.check_config(store, {"source": "/in", "output": "/out", "query": {"top": 3}})
    wj.check_config(store, {"source": "/in", "output": "/out", "query": {"top": 3}})
    with pytest.raises(ConfigError, match="belongs to a watcher of /in into /out"):
        wj.check_config(store, {"source": "/in", "output": "/out", "query": {"all": True}})
    store.close()
