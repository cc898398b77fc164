"""The live dashboard in a real browser (Debian's chromium driven by Playwright): a job's
progress reaches 100%, a killed worker is marked lost, and a screenshot is taken (into the
test's folder; with TALLY_SCREENSHOT=PATH, there too: how docs/dashboard.png is made)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Procs
from test_service_support import TOKEN, start_server, start_workers, wait_until, workers_alive

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = os.environ.get("TALLY_SCREENSHOT")  # e.g. docs/dashboard.png


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: installed here when missing and this is root, else a skip."""
    if not os.path.exists(CHROMIUM):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"{CHROMIUM} is missing and apt-get cannot install it here (not root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.skip(f"apt-get install chromium failed: {done.stderr.strip()[-300:]}")
    return CHROMIUM


@pytest.fixture
def browser(chromium: str) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.mark.timeout(300)
def test_the_dashboard_shows_progress_and_a_lost_worker_live(
    browser: Any, procs: Procs, tmp_path: Path, repeated_filelist: Path
) -> None:
    server = start_server(procs, tmp_path / "state.db")
    workers = start_workers(procs, server.worker_port, 2, "--task-delay", "0.04")
    client = server.client()
    wait_until(workers_alive(client, 2), what="two workers joined")
    context = browser.new_context(
        extra_http_headers={"Authorization": f"Bearer {TOKEN}"},
        viewport={"width": 1400, "height": 1000},
    )
    page = context.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#connection.live", timeout=30_000)
    page.wait_for_selector('#workers tr[data-worker-id="2"][data-state="alive"]')

    first = client.submit(str(repeated_filelist), {"top": 10})
    row = f'#jobs tr[data-job-id="{first}"]'
    page.wait_for_selector(row, timeout=30_000)
    seen = set()

    def reached_100() -> bool:
        seen.add(int(page.get_attribute(row, "data-progress") or 0))
        return 100 in seen

    wait_until(reached_100, 120, "the dashboard showed the job at 100%")
    assert len(seen) > 1  # it moved while the job ran
    page.wait_for_selector(f'{row}[data-state="succeeded"]', timeout=30_000)
    assert client.job(first)["state"] == "succeeded"

    second = client.submit(str(repeated_filelist), {"domain": "go.mail"})
    wait_until(lambda: client.job(second)["progress"]["partitions_done"] >= 10)
    workers[0].kill()
    page.wait_for_selector('#workers tr[data-state="lost"]', timeout=30_000)
    lost = page.get_attribute('#workers tr[data-state="lost"]', "data-worker-id")
    assert [w["state"] for w in client.workers() if str(w["id"]) == lost] == ["lost"]
    page.wait_for_selector("#timeline rect.committed")
    page.wait_for_selector("#throughput polyline.rate")
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if SCREENSHOT:
        shutil.copyfile(shot, SCREENSHOT)
    doc = client.wait(second, timeout=120)
    assert (doc["state"], doc["result"]["count"]) == ("succeeded", 28 * 10 * 100)
    context.close()
