"""``tally serve --watch PREFIX --notify QUEUE_URL`` with real processes and real queues:
Event Grid BlobCreated events on Azurite's queue service (Azurite has no Event Grid, so the
test puts on the queue exactly what Event Grid would deliver) and S3 event notifications
that moto's server itself delivers to SQS. The listing is slowed to once an hour, so only
the events can bring the uploads in."""

from __future__ import annotations

import base64
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import SAMPLE, Procs, free_port, reference_output
from queue_servers import (
    AzureQueues,
    aws_client,
    queue_connection_string,
    start_azurite_queue,
)
from storage_servers import AZURITE_ACCOUNT, Server
from tally.protocol import QuerySpec
from test_notify import blob_created
from test_service_support import (
    read_json as read,
)
from test_service_support import start_server, start_workers, wait_until, workers_alive

ALL = QuerySpec("all")
NO_LISTING = ("--poll-interval", "3600", "--all")


def expected(data: bytes, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / f"expected-{uuid.uuid4().hex}.tsv"
    path.write_bytes(data)
    doc: dict[str, Any] = json.loads(reference_output(path, ALL, "json"))
    return doc


def jobs_by_object(client: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for job in client.jobs():
        found.setdefault(job["source"].rsplit("/", 1)[1], []).append(job["state"])
    return found


def lines(start: int, stop: int) -> bytes:
    return b"".join(SAMPLE.read_bytes().splitlines(keepends=True)[start:stop])


class AzureFeed:
    """An Azurite queue that Event Grid would feed, and the blobs its events are about."""

    def __init__(self, store: Server, queues: AzureQueues) -> None:
        self.store, self.queues = store, queues
        self.name = queues.new_queue()
        self.queue = queues.client(self.name)
        self.url = f"azqueue://{AZURITE_ACCOUNT}/{self.name}"
        self.container = store.new_container()
        self.env = queues.env()

    def upload(self, key: str, data: bytes, notify: bool = True) -> str:
        """Upload, then deliver the event as Event Grid does (Base64 JSON); the ETag."""
        self.store.upload(self.container, {key: data})
        etag: str = self.store.fs().info(f"{self.container}/{key}")["etag"]
        if notify:
            self.put(base64.b64encode(json.dumps(self.event(key, etag)).encode()).decode())
        return etag

    def event(self, key: str, etag: str = "0x1") -> dict[str, Any]:
        return blob_created(self.container, key, etag)

    def put(self, body: str) -> None:
        self.queue.send_message(body)

    def left(self) -> int:
        count: int = self.queue.get_queue_properties().approximate_message_count
        return count

    def poison(self) -> list[dict[str, Any]]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            found = self.queues.client(self.name + "-poison").peek_messages(max_messages=32)
        except ResourceNotFoundError:
            return []
        return [json.loads(m.content) for m in found]


class SqsFeed:
    """An SQS queue that moto's S3 server sends the bucket's notifications to."""

    def __init__(self, store: Server) -> None:
        self.store = store
        self.sqs, self.s3 = aws_client(store, "sqs"), aws_client(store, "s3")
        self.name = f"q{uuid.uuid4().hex[:12]}"
        self.queue = self.sqs.create_queue(QueueName=self.name)["QueueUrl"]
        self.url = f"sqs://{self.name}"
        self.container = store.new_container()
        self.env: dict[str, str] = {}
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])
        config = {"QueueArn": arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"]}
        self.s3.put_bucket_notification_configuration(
            Bucket=self.container, NotificationConfiguration={"QueueConfigurations": [config]}
        )

    def upload(self, key: str, data: bytes, notify: bool = True) -> str:
        """Upload: the server sends the notification itself."""
        assert notify, "moto's server notifies of every upload"
        answer = self.s3.put_object(Bucket=self.container, Key=key, Body=data)
        return str(answer["ETag"]).strip('"')

    def event(self, key: str, etag: str = "e1") -> dict[str, Any]:
        from test_notify import s3_created

        doc: dict[str, Any] = json.loads(s3_created(self.container, key, etag))
        return doc

    def put(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.queue, MessageBody=body)

    def left(self) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        got = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=names)
        return sum(int(got["Attributes"][n]) for n in names)

    def poison(self) -> list[dict[str, Any]]:
        try:
            url = self.sqs.get_queue_url(QueueName=self.name + "-poison")["QueueUrl"]
        except self.sqs.exceptions.QueueDoesNotExist:
            return []
        got = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
        return [json.loads(m["Body"]) for m in got.get("Messages", [])]


@pytest.fixture(params=["az", "s3"])
def feed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AzureFeed | SqsFeed:
    """A container or bucket and a queue of its object-created events; processes started
    from now on reach both."""
    store: Server
    if request.param == "az":
        store = request.getfixturevalue("azurite")
        made: AzureFeed | SqsFeed = AzureFeed(store, request.getfixturevalue("azurite_queues"))
    else:
        store = request.getfixturevalue("s3_server")
        made = SqsFeed(store)
    for key, value in store.run_env(**made.env).items():
        monkeypatch.setenv(key, value)
    return made


