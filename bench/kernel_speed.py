"""Per-core throughput of domain-count kernels over a matrix of data shapes (warm page cache).

    .venv/bin/python bench/kernel_speed.py      # the matrix: fast, fast-numpy and the ceiling
    .venv/bin/python bench/kernel_speed.py --shapes short-logs generated --repeat 7
    .venv/bin/python bench/kernel_speed.py --kernels fast polars duckdb --shapes generated
    .venv/bin/python bench/kernel_speed.py --file PARTITION.tsv  # a given partition

Shapes (bench/kernel_shapes.py): line length 40, 60, 100 and 300 bytes times 10, 3,000 and
1 million distinct domains; then 60-byte lines with half the URLs without a scheme, half with
``://`` in their query string, half with other schemes (``HTTP://``, ``Https://``, ``ftp://``),
CRLF endings; the short logs that combine them (57 bytes a line, mixed-case schemes, ``://``
in queries), with and without CRLF; the generator's log; the 200 real lines repeated. Each is
generated once into /tmp/tally-bench (``--size-mib``, default 32, a partition's size).

Per core: throughput is bytes (and lines) over the CPU seconds of the measuring process, user
plus system, so it holds on a machine shared with other work, and a kernel that used threads
is charged for all of them. Each shape is measured in a fresh process that runs every kernel
once per round, ``--repeat`` rounds (default 5) interleaved, so the kernels share the
machine's conditions; a figure is the median over the rounds, and the ratio to the ceiling is
the median of the rounds' ratios. The load average is recorded before each shape.

Kernels (every result is checked against the reference kernel's, cached with the data):

- ceiling       read the partition in 2 MiB chunks and find every newline with NumPy
                (``np.flatnonzero(chunk == 10)``): the least a line-splitting kernel does
- fast          tally.kernels.fast as installed (the C extension when it was built)
- fast-numpy    the same with the NumPy and Arrow fallback (tally.kernels.columnar)
- fast-only     the fast kernel with ``only=`` the partition's most frequent domain
- reference     plain Python, line by line (the oracle)
- arrow-regex   lines as an Arrow binary array, RE2 ``extract_regex``, ``value_counts``
- polars        ``scan_csv`` + string expressions + ``group_by``, streaming engine, 1 thread
- duckdb        ``read_csv`` + string functions + ``GROUP BY``, 1 thread

polars and duckdb need valid UTF-8 and skip some cases of the rule; arrow-regex too: they
are measured for speed, and their ``exact`` column says whether they matched on that data.
Results: bench/results/kernel_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kernel_shapes

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path("/tmp/tally-bench")
RESULTS = ROOT / "bench" / "results" / "kernel_speed.json"
DEFAULT_KERNELS = ["fast", "fast-numpy", "ceiling"]
KERNELS = [*DEFAULT_KERNELS, "fast-only", "reference", "arrow-regex", "polars", "duckdb"]
Result = tuple[Any, int, int]  # counts (a dict, or Measured), lines, malformed


class Measured:
    """A kernel's result whose counts become a dict only when checked, off the clock."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def counts(self) -> dict[bytes, int]:
        return self.result.counts  # type: ignore[no-any-return]


# -- kernels (run inside the measuring process) ---------------------------------------------


def run_ceiling(path: Path) -> Result:
    import numpy as np

    buffer = bytearray(2 << 20)
    lines = 0
    with path.open("rb", buffering=0) as stream:
        while got := stream.readinto(buffer):
            lines += len(np.flatnonzero(np.frombuffer(buffer, np.uint8, got) == 10))
    return {}, lines, 0


def run_fast(path: Path, numpy: bool = False, only: bytes | None = None) -> Result:
    """As a worker runs it: up to the partial's Arrow table (what a task sends); the counts
    are turned into a dict for the check after the clock stops (Measured)."""
    from tally.kernels import fast

    native = fast._native
    if numpy:
        fast._native = None
    try:
        with path.open("rb") as stream:
            result = fast.count_domains(stream, only=only)
        result.table  # noqa: B018 (the partial as a task sends it)
    finally:
        fast._native = native
    return Measured(result), result.lines, result.malformed


def run_reference(path: Path) -> Result:
    from tally.kernels import reference

    with path.open("rb") as stream:
        result = reference.count_domains(stream)
    return result.counts, result.lines, result.malformed


def run_arrow_regex(path: Path) -> Result:
    import numpy as np
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.compute as pc  # type: ignore[import-untyped]

    pattern = r"^[^\t\n]*\t(?:[^\t\n]*?://(?P<d>[^/\t\n]*)|(?P<u>[^\t\n]*))"
    counts: dict[bytes, int] = {}
    data = path.read_bytes()
    start = 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + (8 << 20)) + 1 or len(data)
        chunk = data[start:end]
        start = end
        ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
        offsets = np.concatenate([[0], ends + 1]).astype(np.int32)
        lines = pa.Array.from_buffers(
            pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(chunk)]
        )
        match = pc.extract_regex(lines, pattern)
        sep = pc.greater_equal(pc.find_substring(lines, "://"), 0)
        found = pc.value_counts(pc.if_else(sep, match.field("d"), match.field("u")))
        for key, n in zip(found.field(0).to_pylist(), found.field(1).to_pylist(), strict=True):
            if key:
                counts[key] = counts.get(key, 0) + n
    return counts, -1, -1


