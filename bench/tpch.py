"""TPC-H group-bys end to end: `tally sql --workers 2` against DuckDB (2 threads), Polars,
Dask (2 workers), Ray (tasks over byte ranges, 2 CPUs) and PySpark (local[2]) on the same
`.tbl` files, one run, answers checked against DuckDB's.

    .venv/bin/python bench/tpch.py                       # SF 1, Q1 and the customer group-by
    .venv/bin/python bench/tpch.py --sf 10 --rounds 1
    .venv/bin/python bench/tpch.py --systems tally duckdb polars

The data is generated once by tpchgen-cli into .cache/tpch/sf<SF>/ and read once before the
first run (warm page cache). Every run is a fresh process, timed from its start to its exit
(interpreter start, imports, cluster start-up, the scan and the merge). Systems alternate
round by round; the table shows each one's median. DuckDB reads with the column types Tally
infers (DECIMAL for prices), so both compute the same exact sums; every other system's rows
are compared with DuckDB's to 9 significant digits (their sums are doubles). Dask, Ray and
PySpark run only when installed (`pip install -e '.[peers]'`; PySpark from the `spark` extra).

`tally` is a cold `tally sql --workers 2` (a fresh process tree each run); `tally-serve` the
same query submitted to a running `tally serve` with 2 workers (started once, before the
first round), timed from the POST to the result (a long poll). "x" columns: a
system's time over Tally's.

Results: bench/results/tpch.json (SF 1), bench/results/tpch-sf<SF>.json (any other SF).
`make bench` runs SF 1; `make bench TPCH_SF="1 10"` adds SF 10 (one round, about 15 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "tpch"
RESULTS = ROOT / "bench" / "results" / "tpch.json"  # SF 1; others in tpch-sf<SF>.json
LINEITEM = (
    "l_orderkey,l_partkey,l_suppkey,l_linenumber,l_quantity,l_extendedprice,l_discount,l_tax,"
    "l_returnflag,l_linestatus,l_shipdate,l_commitdate,l_receiptdate,l_shipinstruct,"
    "l_shipmode,l_comment"
)
CUSTOMER = "c_custkey,c_name,c_address,c_nationkey,c_phone,c_acctbal,c_mktsegment,c_comment"
Q1 = (
    "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, "
    "sum(l_extendedprice) AS sum_base_price, "
    "sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price, "
    "sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge, "
    "avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price, "
    "avg(l_discount) AS avg_disc, count(*) AS count_order FROM '{table}' "
    "WHERE l_shipdate <= date '1998-12-01' - interval '90' day "
    "GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus"
)
SEGMENTS = (
    "SELECT c_mktsegment, count(*) AS customers, avg(c_acctbal) AS avg_balance, "
    "max(c_acctbal) AS max_balance FROM '{table}' GROUP BY c_mktsegment ORDER BY c_mktsegment"
)
QUERIES = {"q1": ("lineitem", LINEITEM, Q1), "segments": ("customer", CUSTOMER, SEGMENTS)}

# each peer: a Python program given {"table", "columns", "sql" (FROM t), "query", "types"} as
# JSON in argv[1], printing the answer as JSON rows on its last line
PRELUDE = """
import json, sys
job = json.loads(sys.argv[1])
names = job["columns"].split(",") + ["trailing"]
def show(rows):
    print(json.dumps([[v if isinstance(v, (str, int)) else float(v) for v in r] for r in rows]))
"""
DUCKDB = """
import duckdb
con = duckdb.connect(config={"threads": 2})
cols = {n: job["types"].get(n, "VARCHAR") for n in names}
con.sql(f"CREATE VIEW t AS SELECT * FROM read_csv('{job['table']}', delim='|', header=false, "
        f"columns={cols!r}, quote='', escape='', auto_detect=false)")
show(con.sql(job["sql"]).fetchall())
"""
POLARS = """
import polars as pl
lf = pl.scan_csv(job["table"], separator="|", has_header=False, new_columns=names,
                 quote_char=None, try_parse_dates=True)
