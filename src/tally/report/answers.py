"""The report's prose: what the measurements say, with the measured figures filled in."""

from __future__ import annotations

from typing import Any

from tally.report import fmt


def _row(section: dict[str, Any], workers: int) -> dict[str, Any]:
    row: dict[str, Any] = next(r for r in section["rows"] if r["workers"] == workers)
    return row


def _best(section: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = max(section["rows"], key=lambda r: r["speedup"])
    return row


def _stops(section: dict[str, Any]) -> str:
    knee = section["scaling_stops_at"]
    last = section["rows"][-1]["workers"]
    if knee is None:
        return f"scaling did not stop up to {fmt.workers(last)}"
    return f"scaling stops at {fmt.workers(knee)} (doubling them gains less than 15%)"


def speedup_text(r: dict[str, Any]) -> str:
    cpu, http = r["speedup"]["cpu"], r["speedup"]["http"]
    cores = r["meta"]["cores"]
    c1, cbest, clast = _row(cpu, 1), _best(cpu), cpu["rows"][-1]
    h1, hbest, hlast = _row(http, 1), _best(http), http["rows"][-1]
    limit = http["rate_mb_s_per_connection"]
    c1_busy = min((r for r in cpu["runs"] if r["workers"] == 1), key=lambda r: r["job_s"])["busy_s"]
    return "\n".join(
        [
            "**Which limit applies.** On local files one worker processes "
            f"{fmt.rate(c1['mb_s'])} MB/s and computes for {fmt.secs(c1_busy)} s of its "
            f"{fmt.secs(c1['job_s'])} s job: the job is CPU-bound. The best rate is "
            f"{fmt.rate(cbest['mb_s'])} MB/s with {fmt.workers(cbest['workers'])} (speedup "
            f"{fmt.ratio(cbest['speedup'])}); this machine has {cores} cores and "
            f"{_stops(cpu)}. More worker processes than cores only share the same cores: "
            f"{fmt.workers(clast['workers'])} reach a speedup of "
            f"{fmt.ratio(clast['speedup'])} (efficiency {fmt.pct(clast['efficiency'])}), and "
            f"their start-up grows to {fmt.secs(clast['ready_s'])} s.\n",
            f"Over HTTP every connection is throttled to {fmt.rate(limit)} MB/s (the server "
            f"measured {fmt.rate(h1['transfer_mb_s'])} MB/s per transfer with one worker). "
            f"One worker got {fmt.rate(h1['mb_s'])} MB/s with up to {h1['max_connections']} "
            "connection(s) open at once"
            + (
                " (a worker fetches its next partition while it computes the current one)"
                if h1["max_connections"] > 1
                else ""
            )
            + ", so the job is network-bound: each added worker adds "
            f"connections, and {fmt.workers(hlast['workers'])} reach "
            f"{fmt.rate(hlast['mb_s'])} MB/s "
            f"with up to {hlast['max_connections']} connections (speedup "
            f"{fmt.ratio(hlast['speedup'])}, efficiency {fmt.pct(hlast['efficiency'])}; best "
            f"{fmt.ratio(hbest['speedup'])} with {fmt.workers(hbest['workers'])}); {_stops(http)}. "
            "Network-bound scaling ends where the connections together "
            f"({fmt.rate(limit)} MB/s each) reach the CPU-bound rate of "
            f"{fmt.rate(cbest['mb_s'])} MB/s, about {fmt.rate(cbest['mb_s'] / limit)} "
            "connections on this machine, or earlier where the workers' own CPU (start-up, "
            "HTTP client, kernel) fills the cores.\n",
            *_check_warnings(r),
        ]
    )


def _check_warnings(r: dict[str, Any]) -> list[str]:
    notes = []
    for key, label in (("cpu", "local files"), ("http", "HTTP")):
        bad = [row["workers"] for row in r["speedup"][key]["rows"] if not row["checked"]]
        if bad:
            notes.append(
                f"**Check failed ({label})**: with {', '.join(str(n) for n in bad)} worker(s) "
                "a run did not read every byte of the data set or printed a different top 25 "
                "than the run over local files (see `runs` in results.json: `bytes`, "
                "`data_bytes`, `result_ok`); those times are not comparable.\n"
            )
    return notes


def answers(r: dict[str, Any]) -> str:
    rec, load, over, cost = r["recovery"], r["load"], r["overhead"], r["cost"]
    cpu = r["speedup"]["cpu"]
    kill, stop = (next(f for f in rec["faults"] if f["kind"] == k) for k in ("kill", "stop"))
    lease = rec["lease_timeout_s"]
    heartbeat = max(0.05, lease / 6)
    equal = [w["partitions"] for w in load["equal"]["workers"]]
    slowed = next(w for w in load["slowed"]["workers"] if w["slowed"])
    total = sum(w["partitions"] for w in load["slowed"]["workers"])
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
            f"it took {slowed['partitions']} of {total} partitions and the job took "
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
            f"({rec['result']['lines']} lines, {rec['result']['domains']} domains). The faults "
            f"cost {fmt.secs(rec['extra_s'])} s over the same job without faults "
            f"({fmt.secs(rec['baseline_job_s'])} s).\n",
            "**What limits scaling?** The CPU first: a local-file job scales with the cores "
            f"({r['meta']['cores']} here) and no further, because more workers only share "
            f"them; measured: {_stops(cpu)}. With remote data the bandwidth of each "
            "connection (or machine) limits each "
            "worker instead, and adding workers adds bandwidth until the CPU or the network "
            "interface of the machine is saturated (section 1). Across machines the rate is the "
            "sum of the machines' rates until the coordinator saturates (below).\n",
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
            "coordinator therefore saturates at about "
            f"{fmt.rate(bottleneck['in memory'])}, {fmt.rate(bottleneck['local disk'])} and "
            f"{fmt.rate(bottleneck['object storage'])} machines respectively; below that, "
            "adding machines adds speed. Beyond it, larger partitions (fewer tasks per byte) or "
            "merging partials in a tree of coordinators push the limit further.\n",
        ]
    )
