"""What SOURCE names and how partitions open: data file or list, HTTP servers without range
support, HTTP failures as one-line reasons, missing filesystems, byte-order marks, FIFOs."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import SAMPLE, free_port, reference_output, split_round_robin
from tally.errors import ConfigError, PartitionError
from tally.protocol import QuerySpec
from tally.storage import remote
from tally.storage.sources import expand_source, open_partition

TOP25 = QuerySpec("top", k=25)
SIGNATURE = "sv=2024-05-04&sig=a%2Bb*c?d[1]"  # glob characters and a '?' inside a query


def tally(
    *args: str, timeout: float = 60, hide: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``tally ARGS``; with ``hide``, as if that package were not installed."""
    launch = ["-m", "tally"]
    if hide is not None:  # find_spec says None and import fails for a None in sys.modules
        launch = ["-c", f"import sys; sys.modules[{hide!r}] = None; "
                  "from tally.cli import main; sys.exit(main())"]  # fmt: skip
    return subprocess.run(
        [sys.executable, *launch, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


class Handler(http.server.SimpleHTTPRequestHandler):
    """Python's own file server (no range support), plus paths that fail on purpose."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        if parts.path.startswith("/denied"):
            self.send_error(403)
        elif parts.path.startswith("/broken"):
            self.send_error(500)
        elif parts.path.startswith("/short"):  # promises 1000 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"1\thttp://a")
            self.close_connection = True
        elif parts.path.startswith("/signed/") and parts.query != SIGNATURE:
            self.send_error(403)
        else:
            super().do_GET()


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """A real ``http.server`` on 127.0.0.1 serving ``folder``: its root URL and the request
    paths it has seen."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    split_round_robin(SAMPLE, tmp_path / "parts", 4)
    return tmp_path / "parts"


# --- 1. a data file is one partition; a list is recognized; a garbage list is exit 2 ---------


def test_a_single_data_file_is_one_partition_end_to_end(tmp_path: Path) -> None:
    done = tally("run", str(SAMPLE), "--workers", "1")
    assert (done.returncode, done.stdout) == (0, reference_output(SAMPLE, TOP25)), done.stderr
    assert f"source {SAMPLE}: a data file, one partition" in done.stderr
    assert "done in" in done.stderr and ": 1 partitions, 200 lines" in done.stderr


def test_content_decides_before_the_name(tmp_path: Path, parts: Path) -> None:
    data_named_csv = tmp_path / "hits.csv"  # tab-separated lines: data, whatever the name
    data_named_csv.write_bytes(SAMPLE.read_bytes())
    assert expand_source(str(data_named_csv)) == [str(data_named_csv)]
    expected = [str(parts / f"part-{i:03d}.tsv") for i in range(4)]
    unnamed = parts / "partitions"  # existing relative paths: a list without a list's name
    unnamed.write_text("".join(f"part-{i:03d}.tsv\n" for i in range(4)))
    assert expand_source(str(unnamed)) == expected
    urls = tmp_path / "urls"  # URLs, one a line: a list
    urls.write_text("http://127.0.0.1:9/a.tsv\nhttps://example.org/b.tsv?x=1\n")
    assert expand_source(str(urls)) == ["http://127.0.0.1:9/a.tsv", "https://example.org/b.tsv?x=1"]
    prose = tmp_path / "notes"  # words: data (every line malformed, counted and reported)
    prose.write_text("hello world\nsecond line\n")
    assert expand_source(str(prose)) == [str(prose)]
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert expand_source(str(empty)) == [str(empty)]


def test_the_decision_is_logged(parts: Path, caplog: pytest.LogCaptureFixture) -> None:
    unnamed = parts / "partitions"
    unnamed.write_text("part-000.tsv\npart-001.tsv\n")
    with caplog.at_level(logging.INFO, logger="tally.storage.sources"):
        expand_source(str(unnamed))
        expand_source(str(parts / "part-000.tsv"))
    assert caplog.messages == [
        f"source {unnamed}: a file list of 2 partition(s) (every line names a path or URL)",
        f"source {parts / 'part-000.tsv'}: a data file, one partition "
        "(its lines have tab-separated columns)",
    ]


@pytest.mark.parametrize(
    ("name", "text", "bad"),
    [
        ("list.txt", "foo\nbar\n", "line 1, {dir}/foo, does not exist"),
        (
            "list.lst",
            "# partitions\n\nsub/a.tsv\nsub/b.tsv\n",
            "line 3, {dir}/sub/a.tsv, does not exist",
        ),
        (
            "partitions",
            "x/part-1.tsv\nx/part-2.tsv\n",
            "line 1, {dir}/x/part-1.tsv, does not exist",
        ),
    ],
)
def test_a_list_naming_nothing_is_exit_2_naming_its_first_entry(
    tmp_path: Path, name: str, text: str, bad: str
) -> None:
    listing = tmp_path / name
    listing.write_text(text)
    done = tally("run", str(listing), "--workers", "1")
    assert (done.returncode, done.stdout) == (2, "")
    assert last_line(done) == (
        f"tally: file list {listing} names no existing file: {bad.format(dir=tmp_path)} "
        "(a data file's lines have tab-separated columns)"
    )


def test_a_missing_entry_among_existing_ones_fails_as_a_partition(parts: Path) -> None:
    listing = parts / "list.csv"
    listing.write_text("part-000.tsv\npart-404.tsv\n")
    assert expand_source(str(listing)) == [str(parts / "part-000.tsv"), str(parts / "part-404.tsv")]


def test_an_entry_with_a_control_character_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text("a.tsv\n" * 5000 + "b.tsv\x07\n")  # past the first 64 KiB
    with pytest.raises(ConfigError, match=r"line 5001: 'b.tsv\\x07' is not a path or URL"):
        expand_source(str(listing))


# --- 2. servers without range support; query strings kept ---------------------------------


def test_http_server_without_ranges_streams_a_large_partition(tmp_path: Path) -> None:
    big = tmp_path / "big.tsv"
    big.write_bytes(SAMPLE.read_bytes() * 300)  # 6 MB: past a ranged reader's first block
    expected = reference_output(big, TOP25)
    (tmp_path / "remote.csv").write_text("big.tsv\n")
    with serve(tmp_path) as (root, _):
        listing = tmp_path / "list.csv"
        listing.write_text(f"{root}/big.tsv\n")
        for source in (str(listing), f"{root}/big.tsv", f"{root}/remote.csv"):
            done = tally("run", source, "--workers", "1")
            assert (done.returncode, done.stdout) == (0, expected), done.stderr
        assert "a data file, one partition" in done.stderr or "file list" in done.stderr


def test_a_signed_list_url_is_kept_whole_and_its_entries_resolve_without_the_query(
    tmp_path: Path,
) -> None:
    signed = tmp_path / "signed"
    split_round_robin(SAMPLE, signed, 3)
    entries = "part-000.tsv\n../signed/part-001.tsv\n"
    (signed / "list.csv").write_text(entries)
    with serve(tmp_path) as (root, requests):
        source = f"{root}/signed/list.csv?{SIGNATURE}"
        assert expand_source(source) == [
            f"{root}/signed/part-000.tsv",
            f"{root}/signed/part-001.tsv",
        ]
        assert requests == [f"/signed/list.csv?{SIGNATURE}"]
        # signed entries keep their own query strings all the way to the worker's GET
        (signed / "list.csv").write_text(
            "".join(f"{root}/signed/part-{i:03d}.tsv?{SIGNATURE}\n" for i in range(3))
        )
        done = tally("run", source, "--workers", "2")
        assert (done.returncode, done.stdout) == (0, reference_output(SAMPLE, TOP25)), done.stderr
        assert f"source {root}/signed/list.csv?...: a file list of 3 partition(s)" in done.stderr
        assert "sig=" not in done.stderr  # the token is not logged


# --- 3. HTTP failures: one line naming the URL, the documented exit status -------------------


def _reasons(root: str) -> dict[str, tuple[str, str, int]]:
    """kind -> (URL, reason, attempts before the partition fails with the default K=3)."""
    return {
        "404": (f"{root}/missing.tsv", "not found (HTTP 404)", 1),
        "403": (f"{root}/denied.tsv", "access denied (HTTP 403)", 3),
        "500": (f"{root}/broken.tsv", "server error 500 (Internal Server Error)", 3),
        "refused": (f"http://127.0.0.1:{free_port()}/p.tsv", "connection refused", 3),
        "unreachable": ("http://no-such-host.invalid/p.tsv", "unreachable: cannot resolve", 3),
    }


@pytest.mark.parametrize("kind", ["404", "403", "500", "refused", "unreachable"])
def test_http_failures_are_one_line_reasons(tmp_path: Path, kind: str) -> None:
    with serve(tmp_path) as (root, _):
        url, why, attempts = _reasons(root)[kind]
        listing = tmp_path / "list.csv"
        listing.write_text(f"{url}\n")
        done = tally("run", str(listing), "--workers", "1")  # a partition: K attempts, exit 1
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        final = " (retrying cannot help)" if attempts == 1 else ""
        assert last_line(done).startswith(
            f"tally: job failed: partition 0 failed {attempts} time(s){final}; "
            f"last error: PartitionError: cannot open {url}: {why}"
        )
        done = tally("run", url, "--workers", "1")  # the source itself: exit 2
        assert (done.returncode, done.stdout) == (2, ""), done.stderr
        assert last_line(done).startswith(f"tally: cannot read source {url}: {why}")


def test_404_is_final_and_server_errors_may_pass(tmp_path: Path) -> None:
    with serve(tmp_path) as (root, _):
        for kind, (url, why, attempts) in _reasons(root).items():
            with pytest.raises(PartitionError) as info:
                open_partition(url)
            assert info.value.message.startswith(f"cannot open {url}: {why}"), kind
            assert info.value.retryable is (attempts > 1), kind


def test_a_silent_server_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "HTTP_TIMEOUT_S", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/p.tsv"
        with pytest.raises(PartitionError, match=r"cannot open .*/p.tsv: no answer within 0.5 s"):
            open_partition(url)


def test_a_body_cut_short_is_an_error_not_a_short_partition(tmp_path: Path) -> None:
    with (
        serve(tmp_path) as (root, _),
        open_partition(f"{root}/short.tsv") as stream,
        pytest.raises(PartitionError) as info,
    ):
        stream.read()
    assert info.value.message == (
        f"cannot read {root}/short.tsv: the connection closed before the end "
        "(990 more bytes expected)"
    )


# --- 4. schemes nothing here can open ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "package"),
    [("az://container/x.tsv", "adlfs"), ("abfs://c/x.tsv", "adlfs"),
     ("s3://bucket/x.tsv", "s3fs"), ("gs://bucket/x.tsv", "gcsfs")],
)  # fmt: skip
def test_a_scheme_without_its_filesystem_is_refused_before_the_job(
    tmp_path: Path, url: str, package: str
) -> None:
    scheme = url.split("://")[0]
    needs = f"{scheme}:// needs the {package} package: pip install {package}"
    done = tally("run", url, "--workers", "1", hide=package)
    assert (done.returncode, done.stdout, last_line(done)) == (
        2,
        "",
        f"tally: source {url}: {needs}",
    )
    listing = tmp_path / "list.csv"
    listing.write_text(f"{SAMPLE}\n{url}\n")
    done = tally("run", str(listing), "--workers", "1", hide=package)
    assert (done.returncode, last_line(done)) == (
        2,
        f"tally: file list {listing}, line 2: {url}: {needs}",
    )


def test_an_unknown_scheme_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("bogus://x/y.tsv\n")
    with pytest.raises(
        ConfigError, match=r"^file list .*, line 1: bogus://x/y.tsv: unknown scheme bogus://$"
    ):
        expand_source(str(listing))


def test_an_unreachable_object_store_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("s3fs")
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }
    listing = tmp_path / "list.csv"
    listing.write_text("s3://bucket/p.tsv\n")
    for source, code, start in [
        ("s3://bucket/list.csv", 2, "tally: cannot read source s3://bucket/list.csv: unreachable"),
        (str(listing), 1, "tally: job failed: partition 0 failed 1 time(s); last error: "
                          "PartitionError: cannot open s3://bucket/p.tsv: unreachable"),
    ]:  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "tally", "run", source, "--workers", "1", "--max-attempts", "1"],
            capture_output=True, text=True, timeout=100, env=env, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (code, "")
        assert last_line(done).startswith(start), done.stderr


