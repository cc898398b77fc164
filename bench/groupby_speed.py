"""Per-core speed of the group-by kernel against DuckDB alone, on TPC-H Q1 over ``lineitem``
as delimited text (warm page cache), and of the other engines the kernel could have used.

    .venv/bin/python bench/groupby_speed.py                 # SF 1, every candidate, 3 rounds
    .venv/bin/python bench/groupby_speed.py --sf 0.1 --only tally duckdb-1
    .venv/bin/python bench/groupby_speed.py --file lineitem.tbl

Each measurement runs in a fresh subprocess (thread settings must precede the imports) that
reports its wall time and CPU time (user + system) over the whole file; the median of
``--rounds`` runs is kept. "MB/s per core" is bytes / CPU seconds: on a shared machine it
says what one core does, whatever else is running. Every candidate's answer is checked
against DuckDB's (same column types). Candidates:

- tally          tally.kernels.delimited.compute_partial + the merger: chunks read by the C
                 field parser (_fields.c) streamed into one DuckDB aggregation, one thread
- tally-pyarrow  the same with TALLY_NATIVE=0: PyArrow's CSV reader instead of the C parser
- tally-2        the same in 2 processes, each over half the file (a line-aligned byte range),
                 partials merged: what 2 workers compute, without the cluster around them
- duckdb-1/-2    DuckDB ``read_csv`` of the file with the same types, 1 and 2 threads
- duckdb-stream  DuckDB ``read_csv`` of a Python file object (what a stream gives), 1 thread
- polars         ``read_csv`` of 8 MiB chunks of lines + ``group_by``, 1 thread
- pyarrow        PyArrow CSV chunks + ``Table.group_by`` (Arrow compute), 1 thread
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "tpch"
RESULTS = ROOT / "bench" / "results" / "groupby_speed.json"
CANDIDATES = [
    "tally",
    "tally-pyarrow",
    "tally-2",
    "duckdb-1",
    "duckdb-2",
    "duckdb-stream",
    "polars",
    "pyarrow",
]
CHUNK = 8 << 20

sys.path.insert(0, str(ROOT / "tests"))
from groupby_helpers import LINEITEM, Q1  # noqa: E402


def generate(sf: str) -> Path:
    out = CACHE / f"sf{sf}"
    path = out / "lineitem.tbl"
    if not path.exists():
        tpchgen = Path(sys.executable).with_name("tpchgen-cli")
        print(f"generating TPC-H SF {sf} lineitem into {out}", file=sys.stderr)
        cmd = [str(tpchgen), "-s", sf, "-T", "lineitem", "-o", str(out)]
        subprocess.run(cmd, check=True)
    return path


def bound_plan(path: Path):  # type: ignore[no-untyped-def]
    from tally.queries.infer import bind
    from tally.queries.sql import parse_sql

    _, plan = parse_sql(Q1, columns=LINEITEM)
    with path.open("rb") as f:
        return bind(plan, f.read(1 << 20))


def duck_q1(source: str) -> str:
    return Q1.replace("'lineitem.tbl'", source)


def chunks(path: Path):  # type: ignore[no-untyped-def]
    """Whole-line chunks of about CHUNK bytes."""
    with path.open("rb") as f:
        rest = b""
        while block := f.read(CHUNK):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            yield block[:cut]
        if rest:
            yield rest


def run_candidate(name: str, path: Path) -> list[list[object]]:
    """Q1 over ``path`` with engine ``name``; rows as JSON-able lists."""
    plan = bound_plan(path)
    types = {n: plan.schema.get(n, "VARCHAR") for n in LINEITEM} | {"trailing": "VARCHAR"}
    read = f"columns={types!r}, delim='|', header=false, quote='', escape='', auto_detect=false"
    if name in ("tally", "tally-pyarrow"):
        from tally.kernels.delimited import compute_partial
        from tally.queries.groupby import GroupMerger

        merger = GroupMerger(plan)
        with path.open("rb") as f:
            merger.add(compute_partial(plan, f))
        table = merger.result().table
        return [list(r.values()) for r in table.to_pylist()]
    if name == "tally-2":
        from tally.queries.groupby import GroupMerger

        size = path.stat().st_size
        with path.open("rb") as f:
            f.seek(size // 2)
            f.readline()
            middle = f.tell()
        from tally.queries.plan import encode

        merger = GroupMerger(plan)
        ranges = [(0, middle), (middle, size)]
        tasks = POOL[0].map(half, [str(path)] * 2, ranges, [encode(plan)] * 2)  # type: ignore[attr-defined]
        for partial, cpu in tasks:
            merger.add(partial)
            CHILD_CPU.append(cpu)
        return [list(r.values()) for r in merger.result().table.to_pylist()]
    if name.startswith("duckdb"):
        import duckdb

        threads = 2 if name == "duckdb-2" else 1
        con = duckdb.connect(config={"threads": threads})
        if name == "duckdb-stream":
            with path.open("rb") as f:
                rel = con.read_csv(
                    f, delimiter="|", header=False, columns=types, quotechar="", escapechar=""
                )
                con.register("stream", rel)
                return [list(r) for r in con.sql(duck_q1("stream")).fetchall()]
        return [list(r) for r in con.sql(duck_q1(f"read_csv('{path}', {read})")).fetchall()]
    if name == "polars":
        return run_polars(path, plan)
    return run_pyarrow(path, plan)


class Range(io.RawIOBase):
    """Bytes [begin, end) of a file as a stream."""

    def __init__(self, path: str, begin: int, end: int) -> None:
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115
        self.file.seek(begin)
        self.left = end - begin

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        view = memoryview(buffer)[: self.left]
        got = self.file.readinto(view) or 0
        self.left -= got
        return got


POOL: list[object] = []  # tally-2's worker processes, started before the clock


CHILD_CPU: list[float] = []  # CPU seconds the pool's processes spent on the measured work


def half(path: str, span: tuple[int, int], plan: bytes):  # type: ignore[no-untyped-def]
    """One worker's task: the partial of a byte range, and the CPU time it took."""
    from tally.kernels.delimited import compute_partial
    from tally.queries.plan import decode

    start = time.process_time()
    stream = Range(path, *span)
    try:
        partial = compute_partial(decode(plan), stream)  # type: ignore[arg-type]
    finally:
        stream.file.close()
    return partial, time.process_time() - start


