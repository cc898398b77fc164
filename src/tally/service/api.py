"""The HTTP API of ``tally serve`` (README.md, "Service"): a Starlette app over a
:class:`tally.service.jobs.JobService`.

Every route but ``GET /healthz`` needs the cluster token, as ``Authorization: Bearer
<token>`` (or HTTP Basic with the token as the password, which is how a browser shows the
dashboard); without it the answer is 401 with no body. A server listening on loopback
without a token asks for none. Errors are JSON ``{"error": reason}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from tally.service.bodies import MAX_BODY, BadRequest, ServiceError, parse_request
from tally.service.jobs import JobService
from tally.service.metrics import CONTENT_TYPE

EVENTS_EVERY_S = 0.5
MAX_WAIT_S = 60.0  # the longest long poll of GET /api/jobs/{id}?wait=S
RECORDS_ON_CONNECT = 2000
ARROW_STREAM = "application/vnd.apache.arrow.stream"
OPEN_PATHS = ("/healthz",)


class TokenAuth:
    """Refuses, with a bare 401, every request without the token (``/healthz`` excepted)."""

    def __init__(self, app: ASGIApp, token: bytes) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.token or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self._authorized(Headers(scope=scope).get("authorization", "")):
            await self.app(scope, receive, send)
            return
        headers = (
            {} if scope["path"].startswith("/api/") else {"WWW-Authenticate": 'Basic realm="tally"'}
        )
        await Response(status_code=401, headers=headers)(scope, receive, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        given = b""
        if scheme.lower() == "bearer":
            given = value.strip().encode()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        return bool(given) and hmac.compare_digest(given, self.token)


def _service(request: Request) -> JobService:
    service: JobService = request.app.state.service
    return service


async def _body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(f"body exceeds {MAX_BODY} bytes")
    return bytes(body)


async def submit_job(request: Request) -> Response:
    service = _service(request)
    entry = await service.submit(parse_request(await _body(request)))
    return JSONResponse({"id": entry.id, **service.job_doc(entry, full=False)}, status_code=201,
                        headers={"Location": f"/api/jobs/{entry.id}"})  # fmt: skip


async def list_jobs(request: Request) -> Response:
    return JSONResponse({"jobs": _service(request).jobs()})


async def get_job(request: Request) -> Response:
    """The job's document; with ``?wait=S``, once the job has ended or S seconds have
    passed, whichever comes first (a long poll: no client needs to ask again and again)."""
    service = _service(request)
    entry = service.entry(request.path_params["id"])
    wait = request.query_params.get("wait")
    if wait is not None:
        try:
            seconds = float(wait)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_WAIT_S:
            raise BadRequest(f"wait must be a number of seconds from 0 to {MAX_WAIT_S:g}")
        await service.until_ended(entry, seconds)
    return JSONResponse(service.job_doc(entry))


async def cancel_job(request: Request) -> Response:
    service = _service(request)
    return JSONResponse(service.job_doc(service.cancel(request.path_params["id"])))


async def job_result(request: Request) -> Response:
    """A succeeded job's result table as an Arrow IPC stream (the clients format it)."""
    return Response(
        _service(request).result_ipc(request.path_params["id"]), media_type=ARROW_STREAM
    )


async def list_workers(request: Request) -> Response:
    return JSONResponse({"workers": _service(request).workers()})


async def watch_status(request: Request) -> Response:
    """``tally serve --watch``: the watched objects' latest results and the running total."""
    from tally.service.watched import read_total, watched_objects

    watch: tuple[str, str] | None = request.app.state.watch
    if watch is None:
        raise ServiceError(404, "this server watches no storage (tally serve --watch)")
    count, objects = watched_objects(_service(request))
    total = await asyncio.to_thread(read_total, watch[1])
    return JSONResponse({"source": watch[0], "output": watch[1], "objects_seen": count,
                         "objects": objects, "total": total})  # fmt: skip


async def metrics(request: Request) -> Response:
    return Response(_service(request).metrics.text(), media_type=CONTENT_TYPE)


async def healthz(request: Request) -> Response:
    service = _service(request)
    status = "draining" if service.draining else "ok"
    return JSONResponse({"status": status}, status_code=503 if service.draining else 200)


async def events(request: Request) -> Response:
    """Server-sent events: a snapshot of what changed, every half second."""
    service = _service(request)

    async def stream() -> Any:
        since = max(0, service.live.seq - RECORDS_ON_CONNECT)
        throughput_since = -1.0
        while not service.stopping:
            snap = service.snapshot(since, throughput_since)
            if snap["records"]:
                since = snap["records"][-1]["seq"]
            if snap["throughput"]:
                throughput_since = snap["throughput"][-1][0]
            yield f"data: {json.dumps(snap, separators=(',', ':'))}\n\n"
            await asyncio.sleep(EVENTS_EVERY_S)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def dashboard(request: Request) -> Response:
    return HTMLResponse(request.app.state.index_html)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def build_app(service: JobService, token: bytes, watch: tuple[str, str] | None = None) -> Starlette:
    """The app; ``watch`` is ``tally serve --watch``'s source and output prefix."""
    from importlib.resources import files

    routes = [
        Route("/healthz", healthz),
        Route("/api/jobs", submit_job, methods=["POST"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs/{id}", get_job, methods=["GET"]),
        Route("/api/jobs/{id}", cancel_job, methods=["DELETE"]),
        Route("/api/jobs/{id}/result", job_result, methods=["GET"]),
        Route("/api/workers", list_workers),
        Route("/api/watch", watch_status),
        Route("/api/events", events),
        Route("/metrics", metrics),
        Route("/", dashboard),
        Mount("/static", StaticFiles(packages=[("tally.service", "dashboard")]), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TokenAuth, token=token)],
        exception_handlers={ServiceError: _refused, HTTPException: _http_error},
    )
    app.state.service = service
    app.state.watch = watch
    page = files("tally.service").joinpath("dashboard", "index.html")
    app.state.index_html = page.read_text(encoding="utf-8")
    return app
