"""Serverless or a cluster: one uploaded object priced both ways, from the price table.

Serverless is the Azure Functions app of ``deploy/azure-functions``: one execution cuts the
object into ranges (as :func:`tally.storage.ranges.cut` cuts it), one execution per range
computes its partial, and the last one also merges. Each execution is billed for the
instance's memory over its duration, rounded up and never below the plan's minimum; the
storage operations and the Event Grid event the flow makes are added. The cluster is VM time:
the seconds one VM of ``[vm]`` spends on the object at the measured rate (its share of a busy
machine), against an always-on VM's month. The break-even is the number of uploads a month at
which the month's Functions bill equals the VM's: below it serverless costs less (the VM
would mostly sit idle), above it the VM does.

Pure functions of the prices and the measured rate; every figure lands in results.json.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tally.storage.ranges import cut

MIB = 1 << 20
HOUR_S = 3600.0


@dataclass(frozen=True)
class FunctionsPrices:
    region: str
    plan: str
    usd_per_gb_second: float
    usd_per_million_executions: float
    memory_gb: float
    minimum_s: float
    rounding_s: float
    usd_per_10k_blob_writes: float
    usd_per_10k_blob_reads: float
    usd_per_10k_queue_operations: float
    usd_per_million_events: float
    split_mib: float
    get_mib: float
    overhead_s: float
    object_mib: tuple[int, ...]
    month_hours: float


def billed_s(seconds: float, fp: FunctionsPrices) -> float:
    """An execution's billed duration: rounded up to the plan's step, at least its minimum."""
    steps = math.ceil(round(seconds / fp.rounding_s, 9))  # 1.1 / 0.1 is 11.000000000000002
    return max(fp.minimum_s, steps * fp.rounding_s)


def range_sizes(size: int, split_bytes: int) -> list[int]:
    """The bytes of each range the app cuts an object of ``size`` bytes into."""
    return [(b if b >= 0 else size) - a for a, b in cut(size, split_bytes)]


@dataclass(frozen=True)
class ObjectCost:
    """One object of ``size`` bytes, processed once, both ways."""

    size: int
    ranges: int
    executions: int
    billed_s: float  # every execution's billed seconds, summed
    gb_s: float
    compute_usd: float  # GB-s
    executions_usd: float
    blob_writes: int
    blob_reads: int
    queue_operations: int
    storage_usd: float  # blob and queue operations
    events_usd: float
    vm_busy_s: float  # one VM's seconds on this object at the measured rate
    vm_usd: float  # those seconds, pro-rated
    vm_month_usd: float  # an always-on VM
    breakeven_per_month: float | None  # uploads a month where both cost the same (None: never)
    breakeven_utilization: float | None  # how busy the VM is at that volume

    @property
    def serverless_usd(self) -> float:
        return self.compute_usd + self.executions_usd + self.storage_usd + self.events_usd

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "serverless_usd": self.serverless_usd}


def object_cost(
    size: int, worker_bytes_s: float, machine_bytes_s: float, vm_usd_per_hour: float,
    fp: FunctionsPrices,
) -> ObjectCost:  # fmt: skip
    """``size`` bytes on Functions (each range computed at ``worker_bytes_s``, one worker's
    measured rate) and on a VM that processes ``machine_bytes_s``."""
    sizes = range_sizes(size, int(fp.split_mib * MIB))
    n = len(sizes)
    maps = [fp.overhead_s + s / worker_bytes_s for s in sizes]
    maps[-1] += fp.overhead_s  # the last map also merges and writes the result
    billed = billed_s(fp.overhead_s, fp) + sum(billed_s(s, fp) for s in maps)
    gb_s = billed * fp.memory_gb
    executions = n + 1  # the cut, and one map per range
    # writes: each partial, each map's listing, the claim, the merge's listing, the result;
    # reads: each range (one Get Blob per get_mib), each partial, the blob's properties
    writes = 2 * n + 3
    reads = sum(max(1, math.ceil(s / (fp.get_mib * MIB))) for s in sizes) + n + 1
    queue = 3 * n  # put, get and delete of each range's message
    storage = (
        writes / 1e4 * fp.usd_per_10k_blob_writes
        + reads / 1e4 * fp.usd_per_10k_blob_reads
        + queue / 1e4 * fp.usd_per_10k_queue_operations
    )
    busy_s = size / machine_bytes_s
    vm_usd = busy_s / HOUR_S * vm_usd_per_hour
    month = fp.month_hours * vm_usd_per_hour
    serverless = (
        gb_s * fp.usd_per_gb_second
        + executions / 1e6 * fp.usd_per_million_executions
        + storage
        + 1 / 1e6 * fp.usd_per_million_events
    )
    breakeven = month / serverless if serverless > vm_usd else None
    utilization = None if breakeven is None else breakeven * busy_s / (fp.month_hours * HOUR_S)
    return ObjectCost(
        size=size, ranges=n, executions=executions, billed_s=billed, gb_s=gb_s,
        compute_usd=gb_s * fp.usd_per_gb_second,
        executions_usd=executions / 1e6 * fp.usd_per_million_executions,
        blob_writes=writes, blob_reads=reads, queue_operations=queue, storage_usd=storage,
        events_usd=1 / 1e6 * fp.usd_per_million_events, vm_busy_s=busy_s, vm_usd=vm_usd,
        vm_month_usd=month, breakeven_per_month=breakeven, breakeven_utilization=utilization,
    )  # fmt: skip


def comparison(
    fp: FunctionsPrices, worker_bytes_s: float, machine_bytes_s: float, vm_usd_per_hour: float
) -> dict[str, Any]:
    """The report's figures: each priced object size, and what they were derived from."""
    return {
        "worker_mb_s": worker_bytes_s / 1e6,
        "machine_mb_s": machine_bytes_s / 1e6,
        "objects": [
            object_cost(mib * MIB, worker_bytes_s, machine_bytes_s, vm_usd_per_hour, fp).as_dict()
            for mib in fp.object_mib
        ],
    }


