"""Speedup analysis (pure): the spread of repeated runs, the noise threshold, the best worker
count and where scaling stops. Every table figure and every sentence of the report about
scaling is derived from what these functions return, so the prose cannot contradict the tables.

Job times are compared through their fastest run (other processes on a shared machine can only
slow a run down). Two worker counts differ *measurably* only when their fastest times differ by
more than the noise: the largest spread ``(max - min) / min`` of the repeated runs of any one
worker count, and never less than :data:`MIN_NOISE` (one run per count measures no spread).
"""

from __future__ import annotations

import statistics
from typing import Any, Literal

MIN_NOISE = 0.05  # the threshold when the repeated runs agree closer than this, or no repeats

Change = Literal["faster", "slower", "none"]


def speedup_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per worker count: job time min/median/max over its runs and their spread; speedup over
    the fastest one-worker run, efficiency and MB/s from the fastest run; the range of the
    runs' speedups (slowest to fastest run over the fastest one-worker run); and whether every
    run read all the data and printed the expected result.

    The runs must include one-worker runs: speedup is relative to their best time."""
    counts = sorted({r["workers"] for r in runs})
    if not counts or counts[0] != 1:
        raise ValueError("speedup needs one-worker runs")
    times = {n: sorted(float(r["job_s"]) for r in runs if r["workers"] == n) for n in counts}
    base = times[1][0]
    rows = []
    for n in counts:
        chosen = [r for r in runs if r["workers"] == n]
        fastest, slowest = times[n][0], times[n][-1]
        speedup = base / fastest
        rows.append(
            {
                "workers": n,
                "runs": len(chosen),
                "job_s": fastest,
                "job_s_min": fastest,
                "job_s_median": statistics.median(times[n]),
                "job_s_max": slowest,
                "spread": (slowest - fastest) / fastest,
                "speedup": speedup,
                "speedup_min": base / slowest,
                "efficiency": speedup / n,
                "mb_s": chosen[0]["data_bytes"] / fastest / 1e6,
                "ready_s": statistics.median(r["ready_s"] for r in chosen),
                "checked": all(r["bytes_ok"] and r["result_ok"] for r in chosen),
            }
        )
        if "server" in chosen[0]:
            rows[-1]["max_connections"] = max(
                r["server"]["max_concurrent_connections"] for r in chosen
            )
            rows[-1]["transfer_mb_s"] = statistics.median(
                r["server"]["mean_transfer_mb_s"] for r in chosen
            )
    return rows


def noise(rows: list[dict[str, Any]]) -> float:
    """The relative difference below which two job times count as the same."""
    return max([MIN_NOISE, *(float(r["spread"]) for r in rows)])


def change(before_s: float, after_s: float, threshold: float) -> Change:
    """How a job time ``after_s`` compares with ``before_s``: measurably faster, measurably
    slower, or no measurable change (within ``threshold``, relative). Symmetric:
    ``change(a, b)`` is "faster" exactly when ``change(b, a)`` is "slower"."""
    if before_s > after_s * (1 + threshold):
        return "faster"
    if after_s > before_s * (1 + threshold):
        return "slower"
    return "none"


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the fastest run (of equal ones, the fewest workers)."""
    best: dict[str, Any] = min(rows, key=lambda r: (r["job_s"], r["workers"]))
    return best


def scaling_stop(rows: list[dict[str, Any]], threshold: float) -> int | None:
    """The fewest workers whose fastest run is within ``threshold`` of the best one; no count
    with more workers is then measurably faster than it, and every count with fewer is
    measurably slower than the best. None if that is the last count (scaling did not stop)."""
    best = best_row(rows)
    knee = next(
        r["workers"] for r in rows if change(r["job_s"], best["job_s"], threshold) == "none"
    )
    return None if knee == rows[-1]["workers"] else int(knee)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows, noise threshold, best count and where scaling stops, for one speedup experiment."""
    rows = speedup_rows(runs)
    threshold = noise(rows)
    return {
        "runs": runs,
        "rows": rows,
        "noise": threshold,
        "min_noise": MIN_NOISE,
        "best_workers": best_row(rows)["workers"],
        "scaling_stops_at": scaling_stop(rows, threshold),
        "all_checked": all(r["checked"] for r in rows),
    }