def run_polars(path: Path) -> Result:
    import polars as pl

    url = pl.col("url")
    after = url.str.splitn("://", 2).struct.field("field_1")
    domain = pl.when(url.str.contains("://", literal=True)).then(
        after.str.splitn("/", 2).struct.field("field_0")
    )
    query = (
        pl.scan_csv(
            path,
            separator="\t",
            has_header=False,
            quote_char=None,
            new_columns=["id", "url"],
            schema_overrides={"id": pl.String, "url": pl.String},
        )
        .select(domain.otherwise(url).alias("d"))
        .group_by("d")
        .len()
    )
    frame = query.collect(engine="streaming")
    return {d.encode(): n for d, n in frame.iter_rows()}, -1, -1


def run_duckdb(path: Path) -> Result:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 1")
    rows = con.execute(
        """
        SELECT CASE WHEN strpos(url, '://') > 0
                    THEN split_part(substr(url, strpos(url, '://') + 3), '/', 1)
                    ELSE url END AS d,
               count(*)
        FROM read_csv(?, delim = '\t', header = false, quote = '', escape = '',
                      columns = {'id': 'VARCHAR', 'url': 'VARCHAR'})
        GROUP BY d
        """,
        [str(path)],
    ).fetchall()
    return {d.encode(): n for d, n in rows}, -1, -1


def runner(kernel: str, top: bytes) -> Callable[[Path], Result]:
    return {
        "ceiling": run_ceiling,
        "fast": run_fast,
        "fast-numpy": lambda path: run_fast(path, numpy=True),
        "fast-only": lambda path: run_fast(path, only=top),
        "reference": run_reference,
        "arrow-regex": run_arrow_regex,
        "polars": run_polars,
        "duckdb": run_duckdb,
    }[kernel]


def exact(kernel: str, got: Result, expected: Result, top: bytes) -> bool:
    counts, lines, malformed = expected
    if isinstance(got[0], Measured):
        got = (got[0].counts(), got[1], got[2])
    if kernel == "ceiling":  # every newline, so blank lines too; the data has none
        return got[1] == lines
    if kernel == "fast-only":
        counts = {top: counts[top]} if top in counts else {}
    if got[1] < 0:  # the peers count no lines
        return got[0] == counts
    return got == (counts, lines, malformed)


def measure(path: Path, kernels: list[str], repeat: int, expected_path: Path) -> None:
    """Measuring-process side: one JSON line with every round of every kernel."""
    saved = json.loads(expected_path.read_text())
    counts = {k.encode("latin-1"): v for k, v in saved["counts"].items()}
    expected = (counts, saved["lines"], saved["malformed"])
    top = max(counts, key=counts.__getitem__) if counts else b""
    # imports before the clock, as a worker has them from its start: the first round would
    # otherwise pay for loading NumPy, pyarrow and the kernels (tens of ms)
    import numpy  # noqa: F401
    import pyarrow  # type: ignore[import-untyped]  # noqa: F401

    import tally.kernels.columnar
    import tally.kernels.fast  # noqa: F401

    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in kernels}
    ok = dict.fromkeys(kernels, True)
    failed: dict[str, str] = {}
    for _ in range(repeat):
        for kernel in kernels:
            if kernel in failed:
                continue
            run = runner(kernel, top)
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                got = run(path)
            except Exception as error:  # a peer that cannot read this data (invalid UTF-8)
                failed[kernel] = str(error).splitlines()[0]
                continue
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            rounds[kernel].append({"cpu_s": cpu, "wall_s": wall})
            ok[kernel] = ok[kernel] and exact(kernel, got, expected, top)
            del got
    print(json.dumps({"rounds": rounds, "exact": ok, "failed": failed}))


# -- the driver -------------------------------------------------------------------------------


def partition(shape: str, size_mib: int) -> Path:
    path = CACHE / f"{shape}-{size_mib}mib.tsv"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_bytes(kernel_shapes.GENERATORS[shape](size_mib << 20))
        path.with_suffix(".tmp").rename(path)
    return path


def expected_result(path: Path) -> Path:
    """A JSON file beside ``path`` with the reference kernel's result (computed once)."""
    expected = path.with_name(path.name + ".expected.json")
    if not expected.exists() or expected.stat().st_mtime < path.stat().st_mtime:
        counts, lines, malformed = run_reference(path)
        text = {k.decode("latin-1"): v for k, v in counts.items()}
        doc = {"counts": text, "lines": lines, "malformed": malformed}
        expected.write_text(json.dumps(doc))
    return expected


