"""Upload-to-result latency of ``tally serve --watch`` by listing, on a local folder.

    .venv/bin/python bench/watch_latency.py [--objects 100] [--gap 0.2] [--workers 2]
        [--poll-interval 0.5] [--settle 0.5]

Starts ``tally serve --watch IN --output OUT --top 25`` and its workers on 127.0.0.1 in a
temporary folder, writes ``--objects`` small objects (20 lines of the real sample each) into
IN one at a time, ``--gap`` seconds apart, and waits for each one's result file. Per object:
upload (the file closed) to result written (the result file's mtime), broken down from the
job's records (``GET /api/jobs``: submitted, first attempt started, finished) into
detect (upload to job submitted: listing and settling), queue (submitted to first attempt),
compute (first attempt to job end, the journal's commits included) and write (job end to
result file renamed into place). Prints one JSON document with p50/p90/p99 of each.

Object stores (``az://``, ``s3://``) are listed by the same code; measure them by pointing
``tally serve --watch`` at one once adlfs or s3fs and a local Azurite or S3 server are
installed (not automated here).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tally import Client

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "clickbench-sample-200.tsv"
READY = re.compile(r"serving: workers on [^:]+:(\d+), HTTP on (http://[^ ]+), state")
TOKEN = "bench-watch"
ENV = {**os.environ, "TALLY_TOKEN": TOKEN}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50": round(statistics.median(ordered), 4),
        "p90": round(cuts[89], 4),
        "p99": round(cuts[98], 4),
        "max": round(ordered[-1], 4),
    }


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: not within {timeout}s: {what}")
        time.sleep(0.005)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between uploads")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--poll-interval", default="0.5")
    parser.add_argument("--settle", default="0.5")
    args = parser.parse_args()
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    with tempfile.TemporaryDirectory(prefix="tally-watch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        watched, out = tmp / "in", tmp / "out"
        watched.mkdir()
        log_path = tmp / "serve.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "tally", "serve", "--port", "0", "--http-port", "0",
                 "--state", str(tmp / "state.db"), "--watch", str(watched), "--output",
                 str(out), "--top", "25", "--poll-interval", args.poll_interval,
                 "--settle", args.settle],
                env=ENV, stderr=log, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        match = wait_for(lambda: READY.search(log_path.read_text()), 30, "the server")
        port, url = int(match.group(1)), match.group(2)
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "tally", "worker", "127.0.0.1", str(port), "-q"],
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(args.workers)
        ]
        client = Client(url, TOKEN)
        try:
            wait_for(lambda: len(client.workers()) >= args.workers, 30, "the workers")
            uploaded: dict[str, float] = {}
            for i in range(args.objects):
                name = f"obj-{i:04d}.tsv"
                with (watched / name).open("wb") as f:
                    f.write(b"".join(lines[(i * 20) % 200 : (i * 20) % 200 + 20]))
                uploaded[name] = time.time()
                time.sleep(args.gap)
            written: dict[str, float] = {}
            for name in uploaded:
                wait_for((out / f"{name}.json").exists, 60, f"the result of {name}")
                written[name] = os.stat(out / f"{name}.json").st_mtime_ns / 1e9
            jobs = {Path(j["source"]).name: j for j in client.jobs()}
        finally:
            client.close()
            server.send_signal(signal.SIGTERM)
            server.wait(30)
            for w in workers:
                w.wait(30)
    parts: dict[str, list[float]] = {
        k: [] for k in ("upload_to_result", "detect", "queue", "compute", "write")
    }
    for name, t_up in uploaded.items():
        job, t_out = jobs[name], written[name]
        parts["upload_to_result"].append(t_out - t_up)
        parts["detect"].append(job["submitted"] - t_up)
        parts["queue"].append(job["started"] - job["submitted"])
        parts["compute"].append(job["finished"] - job["started"])
        parts["write"].append(t_out - job["finished"])
    doc = {
        "objects": args.objects,
        "gap_s": args.gap,
        "workers": args.workers,
        "poll_interval_s": float(args.poll_interval),
        "settle_s": float(args.settle),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "seconds": {k: percentiles(v) for k, v in parts.items()},
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
