"""Every route of the HTTP API through Starlette's TestClient, over a real service (its
coordinator listening in the TestClient's event loop), with and without a real worker."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from starlette.testclient import TestClient

from conftest import SAMPLE, Procs
from tally.coordinator import CoordinatorConfig
from tally.service.api import build_app
from tally.service.commands import report_job
from tally.service.jobs import JobService
from tally.service.store import StateStore
from test_service_support import TOKEN, expected_result, start_workers, wait_until

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTES = [
    ("GET", "/"),
    ("GET", "/static/app.js"),
    ("GET", "/api/jobs"),
    ("POST", "/api/jobs"),
    ("GET", "/api/jobs/abc"),
    ("DELETE", "/api/jobs/abc"),
    ("GET", "/api/jobs/abc/result"),
    ("GET", "/api/workers"),
    ("GET", "/api/events"),
    ("GET", "/metrics"),
    ("GET", "/no/such/route"),
]


class Api:
    def __init__(self, http: TestClient, service: JobService) -> None:
        self.http = http
        self.service = service

    def submit(self, body: dict[str, Any]) -> Any:
        return self.http.post("/api/jobs", json=body, headers=AUTH)

    def get(self, path: str) -> Any:
        return self.http.get(path, headers=AUTH)


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Any]:
    opened: list[tuple[TestClient, JobService]] = []

    def make(max_queued: int = 1000) -> Api:
        store = StateStore(str(tmp_path / f"state-{len(opened)}.db"))
        service = JobService(store, CoordinatorConfig(token=TOKEN.encode()), max_queued)
        http = TestClient(build_app(service, TOKEN.encode()))
        http.__enter__()
        http.portal.call(service.start)  # type: ignore[union-attr]
        opened.append((http, service))
        return Api(http, service)

    yield make
    for http, service in opened:
        http.portal.call(service.close)  # type: ignore[union-attr]
        http.__exit__(None, None, None)


def test_every_route_but_healthz_refuses_a_request_without_the_token(make_api: Any) -> None:
    api = make_api()
    wrong = base64.b64encode(b"user:wrong").decode()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {wrong}"},
                    {"Authorization": "Bearer"}, {"Authorization": "Basic !!"}):  # fmt: skip
        for method, path in ROUTES:
            response = api.http.request(method, path, headers=headers)
            assert (response.status_code, response.content) == (401, b""), (method, path)
    assert api.http.get("/").headers["WWW-Authenticate"] == 'Basic realm="tally"'
    assert api.http.get("/healthz").json() == {"status": "ok"}
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    page = api.http.get("/", headers={"Authorization": f"Basic {basic}"})
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert api.get("/static/app.js").text.startswith("// The live dashboard of tally serve")
    assert api.get("/no/such/route").status_code == 404


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "bad job: not JSON"),
        (b"[]", "bad job: Expected `object`, got `array`"),
        (b"{}", "bad job: Object missing required field `source`"),
        (b'{"source": ""}', "bad job: Expected `str` of length >= 1 - at `$.source`"),
        (b'{"source": "x", "colour": 1}', "bad job: Object contains unknown field `colour`"),
        (
            b'{"source": "x", "query": {"top": 0}}',
            "bad job: Expected `int` >= 1 - at `$.query.top`",
        ),
        (b'{"source": "x", "query": {"top": "5"}}', "bad job: Expected `int | null`, got `str`"),
        (b'{"source": "x", "query": {}}', "query must name exactly one of top, domain, all, sql"),
        (b'{"source": "x", "query": {"top": 3, "all": true}}', "(got top, all)"),
        (b'{"source": "x", "query": {"all": false}}', 'query {"all": false} names nothing'),
        (b'{"source": "x", "query": {"sql": "SELECT 1"}}', "FROM 'SOURCE' is missing"),
        (b'{"source": "x", "query": {"sql": "SELECT a FROM \'t\' JOIN \'u\' ON 1"}}', "join"),
        (b'{"source": "x", "output": "out.json"}', "output is not supported by this server"),
        (b'{"source": "x", "options": {"max_attempts": 0}}', "at `$.options.max_attempts`"),
        (b'{"source": "/no/such/list.csv"}', "source /no/such/list.csv does not exist"),
    ],
)
def test_a_bad_body_or_source_gets_400_with_the_reason(
    make_api: Any, body: bytes, reason: str
) -> None:
    api = make_api()
    response = api.http.post("/api/jobs", content=body, headers=AUTH)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert api.get("/api/jobs").json() == {"jobs": []}


def test_an_empty_source_folder_and_a_huge_body_are_refused(make_api: Any, tmp_path: Path) -> None:
    api = make_api()
    (tmp_path / "empty").mkdir()
    response = api.submit({"source": str(tmp_path / "empty")})
    assert (response.status_code, response.json()) == (
        400, {"error": f"source {tmp_path / 'empty'} names no partitions"}
    )  # fmt: skip
    huge = api.http.post("/api/jobs", content=b" " * (2 << 20), headers=AUTH)
    assert huge.status_code == 400 and "body exceeds" in huge.json()["error"]


def test_a_job_without_workers_is_queued_then_cancelled(
    make_api: Any, sample_filelist: Path
) -> None:
    api = make_api()
    created = api.submit({"source": str(sample_filelist), "query": {"domain": "google.ru"}})
    assert created.status_code == 201
    job_id = created.json()["id"]
    assert created.headers["Location"] == f"/api/jobs/{job_id}"
    doc = api.get(f"/api/jobs/{job_id}").json()
    assert doc["state"] == "queued" and doc["query"] == {"domain": "google.ru"}
    assert doc["progress"] == {"partitions_done": 0, "partitions": 100, "bytes": 0,
                               "mb_s": None, "eta_s": None}  # fmt: skip
    assert api.get(f"/api/jobs/{job_id}/result").status_code == 409
    cancelled = api.http.delete(f"/api/jobs/{job_id}", headers=AUTH)
    assert cancelled.status_code == 200
    assert (cancelled.json()["state"], cancelled.json()["error"]) == ("cancelled", "cancelled")
    again = api.http.delete(f"/api/jobs/{job_id}", headers=AUTH)
    assert (again.status_code, again.json()) == (
        409,
        {"error": f"job {job_id} has already cancelled"},
    )
    assert api.get("/api/jobs/nope").status_code == 404
    assert api.http.delete("/api/jobs/nope", headers=AUTH).json() == {"error": "no job nope"}
    listed = api.get("/api/jobs").json()["jobs"]
    assert [(j["id"], j["state"]) for j in listed] == [(job_id, "cancelled")]


def test_past_max_queued_unfinished_jobs_a_submission_gets_429(
    make_api: Any, sample_filelist: Path
) -> None:
    api = make_api(max_queued=2)
    body = {"source": str(sample_filelist)}
    first, second = api.submit(body).json()["id"], api.submit(body).json()["id"]
    refused = api.submit(body)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.json() == {
        "error": "2 unfinished jobs: the server holds at most 2 (--max-queued)"
    }
    api.http.delete(f"/api/jobs/{first}", headers=AUTH)
    assert api.submit(body).status_code == 201
    assert {j["id"] for j in api.get("/api/jobs").json()["jobs"]} >= {first, second}


def test_a_draining_server_refuses_jobs_with_503(make_api: Any, sample_filelist: Path) -> None:
    api = make_api()
    api.http.portal.call(api.service.drain, 0.0)
    response = api.submit({"source": str(sample_filelist)})
    assert (response.status_code, response.json()) == (
        503,
        {"error": "the server is shutting down"},
    )
    assert api.http.get("/healthz").status_code == 503


def test_a_job_runs_on_a_real_worker_and_every_view_shows_it(
    make_api: Any, procs: Procs, sample_filelist: Path
) -> None:
    api = make_api()
    start_workers(procs, api.service.worker_port, 1)
    wait_until(lambda: api.get("/api/workers").json()["workers"], what="the worker joined")
    job_id = api.submit({"source": str(sample_filelist), "query": {"top": 25}}).json()["id"]
    doc = wait_until(
        lambda: (d := api.get(f"/api/jobs/{job_id}").json())["state"] == "succeeded" and d,
        what="the job succeeded",
    )
    assert doc["result"] == expected_result("top25")
    assert doc["progress"]["partitions_done"] == 100 and doc["stats"]["partitions"] == 100
    table = pa.ipc.open_stream(api.get(f"/api/jobs/{job_id}/result").content).read_all()
    assert table.column_names == ["domain", "count"] and table.num_rows == 25
    [worker] = api.get("/api/workers").json()["workers"]
    assert (worker["id"], worker["state"], worker["partitions"]) == (1, "alive", 100)
    assert worker["bytes"] == SAMPLE.stat().st_size
    metrics = api.get("/metrics").text
    assert "tally_partitions_committed_total 100.0" in metrics
    assert 'tally_jobs{state="succeeded"} 1.0' in metrics and "tally_workers 1.0" in metrics
    assert "tally_task_latency_seconds_count 100.0" in metrics
    snap = api.service.snapshot(0, -1.0)
    assert [j["id"] for j in snap["jobs"]] == [job_id]
    assert sum(r["event"] == "committed" for r in snap["records"]) == 100


def test_a_long_poll_answers_once_the_job_has_ended(
    make_api: Any, procs: Procs, sample_filelist: Path
) -> None:
    api = make_api()
    job_id = api.submit({"source": str(sample_filelist), "query": {"top": 25}}).json()["id"]
    # no worker: the wait runs out, and the job is still queued
    assert api.get(f"/api/jobs/{job_id}?wait=0.2").json()["state"] == "queued"
    for bad in ("-1", "61", "soon", "nan"):
        refused = api.get(f"/api/jobs/{job_id}?wait={bad}")
        assert (refused.status_code, refused.json()) == (
            400,
            {"error": "wait must be a number of seconds from 0 to 60"},
        )
    start_workers(procs, api.service.worker_port, 1)
    doc = api.get(f"/api/jobs/{job_id}?wait=60").json()  # one request, answered at the end
    assert doc["state"] == "succeeded" and doc["result"] == expected_result("top25")
    assert api.get(f"/api/jobs/{job_id}?wait=5").json() == doc  # ended: at once


def test_the_event_stream_sends_snapshots(make_api: Any, sample_filelist: Path) -> None:
    api = make_api()
    api.submit({"source": str(sample_filelist)})
    with api.http.stream("GET", "/api/events", headers=AUTH) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        line = next(response.iter_lines())
        snap = json.loads(line.removeprefix("data: "))
        api.service.stopping = True  # ends the stream
    assert snap["counts"] == {"queued": 1} and snap["workers"] == []
    assert [j["state"] for j in snap["jobs"]] == ["queued"]


def test_report_job_formats_a_result_as_tally_run_does(
    make_api: Any, procs: Procs, sample_filelist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The --wait path without processes: the Arrow result and the JSON document agree."""
    api = make_api()
    start_workers(procs, api.service.worker_port, 1)
    job_id = api.submit({"source": str(sample_filelist), "query": {"all": True}}).json()["id"]
    wait_until(lambda: api.get(f"/api/jobs/{job_id}").json()["state"] == "succeeded")

    class Via:
        def result_table(self, job: str) -> Any:
            return pa.ipc.open_stream(api.get(f"/api/jobs/{job}/result").content).read_all()

    import argparse

    args = argparse.Namespace(format="json", stats=None)
    assert report_job(Via(), api.get(f"/api/jobs/{job_id}").json(), args) == 0
    assert json.loads(capsys.readouterr().out) == expected_result("all")
