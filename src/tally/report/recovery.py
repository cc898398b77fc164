"""Failure recovery: a real job in which one worker is killed (SIGKILL) and another hung
(SIGSTOP, resumed after it was declared lost), measured from the coordinator's records and
checked against the single-process reference kernel and against a run without faults.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tally.kernels import DomainCounts
from tally.kernels.reference import count_domains
from tally.queries import show
from tally.report.cluster import Cluster, ExperimentError, Fault, JobRun, run_job
from tally.report.experiments import Dataset, Plan
from tally.report.timeline import (
    Recovery,
    attempts,
    committed_per_worker,
    recovery,
    wasted_busy_s,
)

log = logging.getLogger("tally.report")
WORKERS = 4
SIGNALS = {"kill": "SIGKILL", "stop": "SIGSTOP", "cont": "SIGCONT"}


def reference(data: Dataset) -> dict[str, Any]:
    """Every domain's count over all partitions, computed in this process by the plain-Python
    reference kernel, in the order and form of ``--all --format json``."""
    total = DomainCounts()
    for path in data.paths:
        with path.open("rb") as f:
            total.merge(count_domains(f))
    rows = sorted(total.counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "rows": [{"domain": show(d), "count": n} for d, n in rows],
        "lines": total.lines,
        "malformed_lines": total.malformed,
    }


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def _fault_record(run: JobRun, fault: Fault, rec: Recovery) -> dict[str, Any]:
    return {
        "kind": fault.kind,
        "signal": SIGNALS[fault.kind],
        "pid": fault.pid,
        "worker": rec.worker,
        "at_s": rec.fault_t,
        "lost_at_s": rec.lost_t,
        "detect_s": rec.detect_s,
        "reason": rec.reason,
        "stranded_partitions": len(rec.stranded),
        "recovered_at_s": rec.recovered_t,
        "recover_s": rec.recover_s,
        "attempts_lost": rec.attempts_lost,
        "requeued": rec.requeued,
        "bytes_redone": rec.bytes_redone,
    }


def _inject(cluster: Cluster, plan: Plan) -> None:
    """Kill worker 0 and stop worker 1 at the plan's times after the job started; resume
    worker 1 once the coordinator declared it lost."""
    if not cluster.wait_for_log(f"worker {WORKERS} joined"):
        return  # the coordinator ended: finish() says why
    began = time.monotonic()
    _sleep_until(began + plan.kill_at_s)
    cluster.signal(0, "kill")
    _sleep_until(began + plan.stop_at_s)
    cluster.signal(1, "stop")
    if cluster.wait_for_log("lost: silent", plan.lease_s + 15):
        time.sleep(plan.cont_after_s)
    cluster.signal(1, "cont")  # its late result must be dropped, never merged twice


def failure_recovery(plan: Plan, data: Dataset, workdir: Path) -> tuple[dict[str, Any], JobRun]:
    """The recovery experiment; returns its figures and the run (for the timeline plot)."""
    workers = [["--task-delay", f"{plan.recovery_delay_s:g}"]] * WORKERS
    coordinator = ["--all", "--lease-timeout", f"{plan.lease_s:g}"]
    log.info("failure recovery: kill and hang a worker during a %d-worker job", WORKERS)
    with Cluster(workdir, "recovery", data.filelist, workers, coordinator) as cluster:
        cluster.start()
        _inject(cluster, plan)
        run = cluster.finish(plan.job_timeout_s)
    log.info("failure recovery: the same job without faults")
    baseline = run_job(workdir, "recovery-baseline", data.filelist, workers, coordinator,
                       plan.job_timeout_s)  # fmt: skip
    expected = reference(data)

    faults = {f.kind: f for f in run.faults}
    if "kill" not in faults or "stop" not in faults:
        raise ExperimentError("recovery: the job ended before the faults were injected")
    records = []
    recs = []
    for kind in ("kill", "stop"):
        fault = faults[kind]
        ids = run.ids_of(fault.pid)
        if not ids:
            raise ExperimentError(f"recovery: the {kind} target never joined")
        rec = recovery(run.events, ids[0], run.relative(fault.at))
        records.append(_fault_record(run, fault, rec))
        recs.append(rec)
    killed, stopped = recs
    again = {  # partitions stranded by the kill, then re-assigned to the worker stopped next
        a.partition
        for a in attempts(run.events).values()
        if a.worker == stopped.worker
        and a.partition in killed.stranded
        and a.assigned > killed.fault_t
    }

    from_events = committed_per_worker(run.events)
    per_worker = [
        {
            "id": w["id"],
            "pid": run.pid_of(w["id"]),
            "partitions_stats": w["partitions"],
            "partitions_events": from_events.get(w["id"], 0),
            "lost": w["lost"],
        }
        for w in run.stats["workers"]
    ]
    out = run.output
    st = run.stats
    result = {
        "workers": WORKERS,
        "partitions": st["partitions"],
        "lease_timeout_s": plan.lease_s,
        "task_delay_s": plan.recovery_delay_s,
        "data": data.describe(plan.recovery_size),
        "job_s": run.job_s,
        "baseline_job_s": baseline.job_s,
        "extra_s": run.job_s - baseline.job_s,
        "faults": records,
        "stranded_again": len(again),
        "cont_at_s": run.relative(faults["cont"].at) if "cont" in faults else None,
        "attempts": st["attempts"],
        "reassigned": st["reassigned"],
        "workers_lost": st["workers_lost"],
        "duplicates_dropped": st["duplicates_dropped"],
        "backup_attempts": st["backup_attempts"],
        "wasted_busy_s": wasted_busy_s(run.events),
        "per_worker": per_worker,
        "counts_agree": all(w["partitions_stats"] == w["partitions_events"] for w in per_worker),
        "result": {
            "lines": out["lines"],
            "malformed_lines": out["malformed_lines"],
            "domains": len(out["rows"]),
            "reference_lines": expected["lines"],
            "reference_malformed_lines": expected["malformed_lines"],
            "reference_domains": len(expected["rows"]),
            "matches_reference": out["complete"]
            and out["rows"] == expected["rows"]
            and out["lines"] == expected["lines"]
            and out["malformed_lines"] == expected["malformed_lines"],
            "matches_no_failure_run": out == baseline.output,
        },
    }
    return result, run