def serve(procs: Procs, tmp_path: Path, feed: AzureFeed | SqsFeed, port: int = 0) -> Any:
    source = f"{feed.store.scheme}://{feed.container}/in/"
    args = ("--watch", source, "--output", str(tmp_path / "out"), "--notify", feed.url)
    return start_server(procs, tmp_path / "state.db", *args, *NO_LISTING, port=port)


def test_events_bring_each_version_in_once_despite_duplicates_reordering_and_outsiders(
    procs: Procs, tmp_path: Path, feed: AzureFeed | SqsFeed
) -> None:
    out = tmp_path / "out"
    server = serve(procs, tmp_path, feed)
    start_workers(procs, server.worker_port, 1)
    client = server.client()
    wait_until(workers_alive(client, 1), what="a worker")
    wait_until(lambda: "reading object-created events" in server.log(), what="the consumer")
    # from now on only events bring objects in (the next listing is an hour away)
    wait_until(lambda: "listed " in server.log(), 60, "the first listing")
    a_old = feed.upload("in/a.tsv", lines(0, 60))
    feed.upload("in/b.tsv", lines(60, 120))
    feed.upload("other/c.tsv", lines(120, 130))  # outside the watched prefix
    for _ in range(2):  # duplicates, delivered as plain JSON
        feed.put(json.dumps(feed.event("in/a.tsv", a_old)))
    wait_until(lambda: read(out / "a.tsv.json") and read(out / "b.tsv.json"), 60, "2 results")
    first = expected(lines(0, 120), tmp_path)
    wait_until(lambda: read(out / "_total.json") == first, 60, "the total of a and b")
    assert read(out / "a.tsv.json") == expected(lines(0, 60), tmp_path)
    assert read(out / "b.tsv.json") == expected(lines(60, 120), tmp_path)
    # a new version of a.tsv, then its first version's event again, late
    feed.upload("in/a.tsv", lines(0, 10))
    feed.put(json.dumps(feed.event("in/a.tsv", a_old)))
    want = expected(lines(0, 10) + lines(60, 120), tmp_path)
    wait_until(lambda: read(out / "_total.json") == want, 60, "the total with a's new version")
    assert read(out / "a.tsv.json") == expected(lines(0, 10), tmp_path)
    wait_until(lambda: feed.left() == 0, 60, "every message deleted")
    assert jobs_by_object(client) == {"a.tsv": ["succeeded"] * 2, "b.tsv": ["succeeded"]}
    assert server.terminate() == 0
    log = server.log()
    assert "Traceback" not in log
    counts = log.split(f"events from {feed.url}: ", 1)[1].splitlines()[0]
    assert "1 outside" in counts and "3 submitted" in counts and "0 dead lettered" in counts
    assert not (out / "c.tsv.json").exists()


def test_unusable_messages_are_dead_lettered_with_their_reason_after_three_tries(
    procs: Procs, tmp_path: Path, feed: AzureFeed | SqsFeed
) -> None:
    server = serve(procs, tmp_path, feed)
    start_workers(procs, server.worker_port, 1)
    wait_until(lambda: "reading object-created events" in server.log(), what="the consumer")
    feed.put("{not json")
    feed.put(json.dumps({"hello": "world"}))
    feed.put(json.dumps(feed.event("in/missing.tsv")))  # an object that cannot be read
    feed.upload("in/good.tsv", lines(0, 20))
    wait_until(lambda: read(tmp_path / "out" / "good.tsv.json"), 60, "the good object's result")
    poison = wait_until(lambda: three(feed.poison()), 60, "three dead letters")
    reasons = sorted(p["reason"] for p in poison)
    assert reasons[0].startswith("malformed JSON")
    assert reasons[1] == f"no object {feed.store.scheme}://{feed.container}/in/missing.tsv"
    assert reasons[2] == "not an Event Grid event (no eventType and subject)"
    assert all(p["tries"] == 3 for p in poison)
    assert "{not json" in {p["body"] for p in poison}  # kept as it came
    wait_until(lambda: feed.left() == 0, 60, "the queue emptied")
    assert server.terminate() == 0
    log = server.log()
    assert log.count("dead-lettered") == 3  # one line for each
    assert "Traceback" not in log


