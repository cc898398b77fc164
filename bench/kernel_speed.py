"""Per-core throughput of domain-count kernels on a generated partition (warm page cache).

    .venv/bin/python bench/kernel_speed.py        # every candidate, 1 and default threads
    .venv/bin/python bench/kernel_speed.py --data sample       # the 200 real lines, repeated
    .venv/bin/python bench/kernel_speed.py --only fast polars --parallel 2
    .venv/bin/python bench/kernel_speed.py --only fast --file PARTITION.tsv  # a given partition

Each measurement runs in a fresh subprocess (thread settings must precede the imports) and
reports the best of ``--repeat`` runs over the whole file (generated once into
/tmp/tally-bench, or the partition given with ``--file``). Candidates:

- reference     plain Python, line by line (tally.kernels.reference)
- fast          NumPy byte scanning + Arrow hashing of the domains (tally.kernels.fast)
- fast-only     the same with ``only=b"go.mail"``
- numpy-counter the fast kernel's NumPy scanning, domains counted with a Python Counter
- arrow-regex   lines as an Arrow binary array, RE2 ``extract_regex``, ``value_counts``
- polars        ``scan_csv`` + string expressions + ``group_by``, streaming engine
- duckdb        ``read_csv`` + string functions + ``GROUP BY``

Only reference, fast and numpy-counter implement every edge case of the rule; the others
need valid UTF-8 (polars, duckdb) or skip some cases, so they are measured for speed only,
and checked against the reference on the generated data (which has no such cases).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "reference"
CACHE = Path("/tmp/tally-bench")  # generated partitions and reference results
CANDIDATES = [
    "reference",
    "fast",
    "fast-only",
    "numpy-counter",
    "arrow-regex",
    "polars",
    "duckdb",
]
Counts = dict[bytes, int]


def generate(size: int, seed: int = 1) -> bytes:
    """Lines ``<id>\\t<url>\\n`` of ~100 bytes: about half of them in the 25 most frequent
    domains of the published result, the rest in a long tail of ~8000 synthetic domains,
    with paths taken from the 200-line ClickBench sample."""
    rnd = random.Random(seed)
    paths = []
    for line in (SHARED / "clickbench-sample-200.tsv").read_bytes().splitlines():
        url = line.split(b"\t")[1]
        sep = url.find(b"://")
        rest = url[sep + 3 :] if sep >= 0 else url
        slash = rest.find(b"/")
        paths.append(rest[slash:] if slash >= 0 else b"/")
    top = [
        line.rsplit(b" ", 1)
        for line in (SHARED / "clickbench-top25-expected.txt").read_bytes().splitlines()
    ]
    top_domains, top_weights = [d for d, _ in top], [int(c) for _, c in top]
    words = [b"shop", b"news", b"auto", b"kino", b"mail", b"forum", "город".encode(), b"sport"]
    tlds = [b".ru", b".com", b".ua", b".net", b".info", b".org", ".рф".encode()]
    tail = sorted({rnd.choice(words) + b"%d" % i + rnd.choice(tlds) for i in range(8000)})
    tail_weights = [1 / (i + 1) for i in range(len(tail))]
    out: list[bytes] = []
    total = 0
    while total < size:
        tops = rnd.choices(top_domains, top_weights, k=1000)
        tails = rnd.choices(tail, tail_weights, k=1000)
        for head, other in zip(tops, tails, strict=True):
            domain = head if rnd.random() < 0.5 else other
            if domain.startswith(b"http:"):
                url = domain
            elif rnd.random() < 0.03:
                url = b"http:%2F%2F" + domain
            else:
                path = (rnd.choice(paths) + rnd.choice(paths))[: rnd.randint(20, 150)]
                path = path.decode("utf-8", "ignore").encode()  # no character cut in two
                url = rnd.choice((b"http://", b"https://")) + domain + path
            line = b"%d\t%s\n" % (rnd.getrandbits(63), url)
            out.append(line)
            total += len(line)
    return b"".join(out)


def repeat_sample(size: int, seed: int = 1) -> bytes:
    """The 200 real ClickBench lines in random order with fresh ids, up to ``size`` bytes."""
    rnd = random.Random(seed)
    urls = [
        line.split(b"\t")[1]
        for line in (SHARED / "clickbench-sample-200.tsv").read_bytes().splitlines()
    ]
    out: list[bytes] = []
    total = 0
    while total < size:
        line = b"%d\t%s\n" % (rnd.getrandbits(63), rnd.choice(urls))
        out.append(line)
        total += len(line)
    return b"".join(out)


# -- candidates (run inside the measuring subprocess) -------------------------------------


def run_reference(path: Path) -> Counts:
    from tally.kernels import reference

    with path.open("rb") as stream:
        return reference.count_domains(stream).counts


def run_fast(path: Path, only: bytes | None = None) -> Counts:
    from tally.kernels import fast

    with path.open("rb") as stream:
        return fast.count_domains(stream, only=only).counts


def line_aligned_chunks(path: Path, size: int = 8 << 20) -> list[bytes]:
    data = path.read_bytes()
    chunks, start = [], 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + size) + 1 or len(data)
        chunks.append(data[start:end])
        start = end
    return chunks


def run_numpy_counter(path: Path) -> Counts:
    import numpy as np

    from tally.kernels import fast

    counts: collections.Counter[bytes] = collections.Counter()
    with path.open("rb") as stream:
        while block := stream.read(8 << 20):
            buffer = bytearray(block)
            while buffer[-1:] != b"\n" and (more := stream.read(4096)):
                buffer += more
            size = len(buffer)
            buffer += bytes(fast._PAD)
            piece = fast._Piece(buffer, 0, size, 1 << 20)
            good = np.flatnonzero(piece.good)
            starts = piece.start[good].tolist()
            stops = (piece.start[good] + piece.length[good]).tolist()
            data = bytes(buffer)
            counts.update(data[a:b] for a, b in zip(starts, stops, strict=True))
    return dict(counts)


def run_arrow_regex(path: Path) -> Counts:
    import numpy as np
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.compute as pc  # type: ignore[import-untyped]

    pa.set_cpu_count(int(os.environ.get("BENCH_THREADS", pa.cpu_count())))
    pattern = r"^[^\t\n]*\t(?:[^\t\n]*?://(?P<d>[^/\t\n]*)|(?P<u>[^\t\n]*))"
    counts: Counts = {}
    for chunk in line_aligned_chunks(path):
        buf = np.frombuffer(chunk, dtype=np.uint8)
        ends = np.flatnonzero(buf == 10)
        offsets = np.concatenate([[0], ends + 1]).astype(np.int32)
        lines = pa.Array.from_buffers(
            pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(chunk)]
        )
        match = pc.extract_regex(lines, pattern)
        sep = pc.greater_equal(pc.find_substring(lines, "://"), 0)
        domains = pc.if_else(sep, match.field("d"), match.field("u"))
        found = pc.value_counts(domains)
        for key, n in zip(found.field(0).to_pylist(), found.field(1).to_pylist(), strict=True):
            counts[key] = counts.get(key, 0) + n
    return counts


def run_polars(path: Path) -> Counts:
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
    return {d.encode(): n for d, n in frame.iter_rows()}


def run_duckdb(path: Path) -> Counts:
    import duckdb

    con = duckdb.connect()
    if "BENCH_THREADS" in os.environ:
        con.execute(f"SET threads = {int(os.environ['BENCH_THREADS'])}")
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
    return {d.encode(): n for d, n in rows}


RUNNERS: dict[str, Callable[[Path], Counts]] = {
    "reference": run_reference,
    "fast": run_fast,
    "fast-only": lambda path: run_fast(path, only=b"go.mail"),
    "numpy-counter": run_numpy_counter,
    "arrow-regex": run_arrow_regex,
    "polars": run_polars,
    "duckdb": run_duckdb,
}


def measure(candidate: str, path: Path, repeat: int) -> None:
    """Subprocess side: print a JSON line with the best throughput and the result check."""
    run = RUNNERS[candidate]
    size = path.stat().st_size
    best = float("inf")
    counts: Counts = {}
    for _ in range(repeat):
        began = time.perf_counter()
        counts = run(path)
        best = min(best, time.perf_counter() - began)
    expected = json.loads(Path(os.environ["BENCH_EXPECTED"]).read_text())
    got = {k.decode("utf-8", "backslashreplace"): v for k, v in counts.items()}
    if candidate == "fast-only":
        expected = {k: v for k, v in expected.items() if k == "go.mail"}
    print(json.dumps({"mb_s": size / best / 1e6, "exact": got == expected}))


def spawn(candidate: str, path: Path, threads: int | None, repeat: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    if threads is not None:
        env.update(
            BENCH_THREADS=str(threads),
            POLARS_MAX_THREADS=str(threads),
            OMP_NUM_THREADS=str(threads),
        )
    env["BENCH_EXPECTED"] = expected_counts(path)
    command = [sys.executable, __file__, "--measure", candidate, "--file", str(path)]
    return subprocess.Popen(
        [*command, "--repeat", str(repeat)], env=env, stdout=subprocess.PIPE, text=True
    )


def expected_counts(path: Path) -> str:
    """A JSON file in CACHE with the reference result for ``path`` (computed once)."""
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    expected = CACHE / f"{path.name}-{key}.expected.json"
    CACHE.mkdir(parents=True, exist_ok=True)
    if not expected.exists() or expected.stat().st_mtime < path.stat().st_mtime:
        counts = run_reference(path)
        text = {k.decode("utf-8", "backslashreplace"): v for k, v in counts.items()}
        expected.write_text(json.dumps(text))
    return str(expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=CANDIDATES, default=CANDIDATES)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=1, help="processes at once (1 thread)")
    parser.add_argument(
        "--data", choices=["generated", "sample"], default="generated", help="what to generate"
    )
    parser.add_argument("--file", type=Path, help="partition to use instead of generating one")
    parser.add_argument("--measure", choices=CANDIDATES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.file, args.repeat)
        return
    path = args.file
    if path is None:
        path = CACHE / f"kernel-{args.data}-{args.size_mib}mib.tsv"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            make = generate if args.data == "generated" else repeat_sample
            path.write_bytes(make(args.size_mib << 20))
    path.read_bytes()  # warm the page cache
    print(f"{path} ({path.stat().st_size / 1e6:.0f} MB), {os.cpu_count()} cores")
    if args.parallel == 1:
        print(f"{'candidate':14} {'1 thread':>10} {'default':>10}  exact")
    for candidate in args.only:
        if args.parallel > 1:
            procs = [spawn(candidate, path, 1, args.repeat) for _ in range(args.parallel)]
            results = [json.loads(p.communicate()[0]) for p in procs]
            total = sum(r["mb_s"] for r in results)
            print(f"{candidate:14} {args.parallel} processes x 1 thread: {total:7.0f} MB/s total")
            continue
        row = []
        for threads in (1, None):
            proc = spawn(candidate, path, threads, args.repeat)
            row.append(json.loads(proc.communicate()[0]))
        print(
            f"{candidate:14} {row[0]['mb_s']:7.0f} MB/s {row[1]['mb_s']:7.0f} MB/s"
            f"  {'yes' if row[0]['exact'] else 'NO'}"
        )


if __name__ == "__main__":
    main()
