"""Reading from object storage: Tally's throughput next to what the storage SDK alone reaches
with the same number of readers, from Azurite and from moto's S3 server on this machine; and
the peak memory of a worker streaming one 1 GB object.

    .venv/bin/python bench/storage_speed.py             # 16 x 64 MiB objects, 1/2/4 readers
    .venv/bin/python bench/storage_speed.py --quick     # 4 x 16 MiB, and a 256 MiB object
    .venv/bin/python bench/storage_speed.py --stores s3 --readers 2

What is measured:

- The objects are the generator's partitions (``tally gen``, seed 1), uploaded once per store.
- **SDK ceiling**: N processes, each downloading its share of the objects (round-robin) with
  the store's own Python SDK (boto3's ``get_object`` streamed in 1 MiB pieces;
  azure-storage-blob's ``download_blob().chunks()``) and dropping the bytes. Throughput is
  the bytes over the wall time from the start of the first download to the end of the last.
  Twice: whole objects (one GET each), and the same byte ranges Tally's tasks read (objects
  a little over 64 MiB are two ranges; a store whose ranged GET costs more than its share,
  like moto's, which copies the whole object for each, shows in the difference).
- **Tally**: ``tally run PREFIX --workers N --domain go.mail`` (the reference job's domain
  count: the data is read and counted). Throughput is the bytes over the job's ``wall_s`` in
  ``--stats`` (from the job's submission to its last commit: the workers started, joined
  and imported the storage SDK, every range read and counted); also over the time from the
  first task's start to the last commit (``--events``: the reading itself, as the SDK's
  figure is), and over the process's whole wall time. Also with ``--split-size 0``: one
  task per object, the SDK's whole-object reads.
- **Memory**: ``tally run OBJECT --workers 1`` over one large object, whole (``--split-size
  0``: a single streamed task) and in 64 MiB ranges; the peak is the largest resident set
  of the coordinator and the worker (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after each run,
  in a fresh helper process so that runs do not mix), next to the same run over a 1 MiB
  object (the baseline: interpreter, Arrow, the SDK).
- The servers run on this machine and share its 2 cores with the readers and with Tally's
  coordinator: the ceiling is what this machine serves, not a cloud's.

Results: bench/results/storage_speed.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from storage_servers import Server, start_azurite, start_moto  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "storage_speed.json"
MiB = 1 << 20


def upload_dataset(server: Server, container: str, name: str, count: int, size: int) -> list[str]:
    """``tally gen`` into the store under ``name/``; the partition URLs."""
    prefix = f"{server.scheme}://{container}/{name}/"
    gen = [sys.executable, "-m", "tally", "gen", prefix, "--partitions", str(count)]
    gen += ["--partition-size", str(size), "--seed", "1", "-q"]
    subprocess.run(gen, env=server.run_env(), check=True)
    return [f"{prefix}part-{i:05d}.tsv" for i in range(count)]


# --- the SDK alone ------------------------------------------------------------------------


Item = tuple[str, int, int]  # an object's URL and the bytes [start, end) to read (end -1: all)


def _read_with_sdk(args: tuple[str, dict[str, str], list[Item]]) -> tuple[int, float, float]:
    """Download the ``items`` one after the other with the plain SDK; (bytes, start, end)."""
    scheme, env, items = args
    os.environ.update(env)
    total = 0
    if scheme == "s3":
        import boto3

        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        started = time.time()
        for url, start, end in items:
            bucket, key = url.split("://", 1)[1].split("/", 1)
            extra = {} if end < 0 else {"Range": f"bytes={start}-{end - 1}"}
            body = client.get_object(Bucket=bucket, Key=key, **extra)["Body"]
            for piece in body.iter_chunks(MiB):
                total += len(piece)
    else:
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
        started = time.time()
        for url, start, end in items:
            container, name = url.split("://", 1)[1].split("/", 1)
            length = None if end < 0 else end - start
            blob = service.get_blob_client(container, name)
            for piece in blob.download_blob(offset=start, length=length).chunks():
                total += len(piece)
    return total, started, time.time()


def tally_ranges(server: Server, urls: list[str]) -> list[Item]:
    """The bytes Tally's tasks read (default split size): a range from the byte before it
    to its end and a little more, or a whole object."""
    from tally.storage.ranges import plan_tasks

    tasks = plan_tasks(urls, 64 * MiB, options={k: str(v) for k, v in server.options.items()})
    return [(t.url, max(t.start - 1, 0), t.end + 4096 if t.end >= 0 else -1) for t in tasks]


def sdk_ceiling(server: Server, items: list[Item], readers: int) -> dict[str, Any]:
    shares = [items[i::readers] for i in range(readers)]
    with multiprocessing.get_context("spawn").Pool(readers) as pool:
        done = pool.map(_read_with_sdk, [(server.scheme, server.env, s) for s in shares])
    total = sum(d[0] for d in done)
    wall = max(d[2] for d in done) - min(d[1] for d in done)
    return {"bytes": total, "wall_s": wall, "mb_s": total / 1e6 / wall}


# --- Tally ----------------------------------------------------------------------------------


def tally_run(server: Server, source: str, workers: int, *more: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stats, events = Path(tmp) / "stats.json", Path(tmp) / "events.jsonl"
        command = [sys.executable, "-m", "tally", "run", source, "--workers", str(workers)]
        command += ["--domain", "go.mail", "--stats", str(stats), "--events", str(events)]
        command += ["-q", *more]
        started = time.perf_counter()
        done = subprocess.run(command, env=server.run_env(), capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr[-2000:]}")
        record = json.loads(stats.read_text())
        log = [json.loads(line) for line in events.read_text().splitlines()]
    total = sum(w["bytes"] for w in record["workers"])
    first = min(e["t"] for e in log if e["event"] == "started")
    last = max(e["t"] for e in log if e["event"] == "committed")
    return {
        "bytes": total,
        "wall_s": record["wall_s"],
        "process_s": elapsed,
        "reading_s": last - first,
        "mb_s": total / 1e6 / record["wall_s"],
        "mb_s_reading": total / 1e6 / (last - first),
        "mb_s_process": total / 1e6 / elapsed,
        "attempts": record["attempts"],
        "count": int(done.stdout.strip()),
    }


def peak_rss(server: Server, source: str, *more: str) -> float:
    """The largest resident set (MB) among the processes of one ``tally run --workers 1``."""
    code = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    command = [sys.executable, "-m", "tally", "run", source, "--workers", "1", "-q"]
    command += ["--domain", "go.mail", *more]
    done = subprocess.run(
        [sys.executable, "-c", code, *command],
        env=server.run_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout.strip()) / 1024  # KiB on Linux


# --- the whole -----------------------------------------------------------------------------


def measure(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    container = server.new_container()
    size = args.object_mib * MiB
    urls = upload_dataset(server, container, "data", args.objects, size)
    prefix = f"{server.scheme}://{container}/data/part-*.tsv"
    rows = []
    whole = [(url, 0, -1) for url in urls]
    ranged = tally_ranges(server, urls)
    for readers in args.readers:
        best_sdk = max((sdk_ceiling(server, whole, readers) for _ in range(args.repeat)),
                       key=lambda r: r["mb_s"])  # fmt: skip
        best_ranged = max((sdk_ceiling(server, ranged, readers) for _ in range(args.repeat)),
                          key=lambda r: r["mb_s"])  # fmt: skip
        best_tally = max((tally_run(server, prefix, readers) for _ in range(args.repeat)),
                         key=lambda r: r["mb_s"])  # fmt: skip
        whole_tally = max(
            (tally_run(server, prefix, readers, "--split-size", "0") for _ in range(args.repeat)),
            key=lambda r: r["mb_s"],
        )
        row = {"readers": readers, "sdk": best_sdk, "sdk_same_ranges": best_ranged,
               "ranges": len(ranged), "tally": best_tally, "tally_whole_objects": whole_tally,
               "ratio": best_tally["mb_s"] / best_sdk["mb_s"],
               "ratio_same_ranges": best_tally["mb_s"] / best_ranged["mb_s"]}  # fmt: skip
        rows.append(row)
        print(
            f"{server.scheme}  readers {readers}: SDK {best_sdk['mb_s']:7.1f} MB/s whole, "
            f"{best_ranged['mb_s']:7.1f} MB/s same {len(ranged)} ranges   "
            f"tally {best_tally['mb_s']:7.1f} MB/s (job), {best_tally['mb_s_reading']:7.1f} "
            f"(first task to last), {best_tally['mb_s_process']:7.1f} (process)   "
            f"ratio {row['ratio']:.2f} (whole), {row['ratio_same_ranges']:.2f} (same ranges); "
            f"tally --split-size 0 {whole_tally['mb_s']:7.1f} MB/s (job), ratio "
            f"{whole_tally['mb_s'] / best_sdk['mb_s']:.2f} (whole)",
            flush=True,
        )
    memory: dict[str, Any] = {}
    if args.big_mib:
        (big,) = upload_dataset(server, container, "big", 1, args.big_mib * MiB)
        (small,) = upload_dataset(server, container, "small", 1, MiB)
        memory = {
            "object_mb": args.big_mib * MiB / 1e6,
            "baseline_1mib_mb": peak_rss(server, small, "--split-size", "0"),
            "whole_mb": peak_rss(server, big, "--split-size", "0"),
            "ranges_64mib_mb": peak_rss(server, big),
        }
        print(f"{server.scheme}  peak RSS: {memory}", flush=True)
    return {"rows": rows, "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", nargs="+", choices=["az", "s3"], default=["az", "s3"])
    parser.add_argument("--readers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--objects", type=int, default=16)
    parser.add_argument("--object-mib", type=int, default=64)
    parser.add_argument("--big-mib", type=int, default=1024, help="0: no memory run")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.objects, args.object_mib, args.big_mib, args.repeat = 4, 16, 256, 1
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
        "objects": args.objects,
        "object_mib": args.object_mib,
    }
    for store in args.stores:
        starter = start_azurite(memory_limit_mb=8192) if store == "az" else start_moto(False)
        with starter as server:
            out[store] = measure(server, args)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
