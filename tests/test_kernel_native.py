"""The fast kernel's C extension: how it is loaded, the fallback when it is missing or
switched off, the install without a compiler, and the extension's own edge cases (lines that
end where the buffer ends, tables that grow, misuse)."""

from __future__ import annotations

import collections
import ctypes
import hashlib
import io
import mmap
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.kernels import DomainCounts, arrow_table, fast, reference
from test_kernel_fast import FUZZ, NATIVE, built_extension, partitions, table_counts

ROOT = Path(__file__).resolve().parents[1]
COMPILER = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
needs_native = pytest.mark.skipif(NATIVE is None, reason="the C extension is not built here")


def test_the_extension_is_built_where_a_compiler_is() -> None:
    """`pip install -e .` builds the extension when it can; missing or stale, every run would
    silently take the fallback."""
    if COMPILER is None:
        pytest.skip("no C compiler here")
    assert NATIVE is not None, "tally.kernels._native is missing or stale: pip install -e ."
    kernels = ROOT / "src/tally/kernels"
    sources = [
        kernels / name
        for name in ("_native.c", "_native_common.h", "_native_table.h", "_native_spare.h")
    ]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()
    assert digest[:16] == NATIVE.SOURCE, "the C sources changed since the build: pip install -e ."
    if os.environ.get("TALLY_NATIVE") != "0":
        assert fast.IMPLEMENTATION == "native"


def test_load_native_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TALLY_NATIVE", raising=False)
    good = types.SimpleNamespace(ABI=fast._ABI)
    with mock.patch("importlib.import_module", return_value=good):
        assert fast.load_native() is good
        monkeypatch.setenv("TALLY_NATIVE", "0")  # switched off
        assert fast.load_native() is None
    monkeypatch.delenv("TALLY_NATIVE")
    with mock.patch("importlib.import_module", return_value=types.SimpleNamespace(ABI=0)):
        assert fast.load_native() is None  # built from another version of the C file
    with mock.patch("importlib.import_module", return_value=types.SimpleNamespace()):
        assert fast.load_native() is None
    with mock.patch("importlib.import_module", side_effect=ImportError("undefined symbol")):
        assert fast.load_native() is None  # not built, or cannot load


@pytest.mark.parametrize("switch", ["0", "1"])
def test_a_process_takes_the_implementation_it_can(switch: str) -> None:
    code = (
        "import io; from tally.kernels import fast\n"
        "r = fast.count_domains(io.BytesIO(b'1\\thttp://a.ru/\\n2\\tHTTP://a.ru\\nx\\n'))\n"
        "print(fast.IMPLEMENTATION, sorted(r.counts.items()), r.lines, r.malformed)"
    )
    env = dict(os.environ, TALLY_NATIVE=switch)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split(" ", 1)
    expected_name = "native" if switch == "1" and NATIVE is not None else "numpy"
    assert out == [expected_name, "[(b'a.ru', 2)] 3 1\n"]


def build_ext(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("setuptools")
    command = [sys.executable, "setup.py", "build_ext"]
    command += ["--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")]
    return subprocess.run(
        command, cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True
    )


def test_the_build_goes_on_without_a_compiler(tmp_path: Path) -> None:
    """No compiler (or no Python headers): the install must not fail, only leave the
    extension out."""
    done = build_ext(tmp_path, CC="false", LDSHARED="false")
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob("lib/tally/kernels/_native*"))


@pytest.mark.skipif(COMPILER is None, reason="no C compiler here")
def test_the_build_makes_a_module_that_loads(tmp_path: Path) -> None:
    done = build_ext(tmp_path)
    assert done.returncode == 0, done.stderr
    [built] = tmp_path.glob("lib/tally/kernels/_native*")
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('tally.kernels._native', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(module.ABI)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(built)], capture_output=True, text=True, check=True
    )
    assert run.stdout == f"{fast._ABI}\n"


# -- the extension itself -------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_page() -> Iterator[memoryview]:
    """A page followed by one that cannot be read: a load past the first page's end
    crashes the process instead of passing unseen."""
    if not sys.platform.startswith("linux"):
        pytest.skip("mprotect through ctypes")
    page = mmap.PAGESIZE
    area = mmap.mmap(-1, 2 * page)
    anchor = ctypes.c_char.from_buffer(area)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(ctypes.addressof(anchor) + page, page, 0) == 0  # PROT_NONE
    view = memoryview(area)[:page]
    try:
        yield view
    finally:
        view.release()
        libc.mprotect(ctypes.addressof(anchor) + page, page, mmap.PROT_READ | mmap.PROT_WRITE)
        del anchor
        area.close()


