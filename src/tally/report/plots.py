"""The report's figures (matplotlib, Agg backend), each drawn from the measured records.

matplotlib comes with the ``report`` extra (``pip install 'tally[report]'``); only this module
imports it, and ``tally report`` checks for it before it starts (:func:`require_matplotlib`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from tally.report.cluster import JobRun
from tally.report.timeline import attempts

DPI = 110
COLORS = {"cpu": "tab:blue", "http": "tab:orange"}
OUTCOME = {"committed": "tab:green", "dropped": "tab:orange", "cancelled": "tab:gray"}
LABELS = {"cpu": "local files", "http": "HTTP, throttled per connection"}


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def _log2_axis(ax: Axes, workers: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(workers, [str(n) for n in workers])
    ax.set_xlabel("workers")
    ax.grid(True, alpha=0.3)


def speedup(results: dict[str, Any], cores: int, path: Path) -> str:
    """Time, speedup and efficiency per worker count; the markers are the fastest run (the
    figures of the tables), the bars reach the slowest run of the same count."""
    fig, (ax_t, ax_s, ax_e) = plt.subplots(1, 3, figsize=(13, 4))
    workers: list[int] = []
    for key in ("cpu", "http"):
        rows = results[key]["rows"]
        workers = [r["workers"] for r in rows]
        style = {"color": COLORS[key], "marker": "o", "label": LABELS[key], "capsize": 3}
        fastest = [r["job_s_min"] for r in rows]
        ax_t.errorbar(workers, fastest,
                      yerr=[[0.0] * len(rows), [r["job_s_max"] - r["job_s_min"] for r in rows]],
                      **style)  # fmt: skip
        ax_s.errorbar(workers, [r["speedup"] for r in rows],
                      yerr=[[r["speedup"] - r["speedup_min"] for r in rows], [0.0] * len(rows)],
                      **style)  # fmt: skip
        ax_e.errorbar(workers, [r["efficiency"] * 100 for r in rows],
                      yerr=[[(r["speedup"] - r["speedup_min"]) / r["workers"] * 100
                             for r in rows], [0.0] * len(rows)],
                      **style)  # fmt: skip
    ax_s.plot(workers, workers, "k--", lw=1, label="ideal")
    for ax in (ax_t, ax_s, ax_e):
        _log2_axis(ax, workers)
        ax.axvline(cores, color="gray", ls=":", lw=1)
    ax_t.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax_t.yaxis.set_major_formatter(plain)
    ax_t.yaxis.set_minor_formatter(plain)
    ax_t.set_ylabel("job time (s, log scale)")
    ax_t.set_title("time (bars: fastest to slowest run)")
    ax_s.set_yscale("log", base=2)
    ax_s.yaxis.set_major_formatter(plain)
    ax_s.set_ylabel("speedup over the fastest 1-worker run")
    ax_s.set_title(f"speedup (bars: every run; dotted: {cores} cores)")
    ax_e.set_ylabel("efficiency (%)")
    ax_e.set_ylim(0, 110)
    ax_e.set_title("efficiency = speedup / workers")
    ax_s.legend(fontsize=8)
    return _save(fig, path)


def load(results: dict[str, Any], path: Path) -> str:
    fig, (ax_p, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    for i, (name, color) in enumerate((("equal", "tab:blue"), ("slowed", "tab:red"))):
        scenario = results[name]
        ws = scenario["workers"]
        xs = [j + (i - 0.5) * width for j in range(len(ws))]
        hatches = ["//" if w["slowed"] else "" for w in ws]
        label = "equal speed" if name == "equal" else f"one worker {results['slowdown']:g}x slower"
        for ax, values in (
            (ax_p, [w["partitions"] for w in ws]),
            (ax_b, [w["bytes"] / 1e6 for w in ws]),
        ):
            bars = ax.bar(xs, values, width, color=color, alpha=0.8, label=label)
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
    n = results["workers"]
    for ax, title in ((ax_p, "partitions per worker"), (ax_b, "MB read per worker")):
        ax.set_xticks(range(n), [f"worker {j + 1}" for j in range(n)])
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    ax_p.legend(fontsize=8, title="hatched: the slowed worker", title_fontsize=8, ncol=2)
    return _save(fig, path)


def recovery(run: JobRun, results: dict[str, Any], path: Path) -> str:
    """Gantt chart of every attempt per worker, faults and detections marked."""
    lives = attempts(run.events)
    ids = sorted(w["id"] for w in run.stats["workers"])
    row = {wid: i for i, wid in enumerate(ids)}
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.7 * len(ids)))
    for life in lives.values():
        y = row[life.worker]
        if life.started is not None and life.finished is not None:
            color = OUTCOME.get(life.outcome, "tab:gray")
            ax.broken_barh([(life.started, life.finished - life.started)], (y - 0.3, 0.6),
                           facecolors=color, edgecolor="black", linewidth=0.3)  # fmt: skip
        if life.lost_at is not None:
            begin = life.started if life.started is not None else life.assigned
            ax.broken_barh([(begin, max(0.02, life.lost_at - begin))], (y - 0.42, 0.2),
                           facecolors="tab:red", edgecolor="darkred", hatch="///",
                           linewidth=0.3)  # fmt: skip
    faults = {f["kind"]: f for f in results["faults"]}
    marks = {"kill": ("tab:red", "SIGKILL"), "stop": ("tab:purple", "SIGSTOP")}
    for kind, (color, name) in marks.items():
        f = faults[kind]
        y = row[f["worker"]]  # the y axis is inverted: y - 0.5 is the top of the row
        ax.plot([f["at_s"]] * 2, [y - 0.5, y + 0.5], color=color, lw=2.5)
        ax.annotate(name, (f["at_s"], y + 0.5), color=color, fontsize=8, ha="right", va="top")
        if f["lost_at_s"] is not None:
            ax.plot(f["lost_at_s"], y - 0.42, marker="v", color="black", ms=8)
            ax.annotate(f" lost after {f['detect_s']:.3f} s", (f["lost_at_s"], y - 0.42),
                        fontsize=8, va="center")  # fmt: skip
    if results["cont_at_s"] is not None:
        y = row[faults["stop"]["worker"]]
        ax.plot([results["cont_at_s"]] * 2, [y - 0.5, y + 0.5], color="tab:gray", lw=2, ls="--")
        ax.annotate("SIGCONT ", (results["cont_at_s"], y + 0.5), fontsize=8, color="dimgray",
                    ha="right", va="top")  # fmt: skip
    labels = []
    seen: set[int | None] = set()
    for wid in ids:
        pid = run.pid_of(wid)
        labels.append(f"worker {wid}\npid {pid}" + (" (rejoined)" if pid in seen else ""))
        seen.add(pid)
    ax.set_yticks(range(len(ids)), labels, fontsize=8)
    ax.set_ylim(-0.6, len(ids) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the coordinator started")
    ax.set_title("attempts per worker (bar: started -> finished, from the event log)")
    ax.grid(True, axis="x", alpha=0.3)
    handles = [Patch(color=OUTCOME["committed"], label="committed"),
               Patch(color=OUTCOME["dropped"], label="delivered, dropped (late or lost race)"),
               Patch(facecolor="tab:red", hatch="///", label="lost with its worker"),
               Line2D([], [], color="black", marker="v", ls="", label="declared lost")]  # fmt: skip
    ax.legend(handles=handles, fontsize=8, loc="upper right", bbox_to_anchor=(1, -0.15), ncol=4)
    return _save(fig, path)


def cost(projection: list[dict[str, Any]], data_tb: float, path: Path) -> str:
    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    storages = sorted({p["storage"] for p in projection})
    machines = sorted({p["machines"] for p in projection})
    width = 0.38
    for i, storage in enumerate(storages):
        rows = {p["machines"]: p for p in projection if p["storage"] == storage}
        xs = [j + (i - 0.5) * width for j in range(len(machines))]
        ax_t.bar(xs, [rows[m]["time_s"] for m in machines], width, label=f"data on {storage}")
        ax_c.bar(xs, [rows[m]["total_usd"] for m in machines], width, label=f"data on {storage}")
    titles = (
        f"projected time for {data_tb:g} TB (s, log scale)",
        f"projected cost for {data_tb:g} TB (USD)",
    )
    for ax, title in zip((ax_t, ax_c), titles, strict=True):
        ax.set_xticks(range(len(machines)), [f"{m} machine(s)" for m in machines])
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    ax_t.set_yscale("log")
    ax_t.legend(fontsize=8)
    fig.suptitle("A projection from the measured rates: no bar here was measured", fontsize=10)
    return _save(fig, path)