def run_polars(path: Path, plan) -> list[list[object]]:  # type: ignore[no-untyped-def]
    import datetime

    import polars as pl

    def dtype(duck: str) -> object:
        if duck.startswith("DECIMAL"):
            return pl.Decimal(18, int(duck.split(",")[1][:-1]))
        return {"BIGINT": pl.Int64, "DATE": pl.Date}.get(duck, pl.String)

    used = ["l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice", "l_discount"]
    used += ["l_tax", "l_shipdate"]
    price, disc, tax = pl.col("l_extendedprice"), pl.col("l_discount"), pl.col("l_tax")
    parts = []
    for chunk in chunks(path):
        df = pl.read_csv(
            chunk, separator="|", has_header=False, new_columns=[*LINEITEM, "trailing"],
            quote_char=None, columns=[LINEITEM.index(c) for c in used],
            schema_overrides={c: dtype(plan.schema[c]) for c in used},
        )  # fmt: skip
        parts.append(
            df.lazy()
            .filter(pl.col("l_shipdate") <= datetime.date(1998, 9, 2))
            .group_by("l_returnflag", "l_linestatus")
            .agg(
                pl.col("l_quantity").sum().alias("q"),
                price.sum().alias("p"),
                # a Decimal product keeps the larger scale: widen first to stay exact
                (price.cast(pl.Decimal(38, 4)) * (1 - disc)).sum().alias("dp"),
                (price.cast(pl.Decimal(38, 6)) * (1 - disc) * (1 + tax)).sum().alias("ch"),
                disc.sum().alias("d"),
                pl.len().alias("n"),
            )
            .collect()
        )
    total = pl.concat(parts).group_by("l_returnflag", "l_linestatus").sum().sort(pl.all())
    out = []
    for r in total.iter_rows():
        flag, status, q, p, dp, ch, d, n = r
        out.append([flag, status, q, p, dp, ch, q / n, float(p) / n, float(d) / n, n])
    return out