show(pl.SQLContext(t=lf).execute(job["sql"]).collect(engine="streaming").rows())
"""
DASK = """
import dask.dataframe as dd
from distributed import Client, LocalCluster
if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster):
        df = dd.read_csv(job["table"], sep="|", header=None, names=names, blocksize="64MB")
        if job["query"] == "q1":
            df = df[df.l_shipdate <= "1998-09-02"]
            df = df.assign(disc=df.l_extendedprice * (1 - df.l_discount))
            df = df.assign(charge=df.disc * (1 + df.l_tax))
            g = df.groupby(["l_returnflag", "l_linestatus"]).agg(
                sum_qty=("l_quantity", "sum"), sum_base=("l_extendedprice", "sum"),
                sum_disc=("disc", "sum"), sum_charge=("charge", "sum"),
                avg_qty=("l_quantity", "mean"), avg_price=("l_extendedprice", "mean"),
                avg_disc=("l_discount", "mean"), n=("l_quantity", "count"))
        else:
            g = df.groupby("c_mktsegment").agg(n=("c_custkey", "count"),
                avg=("c_acctbal", "mean"), mx=("c_acctbal", "max"))
        show(g.compute().sort_index().reset_index().itertuples(index=False))
"""
SPARK = """
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
spark.read.csv(job["table"], sep="|", inferSchema=True).toDF(*names).createOrReplaceTempView("t")
show(spark.sql(job["sql"]).collect())
spark.stop()
"""
# Ray Data reads a CSV file as one block (no splitting within a file): Ray tasks over 64 MiB
# line-aligned byte ranges instead, PyArrow parsing the columns used and aggregating each
# range; the driver combines the partials
RAY = """
import datetime, os
import pyarrow as pa, pyarrow.compute as pc, pyarrow.csv as pacsv
import ray
Q1 = [("l_quantity", "sum"), ("l_extendedprice", "sum"), ("disc", "sum"), ("charge", "sum"),
      ("l_discount", "sum"), ("l_quantity", "count")]
SEG = [("c_custkey", "count"), ("c_acctbal", "sum"), ("c_acctbal", "max")]
def ranges(path, size=64 << 20):
    total, cuts = os.path.getsize(path), [0]
    with open(path, "rb") as f:
        while cuts[-1] + size < total:
            f.seek(cuts[-1] + size)
            f.readline()
            cuts.append(f.tell())
    return list(zip(cuts, cuts[1:] + [total]))
@ray.remote
def part(path, begin, end):
    with open(path, "rb") as f:
        f.seek(begin)
        data = f.read(end - begin)
    q1 = job["query"] == "q1"
    used = ["l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice", "l_discount",
            "l_tax", "l_shipdate"] if q1 else ["c_mktsegment", "c_custkey", "c_acctbal"]
    types = {c: pa.float64() for c in ("l_quantity", "l_extendedprice", "l_discount", "l_tax",
                                       "c_acctbal")}
    types["l_shipdate"] = pa.date32()
    t = pacsv.read_csv(pa.py_buffer(data), read_options=pacsv.ReadOptions(column_names=names),
                       parse_options=pacsv.ParseOptions(delimiter="|", quote_char=False),
                       convert_options=pacsv.ConvertOptions(include_columns=used,
                                                            column_types=types))
    if not q1:
        return t.group_by("c_mktsegment").aggregate(SEG)
    t = t.filter(pc.less_equal(t["l_shipdate"], datetime.date(1998, 9, 2)))
    disc = pc.multiply(t["l_extendedprice"], pc.subtract(1.0, t["l_discount"]))
    t = t.append_column("disc", disc)
    t = t.append_column("charge", pc.multiply(disc, pc.add(1.0, t["l_tax"])))
    return t.group_by(["l_returnflag", "l_linestatus"]).aggregate(Q1)
