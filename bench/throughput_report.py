"""The summary of bench/throughput.py: the table, the PASS/MISS lines of the targets, the
result checks, bench/results/throughput.json and the bar chart throughput.png."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

DISTRIBUTED = ("dask", "ray", "spark")
SINGLE = ("polars", "duckdb")
NAMES = {"tally": "Tally", "polars": "Polars", "duckdb": "DuckDB", "dask": "Dask", "ray": "Ray"}
NAMES["spark"] = "PySpark"
MEMORY_LIMIT_MB = 300.0
REFERENCE = (64, "32MiB")  # the data the targets of DESIGN.md section 4 are set for


def display(system: str) -> str:
    """'dask/fast' -> 'Dask (Tally kernel)', 'dask/fast/shipped' -> 'Dask (Tally kernel,
    as shipped)'."""
    base, *variant = system.split("/")
    words = {"fast": "Tally kernel", "polars": "Polars kernel", "shipped": "as shipped"}
    detail = ", ".join(words.get(v, v) for v in variant)
    return NAMES.get(base, base) + (f" ({detail})" if detail else "")


def _median_of(runs: list[dict[str, Any]], get: Any) -> float | None:
    values = []
    for run in runs:
        try:
            value = get(run)
        except (KeyError, TypeError):
            continue
        if value is not None:
            values.append(float(value))
    return statistics.median(values) if values else None


