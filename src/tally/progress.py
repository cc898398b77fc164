"""Progress of a running job on stderr: a rich progress bar on a terminal, a log line every
few seconds otherwise. Never on stdout, which holds only the result."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("tally.progress")
LOG_EVERY_S = 5.0
SHOW_AFTER_S = 1.0  # short jobs finish without a bar flashing by


@dataclass
class Snapshot:
    done: int
    total: int
    bytes_done: int
    elapsed_s: float  # since work started
    workers: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes_done / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.done or self.elapsed_s <= 0:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)


class ProgressDisplay:
    """Call :meth:`update` with fresh snapshots; :meth:`close` when the job is over."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._last_log = 0.0
        self._terminal = sys.stderr.isatty()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("partitions"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[workers]} workers"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._bar.add_task("job", total=self.total, rate="", workers=0)
        self._bar.start()

    def update(self, snap: Snapshot) -> None:
        if not self.enabled:
            return
        if self._terminal and self._bar is None and snap.elapsed_s >= SHOW_AFTER_S:
            self._start_bar()
        if self._bar is not None:
            self._bar.update(
                self._task, completed=snap.done, rate=f"{snap.mb_per_s:8.1f} MB/s",
                workers=snap.workers,
            )  # fmt: skip
        elif not self._terminal and snap.elapsed_s - self._last_log >= LOG_EVERY_S:
            self._last_log = snap.elapsed_s
            eta = snap.eta_s
            log.info(
                "progress: %d/%d partitions, %.1f MB/s, %d workers, ETA %s",
                snap.done, snap.total, snap.mb_per_s, snap.workers,
                "?" if eta is None else f"{eta:.0f}s",
            )  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
