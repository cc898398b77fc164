"""Object-storage failures against real servers: each is a failed attempt with a one-line
reason naming the URL (no traceback, no secret), retried where retrying can help, and the
job fails with that reason after K attempts (or at once when retrying cannot help)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLE, free_port, reference_output
from storage_faults import Throttle, throttling_proxy
from storage_servers import AZURITE_KEY, Server, azurite_connection_string
from tally.errors import ConfigError
from tally.protocol import QuerySpec
from tally.storage.sources import expand_source

TOP25 = QuerySpec("top", k=25)


def tally(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=env,
    )  # fmt: skip


def last_line(done: subprocess.CompletedProcess[str], *secrets: str) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    for secret in secrets:
        assert secret not in done.stderr
    return done.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def bucket(store: Server) -> tuple[Server, str]:
    container = store.new_container()
    store.upload(container, {"logs/part-000.tsv": SAMPLE.read_bytes()})
    return store, container


def wrong_credentials(store: Server) -> dict[str, str]:
    if store.scheme == "az":
        bad = AZURITE_KEY[:-8] + "AAAAAAA="
        return store.run_env(
            AZURE_STORAGE_CONNECTION_STRING=azurite_connection_string(store.endpoint, bad)
        )
    return store.run_env(AWS_SECRET_ACCESS_KEY="wrong-secret")


def down(store: Server) -> dict[str, str]:
    dead = f"http://127.0.0.1:{free_port()}"
    if store.scheme == "az":
        return store.run_env(
            AZURE_STORAGE_CONNECTION_STRING=azurite_connection_string(dead + "/devstoreaccount1")
        )
    return store.run_env(AWS_ENDPOINT_URL=dead)


def options_for(env: dict[str, str], store: Server) -> dict[str, str]:
    """The same credentials and endpoint as storage options, for a call in this process."""
    if store.scheme == "az":
        return {"connection_string": env["AZURE_STORAGE_CONNECTION_STRING"]}
    return {
        "key": env["AWS_ACCESS_KEY_ID"],
        "secret": env["AWS_SECRET_ACCESS_KEY"],
        "endpoint_url": env["AWS_ENDPOINT_URL"],
    }


def cases(store: Server, container: str) -> dict[str, tuple[dict[str, str], str, str, int]]:
    """kind -> (environment, URL, reason for a partition, attempts with --max-attempts 2).
    The stores' own codes, where they give one (an S3 HEAD answer has no body)."""
    s = store.scheme
    part = f"{s}://{container}/logs/part-000.tsv"
    bucket = "bucket (HTTP 404 NoSuchBucket)" if s == "s3" else "container"
    denied = "HTTP 403" if s == "s3" else "HTTP 403 AuthorizationFailure"
    downed = down(store)
    endpoint = downed["AWS_ENDPOINT_URL" if s == "s3" else "AZURE_STORAGE_CONNECTION_STRING"]
    port = endpoint.split("127.0.0.1:", 1)[1].split("/", 1)[0]
    return {
        "missing object": (store.run_env(), f"{s}://{container}/logs/none.tsv", "not found", 1),
        "missing container": (
            store.run_env(), f"{s}://no{container}/logs/p.tsv", f"no such {bucket}", 1,
        ),
        "wrong credentials": (wrong_credentials(store), part, f"access denied ({denied})", 1),
        "endpoint down": (downed, part, f"unreachable: cannot connect to 127.0.0.1:{port}", 2),
    }  # fmt: skip


