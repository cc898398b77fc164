"""`tally report`: the cost model and the analysis functions with exact numbers; the prose
rendered from noisy, non-monotonic figures checked against those figures; the report without
matplotlib; and one real `tally report --quick` run whose report.md, plots, results.json and
raw records must agree."""

from __future__ import annotations

import ast
import json
import os
import re
import statistics
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SAMPLE, reference_output, split_round_robin
from tally.errors import ConfigError
from tally.protocol import QuerySpec
from tally.report import cost, fmt, markdown
from tally.report.scaling import MIN_NOISE, change, scaling_stop, speedup_rows, summarize
from tally.report.throttled_http import TokenBucket
from tally.report.timeline import attempts, committed_per_worker, recovery

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# --- the cost model ---------------------------------------------------------------------------

VM = cost.VmPrices("test vm", 0.36, 2, 60.0, 125.0, 100.0)
SERVERLESS = cost.ServerlessPrices(0.00001, 0.2, 2.0)
STORAGE = cost.StoragePrices(0.02, 0.0004, 0.005)


def prices(machines: tuple[int, ...] = (1, 10, 100)) -> cost.Prices:
    return cost.Prices(VM, SERVERLESS, STORAGE, cost.ProjectionPlan(1.0, 32, machines), "test")


def test_vm_cost_is_per_second_with_a_minimum() -> None:
    assert cost.vm_cost_usd(3600, 1, VM) == pytest.approx(0.36)
    assert cost.vm_cost_usd(1800, 2, VM) == pytest.approx(0.36)
    assert cost.vm_cost_usd(10, 3, VM) == pytest.approx(3 * 60 / 3600 * 0.36)  # the minimum
    assert cost.vm_cost_usd(10, 3, VM, minimum=False) == pytest.approx(3 * 10 / 3600 * 0.36)


def test_vm_cost_per_terabyte() -> None:
    # 10**12 bytes at 10**9 bytes/s: 1000 s of one VM
    assert cost.vm_usd_per_tb(1e9, VM) == pytest.approx(0.1)


def test_serverless_storage_and_requests() -> None:
    assert cost.serverless_usd(100.0, 1e6, SERVERLESS) == pytest.approx(0.002 + 0.2)
    assert cost.storage_usd_per_month(1e12, STORAGE) == pytest.approx(20.0)
    assert cost.get_requests_usd(29_803, STORAGE) == pytest.approx(11.9212e-3)


def test_coordinator_limit() -> None:
    assert cost.coordinator_tasks_per_s(0.0001, 0.0004) == pytest.approx(2000.0)
    # 2000 tasks/s of 32 MiB each against machines of 100 MB/s
    assert cost.bottleneck_machines(2000, 32 * 2**20, 100e6) == pytest.approx(671.08864)


def test_projection_picks_the_lowest_limit() -> None:
    p = prices()
    disk = cost.project(1, 1e12, 32 * 2**20, 500e6, "local disk", p, 2000.0, 0.5)
    assert (disk.bound, disk.rate_bytes_s) == ("disk", 125e6)
    assert disk.time_s == pytest.approx(8000.5)
    assert disk.vm_usd == pytest.approx(8000.5 / 3600 * 0.36)
    assert disk.requests_usd == 0.0
    net = cost.project(10, 1e12, 32 * 2**20, 500e6, "object storage", p, 2000.0, 0.0)
    assert (net.bound, net.rate_bytes_s) == ("network", 1000e6)
    assert net.time_s == pytest.approx(1000.0)
    assert net.vm_usd == pytest.approx(10 * 1000 / 3600 * 0.36)
    assert net.requests_usd == pytest.approx(29_803 / 1000 * 0.0004)
    assert net.total_usd == pytest.approx(net.vm_usd + net.requests_usd)
    cpu = cost.project(2, 1e12, 32 * 2**20, 50e6, "local disk", p, 2000.0, 0.0)
    assert (cpu.bound, cpu.rate_bytes_s) == ("CPU", 100e6)
    coord = cost.project(1000, 1e12, 2**20, 500e6, "local disk", p, 100.0, 0.0)
    assert (coord.bound, coord.rate_bytes_s) == ("coordinator", 100 * 2**20)


