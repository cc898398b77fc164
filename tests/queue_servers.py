"""Real queue servers for the notification tests: Azurite's queue service (one per session,
beside the blob service of tests/storage_servers.py, same account) and SQS, which moto's
S3 server also serves. Loaded by tests/conftest.py."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storage_servers import (
    AZURITE_ACCOUNT,
    ROOT,
    Server,
    _free_port,
    _stop,
    _wait_until_answering,
    azurite_connection_string,
)

AZURITE_QUEUE = ROOT / "node_modules" / ".bin" / "azurite-queue"


@dataclass
class AzureQueues:
    """Azurite's queue service beside a blob service: the connection string reaches both."""

    endpoint: str
    connection: str

    def client(self, name: str) -> Any:
        from azure.storage.queue import QueueClient

        return QueueClient.from_connection_string(self.connection, name)

    def new_queue(self) -> str:
        name = f"q{uuid.uuid4().hex[:12]}"
        self.client(name).create_queue()
        return name

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection}


def queue_connection_string(blob_endpoint: str, queue_endpoint: str) -> str:
    return azurite_connection_string(blob_endpoint) + f"QueueEndpoint={queue_endpoint};"


@contextlib.contextmanager
def start_azurite_queue(port: int | None = None) -> Iterator[str]:
    """Azurite's queue service on ``port`` (default: a free one), in memory; its endpoint."""
    if not AZURITE_QUEUE.exists():
        pytest.fail(f"{AZURITE_QUEUE} is missing: `make test` installs it (npm ci)")
    port = port or _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="azurite-queue-"))
    log = workdir / "azurite.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(AZURITE_QUEUE), "--queueHost", "127.0.0.1", "--queuePort", str(port),
             "--inMemoryPersistence", "--skipApiVersionCheck", "--silent", "--disableTelemetry"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    try:
        _wait_until_answering(f"{endpoint}?comp=list", proc, log)
        yield endpoint
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def azurite_queues(azurite: Server) -> Iterator[AzureQueues]:
    with start_azurite_queue() as endpoint:
        yield AzureQueues(endpoint, queue_connection_string(azurite.endpoint, endpoint))


def aws_client(server: Server, service: str) -> Any:
    """boto3's client of ``service`` ("s3" or "sqs") on moto's server, which serves both on
    one port."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.options["key"],
        aws_secret_access_key=server.options["secret"],
    )