# --- 5. byte-order marks; FIFOs, devices and folders named in a list ------------------------


def test_a_byte_order_mark_does_not_hide_the_first_entry(parts: Path) -> None:
    listing = parts / "bom.csv"
    listing.write_bytes(b"\xef\xbb\xbf" + b"".join(b"part-%03d.tsv\n" % i for i in range(4)))
    assert expand_source(str(listing))[0] == str(parts / "part-000.tsv")
    done = tally("run", str(listing), "--workers", "2")
    assert (done.returncode, done.stdout) == (0, reference_output(SAMPLE, TOP25)), done.stderr


def test_non_regular_files_in_a_list_are_refused_up_front(parts: Path) -> None:
    fifo = parts / "fifo.tsv"
    os.mkfifo(fifo)
    for entry, kind in [
        (str(fifo), "a FIFO"),
        ("/dev/zero", "a device"),
        (str(parts), "a directory"),
    ]:
        listing = parts / "list.csv"
        listing.write_text(f"part-000.tsv\n{entry}\n")
        done = tally("run", str(listing), "--workers", "1", timeout=30)  # before: hung for ever
        assert (done.returncode, done.stdout) == (2, "")
        assert (
            last_line(done)
            == f"tally: file list {listing}, line 2: {entry} is not a regular file ({kind})"
        )
    done = tally("run", str(fifo), "--workers", "1", timeout=30)
    assert (done.returncode, last_line(done)) == (
        2,
        f"tally: source {fifo} is not a file or a folder (a FIFO)",
    )


