"""The scheduler as a pure state machine: no sockets, time passed in by hand."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tally import scheduler as s


def of(actions: list[s.Action], kind: type) -> list:  # type: ignore[type-arg]
    return [a for a in actions if isinstance(a, kind)]


def test_nothing_is_assigned_before_min_workers_join() -> None:
    sch = s.Scheduler(4, s.SchedulerConfig(min_workers=2))
    assert of(sch.handle(s.WorkerJoined(1, 2, 0.0)), s.Assign) == []
    assigned = of(sch.handle(s.WorkerJoined(2, 2, 0.1)), s.Assign)
    assert sorted(a.partition for a in assigned) == [0, 1, 2, 3]
    assert Counter(a.worker for a in assigned) == {1: 2, 2: 2}


def test_pull_based_assignment_respects_slots() -> None:
    sch = s.Scheduler(5)
    first = of(sch.handle(s.WorkerJoined(1, 2, 0.0)), s.Assign)
    assert [a.partition for a in first] == [0, 1]
    after = sch.handle(s.Delivered(1, first[0].attempt, 0.1, "p0"))
    assert of(after, s.Commit) == [s.Commit(0, first[0].attempt, 1, "p0")]
    assert [a.partition for a in of(after, s.Assign)] == [2]


def test_first_delivery_commits_and_later_ones_are_dropped() -> None:
    sch = s.Scheduler(1, s.SchedulerConfig(backup_min_s=0.1))
    sch.handle(s.WorkerJoined(1, 1, 0.0))
    sch.handle(s.WorkerJoined(2, 1, 0.0))
    a1 = sch.attempts[1]
    # worker 2 idles; the attempt grows old; no median yet, so deliver one partition first
    assert a1.partition == 0 and sch.counters.attempts == 1
    sch.handle(s.Delivered(1, 1, 0.5, "first"))
    assert sch.finished == s.Finish(())
    assert sch.handle(s.Delivered(1, 1, 0.6, "again")) == []
    assert sch.counters.duplicates_dropped == 1


def test_backup_attempt_for_a_straggler_and_cancel_of_the_loser() -> None:
    sch = s.Scheduler(3, s.SchedulerConfig(backup_min_s=0.1, backup_factor=2.0))
    sch.handle(s.WorkerJoined(1, 1, 0.0))
    sch.handle(s.WorkerJoined(2, 1, 0.0))
    slow = next(a for a in sch.attempts.values() if a.worker == 1)
    fast = next(a for a in sch.attempts.values() if a.worker == 2)
    nxt = of(sch.handle(s.Delivered(2, fast.id, 0.2, "x")), s.Assign)
    assert [a.worker for a in nxt] == [2]
    sch.handle(s.Delivered(2, nxt[0].attempt, 0.4, "y"))  # worker 2 is idle, queue empty
    backup = of(sch.handle(s.Tick(1.0)), s.Assign)
    assert backup == [s.Assign(2, 4, slow.partition)]
    actions = sch.handle(s.Delivered(2, 4, 1.1, "z"))
    assert of(actions, s.Cancel) == [s.Cancel(1, slow.id)]
    assert of(actions, s.Finish) == [s.Finish(())]
    assert sch.counters.backups == 1


def test_lost_worker_attempts_are_requeued_first() -> None:
    sch = s.Scheduler(4)
    sch.handle(s.WorkerJoined(1, 2, 0.0))
    sch.handle(s.WorkerLost(1, 0.1, "connection closed"))
    assert list(sch.queue) == [0, 1, 2, 3]
    assert sch.counters.workers_lost == 1 and sch.counters.reassigned == 2
    again = of(sch.handle(s.WorkerJoined(2, 2, 0.2)), s.Assign)
    assert [a.partition for a in again] == [0, 1]


def test_lease_expiry_disconnects_a_silent_worker() -> None:
    sch = s.Scheduler(2, s.SchedulerConfig(lease_timeout_s=3.0))
    sch.handle(s.WorkerJoined(1, 1, 0.0))
    sch.handle(s.WorkerJoined(2, 1, 0.0))
    sch.handle(s.HeartbeatSeen(2, 2.9))
    assert sch.handle(s.Tick(2.95)) == []
    actions = sch.handle(s.Tick(3.05))
    assert of(actions, s.Disconnect) == [s.Disconnect(1, "silent for 3.0s (lease 3s)")]
    # its partition waits for worker 2, which still holds its own
    assert list(sch.queue) == [0]


def test_partition_failing_k_times_fails_the_job_naming_it() -> None:
    sch = s.Scheduler(2, s.SchedulerConfig(max_attempts=3))
    sch.handle(s.WorkerJoined(1, 1, 0.0))
    for n in range(3):
        attempt = next(a for a in sch.attempts.values() if a.partition == 0)
        actions = sch.handle(s.AttemptFailed(1, attempt.id, 0.1 * n, "PartitionError: gone"))
    assert of(actions, s.Finish) == [
        s.Finish((0,), "partition 0 failed 3 time(s); last error: PartitionError: gone")
    ]


def test_skip_failed_finishes_with_the_failed_partitions_listed() -> None:
    sch = s.Scheduler(2, s.SchedulerConfig(max_attempts=1, skip_failed=True))
    sch.handle(s.WorkerJoined(1, 2, 0.0))
    sch.handle(s.AttemptFailed(1, 1, 0.1, "boom", retryable=True))
    actions = sch.handle(s.Delivered(1, 2, 0.2, "ok"))
    assert of(actions, s.Finish) == [s.Finish((0,))]


def test_non_retryable_error_fails_at_once() -> None:
    sch = s.Scheduler(1, s.SchedulerConfig(max_attempts=5))
    sch.handle(s.WorkerJoined(1, 1, 0.0))
    actions = sch.handle(s.AttemptFailed(1, 1, 0.1, "ConfigError: bad", retryable=False))
    assert of(actions, s.Finish)[0].error is not None


def test_leaving_worker_returns_work_without_counting_a_loss() -> None:
    sch = s.Scheduler(3)
    sch.handle(s.WorkerJoined(1, 2, 0.0))
    sch.handle(s.WorkerLeft(1, 0.1, (1, 2)))
    assert sch.counters.workers_lost == 0 and sch.failures == [0, 0, 0]
    assert sorted(sch.queue) == [0, 1, 2]


def test_join_after_everyone_died_resumes_the_job() -> None:
    sch = s.Scheduler(1)
    sch.handle(s.WorkerJoined(1, 1, 0.0))
    sch.handle(s.WorkerLost(1, 0.1, "killed"))
    assert sch.finished is None
    assigned = of(sch.handle(s.WorkerJoined(2, 1, 5.0)), s.Assign)
    assert assigned == [s.Assign(2, 2, 0)]
    assert of(sch.handle(s.Delivered(2, 2, 5.1, "r")), s.Finish) == [s.Finish(())]


def test_empty_job_finishes_at_once() -> None:
    assert s.Scheduler(0).handle(s.Tick(0.0)) == [s.Finish(())]


# --- property: any interleaving keeps the invariants ----------------------------------------

PARTITIONS = 12


def partial_of(partition: int) -> Counter[str]:
    return Counter({f"d{partition % 5}": partition + 1, "all": 1})


OPS = st.lists(
    st.tuples(
        st.sampled_from(["join", "deliver", "fail", "lose", "late", "tick", "leave", "stall"]),
        st.integers(0, 1000),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OPS, st.booleans())
def test_random_interleavings_commit_each_partition_exactly_once(
    ops: list[tuple[str, int]], speculate: bool
) -> None:
    config = s.SchedulerConfig(
        max_attempts=10_000, lease_timeout_s=3.0, speculate=speculate, backup_min_s=0.0
    )
    sch = s.Scheduler(PARTITIONS, config)
    outstanding: dict[int, tuple[int, int]] = {}  # attempt -> (worker, partition)
    settled: list[tuple[int, int]] = []  # (worker, attempt) already delivered or lost
    partition_of: dict[int, int] = {}  # every attempt ever issued
    alive: set[int] = set()
    commits: Counter[int] = Counter()
    merged: Counter[str] = Counter()
    now = 0.0
    next_worker = 1

    def apply(actions: list[s.Action]) -> None:
        for action in actions:
            match action:
                case s.Assign(worker, attempt, partition):
                    assert worker in alive
                    outstanding[attempt] = (worker, partition)
                    partition_of[attempt] = partition
                case s.Cancel(worker, attempt):
                    settled.append((worker, attempt))
                    outstanding.pop(attempt, None)
                case s.Disconnect(worker):
                    alive.discard(worker)
                    drop_worker(worker)
                case s.Commit(partition, attempt, payload=payload):
                    commits[partition] += 1
                    assert payload == ("p", partition)
                    merged.update(partial_of(partition))

    def drop_worker(worker: int) -> None:
        for attempt, (w, _) in list(outstanding.items()):
            if w == worker:
                settled.append((w, attempt))
                del outstanding[attempt]

    def check() -> None:
        assert all(n == 1 for n in commits.values())
        live = sum(len(w.live) for w in sch.workers.values())
        assert live == len(sch.attempts)
        for p, state in enumerate(sch.state):
            queued = p in sch.queue
            running = bool(sch.partition_attempts.get(p))
            assert queued == (state == s.PartitionState.PENDING)
            assert running == (state == s.PartitionState.RUNNING)
            assert (state == s.PartitionState.DONE) == (commits[p] == 1)

    def deliver(attempt: int) -> None:
        worker, partition = outstanding.pop(attempt)
        settled.append((worker, attempt))
        apply(sch.handle(s.Delivered(worker, attempt, now, ("p", partition))))

    for op, n in ops:
        now += 0.1
        if sch.finished is not None:
            break
        if op == "join":
            alive.add(next_worker)
            apply(sch.handle(s.WorkerJoined(next_worker, 1 + n % 3, now)))
            next_worker += 1
        elif op == "deliver" and outstanding:
            deliver(sorted(outstanding)[n % len(outstanding)])
        elif op == "fail" and outstanding:
            attempt = sorted(outstanding)[n % len(outstanding)]
            worker, _ = outstanding.pop(attempt)
            apply(sch.handle(s.AttemptFailed(worker, attempt, now, "PartitionError: x")))
        elif op == "lose" and alive:
            worker = sorted(alive)[n % len(alive)]
            alive.discard(worker)
            drop_worker(worker)
            apply(sch.handle(s.WorkerLost(worker, now, "killed")))
        elif op == "leave" and alive:
            worker = sorted(alive)[n % len(alive)]
            alive.discard(worker)
            returned = tuple(a for a, (w, _) in outstanding.items() if w == worker)
            drop_worker(worker)
            apply(sch.handle(s.WorkerLeft(worker, now, returned)))
        elif op == "late" and settled:
            worker, attempt = settled[n % len(settled)]
            payload = ("p", partition_of[attempt])
            apply(sch.handle(s.Delivered(worker, attempt, now, payload)))
        elif op == "stall" and alive:
            victim = sorted(alive)[n % len(alive)]
            now += 3.5
            for w in alive - {victim}:
                apply(sch.handle(s.HeartbeatSeen(w, now)))
            apply(sch.handle(s.Tick(now)))
        else:
            apply(sch.handle(s.Tick(now)))
        check()

    # drive to the end: a fresh worker if needed, then deliver everything in order
    for _ in range(10 * PARTITIONS):
        if sch.finished is not None:
            break
        now += 0.1
        if not alive:
            alive.add(next_worker)
            apply(sch.handle(s.WorkerJoined(next_worker, 2, now)))
            next_worker += 1
        if outstanding:
            deliver(min(outstanding))
        else:
            for w in alive:
                apply(sch.handle(s.HeartbeatSeen(w, now)))
            apply(sch.handle(s.Tick(now)))
        check()
    assert sch.finished == s.Finish(())
    assert sorted(commits) == list(range(PARTITIONS))
    expected: Counter[str] = Counter()
    for p in range(PARTITIONS):
        expected.update(partial_of(p))
    assert merged == expected
