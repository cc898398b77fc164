"""A real HTTP proxy in front of a storage server that answers some requests with throttling
(503 or 429) instead of forwarding them, or holds them until released: the storage clients
meet a busy store, or a reader stopped in the middle of an object."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
# the store's own words for "slow down"
THROTTLE_BODY = {
    "s3": b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>",
    "az": b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
    b"<Message>The server is busy.</Message></Error>",
}


@dataclass
class Throttle:
    """Which requests are throttled: ``match(method, path, headers)``, the first ``times``
    of them (-1: all), with ``status``; or, with ``hold``, kept waiting until it is set."""

    match: Callable[[str, str, dict[str, str]], bool]
    times: int = -1
    status: int = 503
    hold: threading.Event | None = None
    held: threading.Event = field(default_factory=threading.Event)  # one is being held
    throttled: int = 0
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Range

    def take(self, method: str, path: str, headers: dict[str, str]) -> bool:
        self.seen.append((method, path, headers.get("range") or headers.get("x-ms-range") or ""))
        if not self.match(method, path, headers):
            return False
        if self.times >= 0 and self.throttled >= self.times:
            return False
        self.throttled += 1
        return True


@contextlib.contextmanager
def throttling_proxy(upstream: str, scheme: str, throttle: Throttle) -> Iterator[str]:
    """A proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port[/path]``); yields
    its URL with the same path."""
    target = urlsplit(upstream)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                throttled = throttle.take(self.command, self.path, headers)
            if throttled and throttle.hold is not None:
                throttle.held.set()
                throttle.hold.wait(60)
                throttled = False
            if throttled:
                payload = THROTTLE_BODY[scheme]
                self.send_response(throttle.status)
                self.send_header("Content-Type", "application/xml")
                if scheme == "az":
                    self.send_header("x-ms-error-code", "ServerBusy")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                conn.request(self.command, self.path, body or None, dict(self.headers.items()))
                answer = conn.getresponse()
                data = answer.read()
            finally:
                conn.close()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            length = answer.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that went away (a killed worker): nothing to say

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{target.path}"
    finally:
        server.shutdown()
        server.server_close()
