"""A Python client of the ``tally serve`` HTTP API.

    from tally import Client
    with Client("http://127.0.0.1:8080", token) as client:
        job = client.submit("data/filelist.csv", {"top": 10})
        print(client.wait(job)["result"])

The URL defaults to ``TALLY_SERVER`` (else ``http://127.0.0.1:8080``), the token to
``TALLY_TOKEN``. Refusals raise :class:`tally.service.bodies.ServiceError` with the HTTP
status and the server's reason (:class:`~tally.service.bodies.BadRequest` for a 400).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from tally.service.bodies import FINAL_STATES, BadRequest, ServiceError

DEFAULT_SERVER = "http://127.0.0.1:8080"
LONG_POLL_S = 20.0  # each GET of Client.wait waits at most this long for the job to end


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.url = (url or os.environ.get("TALLY_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = (os.environ.get("TALLY_TOKEN", "") if token is None else token).strip()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every request has its own connection."""

    # --- jobs ----------------------------------------------------------------------------------

    def submit(
        self,
        source: str,
        query: Mapping[str, Any] | None = None,
        *,
        output: str | None = None,
        **options: Any,
    ) -> str:
        """Submit a job; return its id. ``query`` is ``{"top": K}`` (the default, K=25),
        ``{"domain": D}``, ``{"all": True}`` or ``{"sql": "SELECT ...", "columns": "a,b"}``
        (a group-by over ``source``); ``options`` those of ``tally run`` (``max_attempts``,
        ``skip_failed``, ``speculation``, ``min_workers``, ``record_limit``,
        ``split_size``)."""
        body: dict[str, Any] = {"source": source, "options": dict(options)}
        if query is not None:
            body["query"] = dict(query)
        if output is not None:
            body["output"] = output
        return str(self._call("POST", "/api/jobs", body)["id"])

    def job(self, job_id: str, wait: float = 0.0) -> dict[str, Any]:
        """The job's document: state, progress, and its result once it succeeded. With
        ``wait``, the server answers once the job has ended or ``wait`` seconds have passed."""
        query = f"?wait={wait:g}" if wait > 0 else ""
        return self._call("GET", f"/api/jobs/{job_id}{query}")

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self._call("GET", "/api/jobs")["jobs"]
        return jobs

    def workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = self._call("GET", "/api/workers")["workers"]
        return workers

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/api/jobs/{job_id}")

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The job's final document, as soon as it has ended (long polls, each well within
        the client's own timeout). TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        longest = max(0.1, min(LONG_POLL_S, self.timeout / 2))
        while True:
            left = longest if deadline is None else min(longest, deadline - time.monotonic())
            doc = self.job(job_id, wait=max(left, 0.0))
            if doc["state"] in FINAL_STATES:
                return doc
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {doc['state']} after {timeout}s")

    def result_table(self, job_id: str) -> Any:
        """A succeeded job's result table (pyarrow), exactly as the server finalized it."""
        import pyarrow as pa  # type: ignore[import-untyped]

        data = self._send("GET", f"/api/jobs/{job_id}/result")
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()

    def metrics(self) -> str:
        """The Prometheus text of ``GET /metrics``."""
        return self._send("GET", "/metrics").decode("utf-8")

    # --- mechanics -----------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self._send(method, path, body))
        return doc

    def _send(self, method: str, path: str, body: Any = None) -> bytes:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                content: bytes = response.read()
                return content
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._refusal(exc.code, exc.read()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(0, f"cannot reach the server at {self.url}: {reason}") from None

    def _refusal(self, status: int, content: bytes) -> ServiceError:
        if status == 401:
            return ServiceError(401, f"the server at {self.url} refused the token (TALLY_TOKEN)")
        try:
            reason = str(json.loads(content)["error"])
        except (ValueError, KeyError, TypeError):
            reason = content.decode("utf-8", "replace").strip() or f"HTTP {status}"
        return BadRequest(reason) if status == 400 else ServiceError(status, reason)