@needs_native
@FUZZ
@given(
    partition=partitions(),
    record_limit=st.integers(0, 60),
    portable=st.booleans(),
    seed=st.integers(0, (1 << 64) - 1),
)
def test_lines_that_end_at_the_buffer_end(
    guarded_page: memoryview, partition: bytes, record_limit: int, portable: bool, seed: int
) -> None:
    """The last line ends on the last readable byte: every load near it stays inside."""
    assert NATIVE is not None
    data = partition if partition.endswith(b"\n") else partition + b"\n"
    at = len(guarded_page) - len(data)
    guarded_page[at:] = data
    counter = NATIVE.Counter(None, seed, portable)
    lines, malformed = counter.add(guarded_page, at, len(guarded_page), record_limit)
    expected = reference.count_domains(io.BytesIO(data), record_limit=record_limit)
    assert (counter.counts(), lines, malformed) == (
        expected.counts,
        expected.lines,
        expected.malformed,
    )


@needs_native
@pytest.mark.parametrize("portable", [False, True])
def test_many_distinct_domains(portable: bool) -> None:
    """Enough distinct domains for the table to grow past the caches (where lookups go in
    prefetched batches) and into huge pages; domains of every length up to 40 bytes, many
    alike in their first 8 bytes and their length."""
    rows = []
    for i in range(150_000):
        name = b"%08d" % (i % 9) + b"x" * (i % 23) + b"%d" % i
        rows.append(b"%d\thttps://%s/p\n" % (i, name[: 1 + i % 40]))
    rows += rows[::7]  # some seen again
    data = b"".join(rows)
    expected = reference.count_domains(io.BytesIO(data))
    with mock.patch.object(fast, "_native", NATIVE), mock.patch.object(fast, "_PORTABLE", portable):
        assert fast.count_domains(io.BytesIO(data)) == expected
    assert len(expected.counts) > 70_000


@needs_native
@pytest.mark.parametrize("portable", [False, True])
def test_domains_whose_slots_hold_the_same_hash(portable: bool) -> None:
    """300,000 distinct domains in one table with a fixed seed: with it, four pairs of them
    agree in the 32 bits of hash a slot keeps (about as many as for any seed), so the search
    of the later one, and of each line of it seen again, goes on past a slot of its hash that
    holds the other, in a table grown large (a group of slots at a time). Counted exactly."""
    assert NATIVE is not None
    names = [b"n%d.example" % i for i in range(300_000)]
    rows = names + names[::3]
    data = b"".join(b"%d\thttp://%s/\n" % (i, name) for i, name in enumerate(rows))
    counter = NATIVE.Counter(None, 7, portable)
    assert counter.add(data, 0, len(data), 100) == (len(rows), 0)
    assert counter.counts() == collections.Counter(rows)


@needs_native
def test_counter_misuse_is_refused() -> None:
    assert NATIVE is not None
    counter = NATIVE.Counter()
    with pytest.raises(ValueError):
        counter.add(bytearray(b"1\ta\n"), 0, 5, 10)  # past the buffer
    with pytest.raises(ValueError):
        counter.add(bytearray(b"1\ta\n"), 2, 1, 10)
    with pytest.raises(ValueError):
        counter.add(bytearray(b"1\ta\nxx"), 0, 6, 10)  # not whole lines
    with pytest.raises(ValueError):
        counter.add(bytearray(b"1\ta\n"), 0, 4, -1)
    with pytest.raises(ValueError):
        counter.add(bytearray(b"1\ta\n"), 0, 4, 1 << 32)  # a slot holds 32-bit lengths
    with pytest.raises(TypeError):
        NATIVE.Counter("a.ru")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        counter.__init__()  # type: ignore[misc]
    with pytest.raises(RuntimeError):
        NATIVE.Counter.__new__(NATIVE.Counter).counts()
    assert counter.add(b"1\ta\n", 0, 4, 10) == (1, 0)
    assert counter.counts() == {b"a": 1}


def test_built_extension_matches_what_fast_loaded() -> None:
    if os.environ.get("TALLY_NATIVE") != "0":
        assert built_extension() is fast._native


# -- the partial as Arrow buffers, and the merge --------------------------------------------


