"""The watcher's running total, without I/O: each object counted once, whatever order a
rebuild and a queued add are taken in."""

from __future__ import annotations

from tally.coordinator import TaskPartial
from tally.kernels import DomainCounts
from tally.protocol import QuerySpec
from tally.queries.domains import to_table
from tally.service.watch_total import RunningTotal

PLAN = QuerySpec("all")


def partial(counts: dict[bytes, int]) -> TaskPartial:
    lines = sum(counts.values())
    return TaskPartial(to_table(DomainCounts(dict(counts), lines)), lines, 0)


def rows(total: RunningTotal) -> tuple[int, list[tuple[object, ...]]]:
    result = total.finalize()
    return result.lines, [tuple(r.values()) for r in result.table.to_pylist()]


A1 = [partial({b"a.ru": 3})]
A2 = [partial({b"a.ru": 5, b"c.ru": 1})]
B = [partial({b"b.ru": 2}), partial({b"b.ru": 1})]


def test_a_rebuild_that_already_holds_a_new_object_makes_its_queued_add_a_no_op() -> None:
    total = RunningTotal(PLAN)
    assert total.add("a", A1)
    # b ends, then a's new version: by the time the writer takes a's rebuild, b's partials
    # are stored, so the rebuild holds b before b's own add is taken
    total.rebuild(PLAN, {"a": A2, "b": B})
    assert not total.add("b", B)
    assert rows(total) == (9, [(b"a.ru", 5), (b"b.ru", 3), (b"c.ru", 1)])


def test_adds_and_a_rebuild_in_order_give_the_same_total() -> None:
    total = RunningTotal(PLAN)
    assert total.add("a", A1)
    assert total.add("b", B)
    total.rebuild(PLAN, {"a": A2, "b": B})
    assert rows(total) == (9, [(b"a.ru", 5), (b"b.ru", 3), (b"c.ru", 1)])


def test_a_rebuild_drops_an_object_whose_new_version_failed() -> None:
    total = RunningTotal(PLAN)
    total.rebuild(PLAN, {"a": A1, "b": B})
    total.rebuild(PLAN, {"b": B})  # a's new version failed: its partials were deleted
    assert rows(total) == (3, [(b"b.ru", 3)])
    assert total.add("a", A2)  # a later version of a is its first contribution again
    assert rows(total) == (9, [(b"a.ru", 5), (b"b.ru", 3), (b"c.ru", 1)])
