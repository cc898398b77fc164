"""The dashboard of ``tally serve --watch`` over Azurite, in a real browser: each dropped
object's result and the running total appear, equal to what the watcher wrote and to what
``tally run`` computes; a server that watches nothing answers /api/watch with 404."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import SAMPLE, Procs
from storage_servers import Server as Storage
from test_service_browser import browser, chromium  # noqa: F401 (fixtures)
from test_service_support import TOKEN, start_server, start_workers, wait_until, workers_alive


def tally_json(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tally", "run", *args, "--workers", "1", "--format", "json"],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def get(url: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.timeout(300)
def test_the_dashboard_shows_each_result_and_the_running_total(
    browser: Any,  # noqa: F811
    procs: Procs,
    tmp_path: Path,
    azurite: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in azurite.env.items():
        monkeypatch.setenv(key, value)
    uploads, results = azurite.new_container(), azurite.new_container()
    server = start_server(
        procs, tmp_path / "state.db", "--watch", f"az://{uploads}/", "--output",
        f"az://{results}/", "--top", "5", "--poll-interval", "0.2", "--settle", "0.2",
    )  # fmt: skip
    start_workers(procs, server.worker_port, 1)
    wait_until(workers_alive(server.client(), 1), what="a worker joined")
    page = browser.new_context(
        extra_http_headers={"Authorization": f"Bearer {TOKEN}"},
        viewport={"width": 1400, "height": 1000},
    ).new_page()
    page.goto(server.url + "/")

    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    (tmp_path / "a.tsv").write_bytes(b"".join(lines[:120]))
    azurite.upload(uploads, {"a.tsv": b"".join(lines[:120])})
    page.wait_for_selector(
        '#watch tr[data-object="a.tsv"][data-state="succeeded"][data-lines="120"]',
        timeout=60_000,
    )
    page.wait_for_selector('#watch-total[data-lines="120"]', timeout=60_000)
    azurite.upload(uploads, {"b.tsv": b"".join(lines[120:])})
    page.wait_for_selector(
        '#watch tr[data-object="b.tsv"][data-state="succeeded"][data-lines="80"]',
        timeout=60_000,
    )
    page.wait_for_selector('#watch-total[data-lines="200"]', timeout=60_000)

    expected = tally_json(str(SAMPLE), "--top", "5")
    shown = [
        row.inner_text().split("\t") for row in page.query_selector_all("#watch-total tbody tr")
    ]
    assert shown == [[r["domain"], str(r["count"])] for r in expected["rows"]]
    headers = page.query_selector_all("#watch-total thead th")
    assert [h.inner_text() for h in headers] == ["domain", "count"]
    first = tally_json(str(tmp_path / "a.tsv"), "--top", "5")
    row = page.query_selector('#watch tr[data-object="a.tsv"] td.result')
    assert row is not None
    assert (
        row.inner_text()
        == ", ".join(f"{r['domain']} {r['count']}" for r in first["rows"][:3]) + ", …"
    )
    assert "2 object(s) seen; the total covers 200 lines (0 malformed)" in page.inner_text(
        "#watch-summary"
    )
    status, doc = get(server.url + "/api/watch")
    assert status == 200
    assert doc["total"] == json.loads(azurite.read(f"az://{results}/_total.json"))
    assert doc["total"]["rows"] == expected["rows"]
    assert [o["object"] for o in doc["objects"]] == ["b.tsv", "a.tsv"]
    assert "Request URL" not in server.log()  # the storage client's request log stays quiet


def test_a_server_that_watches_nothing_answers_404(procs: Procs, tmp_path: Path) -> None:
    server = start_server(procs, tmp_path / "state.db")
    status, doc = get(server.url + "/api/watch")
    assert (status, doc) == (
        404,
        {"error": "this server watches no storage (tally serve --watch)"},
    )
