"""The domain rule of docs/domain-rule.md, case by case, on the plain-Python reference kernel."""

from __future__ import annotations

import io
import tracemalloc

import pytest

from conftest import SAMPLE
from tally.kernels.reference import count_domains
from tally.queries import show


def run(data: bytes, **kw: int) -> tuple[dict[bytes, int], int, int]:
    result = count_domains(io.BytesIO(data), **kw)  # type: ignore[arg-type]
    assert result.bytes_read == len(data)
    return result.counts, result.lines, result.malformed


@pytest.mark.parametrize(
    ("data", "counts", "lines", "malformed"),
    [
        (b"1\thttp://a.ru/x\n", {b"a.ru": 1}, 1, 0),
        (b"1\thttp://a.ru/x\r\n", {b"a.ru": 1}, 1, 0),  # \r before \n dropped
        (b"1\thttp://a.ru\r\r\n", {b"a.ru\r": 1}, 1, 0),  # only one \r dropped
        (b"1\thttp://a.ru", {b"a.ru": 1}, 1, 0),  # last line without \n
        (b"1\thttp://a.ru\r", {b"a.ru": 1}, 1, 0),  # ... ending in \r: read as if \n followed
        (b"1\thttp://a.ru\n\r", {b"a.ru": 1}, 1, 0),  # a lone \r at the end: a blank line
        (b"\n\r\n\n1\thttp://a.ru\n\n", {b"a.ru": 1}, 1, 0),  # blank lines skipped, not counted
        (b"1\thttp://a.ru/x\textra\tcols\n", {b"a.ru": 1}, 1, 0),  # URL is column 2
        (b"no tab at all\n", {}, 1, 1),  # fewer than two columns
        (b" \n", {}, 1, 1),  # not blank: one column
        (b"1\t\n", {}, 1, 1),  # empty URL
        (b"1\thttp:///x\n", {}, 1, 1),  # empty domain
        (b"1\thttp://\n", {}, 1, 1),
        (b"1\thttp:%2F%2Fwwww.ukr\n", {b"http:%2F%2Fwwww.ukr": 1}, 1, 0),  # no :// -> whole URL
        (b"1\thttps://a.ru?q=1://b/c\n", {b"a.ru?q=1:": 1}, 1, 0),  # first ://, first / after
        (b"1\tftp://x://y/z\n", {b"x:": 1}, 1, 0),
        (b"1\tGoogle.RU\n1\tgoogle.ru\n", {b"Google.RU": 1, b"google.ru": 1}, 2, 0),  # exact
        (b"1\thttp://\xff\xfe.ru/\n", {b"\xff\xfe.ru": 1}, 1, 0),  # invalid UTF-8 kept as bytes
        ("1\thttp://новострашная/x\n".encode(), {"новострашная".encode(): 1}, 1, 0),
    ],
)
def test_domain_rule(data: bytes, counts: dict[bytes, int], lines: int, malformed: int) -> None:
    assert run(data) == (counts, lines, malformed)


def test_only_counts_the_one_domain_but_all_lines() -> None:
    data = b"1\thttp://a/\n2\thttp://b/\nbad\n"
    result = count_domains(io.BytesIO(data), only=b"b")
    assert (result.counts, result.lines, result.malformed) == ({b"b": 1}, 3, 1)


def test_invalid_utf8_is_shown_backslash_escaped() -> None:
    assert show(b"\xff\xfe.ru") == "\\xff\\xfe.ru"
    assert show("новострашная".encode()) == "новострашная"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 1 << 20])
def test_chunk_boundaries_do_not_change_the_result(chunk_size: int) -> None:
    data = SAMPLE.read_bytes()
    whole = run(data)
    assert run(data, chunk_size=chunk_size) == whole
    assert whole[0][b"google.ru"] == 5 and whole[0][b"go.mail"] == 28 and whole[1] == 200


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1 << 20])
def test_record_limit(chunk_size: int) -> None:
    limit = 16
    ok = b"1\thttp://a.ru/xx"  # exactly 16 bytes: at the limit is fine
    too_long = b"1\thttp://a.ru/xxx"  # 17 bytes
    data = ok + b"\n" + too_long + b"\n" + too_long + b"\r\n" + ok
    assert run(data, record_limit=limit, chunk_size=chunk_size) == ({b"a.ru": 2}, 4, 2)
    # the \r of a \r\n ending is not part of the line: 16 bytes plus \r\n is at the limit
    assert run(ok + b"\r\n", record_limit=limit, chunk_size=chunk_size) == ({b"a.ru": 1}, 1, 0)
    assert run(ok + b"\r", record_limit=limit, chunk_size=chunk_size) == ({b"a.ru": 1}, 1, 0)
    assert run(ok + b"x\r\n", record_limit=limit, chunk_size=chunk_size) == ({}, 1, 1)
    assert run(too_long, record_limit=limit, chunk_size=chunk_size) == ({}, 1, 1)


def test_a_5_mib_line_stays_within_the_record_limit_in_memory() -> None:
    limit, chunk = 1 << 20, 64 << 10
    huge = b"1\thttp://huge.ru/" + b"x" * (5 << 20)
    data = b"1\thttp://a.ru/\n" + huge + b"\n2\thttp://b.ru/\n"
    stream = io.BytesIO(data)
    tracemalloc.start()
    try:
        result = count_domains(stream, record_limit=limit, chunk_size=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (result.counts, result.lines, result.malformed) == ({b"a.ru": 1, b"b.ru": 1}, 3, 1)
    assert peak < limit + 8 * chunk, peak  # the limit plus a few chunks, never the 5 MiB line
