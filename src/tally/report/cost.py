"""The cost model: a price table (TOML) and pure functions from measured figures to dollars.

Units: bytes and seconds in, US dollars out; a terabyte is 10**12 bytes, a GB 10**9 bytes.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tally.errors import ConfigError
from tally.report.scaling import best_row
from tally.report.serverless import FunctionsPrices, comparison

TB = 10**12
GB = 10**9
MB = 10**6
MIB = 1 << 20
HOUR_S = 3600.0


@dataclass(frozen=True)
class VmPrices:
    name: str
    usd_per_hour: float
    vcpus: int
    billing_minimum_s: float
    disk_mb_s: float
    network_mb_s: float


@dataclass(frozen=True)
class ServerlessPrices:
    usd_per_gb_second: float
    usd_per_million_requests: float
    memory_gb: float


@dataclass(frozen=True)
class StoragePrices:
    usd_per_gb_month: float
    usd_per_1000_get: float
    usd_per_1000_put: float


@dataclass(frozen=True)
class ProjectionPlan:
    data_tb: float
    partition_mib: float
    machines: tuple[int, ...]


@dataclass(frozen=True)
class Prices:
    vm: VmPrices
    serverless: ServerlessPrices
    object_storage: StoragePrices
    projection: ProjectionPlan
    source: str  # where the table came from
    functions: FunctionsPrices = field(default_factory=lambda: default_functions())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS: dict[str, type[Any]] = {
    "vm": VmPrices,
    "serverless": ServerlessPrices,
    "object_storage": StoragePrices,
    "projection": ProjectionPlan,
    "functions": FunctionsPrices,
}


def default_table() -> dict[str, Any]:
    text = resources.files("tally.report").joinpath("prices.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def default_functions() -> FunctionsPrices:
    """The packaged ``[functions]`` prices."""
    table = default_table()["functions"]
    return FunctionsPrices(**{k: _coerce("functions", k, v, v) for k, v in table.items()})


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool) or isinstance(value, bool):
            raise TypeError
        if isinstance(default, str):
            return str(value)
        if isinstance(default, list):
            machines = tuple(int(v) for v in value)
            if not machines or min(machines) < 1:
                raise ValueError
            return machines
        if isinstance(default, int) and key == "vcpus":
            return int(value)
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise ValueError
        return number
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"prices: bad value for [{section}] {key}: {value!r}") from exc


def prices_from(table: dict[str, Any], override: dict[str, Any], source: str) -> Prices:
    """Defaults ``table`` with the keys of ``override`` replacing theirs."""
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        values = dict(table[section])
        extra = override.get(section, {})
        if not isinstance(extra, dict):
            raise ConfigError(f"prices: [{section}] must be a table")
        unknown = set(extra) - set(values)
        if unknown:
            raise ConfigError(
                f"prices: unknown key(s) in [{section}]: {', '.join(sorted(unknown))}"
            )
        values.update(extra)
        sections[section] = cls(
            **{k: _coerce(section, k, v, table[section][k]) for k, v in values.items()}
        )
    unknown_sections = set(override) - set(_SECTIONS)
    if unknown_sections:
        raise ConfigError(f"prices: unknown section(s): {', '.join(sorted(unknown_sections))}")
    return Prices(source=source, **sections)


def load_prices(path: str | None = None) -> Prices:
    """The packaged defaults, overridden by the TOML file at ``path`` if given."""
    override: dict[str, Any] = {}
    if path is not None:
        try:
            override = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read price table {path}: {exc}") from exc
    source = "defaults (tally/report/prices.toml)" + (f" overridden by {path}" if path else "")
    return prices_from(default_table(), override, source)


# --- pure cost functions ---------------------------------------------------------------------


def vm_cost_usd(seconds: float, machines: int, vm: VmPrices, minimum: bool = True) -> float:
    """``machines`` VMs for ``seconds`` each, per-second billing (with the minimum if asked)."""
    billed = max(seconds, vm.billing_minimum_s) if minimum else seconds
    return machines * billed / HOUR_S * vm.usd_per_hour


def vm_usd_per_tb(bytes_per_s: float, vm: VmPrices) -> float:
    """One VM processing a terabyte at ``bytes_per_s`` (pro-rated, no minimum)."""
    return vm_cost_usd(TB / bytes_per_s, 1, vm, minimum=False)


def serverless_usd(compute_s: float, requests: float, sv: ServerlessPrices) -> float:
    """Functions of ``sv.memory_gb`` running ``compute_s`` seconds in all, ``requests`` calls."""
    return (
        compute_s * sv.memory_gb * sv.usd_per_gb_second
        + requests / 1e6 * sv.usd_per_million_requests
    )


def storage_usd_per_month(nbytes: float, st: StoragePrices) -> float:
    return nbytes / GB * st.usd_per_gb_month


def get_requests_usd(requests: float, st: StoragePrices) -> float:
    return requests / 1000 * st.usd_per_1000_get


def coordinator_tasks_per_s(per_task_s: float, merge_s: float) -> float:
    """Tasks per second one coordinator can hand out and commit: the inverse of its cost per
    task (the round trip of an empty task plus merging one real partial)."""
    return 1.0 / (per_task_s + merge_s)


def bottleneck_machines(
    coord_tasks_s: float, partition_bytes: float, machine_bytes_s: float
) -> float:
    """Machines at which the workers produce tasks as fast as the coordinator commits them."""
    return coord_tasks_s * partition_bytes / machine_bytes_s


@dataclass(frozen=True)
class Projection:
    machines: int
    storage: str  # "local disk" or "object storage"
    bound: str  # the limit that sets the rate: CPU, disk, network or coordinator
    rate_bytes_s: float
    time_s: float
    vm_usd: float
    requests_usd: float

    @property
    def total_usd(self) -> float:
        return self.vm_usd + self.requests_usd

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_usd": self.total_usd}


def project(
    machines: int,
    data_bytes: float,
    partition_bytes: float,
    cpu_bytes_s: float,
    storage: str,
    prices: Prices,
    coord_tasks_s: float,
    startup_s: float,
) -> Projection:
    """Time and cost of ``data_bytes`` on ``machines`` VMs (the coordinator on one of them).

    Each machine runs at the lower of its measured CPU rate and its storage bandwidth (disk
    for ``local disk``, network for ``object storage``); the cluster at the lower of the sum
    and what the coordinator can commit (tasks per second times the partition size).
    """
    vm = prices.vm
    io_name, io_mb_s = (
        ("disk", vm.disk_mb_s) if storage == "local disk" else ("network", vm.network_mb_s)
    )
    limits = {
        "CPU": machines * cpu_bytes_s,
        io_name: machines * io_mb_s * MB,
        "coordinator": coord_tasks_s * partition_bytes,
    }
    bound = min(limits, key=lambda k: limits[k])
    rate = limits[bound]
    time_s = startup_s + data_bytes / rate
    tasks = math.ceil(data_bytes / partition_bytes)
    requests = (
        get_requests_usd(tasks, prices.object_storage) if storage == "object storage" else 0.0
    )
    return Projection(
        machines, storage, bound, rate, time_s, vm_cost_usd(time_s, machines, vm), requests
    )


# --- the report's cost section ---------------------------------------------------------------


def _best(section: dict[str, Any]) -> dict[str, Any]:
    return best_row(section["rows"])


def _busy_s(section: dict[str, Any], workers: int) -> float:
    busy = sorted(float(r["busy_s"]) for r in section["runs"] if r["workers"] == workers)
    return busy[len(busy) // 2]


def per_job(name: str, section: dict[str, Any], prices: Prices) -> dict[str, Any]:
    """Cost of the best measured run of a speedup experiment, and per TB at its rate."""
    row = _best(section)
    nbytes = section["data"]["bytes"]
    busy = _busy_s(section, row["workers"])
    partitions = section["data"]["partitions"]
    return {
        "experiment": name,
        "workers": row["workers"],
        "bytes": nbytes,
        "job_s": row["job_s"],
        "mb_s": row["mb_s"],
        "vm_usd": vm_cost_usd(row["job_s"], 1, prices.vm, minimum=False),
        "vm_usd_per_tb": vm_usd_per_tb(row["mb_s"] * MB, prices.vm),
        "busy_s": busy,
        "serverless_usd_per_tb": serverless_usd(
            busy * TB / nbytes, partitions * TB / nbytes, prices.serverless
        ),
    }


def cost_section(
    prices: Prices, cpu: dict[str, Any], http: dict[str, Any], overhead: dict[str, Any], cores: int
) -> dict[str, Any]:
    """Every cost figure of the report, from the measured speedup and overhead results."""
    plan = prices.projection
    data_bytes = plan.data_tb * TB
    partition_bytes = plan.partition_mib * MIB
    machine_bytes_s = _best(cpu)["mb_s"] * MB * prices.vm.vcpus / cores
    coord_tasks_s = coordinator_tasks_per_s(
        overhead["per_task_ms"] / 1e3, overhead["merge_ms_per_partial"] / 1e3
    )
    ready = [r["ready_s"] for r in cpu["rows"] if r["workers"] == prices.vm.vcpus]
    startup_s = float(ready[0] if ready else cpu["rows"][0]["ready_s"])
    projection = [
        project(m, data_bytes, partition_bytes, machine_bytes_s, storage, prices,
                coord_tasks_s, startup_s).as_dict()
        for storage in ("local disk", "object storage")
        for m in plan.machines
    ]  # fmt: skip
    rates = {  # bytes/s of one machine: data in memory, on local disk, in object storage
        "in memory": machine_bytes_s,
        "local disk": min(machine_bytes_s, prices.vm.disk_mb_s * MB),
        "object storage": min(machine_bytes_s, prices.vm.network_mb_s * MB),
    }
    return {
        "prices": prices.as_dict(),
        "per_job": [per_job("cpu", cpu, prices), per_job("http", http, prices)],
        "machine_mb_s": machine_bytes_s / MB,
        "measured_cores": cores,
        "coordinator_tasks_per_s": coord_tasks_s,
        "partition_bytes": partition_bytes,
        "tasks": math.ceil(data_bytes / partition_bytes),
        "startup_s": startup_s,
        "machine_rates_mb_s": {k: v / MB for k, v in rates.items()},
        "bottleneck_machines": {
            k: bottleneck_machines(coord_tasks_s, partition_bytes, v) for k, v in rates.items()
        },
        "storage_usd_per_month": storage_usd_per_month(data_bytes, prices.object_storage),
        "serverless": comparison(
            prices.functions,
            machine_bytes_s / prices.vm.vcpus,
            machine_bytes_s,
            prices.vm.usd_per_hour,
        ),
        "projection": projection,
    }