def run_pyarrow(path: Path, plan) -> list[list[object]]:  # type: ignore[no-untyped-def]
    import datetime

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from tally.kernels.delimited import arrow_type

    used = ["l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice", "l_discount"]
    used += ["l_tax", "l_shipdate"]
    read = pacsv.ReadOptions(
        column_names=[*LINEITEM, "trailing"], use_threads=False, block_size=CHUNK + (1 << 20)
    )
    parse = pacsv.ParseOptions(delimiter="|", quote_char=False)
    convert = pacsv.ConvertOptions(
        include_columns=used, column_types={c: arrow_type(plan.schema[c]) for c in used}
    )
    one = pa.scalar(Decimal("1.00"), pa.decimal128(3, 2))
    cutoff = pa.scalar(datetime.date(1998, 9, 2))
    parts = []
    for chunk in chunks(path):
        t = pacsv.read_csv(pa.py_buffer(chunk), read_options=read, parse_options=parse,
                           convert_options=convert)  # fmt: skip
        t = t.filter(pc.less_equal(t["l_shipdate"], cutoff))
        # decimal precision adds up in a product: narrow what the values allow, 38 at most
        disc_price = pc.multiply(t["l_extendedprice"], pc.subtract(one, t["l_discount"]))
        disc_price = disc_price.cast(pa.decimal128(18, 4))
        charge = pc.multiply(disc_price, pc.add(one, t["l_tax"]))
        t = t.append_column("dp", disc_price).append_column("ch", charge.cast(pa.decimal128(38, 6)))
        sums = ["l_quantity", "l_extendedprice", "dp", "ch", "l_discount"]
        aggs = [(c, "sum") for c in sums] + [([], "count_all")]
        parts.append(t.group_by(["l_returnflag", "l_linestatus"]).aggregate(aggs))
    total = pa.concat_tables(parts)
    keys = ["l_returnflag", "l_linestatus"]
    sums = [n for n in total.schema.names if n not in keys]
    total = total.group_by(keys).aggregate([(n, "sum") for n in sums])
    out = []
    for r in sorted(total.to_pylist(), key=lambda r: (r["l_returnflag"], r["l_linestatus"])):
        q, p, dp, ch, d, n = (r[f"{k}_sum"] for k in sums)
        row = [r["l_returnflag"], r["l_linestatus"], q, p, dp, ch]
        out.append([*row, q / n, float(p / n), float(d / n), n])
    return out


def child(name: str, path: Path) -> None:
    # imports are not part of a task's time
    import duckdb  # noqa: F401
    import pyarrow.csv  # noqa: F401

    import tally.kernels.delimited
    import tally.queries.groupby  # noqa: F401

    if name == "polars":
        import polars  # noqa: F401
    bound_plan(path)
    if name == "tally-2":  # two running workers, as in a cluster: started and warmed first
        from concurrent.futures import ProcessPoolExecutor

        from tally.queries.plan import encode

        POOL.append(ProcessPoolExecutor(2))
        warm = [encode(bound_plan(path))] * 2
        list(POOL[0].map(half, [str(path)] * 2, [(0, 0), (0, 0)], warm))  # type: ignore[attr-defined]
    t0, c0 = time.perf_counter(), os.times()
    rows = run_candidate(name, path)
    c1 = os.times()
    cpu = c1.user - c0.user + c1.system - c0.system + sum(CHILD_CPU)
    doc = {"wall": time.perf_counter() - t0, "cpu": cpu, "rows": rows}
    print(json.dumps(doc, default=str))


def measure(name: str, path: Path) -> dict[str, object]:
    env = dict(os.environ, POLARS_MAX_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if name == "tally-pyarrow":
        env["TALLY_NATIVE"] = "0"  # no C field parser: every chunk through PyArrow's CSV reader
    cmd = [sys.executable, __file__, "--child", name, "--file", str(path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


def same(ours: list[list[object]], theirs: list[list[object]]) -> bool:
    def norm(v: object) -> str:
        try:
            return f"{float(str(v)):.12g}"
        except ValueError:
            return str(v)

    return [[norm(v) for v in r] for r in ours] == [[norm(v) for v in r] for r in theirs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sf", default="1", help="TPC-H scale factor (default 1)")
    parser.add_argument("--file", type=Path, help="a lineitem .tbl file instead")
    parser.add_argument("--only", nargs="+", choices=CANDIDATES, default=CANDIDATES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = args.file or generate(args.sf)
    if args.child:
        child(args.child, path)
        return
    size = path.stat().st_size
    print(f"{path} ({size / 1e6:.0f} MB), median of {args.rounds} rounds", file=sys.stderr)
    results: dict[str, dict[str, object]] = {}
    reference = measure("duckdb-1", path)["rows"]
    for name in args.only:
        runs = [measure(name, path) for _ in range(args.rounds)]
        wall = statistics.median(float(r["wall"]) for r in runs)  # type: ignore[arg-type]
        cpu = statistics.median(float(r["cpu"]) for r in runs)  # type: ignore[arg-type]
        ok = same(runs[0]["rows"], reference)  # type: ignore[arg-type]
        results[name] = {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "mb_per_s": round(size / wall / 1e6),
            "mb_per_cpu_s": round(size / cpu / 1e6),
            "same_answer_as_duckdb": ok,
        }
        print(
            f"{name:14s} {size / wall / 1e6:6.0f} MB/s wall  {size / cpu / 1e6:6.0f} MB/s per core"
            f"  ({wall:.2f} s wall, {cpu:.2f} s cpu){'' if ok else '  DIFFERENT ANSWER'}",
            file=sys.stderr,
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "bytes": size,
        "rounds": args.rounds,
        "load": os.getloadavg(),
        "results": results,
    }
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
