"""A local HTTP server whose every connection is limited to a fixed bandwidth.

It stands in for remote storage in the network-bound experiment: each worker reads one
partition at a time over its own connection, so the job's bandwidth grows with the number of
workers while the per-connection limit holds. The server listens on 127.0.0.1 only, serves the
files of one folder, answers HEAD with the size and ``Accept-Ranges: none`` (so clients
stream each partition in one GET), and paces each response body with a token bucket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger("tally.report.http")
CHUNK = 64 << 10  # bytes written at a time, and the bucket's burst


class TokenBucket:
    """Tokens (bytes) accrue at ``rate`` per second up to ``capacity``.

    :meth:`take` debits ``n`` tokens, letting the balance go negative, and returns how long
    the caller must wait before the debt is paid: sending ``n`` bytes after that wait keeps the
    average rate at ``rate`` with bursts of at most ``capacity``.
    """

    def __init__(
        self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self.clock = clock
        self.tokens = capacity
        self.updated = clock()

    def take(self, n: int) -> float:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class Transfer:
    """One response body: how many bytes and how long it took to send them."""

    path: str
    bytes: int
    seconds: float


@dataclass
class ServerRecord:
    """What the server saw: connections, transfers and the most connections open at once."""

    rate_bytes_s: float
    connections: int = 0
    max_concurrent: int = 0
    transfers: list[Transfer] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        sent = sum(t.bytes for t in self.transfers)
        rates = [t.bytes / t.seconds for t in self.transfers if t.seconds > 0 and t.bytes > 0]
        return {
            "rate_mb_s_per_connection": self.rate_bytes_s / 1e6,
            "connections": self.connections,
            "max_concurrent_connections": self.max_concurrent,
            "transfers": len(self.transfers),
            "bytes_sent": sent,
            "mean_transfer_mb_s": sum(rates) / len(rates) / 1e6 if rates else 0.0,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many workers connect at once; a full backlog drops SYNs
    root: Path
    record: ServerRecord
    lock: threading.Lock
    open_connections: int


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    bucket: TokenBucket

    def setup(self) -> None:
        super().setup()
        srv = self.server
        self.bucket = TokenBucket(srv.record.rate_bytes_s, CHUNK)  # one bucket per connection
        with srv.lock:
            srv.record.connections += 1
            srv.open_connections += 1
            srv.record.max_concurrent = max(srv.record.max_concurrent, srv.open_connections)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.lock:
                self.server.open_connections -= 1

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _file(self) -> Path | None:
        root = self.server.root
        path = (root / self.path.split("?", 1)[0].lstrip("/")).resolve()
        return path if path.parent == root and path.is_file() else None

    def _headers(self, path: Path) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "none")
        self.end_headers()

    def do_HEAD(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self._headers(path)

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self._headers(path)
        started = time.perf_counter()
        sent = 0
        try:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    wait = self.bucket.take(len(chunk))
                    if wait > 0:
                        time.sleep(wait)
                    self.wfile.write(chunk)
                    sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client closed %s after %d bytes", self.path, sent)
        with self.server.lock:
            self.server.record.transfers.append(
                Transfer(path.name, sent, time.perf_counter() - started)
            )


class ThrottledServer:
    """Serve the files of ``root`` on 127.0.0.1 at ``rate_bytes_s`` per connection.

    Use as a context manager: the server runs in a background thread and stops on exit.
    """

    def __init__(self, root: Path, rate_bytes_s: float) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.root = root.resolve()
        self._server.record = ServerRecord(rate_bytes_s)
        self._server.lock = threading.Lock()
        self._server.open_connections = 0
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="throttled-http", daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def snapshot(self) -> ServerRecord:
        """A copy of the record so far (transfers included)."""
        with self._server.lock:
            rec = self._server.record
            return ServerRecord(
                rec.rate_bytes_s, rec.connections, rec.max_concurrent, list(rec.transfers)
            )

    def reset(self) -> None:
        with self._server.lock:
            self._server.record = ServerRecord(self._server.record.rate_bytes_s)

    def __enter__(self) -> ThrottledServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