# --- the report's text -----------------------------------------------------------------------


def _per_month(x: float | None) -> str:
    return "never" if x is None else f"{x:,.0f}"


def markdown(section: dict[str, Any], prices: dict[str, Any]) -> str:
    """The cost section's comparison of Functions and a VM, every figure from ``section``."""
    from tally.report import fmt

    fp, vm = prices["functions"], prices["vm"]
    objects = section["objects"]
    rows = [
        [f"{o['size'] / MIB:g} MiB", fmt.count(o["ranges"]), fmt.count(o["executions"]),
         f"{o['gb_s']:g}", fmt.usd(o["compute_usd"] + o["executions_usd"]),
         fmt.usd(o["storage_usd"] + o["events_usd"]), fmt.usd(o["serverless_usd"]),
         fmt.secs(o["vm_busy_s"]), fmt.usd(o["vm_usd"]),
         _per_month(o["breakeven_per_month"]),
         _per_month(None if o["breakeven_per_month"] is None
                    else o["breakeven_per_month"] / fp["month_hours"]),
         fmt.pct1(o["breakeven_utilization"])]
        for o in objects
    ]  # fmt: skip
    small, large = objects[0], objects[-1]
    month = small["vm_month_usd"]
    return "\n".join(
        [
            "### Serverless (Azure Functions) or a cluster, per uploaded object\n",
            f"Prices: Azure Functions, {fp['plan']}, in {fp['region']}: list prices "
            f"({fmt.usd(fp['usd_per_gb_second'])} per GB-s of a {fp['memory_gb']:g} GB "
            f"instance, billed at least {fp['minimum_s']:g} s per execution and in steps of "
            f"{fp['rounding_s']:g} s; {fmt.usd(fp['usd_per_million_executions'])} per million "
            f"executions; Blob Storage {fmt.usd(fp['usd_per_10k_blob_writes'])} and "
            f"{fmt.usd(fp['usd_per_10k_blob_reads'])} per 10,000 writes and reads; Queue "
            f"Storage {fmt.usd(fp['usd_per_10k_queue_operations'])} per 10,000 operations; "
            f"Event Grid {fmt.usd(fp['usd_per_million_events'])} per million events), sources "
            "and the date read in the `[functions]` table of the TOML; free grants left out. "
            f"The VM is the `[vm]` above at {fmt.usd(vm['usd_per_hour'])} per hour, "
            f"{fmt.usd(month)} for an always-on month of {fp['month_hours']:g} hours.\n",
            fmt.table(
                [
                    "object",
                    "ranges",
                    "executions",
                    "billed GB-s",
                    "Functions",
                    "storage and events",
                    "serverless per object",
                    "VM busy (s)",
                    "VM time per object",
                    "break-even uploads per month",
                    "per hour",
                    "VM busy at break-even",
                ],
                rows,
            ),
            f"How it is computed: the app cuts an object into ranges of {fp['split_mib']:g} "
            "MiB; one execution cuts, one per range computes its partial (at one worker's "
            f"measured rate, {fmt.rate(section['worker_mb_s'])} MB/s, plus "
            f"{fp['overhead_s']:g} s of storage round trips, an assumption), and the last one "
            "also merges; each is billed its rounded duration times the instance memory. "
            "Storage: a write per partial, per map's listing, the claim, the merge's listing "
            f"and the result; a read per {fp['get_mib']:g} MiB of each range, per partial and "
            "for the blob's properties; a put, get and delete per range message; one event. "
            "The VM figure is its share of a busy VM processing "
            f"{fmt.rate(section['machine_mb_s'])} MB/s (the measured best rate). The "
            "break-even is the VM's month divided by the serverless cost of one object.\n",
            f"Where serverless wins: sparse, small uploads. A {small['size'] / MIB:g} MiB "
            f"object costs {fmt.usd(small['serverless_usd'])} on Functions, "
            f"{fmt.pct(small['compute_usd'] / small['serverless_usd'])} of it the "
            f"{fp['minimum_s']:g} s minimum of its executions, and nothing while no file "
            f"arrives; the always-on VM costs {fmt.usd(month)} a month however few files come. "
            f"Below {_per_month(small['breakeven_per_month'])} such uploads a month (about "
            f"{_per_month((small['breakeven_per_month'] or 0) / fp['month_hours'])} an hour) "
            "Functions cost less.\n",
            _cluster_wins(large),
        ]
    )


def _cluster_wins(o: dict[str, Any]) -> str:
    from tally.report import fmt

    size = f"{o['size'] / MIB:g} MiB"
    if o["breakeven_per_month"] is None:
        return (
            f"Where the cluster wins: nowhere at these figures. A {size} object costs "
            f"{fmt.usd(o['serverless_usd'])} on Functions, less than the "
            f"{fmt.usd(o['vm_usd'])} of a busy VM's time it takes.\n"
        )
    return (
        f"Where the cluster wins: sustained volume. A busy VM processes a {size} object for "
        f"{fmt.usd(o['vm_usd'])} of its time against {fmt.usd(o['serverless_usd'])} on "
        f"Functions, so past {_per_month(o['breakeven_per_month'])} such objects a month the "
        f"VM is cheaper, while it is still busy only {fmt.pct1(o['breakeven_utilization'])} "
        "of the time: any steady load that keeps a VM even that busy belongs on the cluster.\n"
    )
