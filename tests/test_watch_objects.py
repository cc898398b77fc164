"""``tally serve --watch`` of an ``az://`` and an ``s3://`` prefix by listing, with real
processes against Azurite and moto's S3 server: each uploaded object is processed once,
across a SIGKILL of the server between upload and result too, and a re-uploaded object
replaces its contribution to the total."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from conftest import SAMPLE, Procs, reference_output
from storage_servers import Server
from tally.protocol import QuerySpec
from test_service_support import start_server, start_workers, wait_until, workers_alive

ALL = QuerySpec("all")


def use(store: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes started from now on reach ``store`` with its credentials."""
    for key, value in store.run_env().items():
        monkeypatch.setenv(key, value)


def expected(data: bytes, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "expected.tsv"
    path.write_bytes(data)
    doc: dict[str, Any] = json.loads(reference_output(path, ALL, "json"))
    return doc


def read(store: Server, url: str) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(store.read(url))
        return doc
    except FileNotFoundError:
        return None


def sample_parts(count: int) -> dict[str, bytes]:
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    return {f"part-{i:03d}.tsv": b"".join(lines[i::count]) for i in range(count)}


def jobs_by_object(client: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for job in client.jobs():
        found.setdefault(job["source"].rsplit("/", 1)[1], []).append(job["state"])
    return found


def test_a_watched_prefix_processes_each_upload_once_across_a_sigkill_and_re_uploads(
    procs: Procs, tmp_path: Path, store: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(store, monkeypatch)
    container = store.new_container()
    source, output = f"{store.scheme}://{container}/in/", f"{store.scheme}://{container}/out"
    parts = sample_parts(8)
    names = sorted(parts)
    # a blob is listed only once committed: no settling, however long --settle is
    args = ("--watch", source, "--output", output, "--poll-interval", "0.05", "--all",
            "--settle", "3600", "--full-listing-interval", "0.5")  # fmt: skip
    state = tmp_path / "state.db"
    server = start_server(procs, state, *args)
    start_workers(procs, server.worker_port, 2, "--task-delay", "0.3")
    client = server.client()
    wait_until(workers_alive(client, 2), what="two workers")

    def result(name: str) -> dict[str, Any] | None:
        return read(store, f"{output}/{name}.json")

    store.upload(container, {f"in/{n}": parts[n] for n in names[:3]})
    wait_until(lambda: all(result(n) for n in names[:3]), 60, "3 results")
    store.upload(container, {f"in/{names[3]}": parts[names[3]]})
    wait_until(lambda: "running" in jobs_by_object(client).get(names[3], []), 60,
               "the fourth object's job running")  # fmt: skip
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    assert result(names[3]) is None  # killed between upload and result
    store.upload(container, {f"in/{n}": parts[n] for n in names[4:6]})  # while it is down
    server = start_server(procs, state, *args, port=server.worker_port)
    client = server.client()
    store.upload(container, {f"in/{n}": parts[n] for n in names[6:]})
    wait_until(lambda: all(result(n) for n in names), 90, "every result")
    wait_until(lambda: (result("_total") or {}).get("lines") == 200, 60, "the total")
    for name in names:
        assert result(name) == expected(parts[name], tmp_path)
    assert result("_total") == expected(SAMPLE.read_bytes(), tmp_path)
    assert jobs_by_object(client) == {n: ["succeeded"] for n in names}
    assert "1 running" in server.log()  # the fourth object's job resumed

    # a re-upload with new content replaces the object's contribution
    lines = parts[names[0]].splitlines(keepends=True)
    store.upload(container, {f"in/{names[0]}": b"".join(lines[:5])})
    rest = b"".join(b"".join(parts[n].splitlines(keepends=True)[:5] if n == names[0]
                             else parts[n].splitlines(keepends=True)) for n in names)  # fmt: skip
    want = expected(rest, tmp_path)
    wait_until(lambda: result("_total") == want, 60, "the new total")
    assert result(names[0]) == expected(b"".join(lines[:5]), tmp_path)
    assert jobs_by_object(client)[names[0]] == ["succeeded", "succeeded"]
    assert server.terminate() == 0
    assert "Traceback" not in server.log()


def test_listing_only_the_names_after_the_last_one_seen(
    store: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tally.service.watch_io import list_after, list_objects

    use(store, monkeypatch)
    container = store.new_container()
    names = ["a.tsv", "b.tsv", "c/d.tsv", "c/_tmp.tsv", "_SUCCESS", "e.tsv"]
    store.upload(container, {f"in/{n}": n.encode() for n in names})
    store.upload(container, {"other/z.tsv": b"z", "in.tsv": b"i"})
    source = f"{store.scheme}://{container}/in/"
    every = {o.name: o for o in list_objects(source)}
    assert sorted(every) == ["a.tsv", "b.tsv", "c/d.tsv", "e.tsv"]
    assert {o.name: o for o in list_after(source, "")} == every
    assert [o.name for o in list_after(source, "b.tsv")] == ["c/d.tsv", "e.tsv"]
    assert list_after(source, "b.tsv")[0] == every["c/d.tsv"]  # the same URL and version
    assert list_after(source, "e.tsv") == []


def test_between_full_listings_new_names_are_found_by_listing_what_comes_after(
    procs: Procs, tmp_path: Path, store: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(store, monkeypatch)
    container = store.new_container()
    source, out = f"{store.scheme}://{container}/in/", tmp_path / "out"
    # one full listing, at the start; then only what follows the greatest name seen
    args = ("--watch", source, "--output", str(out), "--poll-interval", "0.05", "--all",
            "--full-listing-interval", "3600")  # fmt: skip
    server = start_server(procs, tmp_path / "state.db", *args)
    start_workers(procs, server.worker_port, 1)
    parts = sample_parts(3)
    for name in sorted(parts):  # growing names: each found by a listing of what follows
        store.upload(container, {f"in/{name}": parts[name]})
        wait_until(lambda n=name: (out / f"{n}.json").exists(), 60, f"{name}'s result")
    assert server.terminate() == 0
    for name in parts:
        assert json.loads((out / f"{name}.json").read_text()) == expected(parts[name], tmp_path)
    assert json.loads((out / "_total.json").read_text()) == expected(SAMPLE.read_bytes(), tmp_path)