def three(found: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    return found if len(found) == 3 else None


def test_a_sigkill_between_event_and_result_neither_misses_nor_repeats(
    procs: Procs, tmp_path: Path, feed: AzureFeed | SqsFeed
) -> None:
    out = tmp_path / "out"
    server = serve(procs, tmp_path, feed)
    start_workers(procs, server.worker_port, 1, "--task-delay", "0.5")
    client = server.client()
    wait_until(lambda: "reading object-created events" in server.log(), what="the consumer")
    feed.upload("in/a.tsv", lines(0, 100))
    wait_until(lambda: "running" in jobs_by_object(client).get("a.tsv", []), 60, "a's job")
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    assert read(out / "a.tsv.json") is None
    feed.upload("in/b.tsv", lines(100, 200))  # while the server is down
    server = serve(procs, tmp_path, feed, port=server.worker_port)
    client = server.client()
    want = expected(SAMPLE.read_bytes(), tmp_path)
    wait_until(lambda: read(out / "_total.json") == want, 90, "the total")
    assert read(out / "a.tsv.json") == expected(lines(0, 100), tmp_path)
    assert read(out / "b.tsv.json") == expected(lines(100, 200), tmp_path)
    assert jobs_by_object(client) == {"a.tsv": ["succeeded"], "b.tsv": ["succeeded"]}
    assert server.terminate() == 0


def test_a_queue_that_is_down_costs_one_log_line_and_is_read_once_it_is_up(
    procs: Procs,
    tmp_path: Path,
    azurite: Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    connection = queue_connection_string(azurite.endpoint, endpoint)
    for key, value in azurite.run_env(AZURE_STORAGE_CONNECTION_STRING=connection).items():
        monkeypatch.setenv(key, value)
    container, name = azurite.new_container(), f"q{uuid.uuid4().hex[:12]}"
    source, out = f"az://{container}/in/", tmp_path / "out"
    args = (
        "--watch",
        source,
        "--output",
        str(out),
        "--notify",
        f"azqueue://{AZURITE_ACCOUNT}/{name}",
    )
    server = start_server(procs, tmp_path / "state.db", *args, *NO_LISTING)
    start_workers(procs, server.worker_port, 1)
    wait_until(lambda: "cannot read queue" in server.log(), 30, "the queue reported down")
    with start_azurite_queue(port):
        queues = AzureQueues(endpoint, connection)
        queues.client(name).create_queue()
        azurite.upload(container, {"in/a.tsv": lines(0, 30)})
        etag = azurite.fs().info(f"{container}/in/a.tsv")["etag"]
        queues.client(name).send_message(json.dumps(blob_created(container, "in/a.tsv", etag)))
        wait_until(lambda: read(out / "a.tsv.json"), 60, "the result once the queue is up")
        assert server.terminate() == 0
    log = server.log()
    complaints = [line for line in log.splitlines() if "cannot read queue" in line]
    # one line while the endpoint is down; the queue, created just after the server came up,
    # may be polled before it exists: one more line then, for that other reason
    assert sum("Connection refused" in line for line in complaints) == 1, log
    assert len(complaints) == 1 or (
        len(complaints) == 2 and "The specified queue does not exist" in complaints[1]
    ), log
    assert "reading queue azqueue://" in log
    assert "Traceback" not in log
    assert read(out / "a.tsv.json") == expected(lines(0, 30), tmp_path)


def test_an_sqs_queue_that_does_not_exist_yet_costs_one_log_line_and_is_read_once_made(
    procs: Procs, tmp_path: Path, s3_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.run_env().items():
        monkeypatch.setenv(key, value)
    container, name = s3_server.new_container(), f"q{uuid.uuid4().hex[:12]}"
    out = tmp_path / "out"
    args = ("--watch", f"s3://{container}/in/", "--output", str(out), "--notify", f"sqs://{name}")
    server = start_server(procs, tmp_path / "state.db", *args, *NO_LISTING)
    start_workers(procs, server.worker_port, 1)
    wait_until(lambda: f"cannot read queue sqs://{name}" in server.log(), 30, "the line")
    sqs = aws_client(s3_server, "sqs")
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    wait_until(lambda: "reading queue sqs://" in server.log(), 60, "the queue read")
    aws_client(s3_server, "s3").put_object(Bucket=container, Key="in/a.tsv", Body=lines(0, 30))
    event = json.loads(s3_created_body(container, "in/a.tsv"))
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(event))
    wait_until(lambda: read(out / "a.tsv.json"), 60, "the result")
    assert server.terminate() == 0
    log = server.log()
    assert log.count("cannot read queue") == 1, log
    assert "Traceback" not in log
    assert read(out / "a.tsv.json") == expected(lines(0, 30), tmp_path)


def s3_created_body(bucket: str, key: str) -> str:
    from test_notify import s3_created

    return s3_created(bucket, key)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--watch", "{tmp}", "--notify", "sqs://q"), "carries events of S3 (s3://): it cannot"),
        (("--watch", "az://c/p/", "--notify", "sqs://q"), "cannot notify of az://c/p/"),
        (("--watch", "s3://c/p/", "--notify", "s3://q"), "give azqueue://ACCOUNT/QUEUE"),
        (("--notify", "sqs://q"), "--notify and the query options go with --watch"),
        (("--watch", "az://c/p/", "--notify", "azqueue://other/q"), "is for account"),
    ],
)
def test_a_notify_option_that_cannot_work_is_refused_in_one_line(
    tmp_path: Path, args: tuple[str, ...], error: str
) -> None:
    import os
    import subprocess
    import sys

    connection = queue_connection_string("http://127.0.0.1:1/x", "http://127.0.0.1:1/x")
    done = subprocess.run(
        [sys.executable, "-m", "tally", "serve", "--port", "0", "--http-port", "0",
         "--state", str(tmp_path / "s.db"), "--output", str(tmp_path / "out"),
         *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": connection},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("tally: ") and error in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
