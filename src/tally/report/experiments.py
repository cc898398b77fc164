"""The experiments on generated data: speedup (local files and throttled HTTP), load
distribution, and per-task overhead. Failure recovery lives in :mod:`tally.report.recovery`.

Each experiment runs real ``tally coordinator`` and ``tally worker`` processes and returns a
JSON-ready dict built from their ``--stats`` and ``--events`` records.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tally import protocol as p
from tally.queries import from_ipc, merger_for, to_ipc
from tally.report.cluster import ExperimentError, JobRun, run_job
from tally.report.scaling import summarize
from tally.report.throttled_http import ThrottledServer
from tally.report.timeline import committed_per_worker

log = logging.getLogger("tally.report")
SEED = 1


@dataclass(frozen=True)
class Plan:
    """Sizes and knobs of one report; ``QUICK`` fits in about a minute on 2 cores."""

    mode: str
    repeats: int  # runs per worker count, local files (min/median/max are reported)
    http_repeats: int  # runs per worker count over HTTP
    cpu_partitions: int
    cpu_size: str
    http_partitions: int
    http_size: str
    http_mb_s: float  # bandwidth of each HTTP connection
    recovery_partitions: int
    recovery_size: str
    recovery_delay_s: float  # --task-delay of the recovery workers: tasks long enough to hit
    overhead_tasks: int
    workers: tuple[int, ...] = (1, 2, 4, 8, 16)
    load_workers: int = 4
    load_partitions: int = 100
    load_size: str = "1MiB"
    load_delay_s: float = 0.05  # --task-delay of every load worker (the slowed one: x slowdown)
    slowdown: float = 10.0
    lease_s: float = 3.0
    kill_at_s: float = 1.0  # after the job started (every worker joined)
    stop_at_s: float = 1.5
    cont_after_s: float = 0.5  # after the stopped worker was declared lost
    job_timeout_s: float = 300.0


QUICK = Plan(
    mode="quick",
    repeats=2,
    http_repeats=1,
    cpu_partitions=48,
    cpu_size="8MiB",
    http_partitions=32,
    http_size="1MiB",
    http_mb_s=10.0,
    recovery_partitions=60,
    recovery_size="128KiB",
    recovery_delay_s=0.25,
    overhead_tasks=2000,
    job_timeout_s=60.0,
)
FULL = Plan(
    mode="full",
    repeats=3,
    http_repeats=2,
    cpu_partitions=64,
    cpu_size="32MiB",
    http_partitions=64,
    http_size="4MiB",
    http_mb_s=20.0,
    recovery_partitions=100,
    recovery_size="256KiB",
    recovery_delay_s=0.25,
    overhead_tasks=10000,
)


@dataclass(frozen=True)
class Dataset:
    name: str
    filelist: Path
    paths: tuple[Path, ...]

    @property
    def bytes(self) -> int:
        return sum(path.stat().st_size for path in self.paths)

    def describe(self, size: str) -> dict[str, Any]:
        return {
            "partitions": len(self.paths),
            "partition_size": size,
            "bytes": self.bytes,
            "seed": SEED,
            "command": f"tally gen OUT --partitions {len(self.paths)} "
            f"--partition-size {size} --seed {SEED}",
        }


def generate(root: Path, name: str, partitions: int, size: str) -> Dataset:
    """``tally gen`` into ``root/name``."""
    out = root / name
    subprocess.run(
        [sys.executable, "-m", "tally", "gen", str(out), "--partitions", str(partitions),
         "--partition-size", size, "--seed", str(SEED), "-q"],
        check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    paths = tuple(sorted(out.glob("part-*.tsv")))
    return Dataset(name, out / "filelist.csv", paths)


def empty_dataset(root: Path, count: int) -> Dataset:
    """``count`` empty partitions: tasks that cost only their round trip."""
    out = root / f"empty-{count}"
    out.mkdir(parents=True, exist_ok=True)
    paths = tuple(out / f"e{i:06d}" for i in range(count))
    for path in paths:
        path.touch()
    filelist = out / "filelist.csv"
    filelist.write_text("".join(f"{path.name}\n" for path in paths))
    return Dataset(f"empty-{count}", filelist, paths)


# --- records ---------------------------------------------------------------------------------


def run_record(
    run: JobRun, workers: int, repeat: int, data: Dataset, expected: dict[str, Any]
) -> dict[str, Any]:
    st = run.stats
    return {
        "workers": workers,
        "repeat": repeat,
        "wall_s": st["wall_s"],
        "ready_s": st["ready_s"],
        "job_s": run.job_s,
        "bytes": st["bytes"],
        "data_bytes": data.bytes,
        "bytes_ok": st["bytes"] == data.bytes,
        "result_ok": run.output == expected,
        "partitions": st["partitions"],
        "attempts": st["attempts"],
        "backup_attempts": st["backup_attempts"],
        "duplicates_dropped": st["duplicates_dropped"],
        "busy_s": sum(w["busy_s"] for w in st["workers"]),
        "partitions_per_worker": [w["partitions"] for w in st["workers"]],
    }


# --- experiments -----------------------------------------------------------------------------


def expected_output(data: Dataset, workdir: Path, timeout: float) -> dict[str, Any]:
    """The top 25 of a data set, from a two-worker job over its local files."""
    return run_job(workdir, f"{data.name}-expected", data.filelist, [[], []], ["--top", "25"],
                   timeout).output  # fmt: skip


def speedup(
    plan: Plan,
    data: Dataset,
    source: Path,
    workdir: Path,
    label: str,
    expected: dict[str, Any],
    repeats: int,
    server: ThrottledServer | None = None,
) -> dict[str, Any]:
    """Every worker count of the plan, ``repeats`` times, interleaved; every run is
    checked against ``expected`` (the output over local files) and the data's size. With a
    ``server``, each run also records what the server saw during it."""
    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        for n in plan.workers:
            log.info("speedup (%s): %d worker(s), run %d", label, n, repeat + 1)
            if server is not None:
                server.reset()
            run = run_job(workdir, f"{label}-{n}w-r{repeat}", source, [[]] * n,
                          ["--top", "25"], plan.job_timeout_s)  # fmt: skip
            record = run_record(run, n, repeat, data, expected)
            if server is not None:
                record["server"] = server.snapshot().as_dict()
            if not (record["bytes_ok"] and record["result_ok"]):
                log.warning(
                    "speedup (%s), %d worker(s): read %d of %d bytes; result %s",
                    label, n, record["bytes"], data.bytes,
                    "as expected" if record["result_ok"] else "DIFFERS from the local-file run",
                )  # fmt: skip
            runs.append(record)
    return {
        "data": data.describe(plan.cpu_size if label == "cpu" else plan.http_size),
        **summarize(runs),
    }


def speedup_http(
    plan: Plan, data: Dataset, workdir: Path, expected: dict[str, Any]
) -> dict[str, Any]:
    """The speedup experiment with partitions fetched from a throttled local HTTP server."""
    with ThrottledServer(data.paths[0].parent, plan.http_mb_s * 1e6) as server:
        filelist = workdir / "http-filelist.csv"
        filelist.write_text("".join(server.url(path.name) + "\n" for path in data.paths))
        result = speedup(plan, data, filelist, workdir, "http", expected, plan.http_repeats, server)
    result["rate_mb_s_per_connection"] = plan.http_mb_s
    return result


def load_distribution(plan: Plan, data: Dataset, workdir: Path) -> dict[str, Any]:
    """``plan.load_workers`` workers of equal speed, then the same with the first one
    ``plan.slowdown`` times slower. Every worker sleeps ``plan.load_delay_s`` per task (so
    that four workers on a small machine do not compete for its cores); the slowed one runs
    with ``--slowdown F --task-delay F x delay``, which makes each of its tasks F times as
    long: F x (compute + delay)."""
    scenarios: dict[str, Any] = {}
    outputs = []
    delay = ["--task-delay", f"{plan.load_delay_s:g}"]
    slow = [
        "--slowdown",
        f"{plan.slowdown:g}",
        "--task-delay",
        f"{plan.slowdown * plan.load_delay_s:g}",
    ]
    for name in ("equal", "slowed"):
        args = [slow if name == "slowed" else delay] + [delay] * (plan.load_workers - 1)
        log.info("load distribution: %s", name)
        run = run_job(workdir, f"load-{name}", data.filelist, args, ["--top", "25"],
                      plan.job_timeout_s)  # fmt: skip
        outputs.append(run.output)
        slowed_pid = run.worker_pids[0] if name == "slowed" else None
        from_events = committed_per_worker(run.events)
        total_bytes = max(1, int(run.stats["bytes"]))
        scenarios[name] = {
            "job_s": run.job_s,
            "wall_s": run.stats["wall_s"],
            "backup_attempts": run.stats["backup_attempts"],
            "duplicates_dropped": run.stats["duplicates_dropped"],
            "bytes_ok": run.stats["bytes"] == data.bytes,
            "workers": [
                {
                    "id": w["id"],
                    "pid": run.pid_of(w["id"]),
                    "slowed": run.pid_of(w["id"]) == slowed_pid,
                    "partitions": w["partitions"],
                    "partitions_from_events": from_events.get(w["id"], 0),
                    "attempts": w["attempts"],
                    "bytes": w["bytes"],
                    "busy_s": w["busy_s"],
                    "busy_per_attempt_s": w["busy_s"] / w["attempts"] if w["attempts"] else None,
                    "share": w["bytes"] / total_bytes,
                }
                for w in run.stats["workers"]
            ],
        }
    return {
        "workers": plan.load_workers,
        "slowdown": plan.slowdown,
        "task_delay_s": plan.load_delay_s,
        "data": data.describe(plan.load_size),
        **scenarios,
        "slowed_over_equal": scenarios["slowed"]["job_s"] / scenarios["equal"]["job_s"],
        "results_identical": outputs[0] == outputs[1],
    }


def merge_cost_s(data: Dataset, samples: int = 8, adds: int = 256) -> tuple[float, int]:
    """The coordinator's work per real task beyond an empty one, amortized: decoding
    ``adds`` ``Result`` frames carrying real partials (``samples`` partitions of ``data``,
    cycled) and merging them, the merger's compactions and final aggregation included.
    Returns the median seconds per partial over three rounds and the domains per partial."""
    from tally.queries.domains import load_kernel, to_table

    kernel = load_kernel("auto")
    payloads = []
    keys = 0
    for path in data.paths[:samples]:
        with path.open("rb") as f:
            counts = kernel(f)
        keys += len(counts.counts)
        table = to_ipc(to_table(counts))
        partial = p.Partial(None if table is None else memoryview(table), counts.lines,
                            counts.malformed)  # fmt: skip
        frame = p.encode(p.Result(1, "job", partial, counts.bytes_read, 0.0))
        payloads.append(frame[p.HEADER.size :])
    times = []
    for _ in range(3):
        merger = merger_for(p.QuerySpec())
        started = time.perf_counter()
        for i in range(adds):
            message = p.decode(payloads[i % len(payloads)])
            assert isinstance(message, p.Result)
            partial = message.partial
            merger.add(from_ipc(partial.table), partial.lines, partial.malformed)
        merger.finalize()
        times.append((time.perf_counter() - started) / adds)
    return statistics.median(times), keys // len(payloads)


def overhead(plan: Plan, empty: Dataset, data: Dataset, workdir: Path) -> dict[str, Any]:
    """Per-task overhead (empty tasks, 2 workers) and the measured cost of merging a partial."""
    log.info("per-task overhead: %d empty tasks", plan.overhead_tasks)
    run = run_job(workdir, "overhead", empty.filelist, [[], []], ["--top", "25"],
                  plan.job_timeout_s)  # fmt: skip
    if run.stats["partitions"] != plan.overhead_tasks:
        raise ExperimentError("overhead: the job did not run every empty task")
    per_task_s = run.job_s / plan.overhead_tasks
    merge_s, keys = merge_cost_s(data)
    return {
        "tasks": plan.overhead_tasks,
        "workers": 2,
        "job_s": run.job_s,
        "ready_s": run.stats["ready_s"],
        "per_task_ms": per_task_s * 1e3,
        "merge_ms_per_partial": merge_s * 1e3,
        "keys_per_partial": keys,
        "coordinator_ms_per_task": (per_task_s + merge_s) * 1e3,
    }