@needs_native
def test_take_hands_over_the_buffers_and_starts_again() -> None:
    assert NATIVE is not None
    counter = NATIVE.Counter(None, 7)
    data = b"1\thttp://a.ru/\n2\thttps://" + b"b" * 30 + b".ru/x\n3\ta.ru\n"
    counter.add(data, 0, len(data), 100)
    kept = [bytes(b) for b in counter.columns()]  # the same buffers, the counter going on
    assert counter.counts() == {b"a.ru": 2, b"b" * 30 + b".ru": 1}
    keys, offsets, counts = counter.take()
    assert kept == [bytes(keys), bytes(offsets), bytes(counts)]
    assert bytes(keys) == b"a.ru" + b"b" * 30 + b".ru"  # in the order first met
    assert np.frombuffer(offsets, np.int64).tolist() == [0, 4, 37]
    assert np.frombuffer(counts, np.int64).tolist() == [2, 1]
    assert counter.counts() == {}
    assert [bytes(b) for b in counter.take()] == [b"", bytes(8), b""]
    counter.add(b"1\tc.ru\n", 0, 7, 100)  # the counter goes on, from nothing
    assert counter.counts() == {b"c.ru": 1}
    table = arrow_table(keys, offsets, counts)  # wrapped without a copy
    del keys, offsets, counts, counter
    assert table is not None
    assert table.to_pydict() == {"key": [b"a.ru", b"b" * 30 + b".ru"], "n": [2, 1]}
    with pytest.raises(RuntimeError):
        NATIVE.Counter(b"a.ru").take()


@needs_native
@given(
    partials=st.lists(
        st.dictionaries(st.binary(min_size=1, max_size=40), st.integers(1, 1 << 40), max_size=50),
        max_size=6,
    ),
    offset=st.integers(0, 3),
)
def test_merge_adds_partials(partials: list[dict[bytes, int]], offset: int) -> None:
    """A sliced column (offsets not from 0) too; the result is the sum, as Arrow buffers."""
    assert NATIVE is not None
    counter = NATIVE.Counter(None, 3)
    total: dict[bytes, int] = {}
    for counts in partials:
        keys = [b"pad"] * offset + list(counts)
        ends = np.cumsum([0, *map(len, keys)]).astype(np.int32)
        n = np.array(list(counts.values()), np.int64)
        assert counter.merge(b"".join(keys), ends[offset:], n) == len(counts)
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    assert counter.counts() == total
    table = arrow_table(*counter.take())
    got = table_counts(table)
    assert got == total


@needs_native
def test_merge_refuses_malformed_buffers_and_changes_nothing() -> None:
    assert NATIVE is not None
    counter = NATIVE.Counter(None, 3)
    one = np.array([1], np.int64)
    counter.merge(b"a", np.array([0, 1], np.int32), one)
    bad = [
        (b"ab", np.array([0, 1, 2], np.int32), one),  # offsets and counts disagree
        (b"ab", np.array([0, 3], np.int32), one),  # past the data
        (b"ab", np.array([1, 1], np.int32), one),  # empty
        (b"ab", np.array([2, 1], np.int32), one),
        (b"ab", np.array([-1, 1], np.int32), one),
        (b"ab", np.array([0, 1], np.int32), np.array([0], np.int64)),  # a count below 1
        (b"ab", np.array([0, 1, 2], np.int32), np.array([1 << 61, 1 << 61], np.int64)),
        (b"ab", np.array([0, 1], np.int32), b"1234567"),  # not int64
    ]
    for data, offsets, counts in bad:
        with pytest.raises(ValueError):
            counter.merge(data, offsets, counts)
    assert counter.counts() == {b"a": 1}
    with pytest.raises(RuntimeError):
        NATIVE.Counter(b"a").merge(b"a", np.array([0, 1], np.int32), one)


def test_arrow_table_splits_what_one_binary_array_cannot_hold() -> None:
    """Past 2 GiB of domain bytes the table has several chunks (the limit made small here)."""
    keys = [b"a" * 5, b"b" * 3, b"c", b"d" * 7]
    ends = np.cumsum([0, *map(len, keys)]).astype(np.int64)
    counts = np.arange(1, 5, dtype=np.int64)
    with mock.patch("tally.kernels.MAX_BINARY", 8):
        table = arrow_table(b"".join(keys) + bytes(16), ends, counts)
    assert table is not None
    assert [len(chunk) for chunk in table["key"].chunks] == [2, 2]  # 8 bytes each
    assert table.to_pydict() == {"key": keys, "n": [1, 2, 3, 4]}
    assert arrow_table(b"", np.zeros(1, np.int64), b"") is None


def test_domain_counts_in_either_form() -> None:
    table = arrow_table(b"a.rub.ru", np.array([0, 4, 8]), np.array([3, 1]))
    counts = DomainCounts(lines=5, malformed=1, table=table)
    assert counts.table is table
    assert counts == DomainCounts({b"a.ru": 3, b"b.ru": 1}, 5, 1)
    counts.counts[b"c.ru"] = 2  # the dict is now the truth, and the table follows it
    assert counts.table is not None
    assert counts.table.to_pydict() == {"key": [b"a.ru", b"b.ru", b"c.ru"], "n": [3, 1, 2]}
    assert DomainCounts().table is None
    assert DomainCounts(table=None).counts == {}