def test_default_prices_and_overrides(tmp_path: Path) -> None:
    defaults = cost.load_prices()
    assert defaults.vm.usd_per_hour == 0.1008
    assert defaults.object_storage.usd_per_gb_month == 0.023
    assert defaults.projection.machines == (1, 10, 100)
    override = tmp_path / "prices.toml"
    override.write_text("[vm]\nusd_per_hour = 1.5\n[projection]\nmachines = [2, 4]\n")
    mine = cost.load_prices(str(override))
    assert mine.vm.usd_per_hour == 1.5 and mine.vm.vcpus == defaults.vm.vcpus
    assert mine.projection.machines == (2, 4)
    assert mine.serverless == defaults.serverless
    for bad in ("[vm]\nusd_per_hr = 1\n", "[vm]\nusd_per_hour = -1\n", "[gpu]\nx = 1\n", "[vm"):
        override.write_text(bad)
        with pytest.raises(ConfigError):
            cost.load_prices(str(override))


# --- the analysis -----------------------------------------------------------------------------


def test_token_bucket_paces_to_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=1000.0, capacity=100.0, clock=lambda: now[0])
    assert bucket.take(100) == 0.0  # the burst
    assert bucket.take(50) == pytest.approx(0.05)  # 50 bytes of debt at 1000 B/s
    now[0] = 0.05
    assert bucket.take(100) == pytest.approx(0.1)
    now[0] = 10.0
    assert bucket.take(100) == 0.0  # refilled, but never beyond the capacity
    assert bucket.take(1) == pytest.approx(0.001)


def run(workers: int, job_s: float) -> dict[str, Any]:
    return {"workers": workers, "job_s": job_s, "data_bytes": 8_000_000, "ready_s": 0.5,
            "bytes_ok": True, "result_ok": True}  # fmt: skip


