"""The synthetic log generator: layout, determinism, and content checked by the reference kernel."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import TOP25_EXPECTED as EXPECTED_TOP25
from tally.datagen import (
    MALFORMED_FRACTION,
    PUBLISHED_TOP25,
    TOP_SHARE,
    foreign_files,
    generate,
    parse_size,
)
from tally.errors import ConfigError
from tally.kernels import DomainCounts
from tally.kernels.reference import count_domains

MIB = 1 << 20


def read_all(paths: list[Path]) -> list[bytes]:
    return [path.read_bytes() for path in paths]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1000", 1000),
        ("0", 0),
        ("32MiB", 32 * MIB),
        ("32mib", 32 * MIB),
        ("4MB", 4_000_000),
        ("1GiB", 1 << 30),
        ("512KiB", 512 * 1024),
        ("512kb", 512_000),
        ("7b", 7),
        (" 2 MiB ", 2 * MIB),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-1", "1.5MiB", "12XB", "32 MiBs", "1e6", "ten"])
def test_parse_size_rejects_bad_input(text: str) -> None:
    with pytest.raises(ConfigError, match="bad size"):
        parse_size(text)


def test_same_arguments_give_same_bytes_for_any_worker_count(tmp_path: Path) -> None:
    one = generate(tmp_path / "one", 3, 64 * 1024, seed=1, workers=1)
    two = generate(tmp_path / "two", 3, 64 * 1024, seed=1, workers=2)
    again = generate(tmp_path / "again", 3, 64 * 1024, seed=1)
    other = generate(tmp_path / "other", 3, 64 * 1024, seed=2, workers=2)
    assert read_all(one) == read_all(two) == read_all(again)
    assert all(a != b for a, b in zip(read_all(one), read_all(other), strict=True))


def test_a_partition_depends_only_on_seed_index_and_size(tmp_path: Path) -> None:
    few = generate(tmp_path / "few", 2, 64 * 1024, seed=5, workers=1)
    more = generate(tmp_path / "more", 4, 64 * 1024, seed=5, workers=2)
    assert read_all(few) == read_all(more)[:2]
    assert len(set(read_all(more))) == 4


def test_layout_sizes_and_file_list(tmp_path: Path) -> None:
    size = 256 * 1024
    paths = generate(tmp_path / "data", 5, size, seed=3, workers=2)
    out = (tmp_path / "data").resolve()
    assert paths == [out / f"part-{i:05d}.tsv" for i in range(5)]
    assert sorted(p.name for p in out.iterdir()) == ["filelist.csv"] + [p.name for p in paths]
    listing = (out / "filelist.csv").read_text()
    assert listing == "".join(f"file://{p}\n" for p in paths)
    for data in read_all(paths):
        assert abs(len(data) - size) <= 0.02 * size
        assert data.endswith(b"\n")


@pytest.mark.parametrize(("partitions", "size", "workers"), [(0, 1000, 1), (1, 0, 1), (1, 1000, 0)])
def test_bad_arguments(tmp_path: Path, partitions: int, size: int, workers: int) -> None:
    with pytest.raises(ConfigError):
        generate(tmp_path, partitions, size, seed=0, workers=workers)


def test_negative_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="seed"):
        generate(tmp_path, 1, 1000, seed=-1)


def test_an_earlier_data_set_is_replaced_and_other_files_are_kept(tmp_path: Path) -> None:
    out = (tmp_path / "data").resolve()
    generate(out, 3, 16 * 1024, seed=1, workers=1)
    (out / "mine.tsv").write_bytes(b"1\thttp://mine.ru/\n")
    (out / "part-1.tsv").write_bytes(b"")  # not a name generate writes
    paths = generate(out, 1, 16 * 1024, seed=2, workers=1)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["filelist.csv", "mine.tsv", "part-00000.tsv", "part-1.tsv"]
    assert (out / "filelist.csv").read_text() == paths[0].as_uri() + "\n"
    assert foreign_files(out) == ["mine.tsv", "part-1.tsv"]


def test_a_file_in_the_way_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="it is a file, not a folder"):
        generate(tmp_path / "file", 1, 1000, seed=0)
    with pytest.raises(ConfigError, match="cannot create"):
        generate(tmp_path / "file" / "below", 1, 1000, seed=0)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], list[DomainCounts]]:
    paths = generate(tmp_path_factory.mktemp("sample"), 4, 2 * MIB, seed=2024, workers=2)
    parts = []
    for path in paths:
        with path.open("rb") as f:
            parts.append(count_domains(f))
    return read_all(paths), parts


def test_published_table_matches_reference_file() -> None:
    rows = [line.rsplit(" ", 1) for line in EXPECTED_TOP25.read_text("utf-8").splitlines()]
    assert [(domain, int(count)) for domain, count in rows] == list(PUBLISHED_TOP25)


def test_top25_is_the_published_list_in_order(
    sample: tuple[list[bytes], list[DomainCounts]],
) -> None:
    total = DomainCounts()
    for part in sample[1]:
        total.merge(part)
    ranked = sorted(total.counts.items(), key=lambda item: (-item[1], item[0]))
    top = ranked[:25]
    assert [domain.decode() for domain, _ in top] == [domain for domain, _ in PUBLISHED_TOP25]
    assert ranked[25][1] < top[24][1]
    # The published ratios (up to rounding), and the chosen share of all lines.
    first = PUBLISHED_TOP25[0][1]
    for (_, count), (_, published) in zip(top, PUBLISHED_TOP25, strict=True):
        assert count / top[0][1] == pytest.approx(published / first, rel=0.005)
    top_lines = sum(count for _, count in top)
    assert top_lines / total.lines == pytest.approx(TOP_SHARE, abs=0.005)
    assert len(total.counts) > 1000


def test_malformed_lines_are_a_tiny_fixed_fraction(
    sample: tuple[list[bytes], list[DomainCounts]],
) -> None:
    for part in sample[1]:
        assert part.malformed == math.ceil(part.lines * MALFORMED_FRACTION)
        assert 0 < part.malformed < part.lines / 5000


def test_url_shapes_follow_the_real_sample(sample: tuple[list[bytes], list[DomainCounts]]) -> None:
    data = b"".join(sample[0])
    assert data.count(b"\n") == sum(part.lines for part in sample[1])
    assert 0 < data.count(b"\r\n") < data.count(b"\n") / 100
    for piece in [b"\thttp://", b"\thttps://", b"\thttp:%2F%2Fwwww.ukr\n", b"\thttp://www.", b'"']:
        assert piece in data
    assert "новострашная".encode() in data
    assert b"\thttp:///x\n" in data
    ids = [line.split(b"\t", 1)[0] for line in data.splitlines()[:1000]]
    assert all(len(i) == 19 and i.isdigit() and 0 < int(i) < 2**63 for i in ids)
