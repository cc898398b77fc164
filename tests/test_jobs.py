"""The pool, the per-job task machine and fair sharing, as pure state: no sockets, time by hand."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tally.jobs import events as e
from tally.jobs.scheduler import Scheduler
from tally.jobs.tasks import Finish, JobConfig, TaskState


def of(actions: list[e.Action], kind: type) -> list:  # type: ignore[type-arg]
    return [a for a in actions if isinstance(a, kind)]


def one_job(tasks: int, config: JobConfig | None = None, lease: float = 3.0) -> Scheduler:
    sch = Scheduler(lease)
    sch.handle(e.JobSubmitted("j", tasks, 0.0, config or JobConfig()))
    return sch


def test_nothing_is_assigned_before_min_workers_join() -> None:
    sch = one_job(4, JobConfig(min_workers=2))
    assert of(sch.handle(e.WorkerJoined(1, 2, 0.0)), e.Assign) == []
    assigned = of(sch.handle(e.WorkerJoined(2, 2, 0.1)), e.Assign)
    assert sorted(a.task for a in assigned) == [0, 1, 2, 3]
    assert Counter(a.worker for a in assigned) == {1: 2, 2: 2}
    assert [r["workers"] for r in sch.timeline if r["event"] == "ready"] == [2]


def test_pull_based_assignment_respects_slots() -> None:
    sch = one_job(5)
    first = of(sch.handle(e.WorkerJoined(1, 2, 0.0)), e.Assign)
    assert [a.task for a in first] == [0, 1]
    after = sch.handle(e.Delivered(1, first[0].attempt, 0.1, "p0"))
    assert of(after, e.Commit) == [e.Commit("j", 0, first[0].attempt, 1, "p0")]
    assert [a.task for a in of(after, e.Assign)] == [2]


def test_first_delivery_commits_and_later_ones_are_dropped() -> None:
    sch = one_job(1)
    sch.handle(e.WorkerJoined(1, 1, 0.0))
    assert of(sch.handle(e.Delivered(1, 1, 0.5, "first")), Finish) == [Finish("j")]
    assert sch.handle(e.Delivered(1, 1, 0.6, "again", job="j")) == []
    assert sch.jobs["j"].counters.duplicates_dropped == 1


def test_backup_attempt_for_a_straggler_and_cancel_of_the_loser() -> None:
    sch = one_job(3, JobConfig(backup_min_s=0.1, backup_factor=2.0))
    sch.handle(e.WorkerJoined(1, 1, 0.0))
    sch.handle(e.WorkerJoined(2, 1, 0.0))
    slow = next(a for a in sch.attempts.values() if a.worker == 1)
    fast = next(a for a in sch.attempts.values() if a.worker == 2)
    nxt = of(sch.handle(e.Delivered(2, fast.id, 0.2, "x")), e.Assign)
    assert [a.worker for a in nxt] == [2]
    sch.handle(e.Delivered(2, nxt[0].attempt, 0.4, "y"))  # worker 2 idles, queue empty
    backup = of(sch.handle(e.Tick(1.0)), e.Assign)
    assert backup == [e.Assign(2, 4, "j", slow.task)]
    actions = sch.handle(e.Delivered(2, 4, 1.1, "z"))
    assert of(actions, e.Cancel) == [e.Cancel(1, slow.id)]
    assert of(actions, Finish) == [Finish("j")]
    assert sch.jobs["j"].counters.backups == 1


def test_lost_worker_attempts_are_requeued_first_and_not_charged() -> None:
    sch = one_job(4, JobConfig(max_attempts=1))
    sch.handle(e.WorkerJoined(1, 2, 0.0))
    sch.handle(e.WorkerLost(1, 0.1, "connection closed"))
    job = sch.jobs["j"]
    assert list(job.queue) == [0, 1, 2, 3]
    assert job.counters.workers_lost == 1 and job.counters.reassigned == 2
    again = of(sch.handle(e.WorkerJoined(2, 2, 0.2)), e.Assign)
    assert [a.task for a in again] == [0, 1]
    assert job.finished is None  # a lost worker is not the task's failure


def test_a_task_that_keeps_killing_workers_fails_as_poison() -> None:
    sch = one_job(1, JobConfig(poison_limit=3))
    for worker in (1, 2, 3):
        sch.handle(e.WorkerJoined(worker, 1, 0.1 * worker))
        actions = sch.handle(e.WorkerLost(worker, 0.1 * worker + 0.05, "connection closed"))
    (finish,) = of(actions, Finish)
    assert finish.failed_tasks == (0,)
    assert finish.error is not None and "partition 0 is poison: 3 workers" in finish.error


def test_lease_expiry_disconnects_a_silent_worker() -> None:
    sch = one_job(2, lease=3.0)
    sch.handle(e.WorkerJoined(1, 1, 0.0))
    sch.handle(e.WorkerJoined(2, 1, 0.0))
    actions: list[e.Action] = []
    for tick in range(1, 32):
        now = tick / 10
        sch.handle(e.HeartbeatSeen(2, now))
        actions = sch.handle(e.Tick(now))
        if actions:
            break
    assert of(actions, e.Disconnect) == [e.Disconnect(1, "silent for 3.1s (lease 3s)")]
    assert list(sch.jobs["j"].queue) == [0]  # waits for worker 2, which holds its own


def test_a_stalled_coordinator_does_not_blame_its_workers() -> None:
    sch = one_job(2, lease=3.0)
    sch.handle(e.WorkerJoined(1, 1, 0.0))
    sch.handle(e.Tick(0.1))
    assert sch.handle(e.Tick(10.0)) == []  # the loop did not turn for 9.9 s: its own silence
    assert sch.pool.alive_count() == 1
    now, lost = 10.0, []
    while not lost:  # silent since 0.0, less the 9.9 s stall: lost one lease after 0.0 + 9.9
        now += 0.1
        lost = of(sch.handle(e.Tick(now)), e.Disconnect)
    assert 12.9 < now < 13.1


def test_task_failing_k_times_fails_the_job_naming_it() -> None:
    sch = one_job(2, JobConfig(max_attempts=3))
    sch.handle(e.WorkerJoined(1, 1, 0.0))
    for n in range(3):
        attempt = next(a for a in sch.attempts.values() if a.task == 0)
        actions = sch.handle(e.AttemptFailed(1, attempt.id, 0.1 * n, "PartitionError: gone"))
    assert of(actions, Finish) == [
        Finish("j", (0,), "partition 0 failed 3 time(s); last error: PartitionError: gone")
    ]


def test_max_attempts_bounds_backups_and_a_backup_avoids_the_worker_that_failed() -> None:
    sch = one_job(2, JobConfig(max_attempts=2, backup_min_s=0.0, backup_factor=0.0))
    sch.handle(e.WorkerJoined(1, 1, 0.0))
    sch.handle(e.WorkerJoined(2, 1, 0.0))
    a0 = next(a for a in sch.attempts.values() if a.task == 0)
    a1 = next(a for a in sch.attempts.values() if a.task == 1)
    # a median exists now, and the worker that delivered is idle: it backs up task 0
    backups = of(sch.handle(e.Delivered(a1.worker, a1.id, 0.1, "ok")), e.Assign)
    assert [(b.worker, b.task) for b in backups] == [(a1.worker, 0)]
    # task 0 now has two live attempts, its limit: a failure of one starts nothing new
    actions = sch.handle(e.AttemptFailed(a0.worker, a0.id, 0.3, "PartitionError: 500"))
    assert of(actions, e.Assign) == []
    job = sch.jobs["j"]
    assert job.counters.attempts == 3 and job.finished is None
    # the failed worker is idle but never backs up the task it failed
    assert of(sch.handle(e.Tick(0.5)), e.Assign) == []
    actions = sch.handle(e.AttemptFailed(backups[0].worker, backups[0].attempt, 0.6, "x: 500"))
    assert of(actions, Finish)[0].error == "partition 0 failed 2 time(s); last error: x: 500"
    assert job.counters.attempts == 3


def test_skip_failed_finishes_with_the_failed_tasks_listed() -> None:
    sch = one_job(2, JobConfig(max_attempts=1, skip_failed=True))
    sch.handle(e.WorkerJoined(1, 2, 0.0))
    sch.handle(e.AttemptFailed(1, 1, 0.1, "boom", retryable=True))
    actions = sch.handle(e.Delivered(1, 2, 0.2, "ok"))
    assert of(actions, Finish) == [Finish("j", (0,))]


def test_non_retryable_error_fails_at_once_and_cancels_the_rest() -> None:
    sch = one_job(2, JobConfig(max_attempts=5))
    sch.handle(e.WorkerJoined(1, 2, 0.0))
    actions = sch.handle(e.AttemptFailed(1, 1, 0.1, "ConfigError: bad", retryable=False))
    assert of(actions, e.Cancel) == [e.Cancel(1, 2)]
    assert "retrying cannot help" in (of(actions, Finish)[0].error or "")
    assert sch.attempts == {} and not sch.pool.members[1].live


def test_leaving_worker_returns_work_without_counting_a_loss() -> None:
    sch = one_job(3)
    sch.handle(e.WorkerJoined(1, 2, 0.0))
    sch.handle(e.WorkerLeft(1, 0.1, (1, 2)))
    job = sch.jobs["j"]
    assert job.counters.workers_lost == 0 and job.counters.failures == 0
    assert sorted(job.queue) == [0, 1, 2]


def test_join_after_everyone_died_resumes_the_job() -> None:
    sch = one_job(1)
    sch.handle(e.WorkerJoined(1, 1, 0.0))
    sch.handle(e.WorkerLost(1, 0.1, "killed"))
    assigned = of(sch.handle(e.WorkerJoined(2, 1, 5.0)), e.Assign)
    assert assigned == [e.Assign(2, 2, "j", 0)]
    assert of(sch.handle(e.Delivered(2, 2, 5.1, "r")), Finish) == [Finish("j")]


def test_empty_job_finishes_at_once() -> None:
    assert Scheduler().handle(e.JobSubmitted("j", 0, 0.0)) == [Finish("j")]


# --- ownership -------------------------------------------------------------------------------


def test_a_result_for_another_workers_attempt_drops_the_liar_and_commits_nothing() -> None:
    sch = one_job(2)
    sch.handle(e.WorkerJoined(1, 1, 0.0))
    sch.handle(e.WorkerJoined(2, 1, 0.0))
    theirs = next(a for a in sch.attempts.values() if a.worker == 1)
    actions = sch.handle(e.Delivered(2, theirs.id, 0.1, "forged"))
    assert of(actions, e.Commit) == []
    assert of(actions, e.Disconnect)[0].worker == 2
    assert sch.attempts[theirs.id].worker == 1  # still live with its owner
    assert sch.refused == [f"refused: delivered attempt {theirs.id} of worker 1"]


def test_a_forged_failure_cannot_fail_another_workers_task() -> None:
    sch = one_job(1, JobConfig(max_attempts=1))
    sch.handle(e.WorkerJoined(1, 1, 0.0))
    sch.handle(e.WorkerJoined(2, 1, 0.0))
    actions = sch.handle(e.AttemptFailed(2, 1, 0.1, "lie", retryable=False))
    assert of(actions, Finish) == [] and of(actions, e.Disconnect)[0].worker == 2
    assert of(sch.handle(e.Delivered(1, 1, 0.2, "ok")), Finish) == [Finish("j")]


# --- many jobs -------------------------------------------------------------------------------


def test_attempt_ids_are_unique_across_jobs_and_start_past_a_high_water_mark() -> None:
    sch = Scheduler(first_attempt=1000)
    sch.handle(e.WorkerJoined(1, 4, 0.0))
    sch.handle(e.JobSubmitted("a", 2, 0.0))
    actions = sch.handle(e.JobSubmitted("b", 2, 0.0))
    ids = [a.attempt for a in of(actions, e.Assign)] + list(sch.attempts)
    assert sorted(set(ids)) == [1000, 1001, 1002, 1003]
    assert sch.high_water == 1004


def test_a_short_job_behind_a_long_one_gets_slots_as_they_free() -> None:
    sch = Scheduler()
    for w in (1, 2):
        sch.handle(e.WorkerJoined(w, 2, 0.0))
    sch.handle(e.JobSubmitted("long", 1000, 0.0))
    assert len(sch.attempts) == 4  # every slot busy with the long job
    sch.handle(e.JobSubmitted("short", 2, 1.0))
    first = min(sch.attempts)
    actions = sch.handle(e.Delivered(sch.attempts[first].worker, first, 2.0, "x"))
    assert [a.job for a in of(actions, e.Assign)] == ["short"]
    second = min(a for a in sch.attempts if sch.attempts[a].job == "long")
    actions = sch.handle(e.Delivered(sch.attempts[second].worker, second, 2.1, "x"))
    assert [a.job for a in of(actions, e.Assign)] == ["short"]


def test_cancelling_a_job_frees_its_slots_for_the_others_at_once() -> None:
    sch = Scheduler()
    sch.handle(e.WorkerJoined(1, 2, 0.0))
    sch.handle(e.JobSubmitted("a", 10, 0.0))
    sch.handle(e.JobSubmitted("b", 10, 0.0))
    actions = sch.handle(e.JobCancelled("a", 1.0, "cancelled by the user"))
    assert sorted(c.attempt for c in of(actions, e.Cancel)) == [1, 2]
    assert of(actions, Finish) == [Finish("a", (), "cancelled by the user")]
    assert [a.job for a in of(actions, e.Assign)] == ["b", "b"]


# --- property: any interleaving over many jobs keeps the invariants --------------------------

JOBS = {"j1": 7, "j2": 5, "j3": 3}


def partial_of(job: str, task: int) -> Counter[str]:
    return Counter({f"{job}-d{task % 3}": task + 1, "all": 1})


OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["join", "deliver", "fail", "lose", "late", "tick", "leave", "stall", "forge"]
        ),
        st.integers(0, 1000),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(OPS, st.booleans(), st.permutations(list(JOBS)))
def test_random_interleavings_commit_each_task_of_each_job_exactly_once(
    ops: list[tuple[str, int]], speculate: bool, order: list[str]
) -> None:
    config = JobConfig(
        max_attempts=10_000, poison_limit=10_000, speculate=speculate, backup_min_s=0.0
    )
    sch = Scheduler(3.0)
    outstanding: dict[int, tuple[int, str, int]] = {}  # attempt -> (worker, job, task)
    settled: list[tuple[int, int]] = []  # (worker, attempt) delivered, cancelled or lost
    issued: dict[int, tuple[str, int]] = {}
    alive: set[int] = set()
    commits: Counter[tuple[str, int]] = Counter()
    merged: dict[str, Counter[str]] = {job: Counter() for job in JOBS}
    finished: dict[str, Finish] = {}
    now = 0.0
    next_worker = 1

    def apply(actions: list[e.Action]) -> None:
        for action in actions:
            match action:
                case e.Assign(worker, attempt, job, task):
                    assert worker in alive and attempt not in issued
                    outstanding[attempt] = (worker, job, task)
                    issued[attempt] = (job, task)
                case e.Cancel(worker, attempt):
                    settled.append((worker, attempt))
                    outstanding.pop(attempt, None)
                case e.Disconnect(worker):
                    alive.discard(worker)
                    drop_worker(worker)
                case e.Commit(job, task, payload=payload):
                    commits[job, task] += 1
                    assert payload == (job, task)
                    merged[job].update(partial_of(job, task))
                case Finish():
                    assert action.job not in finished
                    finished[action.job] = action

    def drop_worker(worker: int) -> None:
        for attempt, (w, _, _) in list(outstanding.items()):
            if w == worker:
                settled.append((w, attempt))
                del outstanding[attempt]

    def check() -> None:
        assert all(n == 1 for n in commits.values())
        held = sum(len(m.live) for m in sch.pool.members.values())
        assert held == len(sch.attempts) == sum(len(j.live) for j in sch.jobs.values())
        for job in sch.jobs.values():
            for index, task in enumerate(job.tasks):
                assert (index in job.queue) == (task.state == TaskState.PENDING)
                assert bool(task.live) == (task.state == TaskState.RUNNING)
                assert (task.state == TaskState.DONE) == (commits[job.job, index] == 1)

    def deliver(attempt: int) -> None:
        worker, job, task = outstanding.pop(attempt)
        settled.append((worker, attempt))
        apply(sch.handle(e.Delivered(worker, attempt, now, (job, task), job=job)))

    for job in order[:2]:
        apply(sch.handle(e.JobSubmitted(job, JOBS[job], now, config)))
    for step, (op, n) in enumerate(ops):
        now += 0.1
        if step == len(ops) // 2:
            apply(sch.handle(e.JobSubmitted(order[2], JOBS[order[2]], now, config)))
        if op == "join":
            alive.add(next_worker)
            apply(sch.handle(e.WorkerJoined(next_worker, 1 + n % 3, now)))
            next_worker += 1
        elif op == "deliver" and outstanding:
            deliver(sorted(outstanding)[n % len(outstanding)])
        elif op == "fail" and outstanding:
            attempt = sorted(outstanding)[n % len(outstanding)]
            worker, _, _ = outstanding.pop(attempt)
            apply(sch.handle(e.AttemptFailed(worker, attempt, now, "PartitionError: x")))
        elif op in ("lose", "leave") and alive:
            worker = sorted(alive)[n % len(alive)]
            alive.discard(worker)
            returned = tuple(a for a, (w, _, _) in outstanding.items() if w == worker)
            drop_worker(worker)
            if op == "lose":
                apply(sch.handle(e.WorkerLost(worker, now, "killed")))
            else:
                apply(sch.handle(e.WorkerLeft(worker, now, returned)))
        elif op == "late" and settled:
            worker, attempt = settled[n % len(settled)]
            job, task = issued[attempt]
            apply(sch.handle(e.Delivered(worker, attempt, now, (job, task), job=job)))
        elif op == "forge" and outstanding and len(alive) > 1:
            attempt = sorted(outstanding)[n % len(outstanding)]
            owner, job, task = outstanding[attempt]
            liar = min(alive - {owner})
            apply(sch.handle(e.Delivered(liar, attempt, now, (job, task), job=job)))
            assert liar not in alive
        elif op == "stall" and alive:
            victim = sorted(alive)[n % len(alive)]
            for _ in range(36):  # the victim is silent past the lease; the others beat
                now += 0.1
                for w in sorted(alive - {victim}):
                    apply(sch.handle(e.HeartbeatSeen(w, now)))
                apply(sch.handle(e.Tick(now)))
            assert victim not in alive
        else:
            apply(sch.handle(e.Tick(now)))
        check()

    if order[2] not in sch.jobs:
        apply(sch.handle(e.JobSubmitted(order[2], JOBS[order[2]], now, config)))
    # drive to the end: a fresh worker if needed, then deliver everything in order
    for _ in range(20 * sum(JOBS.values())):
        if len(finished) == len(JOBS):
            break
        now += 0.1
        if not alive:
            alive.add(next_worker)
            apply(sch.handle(e.WorkerJoined(next_worker, 2, now)))
            next_worker += 1
        if outstanding:
            deliver(min(outstanding))
        else:
            for w in sorted(alive):
                apply(sch.handle(e.HeartbeatSeen(w, now)))
            apply(sch.handle(e.Tick(now)))
        check()
    assert finished == {job: Finish(job) for job in JOBS}
    for job, size in JOBS.items():
        expected: Counter[str] = Counter()
        for task in range(size):
            expected.update(partial_of(job, task))
        assert merged[job] == expected


def test_a_resumed_job_runs_only_the_tasks_not_yet_committed() -> None:
    sch = Scheduler(first_attempt=50)
    sch.handle(e.JobSubmitted("j", 4, 0.0, done=frozenset({0, 2})))
    actions = sch.handle(e.WorkerJoined(1, 4, 0.1))
    assert [(a.task, a.attempt) for a in of(actions, e.Assign)] == [(1, 50), (3, 51)]
    sch.handle(e.Delivered(1, 50, 0.2, "b"))
    assert of(sch.handle(e.Delivered(1, 51, 0.3, "d")), Finish) == [Finish("j")]
    assert sch.handle(e.JobSubmitted("k", 2, 0.4, done=frozenset({0, 1}))) == [Finish("k")]


def test_attempt_ids_are_reserved_in_blocks_before_they_are_issued() -> None:
    reserved: list[int] = []
    sch = Scheduler(first_attempt=7, reserve=reserved.append)
    sch.handle(e.WorkerJoined(1, 2, 0.0))
    sch.handle(e.JobSubmitted("j", 3, 0.0))
    assert reserved == [7 + 4096] and set(sch.attempts) == {7, 8}
    restarted = Scheduler(first_attempt=reserved[-1])  # what a restart reads back
    restarted.handle(e.WorkerJoined(1, 1, 0.0))
    restarted.handle(e.JobSubmitted("j", 1, 0.0))
    assert set(restarted.attempts) == {7 + 4096}


def test_an_attempt_past_the_task_time_limit_fails_and_is_retried_elsewhere() -> None:
    sch = one_job(1, JobConfig(task_timeout_s=2.0, max_attempts=2, speculate=False))
    sch.handle(e.WorkerJoined(1, 1, 0.0))
    sch.handle(e.WorkerJoined(2, 1, 0.0))
    first = sch.attempts[1]
    actions: list[e.Action] = []
    now = 0.0
    while not actions:
        now += 0.1
        for w in (1, 2):
            sch.handle(e.HeartbeatSeen(w, now))
        actions = sch.handle(e.Tick(now))
    assert 2.0 < now < 2.2
    assert of(actions, e.Cancel) == [e.Cancel(first.worker, 1)]
    (retry,) = of(actions, e.Assign)
    assert retry.task == 0 and retry.worker != first.worker
    failed = [r for r in sch.timeline if r["event"] == "failed"]
    assert [(r["attempt"], r["error"]) for r in failed] == [
        (1, "no result within 2s (--task-timeout)")
    ]
