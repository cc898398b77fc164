"""Writing to object storage, against real servers: the result in each format, the stats and
events, atomically and only for a job that succeeded, refused before the job when the
destination cannot be written; ``tally gen`` into a prefix; a worker killed in the middle of
an object; signed URLs (SAS, presigned) read over plain HTTP."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE, Procs, free_port, reference_output, split_round_robin
from storage_faults import Throttle, throttling_proxy
from storage_servers import AZURITE_ACCOUNT, AZURITE_KEY, Server
from tally.datagen import generate
from tally.protocol import QuerySpec
from tally.storage.ranges import cut

TOP25 = QuerySpec("top", k=25)


def tally(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=env,
    )  # fmt: skip


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return split_round_robin(SAMPLE, tmp_path_factory.mktemp("parts"), 4)


# --- the result, stats and events -----------------------------------------------------------


def test_the_result_in_each_format(store: Server, parts: Path) -> None:
    container = store.new_container()
    base = f"{store.scheme}://{container}/results/top"
    for suffix in ("json", "csv", "parquet"):
        done = tally(
            store.run_env(), "run", str(parts), "--workers", "2", "--output", f"{base}.{suffix}"
        )
        assert (done.returncode, done.stdout) == (0, ""), done.stderr  # nothing on stdout
    assert store.read(f"{base}.json").decode() == reference_output(SAMPLE, TOP25, "json")
    assert store.read(f"{base}.csv").decode() == reference_output(SAMPLE, TOP25, "csv")
    table = pq.read_table(io.BytesIO(store.read(f"{base}.parquet")))
    expected = [line.rsplit(" ", 1) for line in reference_output(SAMPLE, TOP25).splitlines()]
    assert table.column_names == ["domain", "count"]
    assert table.to_pylist() == [{"domain": d, "count": int(n)} for d, n in expected]
    # nothing else was left there: no probe marker, no temporary object
    assert store.names(container) == ["results/top.csv", "results/top.json", "results/top.parquet"]


def test_a_local_output_is_written_whole(parts: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "result.json"
    target.parent.mkdir()
    done = tally(dict(os.environ), "run", str(parts), "--workers", "1", "--output", str(target))
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert target.read_text() == reference_output(SAMPLE, TOP25, "json")
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_stats_and_events_go_to_object_storage(store: Server, parts: Path) -> None:
    container = store.new_container()
    stats, events = (
        f"{store.scheme}://{container}/run/{n}" for n in ("stats.json", "events.jsonl")
    )
    done = tally(
        store.run_env(), "run", str(parts), "--workers", "2", "--stats", stats, "--events", events
    )
    assert (done.returncode, done.stdout) == (0, reference_output(SAMPLE, TOP25)), done.stderr
    record = json.loads(store.read(stats))
    assert (record["partitions"], record["lines"]) == (4, 200)
    assert sum(w["partitions"] for w in record["workers"]) == 4
    lines = [json.loads(line) for line in store.read(events).decode().splitlines()]
    assert lines and all(isinstance(line, dict) for line in lines)
    assert store.names(container) == ["run/events.jsonl", "run/stats.json"]


def test_a_destination_that_cannot_be_written_is_refused_before_the_job(
    store: Server, parts: Path
) -> None:
    s = store.scheme
    missing = (
        "no such bucket (HTTP 404 NoSuchBucket)"
        if s == "s3"
        else "no such container (HTTP 404 ContainerNotFound)"
    )
    for option in ("--output", "--stats", "--events"):
        target = f"{s}://nosuch-{option[2:]}/x.json"
        done = tally(store.run_env(), "run", str(parts), "--workers", "1", option, target)
        assert (done.returncode, done.stdout) == (2, ""), done.stderr
        assert last_line(done) == f"tally: cannot write {option} {target}: {missing}"
        assert "listening on" not in done.stderr  # refused before the job
    done = tally(store.run_env(), "run", str(parts), "--output", f"{s}://c/result.txt")
    assert (done.returncode, last_line(done)) == (
        2,
        f"tally: --output {s}://c/result.txt: the name must end in .json, .csv or .parquet "
        "(the format written)",
    )


def test_a_failed_job_writes_no_result(store: Server, parts: Path, tmp_path: Path) -> None:
    container = store.new_container()
    listing = tmp_path / "list.csv"
    listing.write_text(f"{parts}/part-000.tsv\n{store.scheme}://{container}/missing.tsv\n")
    target = f"{store.scheme}://{container}/out/result.json"
    done = tally(store.run_env(), "run", str(listing), "--workers", "1", "--output", target)
    assert done.returncode == 1, done.stderr
    assert "not found" in last_line(done)
    assert store.names(container) == []


# --- gen ------------------------------------------------------------------------------------


def test_gen_writes_partitions_and_a_file_list_to_object_storage(
    store: Server, tmp_path: Path
) -> None:
    container = store.new_container()
    prefix = f"{store.scheme}://{container}/logs/"
    args = ["--partitions", "3", "--partition-size", "64KiB", "--seed", "7"]
    done = tally(store.run_env(), "gen", prefix, *args)
    assert done.returncode == 0, done.stderr
    local = generate(tmp_path / "local", 3, 64 << 10, 7, workers=1)
    urls = [f"{prefix}part-{i:05d}.tsv" for i in range(3)]
    assert [store.read(u) for u in urls] == [p.read_bytes() for p in local]
    assert store.read(f"{prefix}filelist.csv").decode() == "".join(u + "\n" for u in urls)
    # run again with fewer: the extra partition goes, and the list names the new ones
    done = tally(store.run_env(), "gen", prefix, "--partitions", "2", "--partition-size", "64KiB")
    assert done.returncode == 0, done.stderr
    assert store.names(container) == [
        "logs/filelist.csv",
        "logs/part-00000.tsv",
        "logs/part-00001.tsv",
    ]
    done = tally(
        store.run_env(), "run", f"{prefix}filelist.csv", "--workers", "2", "--domain", "go.mail"
    )
    assert done.returncode == 0 and done.stdout.strip().isdigit(), done.stderr


# --- a worker killed in the middle of an object ----------------------------------------------


def test_a_worker_killed_mid_object_leaves_the_result_exact(
    store: Server, procs: Procs, tmp_path: Path
) -> None:
    container = store.new_container()
    big = SAMPLE.read_bytes() * 40  # ~800 KB, cut into ranges of 100 KiB
    (url,) = store.upload(container, {"big.tsv": big})
    (tmp_path / "big.tsv").write_bytes(big)
    expected = reference_output(tmp_path / "big.tsv", TOP25)
    stats = tmp_path / "stats.json"
    port = free_port()
    coordinator = procs.coordinator(
        url, port, "--split-size", "100KiB", "--stats", str(stats), env=store.env
    )
    release = threading.Event()
    throttle = Throttle(
        lambda m, p, h: m == "GET" and ("range" in h or "x-ms-range" in h), hold=release
    )
    try:
        with throttling_proxy(store.endpoint, store.scheme, throttle) as proxy:
            victim = procs.worker(port, env=through(store, proxy))
            assert throttle.held.wait(30), procs.stderr(coordinator)  # reading, mid-object
            victim.kill()
            victim.wait()
            procs.worker(port, env=store.env)
            code, out = procs.finish(coordinator)
    finally:
        release.set()
    assert (code, out) == (0, expected), procs.stderr(coordinator)
    record = json.loads(stats.read_text())
    assert record["workers_lost"] == 1 and record["partitions"] == len(cut(len(big), 100 << 10))


def through(store: Server, proxy: str) -> dict[str, str]:
    if store.scheme == "az":
        from storage_servers import azurite_connection_string

        return {**store.env, "AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(proxy)}
    return {**store.env, "AWS_ENDPOINT_URL": proxy}


# --- signed URLs over plain HTTP -------------------------------------------------------------


def signed_urls(store: Server, container: str, names: list[str]) -> list[str]:
    expiry = datetime.now(UTC) + timedelta(hours=1)
    if store.scheme == "az":
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        return [
            f"{store.endpoint}/{container}/{name}?"
            + generate_blob_sas(
                AZURITE_ACCOUNT, container, name, account_key=AZURITE_KEY,
                permission=BlobSasPermissions(read=True), expiry=expiry,
            )
            for name in names
        ]  # fmt: skip
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=store.endpoint, region_name="us-east-1",
        config=Config(signature_version="s3v4"),
        aws_access_key_id=store.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=store.env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    return [
        client.generate_presigned_url(
            "get_object", Params={"Bucket": container, "Key": name}, ExpiresIn=3600
        )
        for name in names
    ]


@pytest.fixture(params=["az", "s3"])
def signing_store(request: pytest.FixtureRequest) -> Server:
    name = "azurite" if request.param == "az" else "s3_presigning_server"
    server: Server = request.getfixturevalue(name)
    return server


def test_signed_urls_in_a_file_list_are_read_over_http(
    signing_store: Server, tmp_path: Path
) -> None:
    store = signing_store
    container = store.new_container()
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    files = {f"p{i}.tsv": b"".join(lines[i::3]) for i in range(3)}
    store.upload(container, files)
    urls = signed_urls(store, container, list(files))
    listing = tmp_path / "signed.csv"
    listing.write_text("".join(u + "\n" for u in urls))
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_"))}
    done = tally(plain, "run", str(listing), "--workers", "2", "--split-size", "8KiB")
    assert (done.returncode, done.stdout) == (0, reference_output(SAMPLE, TOP25)), done.stderr
    for url in urls:  # the signature never shows
        assert url.split("?", 1)[1] not in done.stderr
    if store.scheme == "s3":
        return  # this server does not check signatures
    tampered = urls[0][:-6] + ("A" * 6 if not urls[0].endswith("A" * 6) else "B" * 6)
    listing.write_text(tampered + "\n")
    done = tally(plain, "run", str(listing), "--workers", "1", "--max-attempts", "1")
    assert done.returncode == 1
    shown = tampered.split("?", 1)[0] + "?..."
    assert last_line(done).startswith(
        f"tally: job failed: partition 0 failed 1 time(s); last error: PartitionError: "
        f"cannot open {shown}: access denied (HTTP 403)"
    )
