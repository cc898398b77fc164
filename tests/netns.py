"""Hosts on a real network: Linux network namespaces joined by veth pairs, and link faults.

A :class:`Network` is one coordinator host (the ``hub``: a bridge at ``10.231.X.1``) and N
worker hosts, each its own namespace with one veth pair to the bridge and the address
``10.231.X.(10+i)``. Everything lives in namespaces created for this test, named
``tly-<pid>-<n>-...``: the root namespace (its links, routes and firewall) is never touched,
so runs side by side cannot collide, and deleting the namespaces removes every link, qdisc
and iptables rule the test made.

Faults on the link of host ``i`` (both directions unless said otherwise):

- :meth:`Network.cut` / :meth:`Network.heal`: the hub's end of the veth pair down / up;
- :meth:`Network.black_hole`: iptables DROP of every packet between the host and the hub;
- :meth:`Network.lose`: iptables ``statistic --mode random`` drops a fraction of packets;
- :meth:`Network.slow`: a token bucket (``tc ... tbf``) on both ends of the link (not
  netem, which many kernels lack).

Needs root, ``ip`` and ``tc`` (iproute2), and ``iptables`` for the iptables faults
(:func:`ensure_iptables` installs it with apt-get); :func:`unavailable` says why a machine
cannot run these tests.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PREFIX = "tly"
HUB_ADDRESS_END = 1
FIRST_HOST_ADDRESS_END = 10
_networks = itertools.count(1)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (ip, tc, iptables); raise with its stderr when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces are a Linux feature"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"the kernel refuses network namespaces: {made.stderr.strip()}"
    run("ip", "netns", "delete", probe, check=False)
    return None


def ensure_iptables(log: Path) -> None:
    """Install iptables from the distribution's packages when it is missing (as root, with
    apt-get); raise with the reason when that fails. Its output goes to ``log``."""
    if shutil.which("iptables") is not None:
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError("iptables is not installed, and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log.open("ab") as out:

        def apt(*args: str) -> bool:
            argv = ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=120", *args]
            done = subprocess.run(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
            return done.returncode == 0

        if not apt("install", "iptables"):  # stale or missing package lists: refresh, retry
            apt("update")
            apt("install", "iptables")
    if shutil.which("iptables") is None:
        raise RuntimeError(f"iptables is not installed; apt-get could not install it: see {log}")


def sweep_stale() -> list[str]:
    """Delete namespaces that runs of these tests left behind (their process is gone)."""
    listed = run("ip", "netns", "list", check=False).stdout
    swept = []
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        found = re.fullmatch(rf"{PREFIX}-(\d+)-.+", name)
        if found is None or _alive(int(found.group(1))):
            continue
        for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        if run("ip", "netns", "delete", name, check=False).returncode == 0:
            swept.append(name)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Network:
    """A hub (coordinator host, bridge) and ``hosts`` worker hosts on one private /24."""

    def __init__(self, tmp: Path, hosts: int) -> None:
        self.tmp = tmp
        number = next(_networks)
        self.subnet = 1 + (os.getpid() + number) % 250  # a unique x in 10.231.x.0/24 per run
        base = f"{PREFIX}-{os.getpid()}-{number}"
        self.hub = f"{base}-c"
        self.hosts = [f"{base}-h{i}" for i in range(hosts)]
        self.token = secrets.token_hex(16)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # --- addresses -------------------------------------------------------------------------

    def address(self, host: int | None) -> str:
        """The address of worker host ``host``, or of the hub for None."""
        end = HUB_ADDRESS_END if host is None else FIRST_HOST_ADDRESS_END + host
        return f"10.231.{self.subnet}.{end}"

    @property
    def coordinator_address(self) -> str:
        return self.address(None)

    # --- building and tearing down ---------------------------------------------------------

    def _build(self) -> None:
        for name in (self.hub, *self.hosts):
            run("ip", "netns", "add", name)
            self._made.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.hub, "addr", "add", f"{self.coordinator_address}/24", "dev", "br0")
        run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts):
            port = self._hub_port(i)
            run("ip", "-n", self.hub, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", host)  # fmt: skip
            run("ip", "-n", self.hub, "link", "set", port, "master", "br0")
            run("ip", "-n", self.hub, "link", "set", port, "up")
            run("ip", "-n", host, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            run("ip", "-n", host, "link", "set", "eth0", "up")

    @staticmethod
    def _hub_port(host: int) -> str:
        return f"v{host}"

    def close(self) -> None:
        """Kill every process started here, then delete the namespaces (and with them every
        link, qdisc and rule). Safe to call twice."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        problems = []
        for name in reversed(self._made):
            for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            deleted = run("ip", "netns", "delete", name, check=False)
            if deleted.returncode != 0:
                problems.append(f"{name}: {deleted.stderr.strip()}")
        self._made.clear()
        if problems:
            raise RuntimeError("cannot delete network namespaces: " + "; ".join(problems))

    # --- processes -------------------------------------------------------------------------

    def start(
        self,
        host: int | None,
        argv: list[str],
        stdout: int | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside worker host ``host`` (or the hub for None), with the cluster
        token in its environment; its stderr goes to a log file."""
        namespace = self.hub if host is None else self.hosts[host]
        log = self.tmp / f"{namespace}-{len(self.procs)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *argv],  # ip execs argv: the same pid
                stdout=stdout,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TALLY_TOKEN": self.token, **(env or {})},
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def tally(
        self, host: int | None, *args: str, stdout: int | None = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        return self.start(host, [sys.executable, "-m", "tally", *args], stdout=stdout)

    def coordinator(self, source: Path | str, port: int, *args: str) -> subprocess.Popen[bytes]:
        """``tally coordinator`` on the hub, listening on the hub's private address only."""
        return self.tally(
            None, "coordinator", str(source), str(port), "--host", self.coordinator_address,
            *args, stdout=subprocess.PIPE,
        )  # fmt: skip

    def worker(self, host: int, port: int, *args: str) -> subprocess.Popen[bytes]:
        return self.tally(
            host, "worker", self.coordinator_address, str(port), "--connect-timeout", "30", *args
        )

    def serve_files(self, folder: Path, port: int) -> str:
        """An HTTP server for ``folder`` on the hub; returns its root URL once it answers."""
        server = self.start(
            None,
            [sys.executable, "-m", "http.server", "--bind", self.coordinator_address,
             "--directory", str(folder), str(port)],
        )  # fmt: skip
        url = f"http://{self.coordinator_address}:{port}"
        probe = [sys.executable, "-c", f"import urllib.request; urllib.request.urlopen({url!r})"]
        wait_until(
            lambda: (
                server.poll() is None
                and run("ip", "netns", "exec", self.hub, *probe, check=False).returncode == 0
            ),
            15,
            lambda: f"no HTTP server on the hub: {self.stderr(server)}",
        )
        return url

    def stderr(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def joined(self, coordinator: subprocess.Popen[bytes]) -> dict[int, str]:
        """Worker id -> the address it joined from, as the coordinator logged it."""
        found = re.findall(r"worker (\d+) joined: \S+ from ([\d.]+):\d+", self.stderr(coordinator))
        return {int(worker): address for worker, address in found}

    def worker_ids(self, coordinator: subprocess.Popen[bytes], host: int) -> list[int]:
        """The ids under which worker host ``host`` joined, in order."""
        return sorted(w for w, a in self.joined(coordinator).items() if a == self.address(host))

    # --- faults ----------------------------------------------------------------------------

    def cut(self, host: int) -> None:
        """Pull the cable: the hub's end of the host's link goes down (both directions)."""
        run("ip", "-n", self.hub, "link", "set", "dev", self._hub_port(host), "down")

    def heal(self, host: int) -> None:
        run("ip", "-n", self.hub, "link", "set", "dev", self._hub_port(host), "up")

    def black_hole(self, host: int) -> None:
        """Every packet between the host and the hub vanishes, both ways; the links stay up
        and no side gets an error (the drops are on receipt)."""
        self._iptables(None, "-A", "INPUT", "-s", self.address(host), "-j", "DROP")
        self._iptables(host, "-A", "INPUT", "-s", self.coordinator_address, "-j", "DROP")

    def lose(self, host: int, fraction: float) -> None:
        """Drop ``fraction`` of the packets each way between the host and the hub, at random."""
        for side, peer in ((None, self.address(host)), (host, self.coordinator_address)):
            self._iptables(side, "-A", "INPUT", "-s", peer, "-m", "statistic", "--mode",
                           "random", "--probability", f"{fraction:g}", "-j", "DROP")  # fmt: skip

    def slow(self, host: int, rate: str = "1mbit") -> None:
        """A slow link: a token bucket of ``rate`` on both of its ends."""
        for namespace, dev in ((self.hub, self._hub_port(host)), (self.hosts[host], "eth0")):
            run("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", dev, "root",
                "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms")  # fmt: skip

    def _iptables(self, host: int | None, *rule: str) -> None:
        namespace = self.hub if host is None else self.hosts[host]
        run("ip", "netns", "exec", namespace, "iptables", "-w", *rule)

    def dropped(self, host: int) -> tuple[int, int]:
        """Packets that the iptables rules dropped on the host's link: (at the hub, at the
        host), from the rules' counters."""
        counts = []
        for side in (None, host):
            namespace = self.hub if side is None else self.hosts[side]
            listed = run("ip", "netns", "exec", namespace, "iptables", "-w", "-L", "INPUT",
                         "-n", "-v", "-x").stdout  # fmt: skip
            counts.append(sum(int(line.split()[0]) for line in listed.splitlines()
                              if " DROP " in f" {line} "))  # fmt: skip
        return counts[0], counts[1]

    def link_state(self, host: int) -> str:
        """The operational state of the host's end of its link (UP, DOWN, LOWERLAYERDOWN)."""
        shown = run("ip", "-n", self.hosts[host], "-br", "link", "show", "dev", "eth0").stdout
        return shown.split()[1]


# --- waiting for conditions ----------------------------------------------------------------


def wait_until(
    condition: Callable[[], Any], timeout: float, describe: Callable[[], str] | str = ""
) -> Any:
    """Poll ``condition`` until it returns something true; return that. Fail after
    ``timeout`` seconds, saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            what = describe() if callable(describe) else describe
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.02)


class Events:
    """Follows a coordinator's ``--events`` file (JSON lines, flushed as they happen)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        """Every record so far (a line still being written is left for the next read)."""
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset += len(chunk)
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            self.records.extend(json.loads(line) for line in lines if line.strip())
        return self.records

    def of(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in self.read()
            if r["event"] == kind and all(r.get(k) == v for k, v in fields.items())
        ]

    def wait_for(self, kind: str, timeout: float, count: int = 1, **fields: Any) -> dict[str, Any]:
        """The ``count``-th record of ``kind`` with ``fields``, once it is there."""
        found = wait_until(
            lambda: len(self.of(kind, **fields)) >= count,
            timeout,
            lambda: f"{count} {kind!r} event(s) with {fields}; records: {self.records[-20:]}",
        )
        assert found
        return self.of(kind, **fields)[count - 1]


@contextlib.contextmanager
def network(tmp: Path, hosts: int) -> Iterator[Network]:
    net = Network(tmp, hosts)
    try:
        yield net
    finally:
        net.close()