def test_speedup_rows_show_the_spread_of_repeated_runs() -> None:
    rows = speedup_rows(
        [run(1, 8.0), run(2, 4.0), run(2, 5.0), run(2, 4.2), run(4, 2.5), run(8, 2.4)]
    )
    assert [r["workers"] for r in rows] == [1, 2, 4, 8]
    assert [r["runs"] for r in rows] == [1, 3, 1, 1]
    assert [r["job_s"] for r in rows] == [8.0, 4.0, 2.5, 2.4]  # the fastest run
    assert (rows[1]["job_s_min"], rows[1]["job_s_median"], rows[1]["job_s_max"]) == (4.0, 4.2, 5.0)
    assert rows[1]["spread"] == pytest.approx(0.25)
    assert rows[0]["spread"] == 0.0
    assert [r["speedup"] for r in rows] == pytest.approx([1.0, 2.0, 3.2, 8 / 2.4])
    assert rows[1]["speedup_min"] == pytest.approx(8 / 5.0)  # the slowest run
    assert rows[2]["efficiency"] == pytest.approx(0.8)
    assert rows[0]["mb_s"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        speedup_rows([run(2, 1.0)])


def test_a_change_within_the_noise_is_no_change() -> None:
    assert change(2.0, 1.0, 0.05) == "faster"
    assert change(1.0, 2.0, 0.05) == "slower"
    assert change(1.0, 1.04, 0.05) == change(1.04, 1.0, 0.05) == "none"
    assert change(1.0, 1.06, 0.05) == "slower" and change(1.06, 1.0, 0.05) == "faster"


def test_where_scaling_stops_follows_the_noise() -> None:
    rows = speedup_rows([run(1, 8.0), run(2, 4.0), run(4, 2.5), run(8, 2.4)])
    assert scaling_stop(rows, 0.05) == 4  # 2.4 is within 5% of 2.5
    assert scaling_stop(rows, 0.01) is None  # 8 workers are measurably the fastest
    assert scaling_stop(rows, 0.7) == 2  # 4.0 is within 70% of 2.4
    # non-monotonic: the best is 4 workers and 2 workers are no better than 1
    bumpy = speedup_rows([run(1, 8.0), run(2, 7.8), run(4, 4.0), run(8, 4.1), run(16, 6.0)])
    assert scaling_stop(bumpy, 0.05) == 4
    # the noise is the largest spread of repeated runs, never below the floor
    section = summarize([run(1, 8.0), run(1, 9.0), run(2, 4.0), run(2, 4.1)])
    assert section["noise"] == pytest.approx(0.125)
    assert summarize([run(1, 8.0), run(2, 4.0)])["noise"] == MIN_NOISE


EVENTS: list[dict[str, Any]] = [
    {"t": 0.0, "event": "joined", "worker": 1},
    {"t": 0.0, "event": "joined", "worker": 2},
    {"t": 0.1, "event": "assigned", "worker": 1, "attempt": 1, "partition": 0, "backup": False},
    {"t": 0.1, "event": "assigned", "worker": 2, "attempt": 2, "partition": 1, "backup": False},
    {"t": 0.1, "event": "assigned", "worker": 1, "attempt": 3, "partition": 2, "backup": False},
    {"t": 0.2, "event": "started", "worker": 2, "attempt": 2},
    {"t": 0.5, "event": "finished", "worker": 2, "attempt": 2, "bytes": 10, "busy_s": 0.3},
    {"t": 0.5, "event": "committed", "worker": 2, "attempt": 2, "partition": 1, "bytes": 10},
    {"t": 1.0, "event": "lost", "worker": 1, "reason": "connection closed"},
    {"t": 1.0, "event": "attempt_lost", "worker": 1, "attempt": 3, "partition": 2},
    {"t": 1.0, "event": "requeued", "partition": 2},
    {"t": 1.0, "event": "attempt_lost", "worker": 1, "attempt": 1, "partition": 0},
    {"t": 1.0, "event": "requeued", "partition": 0},
    {"t": 1.0, "event": "assigned", "worker": 2, "attempt": 4, "partition": 0, "backup": False},
    {"t": 1.0, "event": "assigned", "worker": 2, "attempt": 5, "partition": 2, "backup": False},
    {"t": 1.5, "event": "committed", "worker": 2, "attempt": 4, "partition": 0, "bytes": 20},
    {"t": 2.0, "event": "committed", "worker": 2, "attempt": 5, "partition": 2, "bytes": 30},
    {"t": 2.5, "event": "finished", "worker": 3, "attempt": 1, "bytes": 20, "busy_s": 2.0},
    {"t": 2.5, "event": "duplicate_dropped", "worker": 3, "attempt": 1},
]


def test_recovery_figures_from_events() -> None:
    rec = recovery(EVENTS, worker=1, fault_t=0.75)
    assert rec.detect_s == pytest.approx(0.25)
    assert rec.stranded == [0, 2]
    assert rec.recover_s == pytest.approx(1.25)  # partition 2 committed at 2.0
    assert (rec.attempts_lost, rec.requeued, rec.bytes_redone) == (2, 2, 50)
    assert committed_per_worker(EVENTS) == {2: 3}
    lives = attempts(EVENTS)
    assert lives[1].outcome == "dropped" and lives[1].lost_at == 1.0
    assert lives[2].outcome == "committed" and lives[3].outcome == "lost"


# --- the prose, rendered from records without running a cluster ------------------------------

DATA_BYTES = 400_000_000


def speedup_section(times: dict[int, list[float]], http: bool = False) -> dict[str, Any]:
    """A speedup experiment as ``tally report`` records it, with the given job times."""
    runs = []
    for n, ts in times.items():
        for i, t in enumerate(ts):
            record = {"workers": n, "repeat": i, "job_s": t, "data_bytes": DATA_BYTES,
                      "ready_s": 0.1 * n, "bytes_ok": True, "result_ok": True,
                      "busy_s": 0.99 * t * n}  # fmt: skip
            if http:
                record["server"] = {"max_concurrent_connections": 2 * n, "mean_transfer_mb_s": 10}
            runs.append(record)
    section = {"data": {"partitions": 48, "partition_size": "8MiB", "bytes": DATA_BYTES,
                        "command": "tally gen OUT"}, **summarize(runs)}  # fmt: skip
    if http:
        section["rate_mb_s_per_connection"] = 10.0
    return section


def records(
    cpu_times: dict[int, list[float]], http_times: dict[int, list[float]], cores: int = 2
) -> dict[str, Any]:
    """Every record report.md is built from; the speedup ones with the given job times."""
    cpu, http = speedup_section(cpu_times), speedup_section(http_times, http=True)
    overhead = {"tasks": 2000, "workers": 2, "job_s": 0.2, "ready_s": 0.2, "per_task_ms": 0.1,
                "merge_ms_per_partial": 0.4, "keys_per_partial": 1000,
                "coordinator_ms_per_task": 0.5}  # fmt: skip

    def worker(i: int, partitions: int, slowed: bool = False) -> dict[str, Any]:
        return {"id": i, "pid": 100 + i, "slowed": slowed, "partitions": partitions,
                "bytes": partitions * 10**6, "busy_s": partitions * 0.05,
                "busy_per_attempt_s": 0.05, "share": partitions / 100}  # fmt: skip

    def fault(kind: str, signal: str, worker: int) -> dict[str, Any]:
        return {"kind": kind, "signal": signal, "worker": worker, "pid": 100 + worker,
                "at_s": 1.0, "lost_at_s": 1.1, "detect_s": 0.1, "stranded_partitions": 2,
                "recovered_at_s": 2.0, "recover_s": 1.0, "attempts_lost": 2, "requeued": 2,
                "bytes_redone": 500_000}  # fmt: skip

    return {
        "meta": {"mode": "quick", "generated_at": "2026-01-01 00:00 UTC", "platform": "Linux",
                 "cores": cores, "python": "3.11", "duration_s": 60.0,
                 "load_average": [0.5, 3.04]},
        "data": {"local": cpu["data"], "http": http["data"]},
        "speedup": {"cpu": cpu, "http": http},
        "load": {
            "workers": 4, "slowdown": 10.0, "task_delay_s": 0.05,
            "data": {"partitions": 100, "partition_size": "1MiB"},
            "equal": {"job_s": 1.4, "backup_attempts": 0, "duplicates_dropped": 0,
                      "workers": [worker(i, 25) for i in range(1, 5)]},
            "slowed": {"job_s": 1.8, "backup_attempts": 1, "duplicates_dropped": 0,
                       "workers": [worker(1, 3, True), worker(2, 32), worker(3, 32),
                                   worker(4, 33)]},
            "slowed_over_equal": 1.8 / 1.4, "results_identical": True,
        },
        "recovery": {
            "workers": 4, "task_delay_s": 0.25, "partitions": 60, "lease_timeout_s": 3.0,
            "faults": [fault("kill", "SIGKILL", 3), fault("stop", "SIGSTOP", 4)],
            "job_s": 6.0, "baseline_job_s": 6.1, "extra_s": -0.1, "attempts": 64,
            "workers_lost": 2, "duplicates_dropped": 1, "backup_attempts": 0,
            "wasted_busy_s": 1.0, "stranded_again": 0,
            "result": {"lines": 1000, "malformed_lines": 1, "domains": 50,
                       "reference_lines": 1000, "reference_malformed_lines": 1,
                       "reference_domains": 50, "matches_reference": True,
                       "matches_no_failure_run": True},
            "per_worker": [{"id": i, "pid": 100 + i, "partitions_stats": 15,
                            "partitions_events": 15, "lost": i > 2} for i in range(1, 5)],
        },
        "overhead": overhead,
        "cost": cost.cost_section(prices(), cpu, http, overhead, cores),
    }  # fmt: skip


def paragraph(md: str, start: str) -> str:
    [found] = [p for p in md.split("\n\n") if p.startswith(start)]
    return found


def measurable_noise(times: dict[int, list[float]]) -> float:
    """The threshold computed from the job times themselves, not from the analysis."""
    return max([0.05, *((max(ts) - min(ts)) / min(ts) for ts in times.values())])


def faster(a_s: float, b_s: float, noise: float) -> bool:
    """A job time ``a_s`` is measurably faster than ``b_s``."""
    return b_s > a_s * (1 + noise)


def workers_of(text: str) -> int:
    return int(text.split()[0])


def check_scaling_claims(
    text: str, times: dict[int, list[float]], data_bytes: int = DATA_BYTES
) -> int | None:
    """Every scaling claim in ``text`` holds for ``times``; returns where it says scaling stops
    (None: it did not stop)."""
    noise = measurable_noise(times)
    best = {n: min(ts) for n, ts in times.items()}
    fastest = min(best.values())
    n_best = min(n for n in best if best[n] == fastest)
    base = best[1]
    [(rate, n, speedup)] = re.findall(r"the best rate is ([\d.]+) MB/s with (\d+) workers? "
                                      r"\(speedup ([\d.]+)\)", text)  # fmt: skip
    assert int(n) == n_best, text
    assert (rate, speedup) == (fmt.rate(data_bytes / fastest / 1e6), fmt.ratio(base / fastest))
    stops = [int(k) for k in re.findall(r"scaling stops at (\d+) workers?\b", text)]
    did_not = [int(k) for k in re.findall(r"scaling did not stop up to (\d+) workers?", text)]
    assert len(stops) + len(did_not) == 1, text
    knee = stops[0] if stops else did_not[0]
    if did_not:
        assert knee == n_best == max(times)
    assert knee <= n_best
    assert not faster(fastest, best[knee], noise), "the knee is measurably slower than the best"
    assert all(faster(fastest, best[n], noise) for n in best if n < knee), text
    assert not any(faster(best[n], best[knee], noise) for n in best if n > knee), text
    if knee != n_best:
        assert f", no measurable change from {fmt.workers(knee)} " in text
    # "A workers are <verdict> B workers"
    verdict_words = "measurably faster than|measurably slower than|no measurable change from"
    verdicts = re.findall(rf"(\d+) workers? (?:are|show) ({verdict_words}) (\d+) workers?", text)
    assert verdicts or "More worker processes than cores" not in text
    for a, verdict, b in verdicts:
        ta, tb = best[int(a)], best[int(b)]
        expected = ("measurably faster than" if faster(ta, tb, noise)
                    else "measurably slower than" if faster(tb, ta, noise)
                    else "no measurable change from")  # fmt: skip
        assert verdict == expected, text
    return None if did_not else knee


def check_report(cpu_times: dict[int, list[float]], http_times: dict[int, list[float]]) -> str:
    r = records(cpu_times, http_times)
    md = markdown.render(r)
    cpu_knee = check_scaling_claims(paragraph(md, "**Which limit applies.**"), cpu_times)
    check_scaling_claims(paragraph(md, "Over HTTP"), http_times)
    noise_text = paragraph(md, "**Noise.**")
    assert f"below {fmt.pct1(measurable_noise(cpu_times))} " in noise_text
    assert f"below {fmt.pct1(measurable_noise(http_times))} " in noise_text
    answer = paragraph(md, "**What limits scaling?**")
    last = max(cpu_times)
    expected = (f"measured: scaling stops at {fmt.workers(cpu_knee)}" if cpu_knee
                else f"measured: scaling did not stop up to {fmt.workers(last)}")  # fmt: skip
    assert expected in answer
    # the tables show min, median and max of the same runs
    for heading, times in (
        ("### Speedup: local files", cpu_times),
        ("### Speedup: HTTP", http_times),
    ):
        table = table_after(md, heading)
        assert [row[:6] for row in table] == [
            [str(n), str(len(ts)), s3(min(ts)), s3(statistics.median(ts)), s3(max(ts)),
             f"{(max(ts) - min(ts)) / min(ts) * 100:.1f}%"]
            for n, ts in sorted(times.items())
        ]  # fmt: skip
    return md


STEADY = {1: [8.0, 8.2], 2: [4.1, 4.2], 4: [2.2, 2.3], 8: [1.2, 1.25], 16: [0.7, 0.72]}


def test_prose_never_says_scaling_stopped_before_the_best_count() -> None:
    # once rendered as "best rate with 4 workers (speedup 2.00) ... scaling stops at 1 worker"
    bumpy = {1: [8.0, 8.1], 2: [7.8, 7.9], 4: [4.0, 4.1], 8: [4.1, 4.4], 16: [6.0, 6.2]}
    md = check_report(bumpy, STEADY)
    text = paragraph(md, "**Which limit applies.**")
    assert "the best rate is 100.0 MB/s with 4 workers (speedup 2.00)" in text
    assert "scaling stops at 4 workers" in text and "stops at 1 worker" not in md
    assert "16 workers are measurably faster than 2 workers (speedup 1.33 against 1.03" in text
    assert "scaling did not stop up to 16 workers" in paragraph(md, "Over HTTP")


def test_prose_calls_a_gain_within_the_noise_no_measurable_change() -> None:
    # 4 workers are the fastest by 5%, but the runs of one count differ by up to 15%
    flat = {1: [2.0, 2.3], 2: [1.95, 2.2], 4: [1.9, 2.0], 8: [2.05, 2.1], 16: [2.1, 2.4]}
    md = check_report(flat, flat)
    text = paragraph(md, "**Which limit applies.**")
    assert "with 4 workers (speedup 1.05), no measurable change from 1 worker" in text
    assert "scaling stops at 1 worker, fewer than the 2 cores" in text
    assert "16 workers show no measurable change from 2 workers" in text
    assert "below 15.0% (the largest spread of the repeated runs" in md


def test_prose_with_one_run_per_count_uses_the_floor() -> None:
    single = {1: [8.0], 2: [4.1], 4: [4.0], 8: [3.0], 16: [3.1]}
    md = check_report(single, single)
    assert "below 5.0% (the floor; with one run per worker count no spread was measured)" in md
    text = paragraph(md, "**Which limit applies.**")
    assert "scaling stops at 8 workers, more than the 2 cores" in text
    assert "16 workers are measurably faster than 2 workers" in text


job_times = st.lists(st.floats(0.5, 10.0), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({n: job_times for n in (1, 2, 4, 8, 16)}),
       st.fixed_dictionaries({n: job_times for n in (1, 2, 4, 8, 16)}))  # fmt: skip
def test_prose_agrees_with_any_noisy_figures(
    cpu_times: dict[int, list[float]], http_times: dict[int, list[float]]
) -> None:
    check_report(cpu_times, http_times)


def test_projections_are_marked_as_projections() -> None:
    md = markdown.render(records(STEADY, STEADY))
    cost_part = md[md.index("## 5. Cost") : md.index("## 6.")]
    assert "| projected MB/s | projected time for 1 TB (s) | projected VM cost |" in cost_part
    assert "| projected VM cost per TB |" in cost_part
    assert "Nothing in this table was measured" in cost_part
    assert "![projected time and cost for 1 TB](cost.png)" in cost_part
    assert "projected to saturate at about" in md


def test_prose_calls_a_job_cpu_bound_only_when_its_worker_computed_all_along() -> None:
    r = records(STEADY, STEADY)
    assert "8.000 s job: the job is CPU-bound." in markdown.render(r)
    for one in r["speedup"]["cpu"]["runs"]:
        one["busy_s"] = one["job_s"] * one["workers"] * 0.5
    md = markdown.render(r)
    assert "computes for 4.000 s of its 8.000 s job (50% of it): the job is not purely" in md
    assert "a local-file job is not purely CPU-bound (one worker computes for 50% of its" in md
    assert "is CPU-bound" not in md


def test_the_header_states_how_loaded_the_machine_was() -> None:
    md = markdown.render(records(STEADY, STEADY))
    assert (
        "The machine's load average (1 minute) was 0.5 before the experiments and 3.0 after, "
        "on 2 cores: a load above the cores means other processes competed for them." in md
    )


def test_recovery_prose_follows_the_sign_of_the_extra_time() -> None:
    r = records(STEADY, STEADY)  # with the faults 6.0 s, without 6.1 s
    md = markdown.render(r)
    assert "The job with the faults took 6.000 s, no longer than the same job without " in md
    assert "faults cost" not in md
    r["recovery"].update(job_s=9.1, extra_s=3.0)
    assert (
        "The job with the faults took 9.100 s, 3.000 s more than the same job without faults "
        "(6.100 s; one run each)." in markdown.render(r)
    )


# --- matplotlib belongs to the report extra ---------------------------------------------------

SRC = Path(__file__).resolve().parent.parent / "src" / "tally"


def test_only_the_plots_module_imports_matplotlib() -> None:
    importers = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom)
                else [node.args[0].value] if isinstance(node, ast.Call) and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                else []
            )  # fmt: skip
            if any(name.split(".")[0] == "matplotlib" for name in names):
                importers.append(str(path.relative_to(SRC)))
    assert sorted(set(importers)) == ["report/__init__.py", "report/plots.py"]
    # importing every other module loads no matplotlib
    code = (
        "import importlib, pkgutil, sys, tally\n"
        "for m in pkgutil.walk_packages(tally.__path__, 'tally.'):\n"
        "    if m.name not in ('tally.report.plots', 'tally.__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr


@pytest.fixture
def without_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import matplotlib`` fails, for every child process too."""
    blocker = tmp_path / "blocker"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'matplotlib'\")\n"
    )
    path = [str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def test_report_without_matplotlib_is_one_line_and_exit_2(
    tmp_path: Path, without_matplotlib: dict[str, str]
) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "tally", "report", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=without_matplotlib,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "tally: the report's plots need matplotlib, which is not installed: "
        "pip install 'tally[report]'"
    ]
    assert not out.exists()  # it stopped before any experiment


def test_a_cluster_runs_without_matplotlib(
    tmp_path: Path, without_matplotlib: dict[str, str]
) -> None:
    filelist = split_round_robin(SAMPLE, tmp_path / "parts", 8)
    done = subprocess.run(
        [sys.executable, "-m", "tally", "run", str(filelist), "--workers", "2", "--top", "25"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=without_matplotlib,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference_output(SAMPLE, QuerySpec("top", k=25))
    check = subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True,
                           timeout=60, env=without_matplotlib)  # fmt: skip
    assert check.returncode == 1  # the blocker works


# --- one real `tally report --quick` ----------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    done = subprocess.run(
        [sys.executable, "-m", "tally", "report", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def results_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())  # type: ignore[no-any-return]


def table_after(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after the line starting with ``heading``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and the separator


def s3(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def mb(x: float) -> str:
    return f"{x / 1e6:.1f}"


def usd(x: float) -> str:
    return f"${x:.3g}" if x < 1000 else f"${x:,.0f}"


def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


@pytest.mark.timeout(240)
def test_report_files_and_plots(report: Path) -> None:
    for name in ("report.md", "results.json"):
        assert (report / name).stat().st_size > 0
    results = results_of(report)
    assert set(results["plots"]) == {"speedup", "load", "recovery", "cost"}
    for name in results["plots"].values():
        head = (report / name).read_bytes()[:24]
        assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
        width, height = struct.unpack(">II", head[16:24])
        assert height > 100 and width > 100
        assert f"]({name})" in (report / "report.md").read_text()
    assert results["meta"]["duration_s"] > 0  # recorded; how long it takes is the machine's


@pytest.mark.timeout(240)
def test_every_table_figure_equals_results_json(report: Path) -> None:
    md = (report / "report.md").read_text()
    r = results_of(report)
    for key, heading in (("cpu", "### Speedup: local files"), ("http", "### Speedup: HTTP")):
        expected = []
        for row in r["speedup"][key]["rows"]:
            cells = [
                str(row["workers"]),
                str(row["runs"]),
                s3(row["job_s_min"]),
                s3(row["job_s_median"]),
                s3(row["job_s_max"]),
                f"{row['spread'] * 100:.1f}%",
                f"{row['speedup']:.2f}",
                f"{row['speedup_min']:.2f}",
                f"{row['efficiency'] * 100:.0f}%",
                f"{row['mb_s']:.1f}",
                s3(row["ready_s"]),
            ]
            if key == "http":
                cells += [str(row["max_connections"]), f"{row['transfer_mb_s']:.1f}"]
            expected.append([*cells, yes(row["checked"])])
        assert table_after(md, heading) == expected
        assert [row["workers"] for row in r["speedup"][key]["rows"]] == [1, 2, 4, 8, 16]

    load = r["load"]
    assert table_after(md, "### Load per worker") == [
        [name, str(w["id"]), str(w["pid"]), "yes" if w["slowed"] else "no", str(w["partitions"]),
         mb(w["bytes"]), s3(w["busy_s"]), s3(w["busy_per_attempt_s"]), f"{w['share'] * 100:.0f}%"]
        for name in ("equal", "slowed")
        for w in load[name]["workers"]
    ]  # fmt: skip
    assert table_after(md, "### Load: job time") == [
        [name, s3(load[name]["job_s"]), str(load[name]["backup_attempts"]),
         str(load[name]["duplicates_dropped"])]
        for name in ("equal", "slowed")
    ]  # fmt: skip

    rec = r["recovery"]
    assert table_after(md, "### Faults") == [
        [f["signal"], str(f["worker"]), str(f["pid"]), s3(f["at_s"]), s3(f["lost_at_s"]),
         s3(f["detect_s"]), str(f["stranded_partitions"]), s3(f["recovered_at_s"]),
         s3(f["recover_s"]), str(f["attempts_lost"]), str(f["requeued"]), mb(f["bytes_redone"])]
        for f in rec["faults"]
    ]  # fmt: skip
    assert table_after(md, "### Recovery: cost") == [
        [s3(rec["job_s"]), s3(rec["baseline_job_s"]), s3(rec["extra_s"]), str(rec["attempts"]),
         str(rec["workers_lost"]), str(rec["duplicates_dropped"]), str(rec["backup_attempts"]),
         s3(rec["wasted_busy_s"])]
    ]  # fmt: skip

    o, c = r["overhead"], r["cost"]
    assert table_after(md, "### Coordinator cost per task") == [
        [str(o["tasks"]), str(o["workers"]), s3(o["job_s"]), s3(o["per_task_ms"]),
         s3(o["merge_ms_per_partial"]), str(o["keys_per_partial"]),
         s3(o["coordinator_ms_per_task"]), f"{c['coordinator_tasks_per_s']:.1f}"]
    ]  # fmt: skip
    assert table_after(md, "### Cost per job") == [
        [j["experiment"], str(j["workers"]), mb(j["bytes"]), s3(j["job_s"]), f"{j['mb_s']:.1f}",
         usd(j["vm_usd"]), usd(j["vm_usd_per_tb"]), s3(j["busy_s"]),
         usd(j["serverless_usd_per_tb"])]
        for j in c["per_job"]
    ]  # fmt: skip
    projection = table_after(md, "### Projection")
    assert projection == [
        [p["storage"], str(p["machines"]), p["bound"], f"{p['rate_bytes_s'] / 1e6:.1f}",
         s3(p["time_s"]), usd(p["vm_usd"]), usd(p["requests_usd"]), usd(p["total_usd"])]
        for p in c["projection"]
    ]  # fmt: skip
    assert sorted({int(row[1]) for row in projection}) == [1, 10, 100]


@pytest.mark.timeout(240)
def test_recovery_result_matches_the_reference(report: Path) -> None:
    md = (report / "report.md").read_text()
    rec = results_of(report)["recovery"]
    res = rec["result"]
    assert res["matches_reference"] and res["matches_no_failure_run"]
    assert (res["lines"], res["malformed_lines"], res["domains"]) == (
        res["reference_lines"], res["reference_malformed_lines"], res["reference_domains"],
    )  # fmt: skip
    tally_row, reference_row = table_after(md, "### Result check")
    assert tally_row[1:] == reference_row[1:] == [
        str(res["lines"]), str(res["malformed_lines"]), str(res["domains"])
    ]  # fmt: skip
    assert "Every domain count equals the reference: **yes**" in md
    kill, stop = rec["faults"]
    assert (kill["signal"], stop["signal"]) == ("SIGKILL", "SIGSTOP")
    assert 0 <= kill["detect_s"] < 1.0  # a closed connection is noticed at once
    assert rec["lease_timeout_s"] - 1.0 < stop["detect_s"] < rec["lease_timeout_s"] + 1.0
    assert rec["workers_lost"] == 2 and rec["duplicates_dropped"] >= 1


@pytest.mark.timeout(240)
def test_killed_worker_events_and_per_worker_counts(report: Path) -> None:
    rec = results_of(report)["recovery"]
    events = [
        json.loads(line)
        for line in (report / "raw" / "recovery-events.jsonl").read_text().splitlines()
    ]
    stats = json.loads((report / "raw" / "recovery-stats.json").read_text())
    killed = rec["faults"][0]["worker"]
    [lost_event] = [e for e in events if e["event"] == "lost" and e["worker"] == killed]
    assert lost_event["reason"].startswith("connection closed")
    lost_at = lost_event["t"]
    lost = [e for e in events if e["event"] == "attempt_lost" and e["worker"] == killed]
    assert lost, "the killed worker held no attempt"
    requeued = {e["partition"] for e in events if e["event"] == "requeued" and e["t"] == lost_at}
    assert {e["partition"] for e in lost} <= requeued
    committed = {e["partition"] for e in events if e["event"] == "committed"}
    assert {e["partition"] for e in lost} <= committed  # and every one finished elsewhere
    assert Counter(e["partition"] for e in events if e["event"] == "committed") == Counter(
        range(stats["partitions"])
    )  # each partition exactly once
    # per worker: committed events equal --stats, in this run and in every other one
    for stats_path in sorted((report / "raw").glob("*-stats.json")):
        run_stats = json.loads(stats_path.read_text())
        events_path = stats_path.with_name(stats_path.name.replace("-stats.json", "-events.jsonl"))
        run_events = [json.loads(line) for line in events_path.read_text().splitlines()]
        from_events = committed_per_worker(run_events)
        assert {w["id"]: w["partitions"] for w in run_stats["workers"]} == {
            w["id"]: from_events.get(w["id"], 0) for w in run_stats["workers"]
        }, stats_path.name


@pytest.mark.timeout(240)
def test_real_report_prose_agrees_with_its_runs(report: Path) -> None:
    md = (report / "report.md").read_text()
    r = results_of(report)
    for key, start in (("cpu", "**Which limit applies.**"), ("http", "Over HTTP")):
        section = r["speedup"][key]
        times: dict[int, list[float]] = {}
        for one in section["runs"]:
            times.setdefault(one["workers"], []).append(one["job_s"])
        check_scaling_claims(paragraph(md, start), times, section["data"]["bytes"])
    assert "projected time for 1 TB" in md
