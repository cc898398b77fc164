"""Object storage end to end, against real local servers (Azurite and moto's S3 server):
prefixes, globs and lists as sources, split objects, the reference checks, and what the
versions of the objects are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLE, reference_output
from storage_faults import Throttle, throttling_proxy
from storage_servers import Server, azurite_connection_string
from tally.errors import PartitionError
from tally.prefetch import Prefetcher
from tally.protocol import QuerySpec
from tally.storage.objectstore import parse_storage_options
from tally.storage.ranges import plan_tasks
from tally.storage.sources import expand_source, open_partition

TOP25 = QuerySpec("top", k=25)


def tally(
    server: Server, *args: str, timeout: float = 90, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=server.run_env(**env),
    )


def no_traceback(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def sample_parts(count: int) -> dict[str, bytes]:
    """The sample split round-robin into ``count`` partitions, by name."""
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    return {f"part-{i:03d}.tsv": b"".join(lines[i::count]) for i in range(count)}


@pytest.fixture(scope="module")
def loaded(store: Server) -> tuple[Server, str]:
    """A container holding the sample as four partitions under logs/, with a file list, a
    marker object and the whole sample as one object."""
    container = store.new_container()
    files = {f"logs/{name}": data for name, data in sample_parts(4).items()}
    files["logs/_SUCCESS"] = b""
    files["logs/filelist.csv"] = b"".join(b"part-%03d.tsv\n" % i for i in range(4))
    files["whole/sample.tsv"] = SAMPLE.read_bytes()
    store.upload(container, files)
    return store, container


# --- sources ------------------------------------------------------------------------------


def test_prefix_glob_and_list_name_the_same_partitions(loaded: tuple[Server, str]) -> None:
    store, container = loaded
    root = f"{store.scheme}://{container}/logs"
    parts = [f"{root}/part-{i:03d}.tsv" for i in range(4)]
    options = {k: str(v) for k, v in store.options.items()}
    assert expand_source(f"{root}/", options) == parts  # not _SUCCESS, not filelist.csv
    assert expand_source(f"{root}/part-*.tsv", options) == parts
    assert expand_source(f"{root}/filelist.csv", options) == parts


@pytest.mark.parametrize("form", ["prefix", "glob", "list"])
def test_sources_on_object_storage_give_the_exact_result(
    loaded: tuple[Server, str], form: str
) -> None:
    store, container = loaded
    root = f"{store.scheme}://{container}/logs"
    source = {"prefix": f"{root}/", "glob": f"{root}/part-*.tsv", "list": f"{root}/filelist.csv"}
    done = tally(store, "run", source[form], "--workers", "2", "--top", "25")
    no_traceback(done)
    assert (done.returncode, done.stdout) == (0, reference_output(SAMPLE, TOP25)), done.stderr
    assert ": 4 partitions, 200 lines" in done.stderr


@pytest.mark.parametrize(
    "query",
    [QuerySpec("domain", domain=b"google.ru"), QuerySpec("top", k=25), QuerySpec("all")],
    ids=["domain", "top", "all"],
)
def test_the_reference_checks_on_the_sample_in_object_storage(
    loaded: tuple[Server, str], query: QuerySpec
) -> None:
    store, container = loaded
    flags = {"domain": ["--domain", "google.ru"], "top": ["--top", "25"], "all": ["--all"]}
    url = f"{store.scheme}://{container}/whole/sample.tsv"
    done = tally(store, "run", url, "--workers", "2", "--split-size", "4KiB", *flags[query.kind])
    no_traceback(done)
    assert (done.returncode, done.stdout) == (0, reference_output(SAMPLE, query)), done.stderr
    if query.kind == "domain":
        assert done.stdout == "5\n"


def test_abfs_urls_reach_the_same_blobs(azurite: Server) -> None:
    container = azurite.new_container()
    azurite.upload(container, {f"p/{k}": v for k, v in sample_parts(3).items()})
    done = tally(azurite, "run", f"abfs://{container}/p/", "--workers", "1")
    no_traceback(done)
    assert (done.returncode, done.stdout) == (0, reference_output(SAMPLE, TOP25)), done.stderr


# --- ranges and versions -------------------------------------------------------------------


def test_a_split_object_runs_as_ranges_with_its_listed_version(loaded: tuple[Server, str]) -> None:
    store, container = loaded
    options = {k: str(v) for k, v in store.options.items()}
    url = f"{store.scheme}://{container}/whole/sample.tsv"
    urls = expand_source(f"{store.scheme}://{container}/whole/", options)
    tasks = plan_tasks(urls, 5000, options=options)
    size = SAMPLE.stat().st_size
    etag = store.fs().info(url.split("://", 1)[1]).get("ETag") or store.fs().info(
        url.split("://", 1)[1]
    ).get("etag")
    assert [t.url for t in tasks] == [url] * len(tasks)
    assert len(tasks) == -(-size // 5000) and tasks[-1].end == size
    assert {t.version for t in tasks} == {str(etag).strip('"')}
    got = b""
    throttle = Throttle(lambda method, path, headers: False)  # sees every request
    with throttling_proxy(store.endpoint, store.scheme, throttle) as proxy:
        for task in tasks:  # each range from a ranged read: together, every byte once
            through = proxied_options(store, proxy)
            with open_partition(url, task.start, through, task.end, task.version) as stream:
                got += stream.read(task.end - task.start)
    assert got == SAMPLE.read_bytes()
    reads = [rng for method, _, rng in throttle.seen if method == "GET"]
    assert reads and all(rng.startswith("bytes=") for rng in reads)  # never the whole object
    for task in tasks:  # each read begins where it was asked to, and ends at the range's end
        assert f"bytes={task.start}-{task.end - 1}" in reads, (task, reads)
    assert len(reads) == len(tasks)  # nothing read ahead past a range's end


def test_planning_takes_sizes_and_versions_from_the_listing(store: Server) -> None:
    container = store.new_container()
    urls = store.upload(container, {f"logs/p{i}.tsv": SAMPLE.read_bytes() for i in range(5)})
    throttle = Throttle(lambda method, path, headers: False)  # counts, lets all through
    with throttling_proxy(store.endpoint, store.scheme, throttle) as proxy:
        options = proxied_options(store, proxy)
        assert expand_source(f"{store.scheme}://{container}/logs/", options) == urls
        listed = len(throttle.seen)
        tasks = plan_tasks(urls, 5000, options=options)
        assert throttle.seen[listed:] == []  # no request per object
    fs = store.fs()
    infos = [fs.info(u.split("://", 1)[1]) for u in urls]
    etags = {str(i.get("ETag") or i.get("etag")).strip('"') for i in infos}
    assert {t.version for t in tasks} <= etags and len(tasks) == 5 * -(
        -SAMPLE.stat().st_size // 5000
    )


def test_an_object_changed_since_it_was_listed_fails_its_range(store: Server) -> None:
    container = store.new_container()
    (url,) = store.upload(container, {"p.tsv": SAMPLE.read_bytes()})
    options = {k: str(v) for k, v in store.options.items()}
    (task, *_) = plan_tasks(
        expand_source(f"{store.scheme}://{container}/", options), 5000, options=options
    )
    store.upload(container, {"p.tsv": SAMPLE.read_bytes()[::-1]})  # a new version
    with (
        pytest.raises(PartitionError) as info,
        open_partition(url, task.start, options, task.end, task.version) as stream,
    ):  # S3 asks with If-Match on the listed ETag; Azure compares it before reading
        stream.read()
    said = info.value.message
    assert said.startswith((f"cannot open {url}: ", f"cannot read {url}: ")), said
    assert "changed since it was listed (" in said and not info.value.retryable


def proxied_options(store: Server, proxy: str) -> dict[str, str]:
    if store.scheme == "az":
        return {"connection_string": azurite_connection_string(proxy)}
    return {"key": store.options["key"], "secret": store.options["secret"], "endpoint_url": proxy}


# --- storage options; a missing filesystem ---------------------------------------------------


def test_storage_options_reach_the_coordinator_and_the_workers(
    loaded: tuple[Server, str],
) -> None:
    store, container = loaded
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_"))}
    options = [a for k, v in store.options.items() for a in ("--storage-option", f"{k}={v}")]
    bare["AWS_EC2_METADATA_DISABLED"] = "true"  # never a look for a cloud machine's identity
    if store.scheme == "s3":
        bare["AWS_REGION"] = "us-east-1"  # a region is not a secret: from the environment
    source = f"{store.scheme}://{container}/logs/part-*.tsv"
    done = subprocess.run(
        [sys.executable, "-m", "tally", "run", source, "--workers", "2", *options],
        capture_output=True, text=True, timeout=90, check=False, env=bare,
    )  # fmt: skip
    no_traceback(done)
    assert (done.returncode, done.stdout) == (0, reference_output(SAMPLE, TOP25)), done.stderr


def test_a_storage_option_must_be_key_equals_value() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tally", "run", "s3://b/x.tsv", "--storage-option", "anon"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "argument --storage-option: storage option 'anon' is not KEY=VALUE" in done.stderr
    assert parse_storage_options({"anon": "true", "n": "3", "s": "text", "d": '{"a": 1}'}) == {
        "anon": True, "n": 3, "s": "text", "d": {"a": 1},
    }  # fmt: skip


HIDE = (
    "import importlib.util, sys\n"
    "real = importlib.util.find_spec\n"
    "importlib.util.find_spec = lambda name, *a: None if name == sys.argv[1] else real(name, *a)\n"
    "from tally.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


@pytest.mark.parametrize(("url", "package"), [("az://c/x.tsv", "adlfs"), ("s3://b/x.tsv", "s3fs")])
def test_without_its_package_a_scheme_is_refused_before_the_job(url: str, package: str) -> None:
    scheme = url.split("://")[0]
    needs = f"{scheme}:// needs the {package} package: pip install {package}"
    for args, said in [
        (["run", url], f"tally: source {url}: {needs}"),
        (
            ["run", str(SAMPLE), "--output", url[:-4] + ".json"],
            f"tally: --output {url[:-4]}.json: {needs}",
        ),
    ]:
        done = subprocess.run(
            [sys.executable, "-c", HIDE, package, *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (done.returncode, no_traceback(done).strip().splitlines()[-1]) == (2, said)


def test_no_credentials_is_one_line(tmp_path: Path) -> None:
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_"))}
    bare["HOME"] = str(tmp_path)  # no ~/.aws either
    bare["AWS_EC2_METADATA_DISABLED"] = "true"  # nor a look for a cloud machine's identity
    for url, said in [
        ("az://c/x.tsv", "no credentials: set AZURE_STORAGE_CONNECTION_STRING, or "
         "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN"),
        ("s3://b/x.tsv", "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ]:  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "tally", "run", url],
            capture_output=True, text=True, timeout=60, check=False, env=bare,
        )  # fmt: skip
        assert (done.returncode, no_traceback(done).strip().splitlines()[-1]) == (
            2, f"tally: cannot read source {url}: {said}"
        )  # fmt: skip


def test_ranges_whose_last_line_runs_far_past_their_end(store: Server) -> None:
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    long_line = b"7\thttp://long.example/" + b"x" * 50_000 + b"\n"  # crosses several ranges
    data = b"".join(lines[:60]) + long_line + b"".join(lines[60:])
    container = store.new_container()
    (url,) = store.upload(container, {"p.tsv": data})
    options = {k: str(v) for k, v in store.options.items()}
    tasks = plan_tasks([url], 8 << 10, options=options)
    assert len(tasks) == -(-len(data) // (8 << 10))
    prefetch = Prefetcher(options=options)
    got = []
    for key, task in enumerate(tasks):
        if key + 1 < len(tasks):
            prefetch.start(key + 1, tasks[key + 1])  # as a worker does: the next one early
        with prefetch.take(key, task) as stream:
            got.append(stream.read())
    assert b"".join(got) == data  # every line once, the long one in the range it starts in
    assert sum(long_line in piece for piece in got) == 1