if __name__ == "__main__":
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    parts = pa.concat_tables(ray.get([part.remote(job["table"], a, b)
                                      for a, b in ranges(job["table"])]))
    if job["query"] == "q1":
        g = parts.group_by(["l_returnflag", "l_linestatus"]).aggregate(
            [(c, "sum") for c in parts.schema.names if not c.startswith("l_r")
             and not c.startswith("l_l")]).to_pylist()
        rows = [[r["l_returnflag"], r["l_linestatus"], r["l_quantity_sum_sum"],
                 r["l_extendedprice_sum_sum"], r["disc_sum_sum"], r["charge_sum_sum"],
                 r["l_quantity_sum_sum"] / r["l_quantity_count_sum"],
                 r["l_extendedprice_sum_sum"] / r["l_quantity_count_sum"],
                 r["l_discount_sum_sum"] / r["l_quantity_count_sum"],
                 r["l_quantity_count_sum"]] for r in g]
    else:
        g = parts.group_by("c_mktsegment").aggregate([("c_custkey_count", "sum"),
            ("c_acctbal_sum", "sum"), ("c_acctbal_max", "max")]).to_pylist()
        rows = [[r["c_mktsegment"], r["c_custkey_count_sum"],
                 r["c_acctbal_sum_sum"] / r["c_custkey_count_sum"], r["c_acctbal_max_max"]]
                for r in g]
    show(sorted(rows))
    ray.shutdown()
