"""The report's prose: what the measurements say, with the measured figures filled in."""

from __future__ import annotations

from typing import Any

from tally.report import fmt
from tally.report.speedup_text import scaling_answer


def _recovery_cost(rec: dict[str, Any]) -> str:
    """The two job times side by side; one run each, so no claim beyond their difference."""
    if rec["extra_s"] > 0:
        return (
            f"The job with the faults took {fmt.secs(rec['job_s'])} s, "
            f"{fmt.secs(rec['extra_s'])} s more than the same job without faults "
            f"({fmt.secs(rec['baseline_job_s'])} s; one run each)."
        )
    return (
        f"The job with the faults took {fmt.secs(rec['job_s'])} s, no longer than the same job "
        f"without faults ({fmt.secs(rec['baseline_job_s'])} s; one run each on a shared "
        "machine, where other processes can slow either run)."
    )


def answers(r: dict[str, Any]) -> str:
    rec, load, over, cost = r["recovery"], r["load"], r["overhead"], r["cost"]
    kill, stop = (next(f for f in rec["faults"] if f["kind"] == k) for k in ("kill", "stop"))
    lease = rec["lease_timeout_s"]
    heartbeat = max(0.05, lease / 6)
    equal = [w["partitions"] for w in load["equal"]["workers"]]
    slowed = next(w for w in load["slowed"]["workers"] if w["slowed"])
    total = sum(w["partitions"] for w in load["slowed"]["workers"])
    others = sorted(w["partitions"] for w in load["slowed"]["workers"] if not w["slowed"])
    rates = cost["machine_rates_mb_s"]
    tasks_s = {k: v * 1e6 / cost["partition_bytes"] for k, v in rates.items()}
    plan = cost["prices"]["projection"]
    bottleneck = cost["bottleneck_machines"]
    return "\n".join(
        [
            "## 6. Answers\n",
            "**How does the coordinator know which workers are alive?** A worker joins with a "
            "handshake in which both sides prove the cluster token (HMAC over fresh nonces), "
            f"then sends a `Heartbeat` every lease/6 = {heartbeat:g} s from its event-loop "
            "thread; computation runs on another thread, so a busy worker keeps beating. Any "
            "message renews the worker's lease. A worker is declared lost in two ways: its "
            "connection closes (a killed process: the kernel closes its socket; here detected "
            f"{fmt.secs(kill['detect_s'])} s after SIGKILL) or it stays silent past the lease "
            f"({lease:g} s; the hung worker was declared lost {fmt.secs(stop['detect_s'])} s "
            "after SIGSTOP: the lease, plus at most one 0.1 s scheduler tick, counted from its "
            "last heartbeat).\n",
            "**How is work distributed fairly?** Pull-based: a worker declares `slots` (2: one "
            "computing, one prefetched) and the coordinator sends an `Assign` whenever a slot "
            "frees; every `Result` frees one, and the emptiest worker is served first. Fast "
            "workers come back more often and so take more partitions, with no speed estimate "
            f"anywhere. With {load['workers']} equal workers the partitions per worker were "
            f"{', '.join(str(n) for n in equal)}; with one worker {load['slowdown']:g}x slower "
            f"it took {slowed['partitions']} of {total} partitions (each of the others "
            f"{others[0]} to {others[-1]}) and the job took "
            f"{fmt.ratio(load['slowed_over_equal'])}x the equal-speed time "
            f"({load['slowed']['backup_attempts']} backup attempt(s) of its stragglers).\n",
            "**Which messages flow?** `Challenge` -> `Hello` -> `Welcome` (or `Refused`) for "
            "the handshake; then `Assign(attempt, partition, url)` from the coordinator, "
            "`Result(attempt, job_id, partial, bytes_read, busy_s)` or `Failed(attempt, "
            "job_id, error)` back, `Heartbeat` from each worker, `Cancel(attempt)` when a rival "
            "attempt won, `Leaving(returned)` from a worker stopped with SIGTERM, and "
            "`Shutdown` at the end (docs/protocol.md). Each attempt is one `Assign` and at "
            f"most one `Result`: the recovery job needed {rec['attempts']} attempts for "
            f"{rec['partitions']} partitions, the extra ones being re-executions.\n",
            "**How are failures detected and recovered?** The killed worker was lost "
            f"{fmt.secs(kill['detect_s'])} s after SIGKILL (connection closed) and the hung one "
            f"{fmt.secs(stop['detect_s'])} s after SIGSTOP (lease). Their live attempts "
            f"({kill['attempts_lost']} and {stop['attempts_lost']}) were re-queued at the "
            "front of the queue and committed on other workers "
            f"{fmt.secs(kill['recover_s'])} s and {fmt.secs(stop['recover_s'])} s after the "
            "faults. The stopped worker, resumed, reconnected as a new worker and delivered its "
            f"stale result, which was dropped ({rec['duplicates_dropped']} duplicate(s) "
            "dropped): a partition commits on the first delivery of one of its live attempts "
            "only, so the merge is exactly-once. The result equals the single-process "
            f"reference: {fmt.yes(rec['result']['matches_reference'])} "
            f"({rec['result']['lines']} lines, {rec['result']['domains']} domains). "
            f"{_recovery_cost(rec)}\n",
            scaling_answer(r),
            "**When does the coordinator become the bottleneck?** It handles every task: "
            f"{fmt.ms(over['per_task_ms'])} ms per task for the round trip of an empty task "
            f"(measured over {over['tasks']} tasks) plus {fmt.ms(over['merge_ms_per_partial'])} "
            f"ms to decode and merge one real partial of {over['keys_per_partial']} domains: "
            f"{fmt.rate(cost['coordinator_tasks_per_s'])} tasks/s. With "
            f"{plan['partition_mib']:g} MiB partitions a machine produces "
            f"{fmt.rate(tasks_s['in memory'])} tasks/s when its data is in memory "
            f"({fmt.rate(rates['in memory'])} MB/s, the measured CPU-bound rate), "
            f"{fmt.rate(tasks_s['local disk'])} reading a local disk "
            f"({fmt.rate(rates['local disk'])} MB/s) and {fmt.rate(tasks_s['object storage'])} "
            f"reading object storage ({fmt.rate(rates['object storage'])} MB/s). The "
            "coordinator is therefore projected to saturate at about "
            f"{fmt.rate(bottleneck['in memory'])}, {fmt.rate(bottleneck['local disk'])} and "
            f"{fmt.rate(bottleneck['object storage'])} machines respectively; below that, by "
            "the same projection, adding machines adds speed. Beyond it, larger partitions "
            "(fewer tasks per byte) or merging partials in a tree of coordinators push the "
            "limit further.\n",
        ]
    )
