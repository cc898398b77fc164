"""Per-task overhead and cluster start-up of `tally run`.

Overhead: 10,000 empty partitions with 2 workers; the figure is the coordinator's wall time
divided by the number of tasks (start-up excluded: it is measured on its own). Start-up: a
one-partition job, from the command's start to its exit, and the coordinator's own time until
every worker had joined. Writes bench/results/overhead.json.

    .venv/bin/python bench/overhead.py [--tasks N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
RESULTS = ROOT / "bench" / "results"


def empty_partitions(count: int) -> Path:
    folder = CACHE / f"empty-{count}"
    listing = folder / "filelist.csv"
    if not listing.exists():
        folder.mkdir(parents=True, exist_ok=True)
        names = [folder / f"e{i:06d}" for i in range(count)]
        for name in names:
            name.touch()
        listing.write_text("".join(f"{n}\n" for n in names))
    return listing


def tally_run(listing: Path, workers: int) -> tuple[float, dict[str, object]]:
    stats = CACHE / "stats.json"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tally", "run", str(listing), "--workers", str(workers), "-q",
         "--stats", str(stats)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started, json.loads(stats.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    many = empty_partitions(args.tasks)
    one = empty_partitions(1)
    per_task, startup, ready = [], [], []
    for _ in range(args.repeat):
        _, stats = tally_run(many, args.workers)
        busy = float(stats["wall_s"]) - float(stats["ready_s"] or 0.0)  # type: ignore[arg-type]
        per_task.append(busy / args.tasks * 1e3)
        wall, stats = tally_run(one, args.workers)
        startup.append(wall)
        ready.append(float(stats["ready_s"] or 0.0))  # type: ignore[arg-type]
    result = {
        "machine": f"{platform.node()} {os.cpu_count()} cores {platform.processor()}",
        "python": platform.python_version(),
        "tasks": args.tasks,
        "workers": args.workers,
        "per_task_ms": {"median": statistics.median(per_task), "runs": per_task},
        "startup_command_s": {"median": statistics.median(startup), "runs": startup},
        "startup_ready_s": {"median": statistics.median(ready), "runs": ready},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"per-task overhead: {result['per_task_ms']['median']:.3f} ms "  # type: ignore[index]
        f"({args.tasks} empty tasks, {args.workers} workers, median of {args.repeat})"
    )
    print(
        f"cluster start-up:  {statistics.median(ready):.3f} s until all workers joined, "
        f"{statistics.median(startup):.3f} s for a whole one-partition `tally run`"
    )


if __name__ == "__main__":
    main()
