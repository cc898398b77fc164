"""Real object-storage servers for the tests, one of each per session: Azurite (Azure Blob
Storage, from npm: ``make test`` runs ``npm ci``) and moto's S3 server (from the dev extra),
with request signatures checked against an IAM user made for the session. Each listens on
127.0.0.1 on a free port and is stopped after the session. Loaded by tests/conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, in Microsoft's documentation)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
READY_TIMEOUT_S = 60.0
# credentials missing or refused must never send a client looking for a cloud machine's
# identity (an address beyond this machine)
NO_CLOUD = {"AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_until_answering(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``url`` until the server gives any HTTP answer (the process must stay up)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:  # an answer, if not a welcome one
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: no answer within {READY_TIMEOUT_S:g}s:\n{log.read_text()}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Server:
    """A running storage server: its endpoint, and the environment a process needs to reach
    it with valid credentials."""

    scheme: str  # "az" or "s3"
    endpoint: str
    env: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)  # fsspec keywords for this process

    def fs(self) -> Any:
        import fsspec

        return fsspec.filesystem(self.scheme, skip_instance_cache=True, **self.options)

    def new_container(self) -> str:
        """A fresh, empty bucket or container; its name."""
        name = f"t{uuid.uuid4().hex[:12]}"
        self.fs().mkdir(name)
        return name

    def upload(self, container: str, files: dict[str, bytes]) -> list[str]:
        """Put ``files`` (name: bytes) into ``container``; their URLs in order."""
        fs = self.fs()
        for name, data in files.items():
            fs.pipe_file(f"{container}/{name}", data)
        return [f"{self.scheme}://{container}/{name}" for name in files]

    def read(self, url: str) -> bytes:
        data: bytes = self.fs().cat_file(url.split("://", 1)[1])
        return data

    def names(self, container: str) -> list[str]:
        fs = self.fs()
        fs.invalidate_cache()
        found = fs.find(container)
        return sorted(p.split("/", 1)[1] for p in found)

    def run_env(self, **more: str) -> dict[str, str]:
        return {**os.environ, **NO_CLOUD, **self.env, **more}


def azurite_connection_string(endpoint: str, key: str = AZURITE_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint};"
    )


@pytest.fixture(scope="session")
def azurite() -> Iterator[Server]:
    if not AZURITE.exists():
        pytest.fail(f"{AZURITE} is missing: `make test` installs it (npm ci)")
    with start_azurite() as server:
        yield server


@contextlib.contextmanager
def start_azurite(memory_limit_mb: int | None = None) -> Iterator[Server]:
    """Azurite's blob service on a free port, its data in memory; stopped afterwards."""
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="azurite-"))
    log = workdir / "azurite.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(AZURITE),
                "--blobHost", "127.0.0.1", "--blobPort", str(port),
                "--inMemoryPersistence", "--skipApiVersionCheck", "--silent",
                "--disableTelemetry",
                *(["--extentMemoryLimit", str(memory_limit_mb)] if memory_limit_mb else []),
            ],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    try:
        _wait_until_answering(f"{endpoint}?comp=list", proc, log)
        connection = azurite_connection_string(endpoint)
        yield Server(
            "az",
            endpoint,
            {"AZURE_STORAGE_CONNECTION_STRING": connection},
            {"connection_string": connection},
        )
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Server]:
    """moto's S3 server checking every request's signature (an IAM user made for it)."""
    with start_moto(authenticated=True) as server:
        yield server


@pytest.fixture(scope="session")
def s3_presigning_server() -> Iterator[Server]:
    """moto's S3 server that serves presigned URLs: with signatures checked, it cannot
    (it expects an Authorization header on every request), so it checks none."""
    with start_moto(authenticated=False) as server:
        yield server


@contextlib.contextmanager
def start_moto(authenticated: bool) -> Iterator[Server]:
    """moto's S3 server on a free port; stopped afterwards."""
    moto = Path(sys.executable).parent / "moto_server"
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="moto-"))
    log = workdir / "moto.log"
    env = dict(os.environ)
    if authenticated:  # signatures checked after the three requests that make the IAM user
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir, env=env,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(f"{endpoint}/moto-api/", proc, log)
        key_id, secret = _iam_user(endpoint) if authenticated else ("testing", "testing")
        yield Server(
            "s3",
            endpoint,
            {
                **NO_CLOUD,
                "AWS_ACCESS_KEY_ID": key_id,
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": endpoint,
            },
            {"key": key_id, "secret": secret, "endpoint_url": endpoint},
        )
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _iam_user(endpoint: str) -> tuple[str, str]:
    """A user allowed everything, and its access key (the three unauthenticated actions)."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="tally")
    allow = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    policy = {"Version": "2012-10-17", "Statement": [allow]}
    iam.put_user_policy(UserName="tally", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="tally")["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


@pytest.fixture(scope="session", params=["az", "s3"])
def store(request: pytest.FixtureRequest) -> Server:
    """Each server in turn."""
    fixture = "azurite" if request.param == "az" else "s3_server"
    server: Server = request.getfixturevalue(fixture)
    return server