"""
PEERS = {"duckdb": (DUCKDB, "duckdb"), "polars": (POLARS, "polars"),
         "dask": (DASK, "distributed"), "ray": (RAY, "ray"),
         "spark": (SPARK, "pyspark")}  # fmt: skip


class WarmTally:
    """``tally-serve``: the same query submitted to a running ``tally serve`` with 2 workers
    (the cluster started once, before the first round), timed from the POST to the result,
    which the client waits for with a long poll (``Client.wait``)."""

    def __init__(self, tmp: Path) -> None:
        import re
        import secrets

        from tally import Client

        token = secrets.token_hex(8)
        env = {**os.environ, "TALLY_TOKEN": token}
        log = tmp / "serve.log"
        with log.open("wb") as err:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "tally", "serve", "--state", str(tmp / "state.db"),
                 "--port", "0", "--http-port", "0"], env=env, stdout=subprocess.DEVNULL,
                stderr=err)  # fmt: skip
        ready = re.compile(r"serving: workers on [^:]+:(\d+), HTTP on (http://[^ ]+), state")
        match = _until(lambda: ready.search(log.read_text()))
        worker = [sys.executable, "-m", "tally", "worker", "127.0.0.1", match.group(1), "-q"]
        self.workers = [
            subprocess.Popen(worker, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(2)
        ]
        self.client = Client(match.group(2), token)
        _until(lambda: sum(w["state"] == "alive" for w in self.client.workers()) == 2)

    def run(self, table: Path, columns: str, sql: str) -> tuple[float, list[list[Any]]]:
        started = time.perf_counter()
        job = self.client.submit(str(table), {"sql": sql.format(table=table), "columns": columns})
        doc = self.client.wait(job, timeout=3600)
        elapsed = time.perf_counter() - started
        if doc["state"] != "succeeded":
            raise RuntimeError(f"tally-serve: {doc.get('error')}")
        return elapsed, [list(row.values()) for row in doc["result"]["rows"]]

    def close(self) -> None:
        self.server.terminate()
        self.server.wait(30)
        for w in self.workers:
            w.wait(30)


def _until(check: Any, timeout: float = 120, every: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError("tally-serve did not start")
        time.sleep(every)
    return value


def ensure_data(sf: str) -> Path:
    out = CACHE / f"sf{sf}"
    if not (out / "lineitem.tbl").exists():
        out.mkdir(parents=True, exist_ok=True)
        tpchgen = Path(sys.executable).with_name("tpchgen-cli")
        subprocess.run([str(tpchgen), "-s", sf, "-T", "lineitem,customer", "-o", str(out)],
                       check=True)  # fmt: skip
    for name in ("lineitem.tbl", "customer.tbl"):
        with (out / name).open("rb") as f:
            while f.read(1 << 24):
                pass
    return out


def duckdb_types(table: Path, columns: str, sql: str) -> dict[str, str]:
    """The column types Tally infers (so DuckDB computes the same exact sums)."""
    from tally.local import sample_of
    from tally.queries.infer import bind
    from tally.queries.sql import parse_sql

    _, plan = parse_sql(sql.format(table=table), columns=columns)
    plan = bind(plan, sample_of(str(table)))
    return dict(plan.schema)


def commands(system: str, query: str, table: Path, columns: str, sql: str) -> list[str] | None:
    if system == "tally-serve":
        return []  # in this process: WarmTally
    if system == "tally":
        return [sys.executable, "-m", "tally", "sql", sql.format(table=table), "--columns",
                columns, "--workers", "2", "--format", "json", "-q"]  # fmt: skip
    if system not in PEERS or not _installed(PEERS[system][1]):
        return None
    job = {"table": str(table), "columns": columns, "sql": sql.format(table="t").replace(
        "'t'", "t"), "query": query, "types": duckdb_types(table, columns, sql)}  # fmt: skip
    return [sys.executable, "-c", PRELUDE + PEERS[system][0], json.dumps(job)]


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def rows_of(system: str, out: str) -> list[list[Any]]:
    if system == "tally":
        doc = json.loads(out)
        return [list(row.values()) for row in doc["rows"]]
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def same(a: list[list[Any]], b: list[list[Any]]) -> bool:
    def norm(v: Any) -> Any:
        try:
            return float(f"{float(v):.9g}")
        except (TypeError, ValueError):
            return v

    return [[norm(v) for v in r] for r in a] == [[norm(v) for v in r] for r in b]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sf", default="1", help="scale factor (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    systems = ["tally", "tally-serve", "duckdb", "polars", "dask", "ray", "spark"]
    parser.add_argument("--systems", nargs="+", default=systems)
    args = parser.parse_args()
    data = ensure_data(args.sf)
    tmp = tempfile.TemporaryDirectory()
    warm = WarmTally(Path(tmp.name)) if "tally-serve" in args.systems else None
    try:
        run_all(args, data, warm)
    finally:
        if warm is not None:
            warm.close()
        tmp.cleanup()


def run_all(args: argparse.Namespace, data: Path, warm: WarmTally | None) -> None:
    results: dict[str, Any] = {"sf": args.sf, "machine": f"{platform.node()} {os.cpu_count()} "
                               "cores", "queries": {}}  # fmt: skip
    for query, (name, columns, sql) in QUERIES.items():
        table = data / f"{name}.tbl"
        size = table.stat().st_size
        runs: dict[str, list[float]] = {}
        answers: dict[str, list[list[Any]]] = {}
        systems = [s for s in args.systems if commands(s, query, table, columns, sql) is not None]
        for r in range(args.rounds):
            for system in systems[r % len(systems) :] + systems[: r % len(systems)]:
                if system == "tally-serve":
                    assert warm is not None
                    elapsed, answers[system] = warm.run(table, columns, sql)
                    runs.setdefault(system, []).append(elapsed)
                    continue
                cmd = commands(system, query, table, columns, sql)
                assert cmd is not None
                started = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                elapsed = time.perf_counter() - started
                if done.returncode != 0:
                    print(f"{system} {query} failed: {done.stderr.strip()[-400:]}", file=sys.stderr)
                    continue
                runs.setdefault(system, []).append(elapsed)
                answers[system] = rows_of(system, done.stdout)
        reference = answers.get("duckdb")
        table_rows = {}
        for system, times in runs.items():
            median = statistics.median(times)
            table_rows[system] = {
                "median_s": round(median, 3),
                "runs_s": [round(t, 3) for t in times],
                "mb_s": round(size / 1e6 / median, 1),
                "same_as_duckdb": None if reference is None else same(answers[system], reference),
            }
        results["queries"][query] = {"bytes": size, "systems": table_rows}
        tally_s = table_rows.get("tally", {}).get("median_s")
        warm_s = table_rows.get("tally-serve", {}).get("median_s")
        load = os.getloadavg()[0]
        results["queries"][query]["load_after"] = round(load, 2)
        print(f"\n{query} over {name}.tbl (SF {args.sf}, {size / 1e6:.0f} MB; load {load:.1f})")
        print(f"{'system':<11} {'median s':>9} {'MB/s':>7} {'tally sql is':>13} "
              f"{'tally-serve is':>15}  same answer")  # fmt: skip
        for system, row in table_rows.items():
            times = row["median_s"]
            cold = "" if not tally_s or system == "tally" else f"{times / tally_s:.2f}x"
            hot = "" if not warm_s or system == "tally-serve" else f"{times / warm_s:.2f}x"
            print(
                f"{system:<11} {row['median_s']:>9.3f} {row['mb_s']:>7.1f} {cold:>13} {hot:>15}  "
                f"{row['same_as_duckdb']}"
            )
    out = RESULTS if args.sf == "1" else RESULTS.with_name(f"tpch-sf{args.sf}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
