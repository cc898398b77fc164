"""The peer systems of bench/throughput.py: one job per process, the same top-K as Tally.

    .venv/bin/python bench/peers.py SYSTEM FILELIST [--top K] [--workers N] [--kernel KERNEL]

SYSTEM is one of:

- polars   one process, a lazy ``scan_csv`` of every partition, streaming engine, all cores
- duckdb   one process, ``read_csv`` of every partition (tab delimiter, no quoting), all cores
- dask     ``LocalCluster`` of N worker processes with 1 thread each, one task per partition
- ray      ``ray.init(num_cpus=N)`` on this machine, one task per partition
- spark    PySpark ``local[N]``, ``spark.read.text`` of every partition

Dask and Ray run a per-partition kernel that returns the partial as compact bytes (a small
header, the concatenated domains, their end offsets and their counts), which the driver merges
with one Arrow group-by. ``--kernel fast`` is Tally's fast kernel (``tally.kernels.fast`` and
``tally.queries.pack``, the same partial Tally's workers send); ``--kernel polars`` is a
single-threaded Polars scan of the partition (about 500 and 370 MB/s per core here).

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (the config key
``distributed.nanny.pre-spawn-environ``). Setting it switches off glibc's adaptive mmap
threshold, so every large temporary array of the fast kernel is a fresh ``mmap`` that is
page-faulted in and unmapped again: a partition takes about 160 ms instead of 75 ms. The Dask
peer therefore unsets it (the documented way: the value ``None``), unless ``--malloc-trim``
asks for Dask as shipped. Ray does not set it.

The domain rule (DESIGN.md section 1) is written in each engine's own expressions; on the 200
real ClickBench lines each gives exactly Tally's ``--all``. None of them reads the text as bytes:
Polars reads it as ``utf8-lossy`` (a strict UTF-8 read fails on invalid bytes) and Spark's
text reader decodes the same way, both turning invalid bytes into U+FFFD where Tally prints
``\\xff``; DuckDB's ``read_csv`` rejects a file with invalid UTF-8 (the run fails). The
generated data is valid UTF-8. The top K is ordered by count descending, then by domain bytes
ascending (code point order is byte order in UTF-8), in the engine.

Output on stdout: one line ``@@result {json}`` with ``rows`` (``[domain, count]``, domains
decoded as UTF-8 with ``backslashreplace``, as Tally prints them) and wall-clock stamps
(``time.time()``) of the phases: ``imported``, ``ready`` (cluster up), ``computed``.
Everything else goes to stderr. Clusters are shut down after the result line is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

MARKER = "@@result "
SYSTEMS = ("polars", "duckdb", "dask", "ray", "spark")
KERNELS = ("fast", "polars")
Rows = list[tuple[str, int]]
_HEADER = struct.Struct("<QQ")  # number of keys, bytes of keys


def partition_paths(listing: Path) -> list[str]:
    """Local paths of the partitions in a file list (plain paths or ``file://`` URLs)."""
    paths = []
    for line in listing.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = unquote(urlparse(line).path) if line.startswith("file://") else line
        paths.append(str(listing.parent / path) if not os.path.isabs(path) else path)
    return paths


def show(domain: bytes | str) -> str:
    return domain if isinstance(domain, str) else domain.decode("utf-8", "backslashreplace")


# -- single-process engines ------------------------------------------------------------------


def polars_counts(paths: list[str]) -> Any:
    """A lazy frame of (d, len): the lines per domain over ``paths``."""
    import polars as pl

    url = pl.col("url")
    after = url.str.splitn("://", 2).struct.field("field_1")
    domain = (
        pl.when(url.str.contains("://", literal=True))
        .then(after.str.splitn("/", 2).struct.field("field_0"))
        .otherwise(url)
    )
    return (
        pl.scan_csv(
            paths,
            separator="\t",
            has_header=False,
            quote_char=None,
            new_columns=["id", "url"],
            schema_overrides={"id": pl.String, "url": pl.String},
            encoding="utf8-lossy",
            truncate_ragged_lines=True,
        )
        .select(domain.alias("d"))
        .filter(pl.col("d") != "")  # also drops the nulls: no URL
        .group_by("d")
        .len()
    )


def polars_top(paths: list[str], k: int) -> Rows:
    frame = (
        polars_counts(paths)
        .sort(["len", "d"], descending=[True, False])
        .head(k)
        .collect(engine="streaming")
    )
    return [(d, int(n)) for d, n in frame.iter_rows()]


def duckdb_top(paths: list[str], k: int) -> Rows:
    import duckdb

    # substr/strpos/left are all in characters, so they agree with each other; split_part is
    # slower than strpos + left here (about 330 against 560 MB/s on 2 cores).
    query = """
        SELECT d, count(*) AS n FROM (
            SELECT CASE WHEN p = 0 THEN url
                        WHEN strpos(r, '/') = 0 THEN r
                        ELSE left(r, strpos(r, '/') - 1) END AS d
            FROM (SELECT url, p, substr(url, p + 3) AS r
                  FROM (SELECT url, strpos(url, '://') AS p
                        FROM read_csv(?, delim = '\t', header = false, quote = '', escape = '',
                                      null_padding = true, strict_mode = false,
                                      auto_detect = false,
                                      columns = {'id': 'VARCHAR', 'url': 'VARCHAR'}))))
        WHERE d <> ''
        GROUP BY d ORDER BY n DESC, d ASC LIMIT ?
    """
    con = duckdb.connect()
    return [(d, int(n)) for d, n in con.execute(query, [paths, k]).fetchall()]


def spark_session(workers: int) -> Any:
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(f"local[{workers}]")
        .appName("tally-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(workers))
        .getOrCreate()
    )


def spark_top(spark: Any, paths: list[str], k: int) -> Rows:
    from pyspark.sql import functions as f

    # Hadoop's line reader drops a "\r" before "\n"; split() takes a regex, "\t" is literal.
    cols = f.split(f.col("value"), "\t")
    url = f.col("url")
    rest = f.expr("substring(url, instr(url, '://') + 3)")
    domain = f.when(f.instr(url, "://") > 0, f.substring_index(rest, "/", 1)).otherwise(url)
    rows = (
        spark.read.text(paths)
        .select(f.when(f.size(cols) >= 2, cols.getItem(1)).alias("url"))
        .select(domain.alias("d"))
        .where(f.col("d") != "")
        .groupBy("d")
        .count()
        .orderBy(f.col("count").desc(), f.col("d").asc())
        .limit(k)
        .collect()
    )
    return [(r["d"], int(r["count"])) for r in rows]


# -- per-partition kernels of the distributed peers (run in their worker processes) ----------


def encode_partial(keys: bytes, ends: bytes, counts: bytes) -> bytes:
    """Header, then uint32 key end offsets, int64 counts and the concatenated keys."""
    return b"".join([_HEADER.pack(len(ends) // 4, len(keys)), ends, counts, keys])


def partial_fast(path: str) -> bytes:
    """Tally's fast kernel for one partition; its partial table's buffers, compacted."""
    import numpy as np

    from tally.kernels.fast import count_domains

    with open(path, "rb") as stream:
        table = count_domains(stream).table
    if table is None:
        return encode_partial(b"", b"", b"")
    keys, n = table["key"].combine_chunks(), table["n"].combine_chunks()
    at = np.frombuffer(keys.buffers()[1], np.int32)[keys.offset : keys.offset + len(keys) + 1]
    data = keys.buffers()[2].to_pybytes()[at[0] : at[-1]]
    counts = np.frombuffer(n.buffers()[1], np.int64)[n.offset : n.offset + len(n)]
    ends = (at[1:] - at[0]).astype("<u4")
    return encode_partial(data, ends.tobytes(), counts.astype("<i8").tobytes())


def partial_polars(path: str) -> bytes:
    """A single-threaded Polars scan of one partition (POLARS_MAX_THREADS=1 in workers)."""
    import numpy as np

    frame = polars_counts([path]).collect(engine="streaming")
    keys = [d.encode() for d in frame["d"].to_list()]
    ends = np.cumsum([len(k) for k in keys], dtype=np.int64).astype("<u4")
    counts = frame["len"].to_numpy().astype("<i8")
    return encode_partial(b"".join(keys), ends.tobytes(), counts.tobytes())


def merge_top(blobs: list[bytes], k: int) -> Rows:
    """Merge the partials with one Arrow group-by; the top ``k`` by count, then domain."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    keys, counts = [], []
    for blob in blobs:
        n, size = _HEADER.unpack_from(blob)
        at = _HEADER.size
        ends = np.frombuffer(blob, dtype="<u4", count=n, offset=at)
        counts.append(np.frombuffer(blob, dtype="<i8", count=n, offset=at + 4 * n))
        start = at + 12 * n
        offsets = np.concatenate([[0], ends]).astype("<i4")
        data = pa.py_buffer(blob[start : start + size])
        keys.append(pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), data]))
    table = pa.table({"d": pa.concat_arrays(keys), "n": np.concatenate(counts)})
    total = table.group_by("d").aggregate([("n", "sum")])
    order = pc.sort_indices(total, [("n_sum", "descending"), ("d", "ascending")])
    top = total.take(order[:k])
    domains, totals = top["d"].to_pylist(), top["n_sum"].to_pylist()
    return [(show(d), int(n)) for d, n in zip(domains, totals, strict=True)]


def kernel(name: str) -> Callable[[str], bytes]:
    """The kernel by name, from the module ``peers`` (not ``__main__``), so that workers
    unpickle it by reference: ``bench/`` is on their PYTHONPATH."""
    import peers

    return peers.partial_fast if name == "fast" else peers.partial_polars


# -- the driver ---------------------------------------------------------------------------


def run(args: argparse.Namespace, stamps: dict[str, float]) -> tuple[Rows, Callable[[], None]]:
    """The top K; a function that shuts down what was started (called after printing)."""
    paths = partition_paths(args.filelist)
    if args.system == "polars":
        import polars  # noqa: F401

        stamps["imported"] = stamps["ready"] = time.time()
        return polars_top(paths, args.top), lambda: None
    if args.system == "duckdb":
        import duckdb  # noqa: F401

        stamps["imported"] = stamps["ready"] = time.time()
        return duckdb_top(paths, args.top), lambda: None
    if args.system == "dask":
        import dask
        from dask.distributed import Client, LocalCluster

        if not args.malloc_trim:  # see the module docstring
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})

        stamps["imported"] = time.time()
        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
        stamps["ready"] = time.time()
        blobs = client.gather(client.map(kernel(args.kernel), paths, pure=False))

        def close() -> None:
            client.close()
            cluster.close()

        return merge_top(blobs, args.top), close
    if args.system == "ray":
        import ray

        stamps["imported"] = time.time()
        ray.init(
            num_cpus=args.workers,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
        stamps["ready"] = time.time()
        task = ray.remote(num_cpus=1)(kernel(args.kernel))
        blobs = ray.get([task.remote(p) for p in paths])
        return merge_top(blobs, args.top), ray.shutdown
    if args.system == "spark":
        stamps["imported"] = time.time()
        spark = spark_session(args.workers)
        stamps["ready"] = time.time()
        return spark_top(spark, paths, args.top), spark.stop
    raise SystemExit(f"unknown system {args.system!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("filelist", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--workers", type=int, default=2, help="dask/ray/spark processes or cores")
    parser.add_argument("--kernel", choices=KERNELS, default="fast", help="dask/ray kernel")
    parser.add_argument(
        "--malloc-trim",
        action="store_true",
        help="keep Dask's default MALLOC_TRIM_THRESHOLD_=65536 for its workers",
    )
    args = parser.parse_args()
    stamps: dict[str, float] = {}
    rows, close = run(args, stamps)
    stamps["computed"] = time.time()
    doc = {"system": args.system, "rows": [[show(d), n] for d, n in rows], "stamps": stamps}
    sys.stdout.write(MARKER + json.dumps(doc, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    close()


if __name__ == "__main__":
    main()
