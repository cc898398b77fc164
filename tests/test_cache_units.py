"""The partial cache in pieces: keys (pure), entries (pure), the store and its LRU bound,
versions as a worker sees them, and the protocol and scheduler fields that report hits."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from tally import protocol as p
from tally.cache import PartialCache
from tally.cache.entries import HEADER_SIZE, Damaged, decode_entry, encode_entry
from tally.cache.keys import cache_key, canonical_plan
from tally.cache.store import PartialStore
from tally.cache.versions import seen_version
from tally.errors import ConfigError
from tally.jobs import events as e
from tally.jobs.scheduler import Scheduler
from tally.protocol import QuerySpec, Task
from tally.queries.infer import bind
from tally.queries.plan import plan_from_flags
from tally.queries.sql import parse_sql

TOP = QuerySpec("top", k=25)
V = "1.0"


def key(**changes: object) -> str | None:
    args: dict[str, object] = dict(
        url="file:///d/p.tsv", version="10-5", start=0, end=-1, plan=TOP, record_limit=1 << 20,
        tally_version=V,
    )  # fmt: skip
    args.update(changes)
    plan, limit = args.pop("plan"), args.pop("record_limit")
    return cache_key(plan=canonical_plan(plan, limit), **args)  # type: ignore[arg-type]


# --- keys ------------------------------------------------------------------------------------


def test_every_input_of_a_partial_changes_the_key() -> None:
    base = key()
    assert base is not None and len(base) == 64
    variants = [
        key(url="file:///d/q.tsv"),
        key(version="11-5"),
        key(start=1),
        key(end=100),
        key(plan=QuerySpec("top", k=10)),
        key(plan=QuerySpec("all")),
        key(plan=QuerySpec("domain", domain=b"a.ru")),
        key(plan=QuerySpec("domain", domain=b"b.ru")),
        key(record_limit=1 << 10),
        key(tally_version="1.1"),
        key(plan=plan_from_flags(group_by=["1"], aggs=["count"])),
        key(plan=plan_from_flags(group_by=["2"], aggs=["count"])),
        key(plan=plan_from_flags(group_by=["1"], aggs=["count"], where="c2 > 3")),
        key(plan=plan_from_flags(group_by=["1"], aggs=["sum:2"])),
        key(plan=plan_from_flags(group_by=["1"], aggs=["count"], delimiter="|")),
    ]
    assert base not in variants and len(set(variants)) == len(variants)
    assert key() == base  # and it is stable


def test_what_only_shapes_the_answer_leaves_the_key_as_it_is() -> None:
    """Order, limit, output names and how columns are spelled apply after the merge."""
    sample = b"a,1\nb,2\n"
    base = key(plan=plan_from_flags(group_by=["1"], aggs=["count", "sum:2"], sample=sample))
    _, sql = parse_sql("SELECT c1 AS k, count(*) AS n, sum(c2) FROM 't.csv' GROUP BY c1")
    same = [
        plan_from_flags(
            group_by=["1"], aggs=["count", "sum:2"], order_by=["2:desc"], limit=1, sample=sample
        ),
        bind(sql, sample),
    ]
    assert [key(plan=p) for p in same] == [base, base]
    other = plan_from_flags(group_by=["1"], aggs=["count", "max:2"], sample=sample)
    assert key(plan=other) != base


def test_a_task_without_a_version_has_no_key() -> None:
    assert key(version="") is None


def test_the_plan_encoding_does_not_depend_on_dict_order() -> None:
    one = plan_from_flags(group_by=["1"], aggs=["count"], schema={"c1": "BIGINT", "c2": "DOUBLE"})
    two = plan_from_flags(group_by=["1"], aggs=["count"], schema={"c2": "DOUBLE", "c1": "BIGINT"})
    assert msgspec.msgpack.encode(one) != msgspec.msgpack.encode(two)  # the wire form differs
    assert canonical_plan(one, 5) == canonical_plan(two, 5)
    assert key(plan=one) == key(plan=two)


# --- entries ---------------------------------------------------------------------------------


def test_an_entry_round_trips_with_and_without_a_table() -> None:
    k = "ab" * 32
    got = decode_entry(k, encode_entry(k, b"arrow-bytes", 7, 2))
    assert (bytes(got.table or b""), got.lines, got.malformed) == (b"arrow-bytes", 7, 2)
    empty = decode_entry(k, encode_entry(k, None, 3, 3))
    assert (empty.table, empty.lines, empty.malformed) == (None, 3, 3)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda d: d[:-1], "expected"),  # truncated
        (lambda d: d[: HEADER_SIZE - 1], "shorter than a header"),
        (lambda d: d + b"x", "expected"),  # longer
        (lambda d: d[:-3] + bytes([d[-3] ^ 1]) + d[-2:], "checksum"),  # a flipped bit
        (lambda d: b"NOTTALLY" + d[8:], "not a cache entry"),
        (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], "checksum"),  # the line count
        (lambda d: b"", "shorter than a header"),
    ],
)
def test_a_damaged_entry_is_found(damage, why: str) -> None:  # type: ignore[no-untyped-def]
    k = "cd" * 32
    data = encode_entry(k, b"x" * 100, 10, 1)
    with pytest.raises(Damaged, match=why):
        decode_entry(k, damage(data))


def test_an_entry_under_another_key_is_damaged() -> None:
    data = encode_entry("ab" * 32, b"x" * 100, 10, 1)
    with pytest.raises(Damaged, match="checksum"):
        decode_entry("cd" * 32, data)


# --- the store -------------------------------------------------------------------------------


def entries_on_disk(root: Path) -> set[str]:
    return {f.name for f in (root / "entries").rglob("*") if f.is_file()}


def test_the_least_recently_used_entries_are_evicted_to_stay_under_the_bound(
    tmp_path: Path,
) -> None:
    size = len(encode_entry("0" * 64, b"t" * 1000, 1, 0))
    store = PartialStore(str(tmp_path / "c"), max_bytes=3 * size)
    keys = [f"{i:064x}" for i in range(5)]
    for k in keys[:3]:
        assert store.put(k, b"t" * 1000, 1, 0)
    assert store.get(keys[0]) is not None  # used: now the most recent
    assert store.put(keys[3], b"t" * 1000, 1, 0)  # evicts keys[1], the least recently used
    assert entries_on_disk(tmp_path / "c") == {keys[0], keys[2], keys[3]}
    assert store.put(keys[4], b"t" * 1000, 1, 0)  # evicts keys[2]
    assert entries_on_disk(tmp_path / "c") == {keys[0], keys[3], keys[4]}
    assert store.total_bytes() == 3 * size
    assert store.get(keys[1]) is None and store.get(keys[2]) is None
    assert store.counters.evicted == 2 and store.counters.hits == 1
    assert not store.put("f" * 64, b"t" * (3 * size), 1, 0)  # larger than the whole cache
    store.close()


def test_a_damaged_entry_is_counted_deleted_and_missed(tmp_path: Path) -> None:
    store = PartialStore(str(tmp_path / "c"))
    k = "e" * 64
    store.put(k, b"t" * 1000, 1, 0)
    path = Path(store.entry_path(k))
    path.write_bytes(path.read_bytes()[:-10])
    assert store.get(k) is None
    assert not path.exists() and store.total_bytes() == 0
    assert (store.counters.damaged, store.counters.misses) == (1, 1)
    store.close()


def test_an_entry_filed_but_not_indexed_is_used_and_indexed(tmp_path: Path) -> None:
    """A process killed between renaming an entry into place and indexing it (the rename is
    inside the index transaction, so only a crash of the machine leaves this)."""
    store = PartialStore(str(tmp_path / "c"))
    k = "a" * 64
    path = Path(store.entry_path(k))
    path.parent.mkdir(parents=True)
    path.write_bytes(encode_entry(k, b"t", 1, 0))
    assert store.get(k) is not None and store.total_bytes() == path.stat().st_size
    store.close()


def test_stale_temporary_files_are_removed_when_the_cache_opens(tmp_path: Path) -> None:
    PartialStore(str(tmp_path / "c")).close()
    stale, fresh = tmp_path / "c/tmp/a.1.1.tmp", tmp_path / "c/tmp/b.1.1.tmp"
    stale.write_bytes(b"half an entry")
    fresh.write_bytes(b"being written")
    os.utime(stale, (1, 1))
    PartialStore(str(tmp_path / "c")).close()
    assert not stale.exists() and fresh.exists()


def test_a_cache_directory_that_cannot_be_written_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"^cache directory .*file/c cannot be written to: "):
        PartialStore(str(tmp_path / "file" / "c"))


# --- versions as the worker sees them --------------------------------------------------------


def planned(path: Path) -> Task:
    st = path.stat()
    return Task(str(path), version=f"{st.st_size}-{st.st_mtime_ns}")


def test_a_file_changed_since_planning_is_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "p.tsv"
    path.write_bytes(b"1\thttp://a.ru/\n")
    task = planned(path)
    assert seen_version(task) is not None
    path.write_bytes(b"1\thttp://b.ru/\n2\thttp://b.ru/\n")
    assert seen_version(task) is None
    assert seen_version(Task(str(path))) is None  # no version planned: never cached
    assert seen_version(Task("http://127.0.0.1:1/p.tsv", version="etag")) is None


def test_a_file_changed_while_it_was_computed_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "p.tsv"
    path.write_bytes(b"1\thttp://a.ru/\n")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    task = planned(path)
    cache = PartialCache(str(tmp_path / "c"))
    lookup = cache.lookup(task, TOP, 1 << 20)
    assert lookup.key is not None and lookup.hit is None and lookup.reopen
    path.write_bytes(b"1\thttp://b.ru/\n")  # same size ...
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # ... and mtime: only the ctime tells
    cache.keep(lookup, task, b"partial of a.ru", 1, 0)
    assert cache.store.counters.stored == 0
    assert cache.lookup(task, TOP, 1 << 20).hit is None
    # unchanged while computed: stored, then served
    lookup = cache.lookup(task, TOP, 1 << 20)
    cache.keep(lookup, task, b"partial of b.ru", 1, 0)
    hit = cache.lookup(task, TOP, 1 << 20).hit
    assert hit is not None and bytes(hit.table or b"") == b"partial of b.ru"
    assert "1 hits" in cache.close()


# --- the protocol and the scheduler ----------------------------------------------------------


class OldResult(p.Message, tag="result"):
    """A Result as a worker of protocol 2 before the cache sent it."""

    attempt: int
    job_id: str
    partial: p.Partial
    bytes_read: int
    busy_s: float


def test_the_cached_field_is_optional_both_ways() -> None:
    partial = p.Partial(None, 3, 1)
    old = msgspec.msgpack.encode(OldResult(1, "j", partial, 10, 0.5))
    assert p.decode(old) == p.Result(1, "j", partial, 10, 0.5, cached=False)
    uncached = p.encode(p.Result(1, "j", partial, 10, 0.5))[p.HEADER.size :]
    assert uncached == old  # a result not from the cache is the same bytes as before
    new = p.encode(p.Result(1, "j", partial, 0, 0.001, cached=True))[p.HEADER.size :]
    decoded = msgspec.msgpack.decode(new, type=OldResult)  # an older coordinator
    assert (decoded.attempt, decoded.partial.lines, decoded.bytes_read) == (1, 3, 0)


def test_the_scheduler_counts_committed_cache_hits() -> None:
    sch = Scheduler(3.0)
    sch.handle(e.JobSubmitted("j", 3, 0.0))
    sch.handle(e.WorkerJoined(1, 3, 0.0))
    sch.handle(e.Delivered(1, 1, 0.1, "a", cached=True))
    sch.handle(e.Delivered(1, 1, 0.1, "again", job="j", cached=True))  # dropped: not a hit
    sch.handle(e.Delivered(1, 2, 0.2, "b"))
    sch.handle(e.Delivered(1, 3, 0.3, "c", cached=True))
    job = sch.jobs["j"]
    assert job.stats()["cache_hits"] == 2 and job.tally(1).cached == 2
    committed = [r for r in sch.timeline if r["event"] == "committed"]
    assert [r.get("cached", False) for r in committed] == [True, False, True]


def test_processes_opening_a_new_cache_directory_at_once_all_succeed(tmp_path: Path) -> None:
    """Processes opening a new index together may be told "locked" at once (switching it to
    WAL, creating its table) instead of waiting: each tries again until it is open."""
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time; from tally.cache.store import PartialStore\n"
        "open(sys.argv[4], 'w').close()\n"
        "while not os.path.exists(sys.argv[3]): time.sleep(0.0005)\n"
        "s = PartialStore(sys.argv[1]); s.put(sys.argv[2] * 64, b't', 1, 0); s.close()"
    )
    for attempt in range(4):  # a few fresh directories: the race is in the first moments
        root, go = tmp_path / f"c{attempt}", tmp_path / f"go{attempt}"
        ready = [tmp_path / f"ready{attempt}-{i}" for i in range(8)]
        started = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(root), f"{i:x}", str(go), str(ready[i])],
                stderr=subprocess.PIPE,
            )
            for i in range(8)
        ]
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready):  # every process imported: open together
            assert time.monotonic() < deadline and all(p.poll() is None for p in started)
            time.sleep(0.01)
        go.touch()
        errors = [proc.communicate(timeout=60)[1].decode() for proc in started]
        assert [proc.returncode for proc in started] == [0] * 8, errors
        store = PartialStore(str(root))
        assert all(store.get(f"{i:x}" * 64) is not None for i in range(8))
        store.close()
