"""``tally serve``: the service's coordinator and its HTTP server (uvicorn) in one event loop.

SIGTERM (or SIGINT) drains: no more jobs are accepted (503), no more attempts start, the
running ones get ``--drain-timeout`` seconds to commit, the workers are told to leave, and
the process exits 0. Unfinished jobs stay in the journal and resume at the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from tally.api import is_loopback
from tally.coordinator import CoordinatorConfig
from tally.errors import ConfigError, TallyError
from tally.service.api import build_app
from tally.service.jobs import JobService
from tally.service.store import StateStore

log = logging.getLogger("tally.serve")


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named: asyncio then turns Nagle off on accepted connections
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        return sock
    except OSError as exc:
        raise ConfigError(
            f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}"
        ) from exc


class _EmbeddedServer(uvicorn.Server):
    """uvicorn in an event loop it shares: the service handles SIGTERM and SIGINT itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _http_server(app: Starlette) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    return _EmbeddedServer(config)


async def serve(args: argparse.Namespace, token: bytes) -> int:
    if not token and not is_loopback(args.host):
        raise ConfigError(
            f"refusing to listen on {args.host} without a cluster token: "
            "set TALLY_TOKEN or pass --token-file"
        )
    http_sock = _listen(args.host, args.http_port)
    store = StateStore(args.state)
    config = CoordinatorConfig(
        host=args.host, port=args.port, token=token, lease_timeout_s=args.lease_timeout
    )
    service = JobService(store, config, max_queued=args.max_queued)
    watcher = None
    if getattr(args, "watch", None):
        from tally.service.watch import Watcher, watch_config

        try:
            watcher = Watcher(service, watch_config(args))
            watcher.open()
        except ConfigError:
            store.close()
            http_sock.close()
            raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # from now on a signal drains
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await service.start()
    except OSError as exc:
        store.close()
        http_sock.close()
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from exc
    if watcher is not None:
        try:
            await watcher.start()
        except TallyError:
            await service.close()
            http_sock.close()
            raise
    watched = None if watcher is None else (watcher.config.source, watcher.config.output)
    server = _http_server(build_app(service, token, watched))
    http = asyncio.create_task(server.serve(sockets=[http_sock]))
    http_port = http_sock.getsockname()[1]
    log.info("serving: workers on %s:%d, HTTP on http://%s:%d, state %s (%d job(s) resumed)",
             args.host, port, args.host, http_port, args.state, len(service.resumed))  # fmt: skip
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopped, http], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if http in done:  # the HTTP server stopped by itself: something is wrong
        log.error("the HTTP server stopped: %s", http.exception() or "without an error")
    log.info("stopping: draining for up to %gs", args.drain_timeout)
    if watcher is not None:
        watcher.stop_polling()
    await service.drain(args.drain_timeout)
    if watcher is not None:
        await watcher.close()
    service.stopping = True  # event streams end, so the HTTP server can close at once
    server.should_exit = True
    with contextlib.suppress(Exception):
        await http
    await service.close()
    log.info("stopped")
    sys.stderr.flush()
    return 0 if http not in done else 1
