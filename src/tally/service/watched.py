"""What the dashboard shows of ``tally serve --watch``: each watched object's latest version
with its job and result (from the service's jobs), and the running total as the watcher last
wrote it (``PREFIX/_total.json``: what a reader of the output sees)."""

from __future__ import annotations

import json
from typing import Any

from tally.service.jobs import JobService

OBJECTS_SHOWN = 50  # the most recently submitted objects
TOTAL = "_total.json"


def watched_objects(service: JobService) -> tuple[int, list[dict[str, Any]]]:
    """How many objects the watcher has submitted, and the latest version of the most recent
    ones: object, version, job, state, finished, result (once succeeded)."""
    latest: dict[str, Any] = {}
    for entry in sorted(service.entries.values(), key=lambda e: e.seq):
        watch = entry.request.get("watch")
        if isinstance(watch, dict) and isinstance(watch.get("object"), str):
            latest.pop(watch["object"], None)  # keep the dict in submission order
            latest[watch["object"]] = entry
    shown = []
    for name, entry in list(latest.items())[-OBJECTS_SHOWN:]:
        doc = service.job_doc(entry, full=True)
        shown.append({
            "object": name,
            "version": entry.request["watch"].get("version"),
            "job": entry.id,
            "state": doc["state"],
            "finished": doc["finished"],
            "result": doc.get("result"),
        })  # fmt: skip
    return len(latest), shown[::-1]


def read_total(output: str) -> dict[str, Any] | None:
    """The running total the watcher wrote under ``output``; None before its first write."""
    from tally.service.watch_io import output_url
    from tally.storage.sources import is_remote, local_path

    url = output_url(output, TOTAL)
    try:
        if is_remote(url):
            import fsspec

            with fsspec.open(url, "rb") as f:
                data = f.read()
        else:
            with open(local_path(url), "rb") as f:
                data = f.read()
    except FileNotFoundError:
        return None
    total: dict[str, Any] = json.loads(data)
    return total
