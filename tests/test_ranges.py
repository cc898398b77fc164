"""Line-aligned byte ranges: cut anywhere, the ranges together hold every line exactly once."""

from __future__ import annotations

import functools
import http.server
import io
import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SAMPLE, reference_output
from tally.kernels.reference import count_domains
from tally.protocol import QuerySpec
from tally.storage.ranges import RangeReader, cut, open_range, plan_tasks


class Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        piece = self._data.read(min(len(target), 3))  # short reads, as a socket gives
        target[: len(piece)] = piece
        return len(piece)


LINES = st.lists(
    st.tuples(
        st.binary(max_size=4).filter(lambda b: b"\n" not in b and b"\t" not in b),
        st.sampled_from([b"http://a.ru/x", b"b.com", b"https://c.org", b"", b"x" * 40]),
        st.sampled_from([b"\n", b"\r\n"]),
    ),
    max_size=30,
).map(lambda rows: b"".join(i + b"\t" + u + end for i, u, end in rows))


def read_ranges(data: bytes, ranges: list[tuple[int, int]], seekable: bool, chunk: int) -> bytes:
    out = []
    for start, end in ranges:
        stream = io.BytesIO(data) if seekable else Unseekable(data)
        reader = RangeReader(stream, start, end if end >= 0 else 1 << 62, chunk=chunk)  # type: ignore[arg-type]
        out.append(reader.read())
    return b"".join(out)


@settings(max_examples=400, deadline=None)
@given(
    LINES,
    st.booleans(),
    st.lists(st.integers(0, 400), max_size=6),
    st.booleans(),
    st.integers(1, 9),
)
def test_any_cut_reads_every_line_once(
    data: bytes, final_newline: bool, cuts: list[int], seekable: bool, chunk: int
) -> None:
    if not final_newline and data.endswith(b"\n"):
        data = data[:-1]
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    ranges = list(itertools.pairwise(bounds)) or [(0, -1)]
    assert read_ranges(data, ranges, seekable, chunk) == data
    whole = count_domains(io.BytesIO(data))
    parts = [
        count_domains(open_range(io.BytesIO(data), a, b))  # type: ignore[arg-type]
        for a, b in ranges
    ]
    total = parts[0]
    for part in parts[1:]:
        total.merge(part)
    total.bytes_read = whole.bytes_read
    assert total == whole


def test_cut_makes_even_ranges_and_leaves_small_partitions_whole() -> None:
    assert cut(100, 0) == [(0, -1)]
    assert cut(100, 100) == [(0, -1)]
    assert cut(100, 30) == [(0, 25), (25, 50), (50, 75), (75, 100)]
    assert cut(101, 50) == [(0, 34), (34, 68), (68, 101)]


def test_a_line_longer_than_its_range_belongs_to_the_range_it_starts_in() -> None:
    data = b"1\t" + b"a" * 100 + b"\n2\tb.ru\n"
    assert read_ranges(data, [(0, 10)], True, 4) == data[: data.index(b"\n") + 1]
    assert read_ranges(data, [(10, 50)], True, 4) == b""
    assert read_ranges(data, [(50, len(data))], True, 4) == b"2\tb.ru\n"


def test_a_large_partition_runs_as_ranges_on_every_worker_with_the_same_result(
    tmp_path: Path,
) -> None:
    big = tmp_path / "big.tsv"
    big.write_bytes(SAMPLE.read_bytes() * 50)  # ~1 MB, 10,000 lines
    (tmp_path / "list.csv").write_text("big.tsv\n")
    stats = tmp_path / "stats.json"
    done = subprocess.run(
        [sys.executable, "-m", "tally", "run", str(tmp_path / "list.csv"), "--workers", "2",
         "--all", "--split-size", "64KiB", "--stats", str(stats), "-q"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == reference_output(big, QuerySpec("all"))
    record = json.loads(stats.read_text())
    assert record["partitions"] == len(cut(big.stat().st_size, 64 << 10)) == 16
    assert all(w["partitions"] > 0 for w in record["workers"])
    assert record["lines"] == 10_000 and record["bytes"] == big.stat().st_size


def test_plan_tasks_cuts_only_large_partitions_and_versions_every_one(tmp_path: Path) -> None:
    small, large = tmp_path / "s", tmp_path / "l"
    small.write_bytes(b"1\ta.ru\n")
    large.write_bytes(b"1\ta.ru\n" * 100)
    tasks = plan_tasks([str(small), str(large), str(tmp_path / "missing")], 300)
    assert [(t.url, t.start, t.end) for t in tasks] == [
        (str(small), 0, -1),
        (str(large), 0, 234), (str(large), 234, 468), (str(large), 468, 700),
        (str(tmp_path / "missing"), 0, -1),
    ]  # fmt: skip
    st = large.stat()
    assert tasks[1].version == f"{st.st_size}-{st.st_mtime_ns}" and tasks[-1].version == ""


class RangedHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with ``Accept-Ranges: bytes`` and answers ``Range: bytes=N-`` with 206."""

    ranged_gets: ClassVar[list[int]] = []

    def log_message(self, *args: object) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_GET(self) -> None:
        wanted = self.headers.get("Range", "")
        if not wanted.startswith("bytes="):
            super().do_GET()
            return
        start = int(wanted.removeprefix("bytes=").split("-")[0])
        data = Path(self.translate_path(self.path)).read_bytes()
        RangedHandler.ranged_gets.append(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def test_an_http_partition_runs_as_ranged_gets(tmp_path: Path) -> None:
    big = tmp_path / "big.tsv"
    big.write_bytes(SAMPLE.read_bytes() * 20)
    handler = functools.partial(RangedHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    RangedHandler.ranged_gets.clear()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/big.tsv"
        (tmp_path / "list.csv").write_text(f"{url}\n")
        done = subprocess.run(
            [sys.executable, "-m", "tally", "run", str(tmp_path / "list.csv"), "--workers", "2",
             "--top", "10", "--split-size", "100KiB", "-q"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == reference_output(big, QuerySpec("top", k=10))
    starts = [a - 1 for a, _ in cut(big.stat().st_size, 100 << 10)[1:]]
    assert set(RangedHandler.ranged_gets) == set(starts)  # each range from its own offset
