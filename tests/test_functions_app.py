"""The Azure Functions app of deploy/azure-functions against Azurite: its functions called
with real ``InputStream`` and ``QueueMessage`` objects, over real blobs and queues, with the
host's delivery rules (tests/functions_host.py). Every result is compared byte for byte with
what ``tally run`` / ``tally sql`` print for the same data."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError

from conftest import SAMPLE
from functions_host import Host, load_functions
from queue_servers import queue_connection_string as connection_string
from queue_servers import start_azurite_queue
from storage_servers import Server
from tally.functions import flow
from tally.functions.handlers import Flow

SPLIT = 2048  # the 200-line sample (~21 KB) is cut into about ten ranges
GROUP_SQL = (
    "SELECT c1, count(*), sum(c2), min(c3), max(c3), avg(c3) FROM 'data.tsv' "
    "GROUP BY c1 ORDER BY c1"
)


@pytest.fixture(scope="module")
def queue_endpoint() -> Iterator[str]:
    with start_azurite_queue() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def functions() -> dict[str, Callable[..., Any]]:
    return load_functions()


@pytest.fixture
def host(
    functions: dict[str, Callable[..., Any]],
    azurite: Server,
    queue_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Host:
    """The app's settings for one test: its own containers and queues."""
    tag = uuid.uuid4().hex[:8]
    settings = {
        "AzureWebJobsStorage": connection_string(azurite.endpoint, queue_endpoint),
        "TALLY_UPLOADS": f"up{tag}",
        "TALLY_EVENT_QUEUE": f"events{tag}",
        "TALLY_RANGE_QUEUE": f"ranges{tag}",
        "TALLY_WORK_CONTAINER": f"work{tag}",
        "TALLY_OUTPUT": f"out{tag}/results",
        "TALLY_QUERY": '{"top": 25}',
        "TALLY_SPLIT_SIZE": str(SPLIT),
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    host = Host(functions, settings["AzureWebJobsStorage"])
    host.blobs.create_container(settings["TALLY_UPLOADS"])
    host.queue(settings["TALLY_EVENT_QUEUE"]).create_queue()
    return host


def env(name: str) -> str:
    import os

    return os.environ[name]


def upload(host: Host, name: str, data: bytes) -> Any:
    client = host.blobs.get_blob_client(env("TALLY_UPLOADS"), name)
    client.upload_blob(data, overwrite=True)
    return client.get_blob_properties()


def result(host: Host, name: str) -> str:
    container, _, prefix = env("TALLY_OUTPUT").partition("/")
    blob = host.blobs.get_blob_client(container, flow.result_key(prefix, name))
    text: str = blob.download_blob().readall().decode("utf-8")
    return text


def tally(*args: str) -> str:
    """What the command line prints for the same data (one worker, no cutting)."""
    out = subprocess.run(
        [sys.executable, "-m", "tally", *args, "--workers", "1", "--format", "json"],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    return out.stdout.decode("utf-8")


def merges(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("merged ")]


def event_for(host: Host, name: str, props: Any) -> str:
    """The Microsoft.Storage.BlobCreated event Event Grid delivers for an upload."""
    container = env("TALLY_UPLOADS")
    url = host.blobs.get_blob_client(container, name).url
    return json.dumps({
        "topic": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Storage/"
                 "storageAccounts/devstoreaccount1",
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventType": "Microsoft.Storage.BlobCreated",
        "id": str(uuid.uuid4()),
        "eventTime": props.last_modified.isoformat(),
        "data": {"api": "PutBlob", "eTag": props.etag, "contentLength": props.size,
                 "contentType": "application/octet-stream", "blobType": "BlockBlob",
                 "url": url, "sequencer": "0" * 32},
        "dataVersion": "", "metadataVersion": "1",
    })  # fmt: skip


# --- the whole flow ----------------------------------------------------------------------------


def test_blob_trigger_flow_equals_tally_run(
    host: Host, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, "tally.functions")
    monkeypatch.setenv("TALLY_QUERY", '{"all": true}')
    data = SAMPLE.read_bytes()
    upload(host, "logs/sample.tsv", data)
    host.blob_created(env("TALLY_UPLOADS"), "logs/sample.tsv")
    ranges = host.bodies(env("TALLY_RANGE_QUEUE"))
    assert len(ranges) == len(flow.cut(len(data), SPLIT)) > 5
    host.drain(env("TALLY_RANGE_QUEUE"), "on_range")
    assert result(host, "logs/sample.tsv") == tally("run", str(SAMPLE), "--all")
    assert len(merges(caplog)) == 1
    assert all(d.outcome == "ok" and d.dequeue_count == 1 for d in host.deliveries)


def test_event_queue_flow_equals_tally_run(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tally.functions")
    props = upload(host, "sample.tsv", SAMPLE.read_bytes())
    host.queue(env("TALLY_EVENT_QUEUE")).send_message(event_for(host, "sample.tsv", props))
    host.drain(env("TALLY_EVENT_QUEUE"), "on_upload_event")
    host.drain(env("TALLY_RANGE_QUEUE"), "on_range")
    assert result(host, "sample.tsv") == tally("run", str(SAMPLE), "--top", "25")
    assert len(merges(caplog)) == 1


def test_groupby_flow_equals_tally_sql(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    lines = [f"k{rng.randrange(7)}\t{rng.randrange(1000)}\t{rng.randrange(100) / 100:.2f}\n"
             for _ in range(600)]  # fmt: skip
    data = "".join(lines).encode()
    local = tmp_path / "data.tsv"
    local.write_bytes(data)
    query = {"sql": GROUP_SQL, "delimiter": "\\t"}
    monkeypatch.setenv("TALLY_QUERY", json.dumps(query))
    upload(host, "data.tsv", data)
    host.blob_created(env("TALLY_UPLOADS"), "data.tsv")
    host.drain(env("TALLY_RANGE_QUEUE"), "on_range")
    expected = tally("sql", GROUP_SQL.replace("'data.tsv'", f"'{local}'"), "--delimiter", "\\t")
    assert result(host, "data.tsv") == expected


# --- at-least-once delivery ----------------------------------------------------------------------


def test_duplicate_map_delivery_counts_once(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tally.functions")
    upload(host, "sample.tsv", SAMPLE.read_bytes())
    host.blob_created(env("TALLY_UPLOADS"), "sample.tsv")
    queue = host.queue(env("TALLY_RANGE_QUEUE"))
    bodies = host.bodies(env("TALLY_RANGE_QUEUE"))
    queue.send_message(bodies[0])  # delivered twice before the merge ...
    host.drain(env("TALLY_RANGE_QUEUE"), "on_range")
    expected = tally("run", str(SAMPLE), "--top", "25")
    assert result(host, "sample.tsv") == expected
    before = host.blobs.get_blob_client(*_result_place("sample.tsv")).get_blob_properties()
    queue.send_message(bodies[-1])  # ... and once more after it
    host.drain(env("TALLY_RANGE_QUEUE"), "on_range")
    after = host.blobs.get_blob_client(*_result_place("sample.tsv")).get_blob_properties()
    assert result(host, "sample.tsv") == expected
    assert json.loads(expected)["lines"] == 200  # each range counted once
    assert len(merges(caplog)) == 1 and after.etag == before.etag  # not even rewritten
    assert [d.outcome for d in host.deliveries].count("ok") == len(bodies) + 2


def _result_place(name: str) -> tuple[str, str]:
    container, _, prefix = env("TALLY_OUTPUT").partition("/")
    return container, flow.result_key(prefix, name)


def test_failed_map_is_retried_by_redelivery(
    host: Host, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.core.exceptions import ServiceRequestError

    caplog.set_level(logging.INFO, "tally.functions")
    failed: list[int] = []
    real_open = Flow._open

    def flaky(self: Flow, work: flow.RangeWork) -> Any:
        if work.index == 1 and not failed:
            failed.append(work.index)
            raise ServiceRequestError("connection reset while reading the range")
        return real_open(self, work)

    monkeypatch.setattr(Flow, "_open", flaky)
    upload(host, "sample.tsv", SAMPLE.read_bytes())
    host.blob_created(env("TALLY_UPLOADS"), "sample.tsv")
    host.drain(env("TALLY_RANGE_QUEUE"), "on_range")
    assert failed == [1]
    outcomes = [(d.dequeue_count, d.outcome) for d in host.deliveries]
    assert (1, "ServiceRequestError") in outcomes and (2, "ok") in outcomes
    assert result(host, "sample.tsv") == tally("run", str(SAMPLE), "--top", "25")
    assert len(merges(caplog)) == 1


def test_two_maps_finishing_at_once_merge_once(
    host: Host, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, "tally.functions")
    data = SAMPLE.read_bytes()
    monkeypatch.setenv("TALLY_SPLIT_SIZE", str(len(data) // 2 + 1))  # two ranges
    upload(host, "sample.tsv", data)
    host.blob_created(env("TALLY_UPLOADS"), "sample.tsv")
    queue = host.queue(env("TALLY_RANGE_QUEUE"))
    received = list(queue.receive_messages(messages_per_page=2, visibility_timeout=60))
    assert len(received) == 2
    both_written = threading.Barrier(2, timeout=60)
    real_present = Flow._present

    def after_both(self: Flow, prefix: str) -> list[str]:
        both_written.wait()  # both partials are written before either looks
        return real_present(self, prefix)

    monkeypatch.setattr(Flow, "_present", after_both)
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda m=m: outcomes.append(
            host.deliver(env("TALLY_RANGE_QUEUE"), "on_range", m)))
        for m in received
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes == ["ok", "ok"]
    assert len(merges(caplog)) == 1
    assert result(host, "sample.tsv") == tally("run", str(SAMPLE), "--top", "25")


@pytest.mark.parametrize(
    ("queue_setting", "function", "body", "line"),
    [
        ("TALLY_RANGE_QUEUE", "on_range", '{"container": "up", "name": "x.tsv"}',
         "bad range message {id}: not a range message (Object missing required field `version`)"),
        ("TALLY_EVENT_QUEUE", "on_upload_event", '{"eventType": "Microsoft.Storage.BlobCreated"}',
         "bad event message {id}: a Microsoft.Storage.BlobCreated event without a blob subject "
         "and data"),
    ],
)  # fmt: skip
def test_malformed_message_goes_to_poison_after_max_dequeue(
    host: Host,
    caplog: pytest.LogCaptureFixture,
    queue_setting: str,
    function: str,
    body: str,
    line: str,
) -> None:
    caplog.set_level(logging.INFO, "tally.functions")
    queue = host.queue(env(queue_setting))
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()
    queue.send_message(body)
    host.drain(env(queue_setting), function)
    assert [d.dequeue_count for d in host.deliveries] == list(range(1, host.max_dequeue + 1))
    assert {d.outcome for d in host.deliveries} == {"BadMessage"}
    assert host.bodies(f"{env(queue_setting)}-poison") == [body]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert (
        errors
        == [  # one line per delivery, naming the message and what is wrong
            "tally: " + line.format(id=host.deliveries[0].message_id)
        ]
        * host.max_dequeue
    )


def test_replaced_blob_drops_old_ranges_and_processes_the_new_version(host: Host) -> None:
    data = SAMPLE.read_bytes()
    upload(host, "sample.tsv", data[: len(data) // 2])
    host.blob_created(env("TALLY_UPLOADS"), "sample.tsv")  # ranges of the first version ...
    upload(host, "sample.tsv", data)  # ... replaced before any map ran
    host.blob_created(env("TALLY_UPLOADS"), "sample.tsv")
    host.drain(env("TALLY_RANGE_QUEUE"), "on_range")
    assert result(host, "sample.tsv") == tally("run", str(SAMPLE), "--top", "25")
