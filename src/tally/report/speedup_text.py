"""The report's prose about scaling. Every claim is a comparison made by
:func:`tally.report.scaling.change` on the figures the speedup tables show, with the
experiment's noise threshold, so a sentence cannot contradict a table."""

from __future__ import annotations

from typing import Any

from tally.report import fmt
from tally.report.scaling import change

CHANGE_WORDS = {
    "faster": "are measurably faster than",
    "slower": "are measurably slower than",
    "none": "show no measurable change from",
}


def row_of(section: dict[str, Any], workers: int) -> dict[str, Any] | None:
    return next((r for r in section["rows"] if r["workers"] == workers), None)


def _row(section: dict[str, Any], workers: int) -> dict[str, Any]:
    row = row_of(section, workers)
    if row is None:
        raise ValueError(f"no row for {workers} worker(s)")
    return row


def noise_clause(section: dict[str, Any]) -> str:
    """What counts as no measurable change in ``section``, and where the threshold comes from."""
    threshold = section["noise"]
    if threshold > section["min_noise"]:
        source = "the largest spread of the repeated runs of one worker count"
    elif any(r["runs"] > 1 for r in section["rows"]):
        source = "the floor; the repeated runs of each worker count differed by less"
    else:
        source = "the floor; with one run per worker count no spread was measured"
    return (
        f"a difference in job time below {fmt.pct1(threshold)} ({source}) is no measurable change"
    )


def stop_clause(section: dict[str, Any]) -> str:
    """``scaling stops at K workers`` or ``scaling did not stop up to L workers``."""
    knee = section["scaling_stops_at"]
    if knee is None:
        return f"scaling did not stop up to {fmt.workers(section['rows'][-1]['workers'])}"
    return f"scaling stops at {fmt.workers(knee)}"


def scaling_sentence(section: dict[str, Any]) -> str:
    """The best count and where scaling stops, with the reasons the noise threshold gives."""
    best = _row(section, section["best_workers"])
    knee = section["scaling_stops_at"]
    head = (
        f"the best rate is {fmt.rate(best['mb_s'])} MB/s with {fmt.workers(best['workers'])} "
        f"(speedup {fmt.ratio(best['speedup'])})"
    )
    if knee is None:
        return (
            f"{head}; every count with fewer workers is measurably slower: {stop_clause(section)}"
        )
    within = ""
    if knee != best["workers"]:
        k = _row(section, knee)
        within = (
            f", no measurable change from {fmt.workers(knee)} ({fmt.rate(k['mb_s'])} MB/s, "
            f"speedup {fmt.ratio(k['speedup'])})"
        )
    fewer = ", and every count with fewer is measurably slower" if knee > 1 else ""
    return (
        f"{head}{within}; no count with more than {fmt.workers(knee)} is measurably faster"
        f"{fewer}: {stop_clause(section)}"
    )


def _cores_relation(section: dict[str, Any], cores: int) -> str:
    knee = section["scaling_stops_at"]
    last = section["rows"][-1]["workers"]
    if knee is None:
        return f", more than the {cores} cores" if last > cores else ""
    if knee == cores:
        return ", as many workers as cores"
    if knee < cores:
        return (
            f", fewer than the {cores} cores (the machine is shared: other processes may take "
            "some of them)"
        )
    return f", more than the {cores} cores"


def busy_fraction(section: dict[str, Any]) -> tuple[float, float]:
    """Busy seconds and job seconds of the fastest one-worker run."""
    fastest = min((r for r in section["runs"] if r["workers"] == 1), key=lambda r: r["job_s"])
    return float(fastest["busy_s"]), float(fastest["job_s"])


def cpu_bound(section: dict[str, Any]) -> bool:
    """The one worker computed for all of its job time, within the noise."""
    busy, job = busy_fraction(section)
    return change(busy, job, section["noise"]) == "none"


def _cpu_paragraph(cpu: dict[str, Any], cores: int) -> str:
    c1, clast = _row(cpu, 1), cpu["rows"][-1]
    busy, job = busy_fraction(cpu)
    bound = (
        ": the job is CPU-bound"
        if cpu_bound(cpu)
        else f" ({fmt.pct(busy / job)} of it): the job is not purely CPU-bound"
    )
    text = (
        "**Which limit applies.** On local files one worker processes "
        f"{fmt.rate(c1['mb_s'])} MB/s and computes for {fmt.secs(busy)} s of its "
        f"{fmt.secs(c1['job_s'])} s job{bound}. This machine has {cores} cores; "
        f"{scaling_sentence(cpu)}{_cores_relation(cpu, cores)}."
    )
    at_cores = row_of(cpu, cores)
    if clast["workers"] > cores and at_cores is not None:
        verdict = change(at_cores["job_s"], clast["job_s"], cpu["noise"])
        text += (
            f" More worker processes than cores share the same {cores} cores: "
            f"{fmt.workers(clast['workers'])} {CHANGE_WORDS[verdict]} "
            f"{fmt.workers(cores)} (speedup {fmt.ratio(clast['speedup'])} against "
            f"{fmt.ratio(at_cores['speedup'])}, efficiency {fmt.pct(clast['efficiency'])})."
        )
    if clast["workers"] > 1:
        text += (
            f" Start-up takes {fmt.secs(clast['ready_s'])} s with "
            f"{fmt.workers(clast['workers'])} and {fmt.secs(c1['ready_s'])} s with one."
        )
    return text + "\n"