def run_shape(path: Path, kernels: list[str], repeat: int) -> dict[str, Any]:
    expected = expected_result(path)
    saved = json.loads(expected.read_text())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")]))
    env.update(POLARS_MAX_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    load = os.getloadavg()[0]
    command = [sys.executable, __file__, "--measure", str(path), str(expected)]
    command += ["--repeat", str(repeat), "--kernels", *kernels]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout)
    size, lines = path.stat().st_size, saved["lines"]
    ceiling = [r["cpu_s"] for r in measured["rounds"].get("ceiling", [])]
    row: dict[str, Any] = {
        "bytes": size,
        "lines": lines,
        "distinct": len(saved["counts"]),
        "load_1m": load,
        "kernels": {},
    }
    for kernel, why in measured["failed"].items():
        row["kernels"][kernel] = {"failed": why}
    for kernel, rounds in measured["rounds"].items():
        if kernel in measured["failed"]:
            continue
        cpu = [r["cpu_s"] for r in rounds]
        entry = {
            "mb_s": statistics.median(size / s / 1e6 for s in cpu),
            "mlines_s": statistics.median(lines / s / 1e6 for s in cpu),
            "wall_mb_s": statistics.median(size / r["wall_s"] / 1e6 for r in rounds),
            "exact": measured["exact"][kernel],
            "cpu_s": cpu,
        }
        if ceiling:
            ratios = [c / s for c, s in zip(ceiling, cpu, strict=True)]
            entry["of_ceiling"] = statistics.median(ratios)
        row["kernels"][kernel] = entry
    return row


def show(name: str, row: dict[str, Any], kernels: list[str]) -> None:
    head = f"{name:17} {row['bytes'] / row['lines']:5.0f} {row['distinct']:>8,}"
    cells = []
    for kernel in kernels:
        k = row["kernels"][kernel]
        if "failed" in k:
            cells.append("failed")
            continue
        ratio = f" {k['of_ceiling']:4.2f}" if "of_ceiling" in k and kernel != "ceiling" else ""
        flag = "" if k["exact"] else " WRONG"
        cells.append(f"{k['mb_s']:6.0f} {k['mlines_s']:5.1f}{ratio}{flag}")
    print(f"{head}  " + "  ".join(f"{c:>21}" for c in cells), f"  load {row['load_1m']:.1f}")


GOAL = 0.5  # of the ceiling, per core, on every shape


def closing_note(results: dict[str, Any], args: argparse.Namespace) -> None:
    """Where the fast kernel stands against the goal, shape by shape, and the command."""
    ratios = {
        name: row["kernels"]["fast"].get("of_ceiling")
        for name, row in results.items()
        if "fast" in row["kernels"]
    }
    known = {name: r for name, r in ratios.items() if r is not None}
    if not known:
        return
    below = [f"{name} {r:.2f}" for name, r in known.items() if r < GOAL]
    loads = [row["load_1m"] for row in results.values()]
    print(
        f"goal: the fast kernel at {GOAL:.1f} of the ceiling or more per core on every shape; "
        f"met on {len(known) - len(below)} of {len(known)}"
        + (f", below on: {', '.join(below)}" if below else "")
        + f" (load average {min(loads):.1f} to {max(loads):.1f}; the ratio is of CPU seconds, "
        "taken in turns in one process per shape)"
    )
    print("command: " + " ".join([".venv/bin/python", "bench/kernel_speed.py", *sys.argv[1:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(kernel_shapes.GENERATORS))
    parser.add_argument("--file", type=Path, help="measure this partition instead")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=DEFAULT_KERNELS)
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results ('-': none)")
    parser.add_argument("--measure", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], args.kernels, args.repeat, args.measure[1])
        return
    from tally.kernels import fast

    shapes = args.shapes or [s for s in kernel_shapes.GENERATORS if s != "sample"]
    paths = {args.file.name: args.file} if args.file else {}
    paths.update({s: partition(s, args.size_mib) for s in ([] if args.file else shapes)})
    print(
        f"{os.cpu_count()} cores, fast kernel: {fast.IMPLEMENTATION}; per kernel: MB/s and "
        f"million lines/s per CPU second, median of {args.repeat} rounds, and its ratio to "
        "the ceiling"
    )
    print(
        f"{'shape':17} {'B/ln':>5} {'distinct':>8}  " + "  ".join(f"{k:>21}" for k in args.kernels)
    )
    results: dict[str, Any] = {}
    for name, path in paths.items():
        path.read_bytes()  # warm the page cache
        results[name] = run_shape(path, args.kernels, args.repeat)
        results[name]["shape"] = kernel_shapes.DESCRIPTIONS.get(name, str(path))
        show(name, results[name], args.kernels)
    closing_note(results, args)
    if str(args.out) != "-":
        doc = {
            "machine": f"{platform.machine()} {os.cpu_count()} cores {platform.processor()}",
            "python": platform.python_version(),
            "implementation": fast.IMPLEMENTATION,
            "repeat": args.repeat,
            "size_mib": args.size_mib,
            "shapes": results,
        }
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
