"""Run a command as a subprocess and measure it: wall-clock time until its result reaches
stdout, time until it exits, and the peak memory of its whole process tree.

Memory is the sum of the resident set sizes (RSS) of the process and every descendant,
sampled with psutil every ``interval`` seconds (50 ms). A process found once stays counted
while it lives, even if its parent exits and it is re-parented. RSS counts a shared page (of
a shared library, of memory shared after a fork, of a shared-memory object store) once per
process that maps it, so the sum is an upper bound; every ``PSS_EVERY``-th sample also sums
the proportional set sizes (PSS: a shared page split between the processes that map it),
which costs about 1 ms per process (the kernel walks its mappings), hence less often.

When the command exits, descendants still running get a grace period to exit by themselves;
any left after it are killed (by pid, after checking with psutil that it is the same
process) and reported.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

GRACE_S = 5.0
PSS_EVERY = 4  # samples
LABEL_CHARS = 48


def label(proc: psutil.Process) -> str:
    """A short name: the executable's, and for Python the module, script or code it runs."""
    try:
        name = proc.name()
        if not name.startswith("python"):
            return name
        args = proc.cmdline()[1:]
        while args and args[0].startswith("-") and args[0] not in ("-m", "-c"):
            args = args[1:]
        if args[:1] == ["-m"]:
            text = f"python -m {' '.join(args[1:3])}"
        elif args[:1] == ["-c"]:
            text = f"python -c {args[1] if len(args) > 1 else ''}"
        elif args:
            more = [a for a in args[1:2] if not a.startswith("-")]  # peers.py's system
            text = f"python {' '.join([args[0].rsplit('/', 1)[-1], *more])}"
        else:
            text = "python"
        return text[:LABEL_CHARS]
    except psutil.Error:
        return "?"


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree until :meth:`finish` is called."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.seen: dict[int, psutil.Process] = {}
        self.labels: dict[int, str] = {}
        self.peak = 0
        self.peak_by_label: dict[str, int] = {}
        self.peak_pss = 0
        self.samples = 0
        self._done = threading.Event()

    def _discover(self) -> None:
        found = [self.root]
        with contextlib.suppress(psutil.Error):
            found += self.root.children(recursive=True)
        for proc in found:
            if proc.pid not in self.seen:
                self.seen[proc.pid] = proc
            if self.labels.get(proc.pid, "?") in ("?", "python"):  # new, or caught in exec
                self.labels[proc.pid] = label(self.seen[proc.pid])

    def sample(self) -> None:
        self._discover()
        pss = self.samples % PSS_EVERY == 0
        total = total_pss = 0
        by_label: dict[str, int] = {}
        for pid, proc in list(self.seen.items()):
            try:
                rss = proc.memory_info().rss
                if pss:
                    total_pss += proc.memory_full_info().pss
            except psutil.Error:  # exited (a zombie has no memory either)
                continue
            total += rss
            by_label[self.labels[pid]] = by_label.get(self.labels[pid], 0) + rss
        self.samples += 1
        self.peak_pss = max(self.peak_pss, total_pss)
        if total > self.peak:
            self.peak, self.peak_by_label = total, by_label

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval)

    def finish(self) -> None:
        self._done.set()
        self.join()

    def alive(self) -> list[psutil.Process]:
        """Processes of the tree still running (the same processes: psutil checks the
        creation time, so a reused pid is not mistaken for one of them)."""
        out = []
        for proc in self.seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
            except psutil.Error:
                pass
        return out


@dataclass
class Run:
    command: list[str]
    returncode: int = 0
    result_s: float = float("nan")  # until the result reached stdout
    exit_s: float = float("nan")  # until the command exited
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0  # sampled less often: may miss the peak
    peak_by_process_mb: dict[str, float] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)  # label -> how many were seen
    samples: int = 0
    started_at: float = 0.0  # time.time() just before the start
    stdout: str = ""
    stderr_tail: str = ""
    leftovers: list[tuple[int, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        keys = ("returncode", "result_s", "exit_s", "peak_rss_mb", "peak_pss_mb")
        keys += ("peak_by_process_mb",)
        keys += ("processes", "samples", "started_at", "leftovers")
        out = {k: getattr(self, k) for k in keys}
        out.update(self.extra)
        if self.returncode != 0:
            out["stderr_tail"] = self.stderr_tail
        return out


def run_measured(
    command: list[str], env: dict[str, str], marker: str | None, timeout: float
) -> Run:
    """Run ``command``; the result time is when the first stdout line starting with
    ``marker`` arrives (the first line at all when ``marker`` is None)."""
    run = Run(command)
    lines: list[bytes] = []
    result_at: list[float] = []
    wanted = marker.encode() if marker is not None else b""

    with tempfile.TemporaryFile() as errors:
        run.started_at = time.time()
        began = time.perf_counter()
        proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not result_at and line.startswith(wanted):
                    result_at.append(time.perf_counter())
                lines.append(line)

        reader = threading.Thread(target=read, name="stdout-reader", daemon=True)
        reader.start()
        try:
            run.returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            run.returncode = -9
            for child in sampler.alive():
                child.kill()
            proc.wait()
        run.exit_s = time.perf_counter() - began
        deadline = time.monotonic() + GRACE_S
        while sampler.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        sampler.finish()
        for child in sampler.alive():
            run.leftovers.append((child.pid, sampler.labels[child.pid]))
            with contextlib.suppress(psutil.Error):
                child.kill()
        reader.join(GRACE_S)
        errors.seek(0)
        run.stderr_tail = errors.read()[-4000:].decode("utf-8", "replace")

    run.result_s = (result_at[0] - began) if result_at else run.exit_s
    run.stdout = b"".join(lines).decode("utf-8", "replace")
    run.peak_rss_mb = sampler.peak / 1e6
    run.peak_pss_mb = sampler.peak_pss / 1e6
    run.peak_by_process_mb = {
        k: round(v / 1e6, 1)
        for k, v in sorted(sampler.peak_by_label.items(), key=lambda kv: -kv[1])
    }
    for name in sampler.labels.values():
        run.processes[name] = run.processes.get(name, 0) + 1
    run.samples = sampler.samples
    return run