KINDS = ["missing object", "missing container", "wrong credentials", "endpoint down"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_partition_fails_its_attempts_with_one_line(
    bucket: tuple[Server, str], tmp_path: Path, kind: str
) -> None:
    store, container = bucket
    env, url, why, attempts = cases(store, container)[kind]
    listing = tmp_path / "list.csv"
    listing.write_text(url + "\n")
    done = tally(env, "run", str(listing), "--workers", "1", "--max-attempts", "2")
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    final = " (retrying cannot help)" if attempts == 1 else ""
    assert last_line(done, AZURITE_KEY, env.get("AWS_SECRET_ACCESS_KEY", AZURITE_KEY)) == (
        f"tally: job failed: partition 0 failed {attempts} time(s){final}; "
        f"last error: PartitionError: cannot open {url}: {why}"
    )


def test_a_failing_source_is_refused_before_the_job(bucket: tuple[Server, str]) -> None:
    store, container = bucket
    for kind, (env, url, why, _) in cases(store, container).items():
        options = options_for(env, store)
        sources = [url, url.rsplit("/", 1)[0] + "/"] if kind != "missing object" else [url]
        for source in sources:
            with pytest.raises(ConfigError) as info:
                expand_source(source, options)
            said = info.value.message
            # the same words; a listing may carry the store's code where a HEAD had none
            assert said.startswith(f"cannot read source {source}: {why.split(' (')[0]}"), said
            assert "\n" not in said and AZURITE_KEY not in said


def test_the_command_line_says_the_same_for_a_source(bucket: tuple[Server, str]) -> None:
    store, container = bucket
    env, url, _, _ = cases(store, container)["wrong credentials"]
    source = url.rsplit("/", 1)[0] + "/"
    done = tally(env, "run", source, "--workers", "1")
    assert (done.returncode, done.stdout) == (2, "")
    denied = (
        "HTTP 403 SignatureDoesNotMatch"
        if store.scheme == "s3"
        else "HTTP 403 AuthorizationFailure"
    )
    assert last_line(done, AZURITE_KEY[:-8]) == (
        f"tally: cannot read source {source}: access denied ({denied})"
    )


# --- a busy store: throttled requests ------------------------------------------------------


def ranged_get(method: str, path: str, headers: dict[str, str]) -> bool:
    return method == "GET" and ("range" in headers or "x-ms-range" in headers)


def through(store: Server, proxy: str) -> dict[str, str]:
    if store.scheme == "az":
        return store.run_env(AZURE_STORAGE_CONNECTION_STRING=azurite_connection_string(proxy))
    return store.run_env(AWS_ENDPOINT_URL=proxy)


def listing_of(tmp_path: Path, url: str) -> str:
    """A local file list naming ``url``: the job reaches the store from its workers only."""
    listing = tmp_path / "list.csv"
    listing.write_text(url + "\n")
    return str(listing)


def test_throttled_reads_are_retried_with_backoff_and_the_result_is_exact(
    bucket: tuple[Server, str], tmp_path: Path
) -> None:
    store, container = bucket
    throttle = Throttle(ranged_get, times=2, status=503)
    url = f"{store.scheme}://{container}/logs/part-000.tsv"
    with throttling_proxy(store.endpoint, store.scheme, throttle) as proxy:
        done = tally(
            through(store, proxy), "run", listing_of(tmp_path, url), "--workers", "1",
            "--max-attempts", "1",
        )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, reference_output(SAMPLE, TOP25)), done.stderr
    assert throttle.throttled == 2  # two refusals, then the same read again: one attempt


@pytest.mark.parametrize("status", [503, 429])
def test_a_store_that_stays_busy_fails_the_job_after_k_attempts(
    bucket: tuple[Server, str], tmp_path: Path, status: int
) -> None:
    store, container = bucket
    throttle = Throttle(ranged_get, status=status)
    url = f"{store.scheme}://{container}/logs/part-000.tsv"
    with throttling_proxy(store.endpoint, store.scheme, throttle) as proxy:
        done = tally(
            through(store, proxy), "run", listing_of(tmp_path, url), "--workers", "1",
            "--max-attempts", "2",
        )  # fmt: skip
    code = {"s3": "SlowDown", "az": "ServerBusy"}[store.scheme]
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert last_line(done) == (
        "tally: job failed: partition 0 failed 2 time(s); last error: PartitionError: "
        f"cannot read {url}: throttled (HTTP {status} {code})"
    )
    if store.scheme == "az" and status == 429:  # Azure Storage throttles with 503 ServerBusy:
        assert throttle.throttled == 2  # its client leaves a 429 to Tally's attempts
    else:
        assert throttle.throttled > 2  # each attempt's read was retried by the client first