def summarize(result: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per system (medians over its successful runs) and the target checks."""
    size = result["data"]["bytes"]
    runs = result["runs"]
    tally_ok = [r for r in runs if r["system"] == "tally" and r["returncode"] == 0]
    reference = tally_ok[0]["rows"] if tally_ok else None
    lines = tally_ok[0]["stats"]["lines"] if tally_ok else result["data"]["newlines"]
    result["data"]["lines"] = lines
    result["data"]["lines_source"] = "tally --stats" if tally_ok else "newline count"

    summary = []
    for system in result["config"]["systems"]:
        mine = [r for r in runs if r["system"] == system]
        ok = [r for r in mine if r["returncode"] == 0]
        row: dict[str, Any] = {"system": system, "runs": len(mine), "ok": len(ok)}
        if ok:
            times = [r["result_s"] for r in ok]
            seconds = statistics.median(times)
            row |= {
                "seconds": seconds,
                "seconds_min": min(times),
                "seconds_max": max(times),
                "exit_seconds": statistics.median(r["exit_s"] for r in ok),
                "mb_s": size / 1e6 / seconds,
                "mb_s_min": size / 1e6 / max(times),
                "mb_s_max": size / 1e6 / min(times),
                "lines_s": lines / seconds,
                "peak_mb": max(r["peak_rss_mb"] for r in ok),
                "peak_mb_median": statistics.median(r["peak_rss_mb"] for r in ok),
                "peak_pss_mb": max(r["peak_pss_mb"] for r in ok),
                "same_top25": reference is not None and all(r["rows"] == reference for r in ok),
            }
            if system == "tally":
                row["ready_s"] = _median_of(ok, lambda r: r["stats"]["ready_s"])
                row["job_s"] = _median_of(ok, lambda r: r["stats"]["wall_s"])
            else:
                row["ready_s"] = _median_of(ok, lambda r: r["stamps"]["ready"] - r["started_at"])
                row["job_s"] = _median_of(
                    ok, lambda r: r["stamps"]["computed"] - r["stamps"]["ready"]
                )
        summary.append(row)
    by_system = {row["system"]: row for row in summary if row["ok"]}
    for row in summary:
        if row["ok"] and "tally" in by_system:
            row["tally_ratio"] = by_system["tally"]["mb_s"] / row["mb_s"]
    return summary, targets(by_system)


def _best(by_system: dict[str, dict[str, Any]], kinds: tuple[str, ...]) -> dict[str, Any] | None:
    rows = [row for name, row in by_system.items() if name.partition("/")[0] in kinds]
    return max(rows, key=lambda row: row["mb_s"]) if rows else None


def targets(
    by_system: dict[str, dict[str, Any]], limit_mb: float = MEMORY_LIMIT_MB
) -> list[dict[str, Any]]:
    tally = by_system.get("tally")
    out: list[dict[str, Any]] = []
    for kinds, factor, what in (
        (DISTRIBUTED, 2.0, "best distributed peer"),
        (SINGLE, 1.0, "best single-process engine"),
    ):
        best = _best(by_system, kinds)
        check: dict[str, Any] = {"target": f"tally >= {factor:.1f}x the {what}"}
        if tally is None or best is None:
            check |= {"status": "SKIP", "detail": "not measured"}
        else:
            ratio = tally["mb_s"] / best["mb_s"]
            check |= {
                "status": "PASS" if ratio >= factor else "MISS",
                "peer": best["system"],
                "ratio": ratio,
                "detail": f"Tally {tally['mb_s']:,.0f} MB/s vs {display(best['system'])} "
                f"{best['mb_s']:,.0f} MB/s: {ratio:.2f}x (target {factor:.1f}x)",
            }
        out.append(check)
    check = {"target": f"tally peak memory (coordinator + workers) < {limit_mb:.0f} MB"}
    if tally is None:
        check |= {"status": "SKIP", "detail": "not measured"}
    else:
        peak = tally["peak_mb"]
        check |= {
            "status": "PASS" if peak < limit_mb else "MISS",
            "peak_mb": peak,
            "detail": f"highest peak over {tally['ok']} runs {peak:.0f} MB (limit {limit_mb:.0f})",
        }
    out.append(check)
    return out


def print_table(result: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    data = result["data"]
    table = Table(
        title=f"{data['partitions']} partitions, {data['bytes'] / 1e6:,.0f} MB, "
        f"{data['lines']:,} lines; median of {result['config']['repeat']} rounds",
        box=box.SIMPLE_HEAD,
    )
    columns = ("system", "ok", "seconds", "range s", "MB/s", "lines/s", "RSS MB", "PSS MB")
    for name in (*columns, "Tally ÷"):
        table.add_column(name, justify="left" if name == "system" else "right", no_wrap=True)
    table.add_column("top 25", no_wrap=True)
    workers = result["config"]["workers"]
    for row in result["summary"]:
        name = display(row["system"])
        name += f" --workers {workers}" if row["system"] == "tally" else ""
        if not row["ok"]:
            table.add_row(name, f"0/{row['runs']}", *["-"] * 7, "failed")
            continue
        table.add_row(
            name,
            f"{row['ok']}/{row['runs']}",
            f"{row['seconds']:.2f}",
            f"{row['seconds_min']:.2f}-{row['seconds_max']:.2f}",
            f"{row['mb_s']:,.0f}",
            f"{row['lines_s'] / 1e6:,.1f} M",
            f"{row['peak_mb']:,.0f}",
            f"{row['peak_pss_mb']:,.0f}",
            f"{row.get('tally_ratio', math.nan):.2f}",
            "reference" if row["system"] == "tally" else "same" if row["same_top25"] else "DIFFERS",
        )
    Console(width=132).print(table)


def check_results(result: dict[str, Any]) -> None:
    """Warn about a system whose top 25 differs from Tally's, and about Tally's own order."""
    runs = result["runs"]
    reference = next((r["rows"] for r in runs if r["system"] == "tally" and r["rows"]), None)
    if reference is None:
        print("WARNING: no Tally run succeeded; the top 25 could not be checked")
        return
    for row in result["summary"]:
        if row["ok"] and not row["same_top25"]:
            bad = next(r for r in runs if r["system"] == row["system"] and r["rows"] != reference)
            diff = [(a, b) for a, b in zip(bad["rows"], reference, strict=False) if a != b]
            print(
                f"WARNING: {display(row['system'])}'s top 25 differs from Tally's "
                f"(round {bad['round'] + 1}: {len(bad['rows'])} rows; first difference "
                f"{diff[0] if diff else 'in length'})"
            )
    try:
        from tally.datagen import PUBLISHED_TOP25
    except ImportError:
        return
    if [d for d, _ in reference] != [d for d, _ in PUBLISHED_TOP25]:
        print("note: Tally's top 25 is not in the published ClickBench order")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["summary"] if r["ok"]]
    if not rows:
        return
    workers = result["config"]["workers"]
    names = [
        display(r["system"]).replace(" (", "\n(").replace(", ", ",\n")
        + (f"\n--workers {workers}" if r["system"] == "tally" else "")
        for r in rows
    ]
    values = [r["mb_s"] for r in rows]
    low = [r["mb_s"] - r["mb_s_min"] for r in rows]
    high = [r["mb_s_max"] - r["mb_s"] for r in rows]
    colors = ["#d62728" if r["system"] == "tally" else "#8c8c8c" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(rows) + 2), 5.0))
    bars = ax.bar(names, values, color=colors, yerr=[low, high], capsize=4, ecolor="#333333")
    for bar, value, up in zip(bars, values, high, strict=True):
        ax.annotate(
            f"{value:,.0f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height() + up),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    for check, style in zip(result["targets"][:2], ("--", ":"), strict=True):
        if check["status"] != "SKIP":
            peer = next(r for r in rows if r["system"] == check["peer"])
            factor = 2.0 if check["target"].startswith("tally >= 2.0x") else 1.0
            ax.axhline(
                factor * peer["mb_s"],
                color="#d62728",
                linestyle=style,
                linewidth=1,
                label=f"target: {factor:.0f}x {display(peer['system'])}",
            )
    ax.legend(loc="upper right", fontsize=8)
    data, machine = result["data"], result["machine"]
    ax.set_ylabel("MB/s (end to end, higher is better)")
    ax.set_title(
        f"Top-25 domains over {data['bytes'] / 1e9:.2f} GB ({data['partitions']} partitions), "
        f"{machine['cpu_count']} cores; median of {result['config']['repeat']}, bars: range",
        fontsize=10,
    )
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    print()
    print_table(result)
    check_results(result)
    for check in result["targets"]:
        print(f"{check['status']}: {check['target']}: {check['detail']}")
    data = result["data"]
    if (data["partitions"], data["partition_size"]) != REFERENCE:
        print("note: the targets are set for the 64 x 32MiB reference data, not this data set")
    load = result["load_average"]
    print(
        f"load average (1 min) {load['before'][0]:.2f} before, {load['after'][0]:.2f} after; "
        "on a shared machine the numbers are noisy"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    plot(result, out / "throughput.png")
    print(f"wrote {out / 'throughput.json'} and {out / 'throughput.png'}")
