"""The next partition is made ready while the current one computes, local or remote."""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import pytest

from conftest import SAMPLE, serve_http
from tally import prefetch as prefetch_module
from tally.errors import PartitionError
from tally.kernels.fast import count_domains
from tally.prefetch import Prefetcher
from tally.protocol import Task


def test_local_and_remote_prefetch_give_the_same_bytes(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes() * 100  # 2 MB: the HTTP stream returns it in several reads
    (tmp_path / "p.tsv").write_bytes(data)
    with serve_http(tmp_path) as root:
        for max_bytes in (4 << 20, 1000):  # whole download, and a head followed by a stream
            prefetch = Prefetcher(max_bytes=max_bytes)
            prefetch.start(1, Task(f"{root}/p.tsv"))
            prefetch.start(2, Task(str(tmp_path / "p.tsv")))
            with prefetch.take(1, Task(f"{root}/p.tsv")) as remote:
                assert remote.read() == data
            with prefetch.take(2, Task(str(tmp_path / "p.tsv"))) as local:
                assert count_domains(local).counts[b"google.ru"] == 500
        with Prefetcher().take(3, Task(f"{root}/p.tsv")) as direct:  # never started: opened now
            assert direct.read() == data


def test_missing_partitions_fail_on_take_and_discard_is_quiet(tmp_path: Path) -> None:
    prefetch = Prefetcher()
    with serve_http(tmp_path) as root:
        prefetch.start(1, Task(f"{root}/missing.tsv"))
        prefetch.start(2, Task(str(tmp_path / "missing.tsv")))
        with pytest.raises(PartitionError):
            prefetch.take(1, Task(f"{root}/missing.tsv"))
        with pytest.raises(PartitionError):
            prefetch.take(2, Task(str(tmp_path / "missing.tsv")))
        prefetch.start(3, Task(f"{root}/missing.tsv"))
        prefetch.discard(3)
    (tmp_path / "p.tsv").write_bytes(b"1\thttp://a/\n")
    prefetch.start(4, Task(str(tmp_path / "p.tsv")))
    prefetch.discard(4)


class ShortReads(io.RawIOBase):
    """A remote stream that, like a network one, returns at most 1000 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = 1000 if size < 0 else min(size, 1000)
        piece, self.data = self.data[:size], self.data[size:]
        return piece


def test_a_download_reads_until_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    data = SAMPLE.read_bytes()
    monkeypatch.setattr(prefetch_module, "open_partition", lambda url, offset=0: ShortReads(data))
    for max_bytes in (1 << 20, 5000):
        prefetch = Prefetcher(max_bytes=max_bytes)
        prefetch.start(1, Task("http://127.0.0.1:9/p.tsv"))
        with prefetch.take(1, Task("http://127.0.0.1:9/p.tsv")) as stream:
            assert stream.read() == data


def test_a_download_cut_short_fails_with_one_reason() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"http://127.0.0.1:{server.getsockname()[1]}/p.tsv"

        def answer_then_hang_up() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n1\thttp://a/\n")

        thread = threading.Thread(target=answer_then_hang_up, daemon=True)
        thread.start()
        prefetch = Prefetcher()
        prefetch.start(1, Task(url))
        with pytest.raises(PartitionError) as info:
            prefetch.take(1, Task(url))
        thread.join(timeout=20)
    assert info.value.message == (
        f"cannot read {url}: the connection closed before the end (99988 more bytes expected)"
    )
