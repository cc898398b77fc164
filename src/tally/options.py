"""The options of a job, checked when made: :class:`JobOptions`, which the command line, the
Python API and the service all build, with the same defaults and the same one-line errors."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tally.errors import ConfigError

if TYPE_CHECKING:
    from tally.groupby_options import GroupByOptions

KERNELS = ("auto", "fast", "reference")
DEFAULT_TOP = 25
DEFAULT_RECORD_LIMIT = 1 << 20
MAX_RECORD_LIMIT = 1 << 30
LEASE_TIMEOUT_RANGE = (0.3, 86400.0)
DEFAULT_SPLIT_SIZE = 64 << 20
DEFAULT_CACHE_SIZE = 1 << 30  # tally.cache.DEFAULT_CACHE_SIZE, without importing it


def _whole(name: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(f"{name} must be {bound}, not {value}")
    return value


def _seconds(name: str, value: object, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be from {low:g} to {high:g} seconds, not {value:g}")
    return float(value)


def to_bytes(name: str, value: int | str, low: int = 1, high: int | None = MAX_RECORD_LIMIT) -> int:
    """A byte count given as a number or a size with a unit (``"1MiB"``, ``"512KB"``)."""
    if isinstance(value, str):
        from tally.datagen import parse_size

        value = parse_size(value)
    return _whole(name, value, low, high if low else None)


@dataclass(frozen=True)
class JobOptions:
    """Everything a job needs, checked when made (ConfigError). The command line and
    :func:`run` both build one; their defaults are the same."""

    source: str
    top: int | None = None  # DEFAULT_TOP when no query is chosen
    domain: str | None = None
    all: bool = False
    workers: int | None = None  # local worker processes; None: one per CPU
    kernel: str = "auto"
    max_attempts: int = 3
    lease_timeout: float = 3.0
    skip_failed: bool = False
    record_limit: int = DEFAULT_RECORD_LIMIT
    min_workers: int | None = None  # None: every local worker, or 1
    speculation: bool = True
    stats: str | None = None  # a path: the JSON record of the run
    events: str | None = None  # a path: every attempt's life as JSON lines
    progress: bool = False  # a progress bar or periodic line on stderr
    task_delay: float = 0.0  # fault injection: seconds added to every task of a local worker
    split_size: int = DEFAULT_SPLIT_SIZE  # larger partitions run as ranges; 0: never split
    task_timeout: float | None = None  # an attempt running longer fails and is retried
    group_by: GroupByOptions | None = None  # a group-by over delimited files instead
    output: str | None = None  # a path or URL: the result, in the format its extension names
    storage_options: dict[str, str] = field(default_factory=dict)  # KEY=VALUE for fsspec
    cache: str | None = None  # a directory where the local workers keep partials
    cache_size: int = DEFAULT_CACHE_SIZE

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(f"source must be a path, URL or glob, not {self.source!r}")
        chosen = [self.domain is not None, self.top is not None, bool(self.all)]
        if sum(chosen) > 1:
            raise ConfigError("choose one query: domain, top or all")
        if self.domain is not None and not isinstance(self.domain, str):
            raise ConfigError(f"domain must be text, not {self.domain!r}")
        if self.top is not None:
            _whole("top", self.top, 1)
        if self.workers is not None:
            _whole("workers", self.workers, 1)
        if self.kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {', '.join(KERNELS)}, not {self.kernel!r}")
        _whole("max attempts", self.max_attempts, 1)
        _seconds("lease timeout", self.lease_timeout, *LEASE_TIMEOUT_RANGE)
        _whole("record limit", self.record_limit, 1, MAX_RECORD_LIMIT)
        if self.min_workers is not None:
            _whole("min workers", self.min_workers, 1)
        _seconds("task delay", self.task_delay, 0.0)
        _whole("split size", self.split_size, 0)
        _whole("cache size", self.cache_size, 1)
        if self.task_timeout is not None:
            _seconds("task timeout", self.task_timeout, 0.001)
        self._check_storage()
        self.query()  # a bad group-by or SQL fails here, before anything starts

    def _check_storage(self) -> None:
        from tally.storage.outputs import check_name

        for key, value in self.storage_options.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise ConfigError(f"storage option {key!r} must map a name to text")
        for option, target in (("output", self.output), ("stats", self.stats)):
            if target is not None:
                check_name(target, option)
        if self.events is not None:
            check_name(self.events, "events")

    @property
    def local_workers(self) -> int:
        """Worker processes a local run starts; ConfigError if the job could never start."""
        count = self.workers or os.cpu_count() or 2
        if self.min_workers is not None and self.min_workers > count:
            raise ConfigError(
                f"min workers {self.min_workers} is more than the {count} workers started: "
                "the job would never start"
            )
        return count

    def query(self) -> Any:
        """The plan of the job: a group-by (not yet bound to the data) or a domain count."""
        from tally.protocol import QuerySpec

        if self.group_by is not None and self.group_by.wanted:
            if self.domain is not None or self.top is not None or self.all:
                raise ConfigError("choose one query: a group-by, or domain, top or all")
            return self.group_by.source_and_plan()[1]
        if self.domain is not None:
            return QuerySpec("domain", domain=self.domain.encode("utf-8", "surrogateescape"))
        if self.all:
            return QuerySpec("all")
        return QuerySpec("top", k=self.top or DEFAULT_TOP)
