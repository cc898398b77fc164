"""Upload-to-result latency of ``tally serve --watch``, by listing and by notification, on a
local folder, Azurite and moto's S3 server; and how long one listing takes as a prefix grows.

    .venv/bin/python bench/watch_latency.py [--runs folder-listing,az-listing,az-notify,
        s3-listing,s3-notify] [--objects 100] [--gap 0.2] [--workers 2]
        [--poll-interval 0.5] [--settle 0.5] [--listing-sizes 1000,10000]

Each run starts Azurite (blob and queue services) or moto's server as needed, then
``tally serve --watch SOURCE --output OUT --top 25 --watch-events EVENTS`` and its workers on
127.0.0.1, uploads ``--objects`` small objects (20 lines of the real sample each) one at a
time, ``--gap`` seconds apart, and waits for every result. By notification: on Azurite the
bench puts the Event Grid ``BlobCreated`` message (Base64 JSON, as Event Grid delivers it)
on the queue right after each upload, Azurite having no Event Grid; moto's S3 server sends
its S3 notifications to SQS by itself. The listing then runs once a minute, as a backfill.

Per object, from the watcher's records (``--watch-events``) and the job's (``GET /api/jobs``):
detect (upload returned to job submitted: listing or event, describe, plan), queue
(submitted to first attempt started), compute (first attempt to job end, the journal's
commits included) and write (job end to result file written). ``upload_to_result`` is the
sum. Prints a table and writes every figure to bench/results/watch_latency.json.

The listing part uploads N tiny objects under a fresh prefix of each store and times
:func:`tally.service.watch_io.list_objects` (the median of 3), what a full listing costs,
beside the SDK alone, and :func:`tally.service.watch_io.list_after` from the last name, what
a poll between full listings costs when nothing is new.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from queue_servers import queue_connection_string, start_azurite_queue  # noqa: E402
from storage_servers import AZURITE_ACCOUNT, Server, start_azurite, start_moto  # noqa: E402
from tally import Client  # noqa: E402

SAMPLE = ROOT / "tests" / "data" / "clickbench-sample-200.tsv"
RESULTS = ROOT / "bench" / "results" / "watch_latency.json"
READY = re.compile(r"serving: workers on [^:]+:(\d+), HTTP on (http://[^ ]+), state")
TOKEN = "bench-watch"
PARTS = ("detect", "queue", "compute", "write", "upload_to_result")


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": round(statistics.median(ordered), 4), "p90": round(cuts[89], 4),
            "p99": round(cuts[98], 4), "max": round(ordered[-1], 4)}  # fmt: skip


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: not within {timeout}s: {what}")
        time.sleep(0.005)
    return value


class Uploader:
    """Puts objects where the watcher looks, and says what ``tally serve`` needs."""

    def __init__(self, kind: str, tmp: Path, store: Server | None, queue_endpoint: str) -> None:
        self.kind, self.store, self.env = kind, store, dict(os.environ)
        self.notify_args: list[str] = []
        if store is None:
            self.source = str(tmp / "in")
            os.makedirs(self.source)
            return
        self.container = store.new_container()
        self.source = f"{store.scheme}://{self.container}/in/"
        self.env = store.run_env()
        self.fs = store.fs()
        if kind == "az-notify":
            from azure.storage.queue import QueueClient

            connection = queue_connection_string(store.endpoint, queue_endpoint)
            self.env["AZURE_STORAGE_CONNECTION_STRING"] = connection
            self.queue = QueueClient.from_connection_string(connection, "events")
            self.queue.create_queue()
            self.notify_args = ["--notify", f"azqueue://{AZURITE_ACCOUNT}/events"]
        elif kind == "s3-notify":
            import boto3

            keys = {"endpoint_url": store.endpoint, "region_name": "us-east-1",
                    "aws_access_key_id": store.options["key"],
                    "aws_secret_access_key": store.options["secret"]}  # fmt: skip
            sqs = boto3.client("sqs", **keys)
            url = sqs.create_queue(QueueName="events")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            config = {"QueueArn": arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"]}
            boto3.client("s3", **keys).put_bucket_notification_configuration(
                Bucket=self.container, NotificationConfiguration={"QueueConfigurations": [config]}
            )
            self.notify_args = ["--notify", "sqs://events"]

    def upload(self, name: str, data: bytes) -> float:
        """Upload (and notify); when the upload returned."""
        if self.store is None:
            with open(os.path.join(self.source, name), "wb") as f:
                f.write(data)
            return time.time()
        self.fs.pipe_file(f"{self.container}/in/{name}", data)
        done = time.time()
        if self.kind == "az-notify":
            etag = self.fs.info(f"{self.container}/in/{name}")["etag"]
            subject = f"/blobServices/default/containers/{self.container}/blobs/in/{name}"
            event = {"subject": subject, "eventType": "Microsoft.Storage.BlobCreated",
                     "id": name, "data": {"eTag": etag, "api": "PutBlob"},
                     "eventTime": "", "dataVersion": "", "metadataVersion": "1"}  # fmt: skip
            self.queue.send_message(base64.b64encode(json.dumps(event).encode()).decode())
        return done


def run_one(kind: str, store: Server | None, queue_endpoint: str, args: Any) -> dict[str, Any]:
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    with tempfile.TemporaryDirectory(prefix="tally-watch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        up = Uploader(kind, tmp, store, queue_endpoint)
        env = {**up.env, "TALLY_TOKEN": TOKEN}
        out, events = tmp / "out", tmp / "watch.jsonl"
        poll = [] if up.notify_args else ["--poll-interval", args.poll_interval]
        log_path = tmp / "serve.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "tally", "serve", "--port", "0", "--http-port", "0",
                 "--state", str(tmp / "state.db"), "--watch", up.source, "--output", str(out),
                 "--top", "25", "--settle", args.settle, "--watch-events", str(events),
                 *poll, *up.notify_args],
                env=env, stderr=log, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        match = wait_for(lambda: READY.search(log_path.read_text()), 60, "the server")
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "tally", "worker", "127.0.0.1", match.group(1), "-q"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(args.workers)
        ]
        client = Client(match.group(2), TOKEN)
        try:
            wait_for(lambda: len(client.workers()) >= args.workers, 60, "the workers")
            if up.notify_args:
                wait_for(lambda: "reading object-created" in log_path.read_text(), 60, "queue")
            for i in range(args.warmup):  # every worker's first task opens its clients
                up.upload(f"warmup-{i}.tsv", b"".join(lines[:20]))
            for i in range(args.warmup):
                wait_for((out / f"warmup-{i}.tsv.json").exists, 120, "the warm-up results")
            uploaded: dict[str, float] = {}
            for i in range(args.objects):
                name = f"obj-{i:04d}.tsv"
                start = (i * 20) % 200
                uploaded[name] = up.upload(name, b"".join(lines[start : start + 20]))
                time.sleep(args.gap)  # pacing the uploads
            for name in uploaded:
                wait_for((out / f"{name}.json").exists, 120, f"the result of {name}")
            jobs = {j["id"]: j for j in client.jobs()}
        finally:
            client.close()
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            for w in workers:
                w.wait(60)
        records = [json.loads(line) for line in events.read_text().splitlines()]
    submitted = {r["object"]: r for r in records if r["event"] == "submitted"}
    written = {r["object"]: r["t"] for r in records if r["event"] == "written"}
    parts: dict[str, list[float]] = {k: [] for k in PARTS}
    for name, t_up in uploaded.items():
        job = jobs[submitted[name]["job"]]
        parts["detect"].append(submitted[name]["t"] - t_up)
        parts["queue"].append(job["started"] - job["submitted"])
        parts["compute"].append(job["finished"] - job["started"])
        parts["write"].append(written[name] - job["finished"])
        parts["upload_to_result"].append(written[name] - t_up)
    return {"run": kind, "objects": args.objects,
            "seconds": {k: percentiles(v) for k, v in parts.items()}}  # fmt: skip


def time_listing(store: Server, sizes: list[int]) -> list[dict[str, Any]]:
    from tally.service.watch_io import list_after, list_objects

    os.environ.update(store.run_env())
    container, fs, have, found = store.new_container(), store.fs(), 0, []
    for size in sizes:
        batch = {f"{container}/in/obj-{i:06d}.tsv": b"x\n" for i in range(have, size)}
        for start in range(0, len(batch), 1000):
            fs.pipe(dict(list(batch.items())[start : start + 1000]))
        have = size
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            listed = list_objects(f"{store.scheme}://{container}/in/")
            times.append(time.perf_counter() - t0)
        assert len(listed) == size, (len(listed), size)
        sdk = []
        for _ in range(3):
            t0 = time.perf_counter()
            assert sdk_listing(store, container) == size
            sdk.append(time.perf_counter() - t0)
        after = []
        for _ in range(3):  # a poll between full listings, nothing new since the last name
            t0 = time.perf_counter()
            assert list_after(f"{store.scheme}://{container}/in/", f"obj-{size - 1:06d}.tsv") == []
            after.append(time.perf_counter() - t0)
        found.append({"store": store.scheme, "objects": size,
                      "listing_s": round(statistics.median(times), 3),
                      "after_last_s": round(statistics.median(after), 3),
                      "sdk_alone_s": round(statistics.median(sdk), 3)})  # fmt: skip
    return found


def sdk_listing(store: Server, container: str) -> int:
    """The same listing with the storage SDK alone: the floor of what a poll costs."""
    if store.scheme == "s3":
        import boto3

        s3 = boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1",
                          aws_access_key_id=store.options["key"],
                          aws_secret_access_key=store.options["secret"])  # fmt: skip
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=container, Prefix="in/")
        return sum(len(page.get("Contents", [])) for page in pages)
    from azure.storage.blob import ContainerClient

    client = ContainerClient.from_connection_string(store.options["connection_string"], container)
    return sum(1 for _ in client.list_blobs(name_starts_with="in/"))


@contextlib.contextmanager
def servers(needed: set[str]) -> Iterator[tuple[Server | None, Server | None, str]]:
    with contextlib.ExitStack() as stack:
        az = stack.enter_context(start_azurite()) if "az" in needed else None
        queue = stack.enter_context(start_azurite_queue()) if "az" in needed else ""
        s3 = stack.enter_context(start_moto(authenticated=True)) if "s3" in needed else None
        yield az, s3, queue


def table(runs: list[dict[str, Any]]) -> str:
    rows = ["| run | p50 | p99 | detect p50 | queue p50 | compute p50 | write p50 |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in runs:
        s = run["seconds"]
        rows.append(f"| {run['run']} | {s['upload_to_result']['p50']:.3f} | "
                    f"{s['upload_to_result']['p99']:.3f} | {s['detect']['p50']:.3f} | "
                    f"{s['queue']['p50']:.3f} | {s['compute']['p50']:.3f} | "
                    f"{s['write']['p50']:.3f} |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs", default="folder-listing,az-listing,az-notify,s3-listing,s3-notify"
    )
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between uploads")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=4, help="objects first, not measured")
    parser.add_argument("--poll-interval", default="0.5")
    parser.add_argument("--settle", default="0.5")
    parser.add_argument("--listing-sizes", default="1000,10000", help="'' to skip")
    args = parser.parse_args()
    kinds = [k for k in args.runs.split(",") if k]
    sizes = [int(n) for n in args.listing_sizes.split(",") if n]
    needed = {k.split("-")[0] for k in kinds} | ({"az", "s3"} if sizes else set())
    runs, listings = [], []
    with servers(needed) as (az, s3, queue):
        for kind in kinds:
            store = {"az": az, "s3": s3}.get(kind.split("-")[0])
            runs.append(run_one(kind, store, queue, args))
            print(table(runs[-1:]).splitlines()[-1], file=sys.stderr)
        for store in (az, s3):
            if sizes and store is not None:
                listings += time_listing(store, sizes)
    doc = {"gap_s": args.gap, "workers": args.workers, "poll_interval_s": float(args.poll_interval),
           "settle_s": float(args.settle), "load_avg_1m": round(os.getloadavg()[0], 2),
           "runs": runs, "listing": listings}  # fmt: skip
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(runs))
    for row in listings:
        print(f"listing {row['store']} prefix of {row['objects']} objects: {row['listing_s']} s "
              f"(the SDK alone: {row['sdk_alone_s']} s); after the last name: "
              f"{row['after_last_s']} s")  # fmt: skip


if __name__ == "__main__":
    main()
