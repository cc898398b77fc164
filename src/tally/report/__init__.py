"""``tally report --out DIR [--quick] [--prices TOML]``: run the experiments on generated
data and write DIR/report.md, the PNG plots, DIR/results.json (every raw figure) and DIR/raw/
(each run's ``--stats`` and ``--events`` records).

Experiments: speedup on local files and over a throttled local HTTP server, load
distribution with equal and with one slowed worker, failure recovery (SIGKILL and SIGSTOP),
per-task overhead; then the cost model and the answers.

The plots need matplotlib, which only the ``report`` extra installs (a worker does not need it):
without it ``tally report`` stops before any experiment with a one-line error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tally.errors import ConfigError
from tally.report import experiments as ex
from tally.report import markdown
from tally.report.cost import cost_section, load_prices
from tally.report.recovery import failure_recovery

log = logging.getLogger("tally.report")
EXIT_OK = 0
RAW = ("stats.json", "events.jsonl", "coordinator.log")
INSTALL_REPORT = "pip install 'tally[report]'"


def require_matplotlib() -> None:
    """Raise ConfigError (exit 2, one line) if matplotlib cannot be imported."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as exc:
        raise ConfigError(
            f"the report's plots need matplotlib, which is not installed: {INSTALL_REPORT}"
        ) from exc


def _keep_raw(workdir: Path, raw: Path, patterns: tuple[str, ...] = RAW) -> list[str]:
    """Copy each run's records matching ``patterns`` to ``raw``; return their paths."""
    raw.mkdir(parents=True, exist_ok=True)
    kept = []
    for run_dir in sorted(p for p in workdir.iterdir() if p.is_dir()):
        for src in sorted(f for pattern in patterns for f in run_dir.glob(pattern)):
            dest = raw / f"{run_dir.name}-{src.name}"
            shutil.copyfile(src, dest)
            kept.append(f"{raw.name}/{dest.name}")
    return kept


def run_experiments(plan: ex.Plan, workdir: Path, out: Path, prices_path: str | None) -> int:
    from tally.report import plots  # imports matplotlib

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    prices = load_prices(prices_path)  # a bad table fails before the long part
    cores = os.cpu_count() or 1
    data_root = workdir / "data"
    runs = workdir / "runs"
    runs.mkdir(parents=True)

    log.info("generating data (%s mode)", plan.mode)
    cpu_data = ex.generate(data_root, "local", plan.cpu_partitions, plan.cpu_size)
    http_data = ex.generate(data_root, "http", plan.http_partitions, plan.http_size)
    load_data = ex.generate(data_root, "load", plan.load_partitions, plan.load_size)
    rec_data = ex.generate(data_root, "recovery", plan.recovery_partitions, plan.recovery_size)
    empty = ex.empty_dataset(data_root, plan.overhead_tasks)

    cpu_expected = ex.expected_output(cpu_data, runs, plan.job_timeout_s)
    cpu = ex.speedup(plan, cpu_data, cpu_data.filelist, runs, "cpu", cpu_expected, plan.repeats)
    http_expected = ex.expected_output(http_data, runs, plan.job_timeout_s)
    http = ex.speedup_http(plan, http_data, runs, http_expected)
    load = ex.load_distribution(plan, load_data, runs)
    recovery, recovery_run = failure_recovery(plan, rec_data, runs)
    overhead = ex.overhead(plan, empty, cpu_data, runs)
    cost = cost_section(prices, cpu, http, overhead, cores)

    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw"
    results: dict[str, Any] = {
        "meta": {
            "mode": plan.mode,
            "generated_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(terse=True),
            "machine": platform.machine(),
            "cores": cores,
            "python": platform.python_version(),
            "plan": dataclasses.asdict(plan),
        },
        "data": {
            "local": cpu_data.describe(plan.cpu_size),
            "http": http_data.describe(plan.http_size),
            "load": load_data.describe(plan.load_size),
            "recovery": rec_data.describe(plan.recovery_size),
        },
        "speedup": {"cpu": cpu, "http": http},
        "load": load,
        "recovery": recovery,
        "overhead": overhead,
        "cost": cost,
    }
    results["plots"] = {
        "speedup": plots.speedup(results["speedup"], cores, out / "speedup.png"),
        "load": plots.load(load, out / "load.png"),
        "recovery": plots.recovery(recovery_run, recovery, out / "recovery.png"),
        "cost": plots.cost(cost["projection"], prices.projection.data_tb, out / "cost.png"),
    }
    results["raw"] = _keep_raw(runs, raw)
    results["meta"]["duration_s"] = time.perf_counter() - started
    results["meta"]["load_average"] = [load_before, os.getloadavg()[0]]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown.render(results), encoding="utf-8")
    log.info("wrote %s in %.1fs", out / "report.md", results["meta"]["duration_s"])
    return EXIT_OK


def reprice(results_path: Path, out: Path, prices_path: str | None) -> int:
    """The report of an earlier run's ``results.json``, its cost section computed again from
    the current price table (the measured figures unchanged; no experiment runs)."""
    from tally.report import plots  # imports matplotlib

    prices = load_prices(prices_path)
    try:
        results: dict[str, Any] = json.loads(results_path.read_text(encoding="utf-8"))
        speedup, overhead = results["speedup"], results["overhead"]
        cores = results["meta"]["cores"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"cannot read the results of a report from {results_path}: {exc}"
        ) from None
    results["cost"] = cost_section(prices, speedup["cpu"], speedup["http"], overhead, cores)
    out.mkdir(parents=True, exist_ok=True)
    source = results_path.resolve().parent
    if source != out.resolve():  # the plots and records of the run go along
        for png in source.glob("*.png"):
            shutil.copyfile(png, out / png.name)
        if (source / "raw").is_dir():
            shutil.copytree(source / "raw", out / "raw", dirs_exist_ok=True)
    results["plots"]["cost"] = plots.cost(
        results["cost"]["projection"], prices.projection.data_tb, out / "cost.png"
    )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown.render(results), encoding="utf-8")
    log.info("wrote %s from %s", out / "report.md", results_path)
    return EXIT_OK


def run_report(args: argparse.Namespace) -> int:
    """The ``tally report`` command."""
    require_matplotlib()
    if getattr(args, "from", None):
        return reprice(Path(getattr(args, "from")), Path(args.out), args.prices)
    plan = ex.QUICK if args.quick else ex.FULL
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="tally-report-") as tmp:
        try:
            return run_experiments(plan, Path(tmp), out, args.prices)
        except Exception:
            runs = Path(tmp) / "runs"
            if runs.is_dir():  # keep every log of the runs so far, for a post-mortem
                _keep_raw(runs, out / "failed-runs", ("*.json", "*.jsonl", "*.log"))
                log.error("the records of the runs so far are in %s", out / "failed-runs")
            raise