def test_opening_a_fifo_partition_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "p.tsv"
    os.mkfifo(fifo)
    outcome: list[BaseException | object] = []

    def attempt() -> None:
        try:
            outcome.append(open_partition(str(fifo)))
        except PartitionError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():  # blocked in open(): a writer lets it go before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=20)
        pytest.fail("opening a FIFO partition blocked")
    assert isinstance(outcome[0], PartitionError)
    assert outcome[0].message == f"cannot open {fifo}: not a regular file (a FIFO)"


# --- 6. the local fast path -----------------------------------------------------------------


def test_local_partitions_use_the_builtin_open_without_fsspec(parts: Path) -> None:
    script = (
        "import io, sys\n"
        "from tally.storage.sources import expand_source, open_partition\n"
        "urls = expand_source(sys.argv[1])\n"
        "with open_partition(urls[0]) as f:\n"
        "    ok = type(f) is io.BufferedReader and f.read() == open(sys.argv[2], 'rb').read()\n"
        "print(len(urls), ok, 'fsspec' in sys.modules, 'urllib.request' in sys.modules)\n"
    )
    for source in (parts / "filelist.csv", parts):
        done = subprocess.run(
            [sys.executable, "-c", script, str(source), str(parts / "part-000.tsv")],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert done.stdout == "4 True False False\n"


def test_a_missing_local_partition_stays_retryable(tmp_path: Path) -> None:
    with pytest.raises(PartitionError) as info:
        open_partition(str(tmp_path / "gone.tsv"))
    assert info.value.message == f"cannot open {tmp_path / 'gone.tsv'}: not found"
    assert info.value.retryable  # another machine may have it


def test_object_store_prefix_glob_and_list(tmp_path: Path) -> None:
    fs = pytest.importorskip("fsspec").filesystem("memory")
    for name in ("a.tsv", "b.tsv", "_SUCCESS", "filelist.csv"):
        fs.pipe(f"/tally-test/{name}", SAMPLE.read_bytes())
    fs.pipe("/tally-test/list.lst", b"a.tsv\n../tally-test/b.tsv\n")
    both = ["memory:///tally-test/a.tsv", "memory:///tally-test/b.tsv"]
    try:
        assert expand_source("memory://tally-test/") == [*both, "memory:///tally-test/list.lst"]
        assert expand_source("memory://tally-test/*.tsv") == both
        assert expand_source("memory://tally-test/list.lst") == both
        with open_partition(both[0]) as stream:
            assert stream.read() == SAMPLE.read_bytes()
        with pytest.raises(PartitionError) as info:
            open_partition("memory:///tally-test/none.tsv")
        assert info.value.message == "cannot open memory:///tally-test/none.tsv: not found"
        assert not info.value.retryable
    finally:
        fs.rm("/tally-test", recursive=True)


def test_a_remote_stream_reads_in_pieces(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes() * 50
    (tmp_path / "p.tsv").write_bytes(data)
    with serve(tmp_path) as (root, _), open_partition(f"{root}/p.tsv") as stream:
        got = io.BytesIO()
        while piece := stream.read(4096 + 7):
            got.write(piece)
        assert got.getvalue() == data