def _http_paragraph(cpu: dict[str, Any], http: dict[str, Any]) -> str:
    h1, hlast = _row(http, 1), http["rows"][-1]
    c1, cbest = _row(cpu, 1), _row(cpu, cpu["best_workers"])
    limit = http["rate_mb_s_per_connection"]
    threshold = max(cpu["noise"], http["noise"])
    # seconds per MB, so that a lower rate is a "slower" change
    verdict = change(1 / c1["mb_s"], 1 / h1["mb_s"], threshold)
    bound = {
        "slower": f", against {fmt.rate(c1['mb_s'])} MB/s on local files: the job is network-bound",
        "none": f", no measurable change from {fmt.rate(c1['mb_s'])} MB/s on local files: the "
        "throttle is not what limits it",
        "faster": f", measurably more than {fmt.rate(c1['mb_s'])} MB/s on local files: the "
        "throttle is not what limits it",
    }[verdict]
    text = (
        f"Over HTTP every connection is throttled to {fmt.rate(limit)} MB/s (the server "
        f"measured {fmt.rate(h1['transfer_mb_s'])} MB/s per transfer with one worker). "
        f"One worker got {fmt.rate(h1['mb_s'])} MB/s with up to {h1['max_connections']} "
        "connection(s) open at once"
        + (
            " (a worker fetches its next partition while it computes the current one)"
            if h1["max_connections"] > 1
            else ""
        )
        + f"{bound}."
    )
    if hlast["workers"] > 1:
        text += (
            f" {fmt.workers(hlast['workers'])} reached {fmt.rate(hlast['mb_s'])} MB/s with up "
            f"to {hlast['max_connections']} connections (speedup {fmt.ratio(hlast['speedup'])}, "
            f"efficiency {fmt.pct(hlast['efficiency'])}); {scaling_sentence(http)}."
        )
    text += (
        " An estimate, not a measurement: network-bound scaling can go on until the "
        f"connections together ({fmt.rate(limit)} MB/s each) reach the best CPU-bound rate of "
        f"{fmt.rate(cbest['mb_s'])} MB/s, about {fmt.rate(cbest['mb_s'] / limit)} connections "
        "on this machine, or less where the workers' own CPU (start-up, HTTP client, kernel) "
        "fills the cores."
    )
    return text + "\n"


def noise_paragraph(r: dict[str, Any]) -> str:
    cpu, http = r["speedup"]["cpu"], r["speedup"]["http"]
    return (
        "**Noise.** This machine is shared with other processes, so repeated runs of the same "
        f"job differ. On local files {noise_clause(cpu)}; over HTTP {noise_clause(http)}. "
        "Every comparison below (measurably faster, measurably slower, no measurable change) "
        "uses these thresholds on the fastest run of each worker count.\n"
    )


def speedup_text(r: dict[str, Any]) -> str:
    cpu, http = r["speedup"]["cpu"], r["speedup"]["http"]
    return "\n".join(
        [
            noise_paragraph(r),
            _cpu_paragraph(cpu, r["meta"]["cores"]),
            _http_paragraph(cpu, http),
            *check_warnings(r),
        ]
    )


def check_warnings(r: dict[str, Any]) -> list[str]:
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


def scaling_answer(r: dict[str, Any]) -> str:
    """The answer to "What limits scaling?", from the same figures."""
    cpu, http = r["speedup"]["cpu"], r["speedup"]["http"]
    cores = r["meta"]["cores"]
    busy, job = busy_fraction(cpu)
    share = f"(one worker computes for {fmt.pct(busy / job)} of its job time)"
    bound = (
        f"the CPU: a local-file job is CPU-bound {share}, so it can use at most the cores "
        f"({cores} here), and more workers only share them"
        if cpu_bound(cpu)
        else f"a local-file job is not purely CPU-bound {share}; its computing part can use at "
        f"most the cores ({cores} here)"
    )
    return (
        f"**What limits scaling?** On one machine, {bound}; measured: "
        f"{stop_clause(cpu)}{_cores_relation(cpu, cores)}. With remote data the bandwidth of "
        "each connection (or machine) limits each worker instead, and adding workers adds "
        "bandwidth until the CPU or the network interface of the machine is saturated; "
        f"measured over HTTP: {stop_clause(http)} (section 1). Across machines, by the "
        "projection of section 5, the rate is the sum of the machines' rates until the "
        "coordinator saturates (below).\n"
    )
