"""`tally report`'s comparison of Azure Functions and a VM per uploaded object: the
arithmetic, worked out by hand, the price table, and the report's text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tally.errors import ConfigError
from tally.report import cost, fmt, markdown, serverless
from tally.report.serverless import FunctionsPrices, billed_s, object_cost, range_sizes

MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
FP = FunctionsPrices(
    region="test region", plan="test plan", usd_per_gb_second=0.00001,
    usd_per_million_executions=0.2, memory_gb=2.0, minimum_s=1.0, rounding_s=0.1,
    usd_per_10k_blob_writes=0.05, usd_per_10k_blob_reads=0.004,
    usd_per_10k_queue_operations=0.004, usd_per_million_events=0.6, split_mib=64, get_mib=4,
    overhead_s=0.05, object_mib=(1, 64, 1024), month_hours=730,
)  # fmt: skip
WORKER = 32 * MIB  # bytes/s: a 64 MiB range computes in 2 s
MACHINE = 2 * WORKER
VM_HOUR = 0.36
EXACT = 1e-12


def test_billing_rounds_up_to_the_step_and_never_below_the_minimum() -> None:
    assert billed_s(0.05, FP) == 1.0
    assert billed_s(1.0, FP) == 1.0
    assert billed_s(1.01, FP) == pytest.approx(1.1, rel=EXACT)
    assert billed_s(1.1, FP) == pytest.approx(1.1, rel=EXACT)  # 1.1 / 0.1 = 11.000000000000002
    assert billed_s(2.05 + 0.05, FP) == pytest.approx(2.1, rel=EXACT)


def test_ranges_are_the_apps_cut() -> None:
    assert range_sizes(MIB, 64 * MIB) == [MIB]
    assert range_sizes(1024 * MIB, 64 * MIB) == [64 * MIB] * 16
    assert range_sizes(100, 30) == [25, 25, 25, 25]


def test_a_small_object_costs_the_minimum_of_two_executions() -> None:
    c = object_cost(MIB, WORKER, MACHINE, VM_HOUR, FP)
    # the cut (0.05 s) and one map (0.05 + 1/32 + 0.05 s) are each billed the 1 s minimum
    assert (c.ranges, c.executions, c.billed_s, c.gb_s) == (1, 2, 2.0, 4.0)
    assert c.compute_usd == pytest.approx(4.0 * 0.00001, rel=EXACT)
    assert c.executions_usd == pytest.approx(2 / 1e6 * 0.2, rel=EXACT)
    # writes: partial, listing, claim, merge listing, result; reads: one range GET, the
    # partial, the properties; queue: put, get, delete
    assert (c.blob_writes, c.blob_reads, c.queue_operations) == (5, 3, 3)
    storage = 5 / 1e4 * 0.05 + 3 / 1e4 * 0.004 + 3 / 1e4 * 0.004
    assert c.storage_usd == pytest.approx(storage, rel=EXACT) and storage == pytest.approx(2.74e-5)
    assert c.events_usd == pytest.approx(0.6e-6, rel=EXACT)
    assert c.serverless_usd == pytest.approx(6.84e-5, rel=EXACT)
    assert c.vm_busy_s == 1 / 64
    assert c.vm_usd == pytest.approx(1 / 64 / 3600 * 0.36, rel=EXACT)
    assert c.vm_month_usd == pytest.approx(262.8, rel=EXACT)
    assert c.breakeven_per_month == pytest.approx(262.8 / 6.84e-5, rel=EXACT)  # 3,842,105
    assert c.breakeven_utilization == pytest.approx(
        262.8 / 6.84e-5 * (1 / 64) / (730 * 3600), rel=EXACT
    )


def test_a_range_past_the_minimum_is_billed_its_rounded_time() -> None:
    c = object_cost(64 * MIB, WORKER, MACHINE, VM_HOUR, FP)
    # one map of 0.05 + 2 + 0.05 s, billed 2.1 s, and the cut's 1 s
    assert (c.ranges, c.executions) == (1, 2)
    assert c.billed_s == pytest.approx(3.1, rel=EXACT)
    assert c.gb_s == pytest.approx(6.2, rel=EXACT)
    assert c.blob_reads == 16 + 1 + 1
    total = 6.2e-5 + 0.4e-6 + (5 * 0.05 + 18 * 0.004 + 3 * 0.004) / 1e4 + 0.6e-6
    assert c.serverless_usd == pytest.approx(total, rel=EXACT)
    assert c.vm_usd == pytest.approx(1 / 3600 * 0.36, rel=EXACT)  # $0.0001 > $0.0000918
    assert c.breakeven_per_month is None


def test_serverless_cheaper_than_even_a_busy_vm_never_breaks_even() -> None:
    c = object_cost(1024 * MIB, WORKER, MACHINE, VM_HOUR, FP)
    assert (c.ranges, c.executions) == (16, 17)
    assert c.billed_s == pytest.approx(1.0 + 16 * 2.1, rel=EXACT)
    assert (c.blob_writes, c.blob_reads, c.queue_operations) == (35, 16 * 16 + 16 + 1, 48)
    total = 69.2 * 0.00001 + 17 / 1e6 * 0.2 + (35 * 0.05 + 273 * 0.004 + 48 * 0.004) / 1e4
    assert c.serverless_usd == pytest.approx(total + 0.6e-6, rel=EXACT)
    assert c.vm_usd == pytest.approx(16 / 3600 * 0.36, rel=EXACT)  # $0.0016 > $0.000999
    assert c.breakeven_per_month is None and c.breakeven_utilization is None


def test_the_packaged_table_has_the_functions_prices_and_they_can_be_overridden(
    tmp_path: Path,
) -> None:
    fp = cost.load_prices().functions
    assert (fp.usd_per_gb_second, fp.usd_per_million_executions) == (0.000026, 0.40)
    assert (fp.memory_gb, fp.minimum_s, fp.rounding_s) == (2.0, 1.0, 0.1)
    assert fp.object_mib == (1, 64, 1024)
    text = (ROOT / "src/tally/report/prices.toml").read_text()
    for url in ("https://azure.microsoft.com/pricing/details/functions/",
                "https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan#billing",
                "https://azure.microsoft.com/pricing/details/storage/blobs/"):  # fmt: skip
        assert url in text
    assert "Read on 2026-11-30" in text and 'region = "East US"' in text
    override = tmp_path / "prices.toml"
    override.write_text("[functions]\nmemory_gb = 4\nobject_mib = [8]\n")
    mine = cost.load_prices(str(override)).functions
    assert (mine.memory_gb, mine.object_mib, mine.minimum_s) == (4.0, (8,), 1.0)
    override.write_text("[functions]\nmemory = 4\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[functions\]: memory"):
        cost.load_prices(str(override))


def test_the_report_shows_each_figure_and_where_each_side_wins() -> None:
    section = serverless.comparison(FP, WORKER, MACHINE, VM_HOUR)
    prices = {"functions": FP.__dict__, "vm": {"usd_per_hour": VM_HOUR}}
    text = serverless.markdown(section, prices)
    small = section["objects"][0]
    assert (
        "| 1 MiB | 1 | 2 | 4 | $4.04e-05 | $2.8e-05 | $6.84e-05 | 0.016 | $1.56e-06 | "
        "3,842,105 | 5,263 | 2.3% |"
    ) in text
    assert "| 1024 MiB | 16 | 17 | 69.2 |" in text and "| never | never | n/a |" in text
    assert f"costs {fmt.usd(small['serverless_usd'])} on Functions, 58% of it the 1 s" in text
    assert "Below 3,842,105 such uploads a month (about 5,263 an hour) Functions cost less" in text
    assert "Where the cluster wins: nowhere at these figures. A 1024 MiB object costs " in text
    slow = serverless.comparison(FP, WORKER / 4, MACHINE, VM_HOUR)  # functions 4x slower
    text = serverless.markdown(slow, prices)
    large = slow["objects"][-1]
    assert large["breakeven_per_month"] == pytest.approx(262.8 / large["serverless_usd"], rel=EXACT)
    assert (
        f"so past {large['breakeven_per_month']:,.0f} such objects a month the VM is cheaper, "
        f"while it is still busy only {fmt.pct1(large['breakeven_utilization'])} of the time"
    ) in text


def test_report_from_earlier_results_adds_the_comparison(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "tally", "report", "--out", str(out), "--from",
         str(ROOT / "docs/report/results.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    md = (out / "report.md").read_text()
    assert md == markdown.render(results)
    objects = results["cost"]["serverless"]["objects"]
    assert [o["size"] for o in objects] == [MIB, 64 * MIB, 1024 * MIB]
    for o in objects:
        assert f"| {fmt.usd(o['serverless_usd'])} | {fmt.secs(o['vm_busy_s'])} |" in md
    assert {p.name for p in out.glob("*.png")} == {"cost.png", "load.png", "recovery.png",
                                                   "speedup.png"}  # fmt: skip
    bad = subprocess.run(
        [sys.executable, "-m", "tally", "report", "--out", str(out), "--from",
         str(tmp_path / "missing.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith("tally: cannot read the results of a report from")
    )
