"""``--cache DIR`` end to end, with real processes: a repeated query computes nothing, a
changed partition recomputes only itself, another query misses, the bound evicts the least
recently used, a damaged entry is recomputed, workers share a directory, objects in Azurite
and S3 are cached by their ETag, and a directory that cannot be written is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import SAMPLE, Procs, free_port, reference_output, split_round_robin
from storage_servers import Server
from tally.protocol import QuerySpec
from tally.storage.ranges import plan_tasks

TOP25 = QuerySpec("top", k=25)


@dataclass
class Run:
    code: int
    out: str
    err: str
    stats: dict[str, Any]
    events: list[dict[str, Any]]

    @property
    def hits(self) -> int:
        return int(self.stats["cache_hits"])

    def finished(self) -> list[dict[str, Any]]:
        return [r for r in self.events if r["event"] == "finished"]


def run(tmp: Path, command: str, source: str, *args: str, env: dict[str, str] | None = None) -> Run:
    """``tally run|sql SOURCE ARGS --stats --events``: its exit status, output and records."""
    stats, events = tmp / "stats.json", tmp / "events.jsonl"
    for path in (stats, events):
        path.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "tally", command, source, *args, "--stats", str(stats),
         "--events", str(events)],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in events.read_text().splitlines()]
    return Run(done.returncode, done.stdout, done.stderr, json.loads(stats.read_text()), records)


def entries(cache: Path) -> dict[str, Path]:
    return {f.name: f for f in (cache / "entries").rglob("*") if f.is_file()}


def index_total(cache: Path) -> int:
    import sqlite3

    with sqlite3.connect(cache / "index.sqlite") as db:
        (total,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()
    return int(total)


def thousandfold_sample() -> str:
    """The top 25 of ``repeated_filelist``: 100 partitions, each the sample ten times."""
    return "".join(
        f"{domain} {int(count) * 1000}\n"
        for domain, count in (
            line.rsplit(" ", 1) for line in reference_output(SAMPLE, TOP25).splitlines()
        )
    )


def concatenation(paths: list[Path], into: Path) -> Path:
    into.write_bytes(b"".join(p.read_bytes() for p in paths))
    return into


def test_a_repeated_query_over_unchanged_data_computes_nothing(tmp_path: Path) -> None:
    filelist = split_round_robin(SAMPLE, tmp_path / "parts", 6)
    cache = tmp_path / "cache"
    first = run(tmp_path, "run", str(filelist), "--workers", "2", "--cache", str(cache))
    assert first.out == reference_output(SAMPLE, TOP25)
    assert first.hits == 0 and len(entries(cache)) == 6
    assert not any("cached" in r for r in first.finished())

    second = run(tmp_path, "run", str(filelist), "--workers", "2", "--cache", str(cache))
    assert second.out == first.out
    assert second.hits == second.stats["partitions"] == 6
    assert sum(w["cached"] for w in second.stats["workers"]) == 6
    assert (second.stats["lines"], second.stats["malformed_lines"]) == (
        first.stats["lines"], first.stats["malformed_lines"],
    )  # fmt: skip
    assert second.stats["bytes"] == 0  # nothing was read
    finished = second.finished()
    assert len(finished) == 6 and all(r["cached"] and r["bytes"] == 0 for r in finished)
    assert "6 of 6 partitions served from the workers' caches" in second.err

    without = run(tmp_path, "run", str(filelist), "--workers", "2")  # no --cache: no hits
    assert without.hits == 0 and without.out == first.out


def test_a_changed_file_recomputes_only_its_own_tasks(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    big = parts / "big.tsv"
    big.write_bytes(SAMPLE.read_bytes() * 20)
    small = [parts / f"small-{i}.tsv" for i in range(3)]
    for i, path in enumerate(small):
        path.write_bytes(b"".join(SAMPLE.read_bytes().splitlines(keepends=True)[i::3]))
    every = [big, *small]
    args = ("--workers", "2", "--split-size", "64KiB", "--cache", str(tmp_path / "cache"))
    big_tasks = len(plan_tasks([str(big)], 64 << 10))
    assert big_tasks >= 3
    total = big_tasks + 3

    first = run(tmp_path, "run", str(parts), *args)
    assert first.stats["partitions"] == total and first.hits == 0

    with small[1].open("ab") as f:  # a new line in one small file
        f.write(b"7\thttp://changed.example/x\n")
    second = run(tmp_path, "run", str(parts), *args)
    assert second.hits == total - 1
    assert second.out == reference_output(concatenation(every, tmp_path / "all-1.tsv"), TOP25)

    os.utime(big)  # a new mtime alone is a new version
    third = run(tmp_path, "run", str(parts), *args)
    assert third.hits == 3
    assert third.out == second.out

    fourth = run(tmp_path, "run", str(parts), *args)
    assert fourth.hits == total and fourth.out == second.out


def test_another_query_misses(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(3):
        rows = "".join(f"{k % 4},{k},{'xyz'[k % 3]}\n" for k in range(i * 50, i * 50 + 50))
        (parts / f"p{i}.csv").write_text(rows)
    cache = ("--cache", str(tmp_path / "cache"), "--workers", "2")
    base = ("--group-by", "1", "--agg", "count", "--agg", "sum:2")

    first = run(tmp_path, "run", str(parts), *base, *cache)
    assert first.hits == 0
    again = run(tmp_path, "run", str(parts), *base, *cache)
    assert again.hits == 3 and again.out == first.out
    others = [
        ("--group-by", "3", "--agg", "count", "--agg", "sum:2"),
        ("--group-by", "1", "--agg", "count", "--agg", "max:2"),
        (*base, "--where", "c2 > 20"),
        (*base, "--where", "c2 > 21"),
    ]
    outputs = set()
    for query in others:
        other = run(tmp_path, "run", str(parts), *query, *cache)
        assert other.hits == 0, query
        outputs.add(other.out)
    assert len(outputs) == len(others)  # each computed its own answer
    # the order, the limit and the output names are applied after the merge: same partials
    ordered = run(tmp_path, "run", str(parts), *base, "--order-by", "2:desc", "--limit", "2",
                  *cache)  # fmt: skip
    fresh = run(tmp_path, "run", str(parts), *base, "--order-by", "2:desc", "--limit", "2")
    assert (ordered.hits, ordered.out) == (3, fresh.out) and fresh.out != first.out
    query = f"SELECT c1 AS k, count(*), sum(c2) AS total FROM '{parts}' GROUP BY c1"
    sql = run(tmp_path, "sql", query, *cache, "--format", "csv")
    as_csv = run(tmp_path, "run", str(parts), *base, *cache, "--format", "csv")
    assert (sql.hits, as_csv.hits) == (3, 3)
    assert sql.out.splitlines()[0] == "k,count,total"
    assert sql.out.splitlines()[1:] == as_csv.out.splitlines()[1:]


def test_the_least_recently_used_entries_go_at_a_tiny_cache_size(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    parts = [folder / f"p{i}.tsv" for i in range(3)]
    for path in parts:
        path.write_bytes(SAMPLE.read_bytes())  # same content, so entries of the same size
    lists = {}
    for name, chosen in (("01", [0, 1]), ("0", [0]), ("2", [2])):
        lists[name] = tmp_path / f"list-{name}.csv"
        lists[name].write_text("".join(f"file://{parts[i]}\n" for i in chosen))
    run(tmp_path, "run", str(lists["0"]), "--workers", "1", "--cache", str(tmp_path / "probe"))
    entry_size = next(iter(entries(tmp_path / "probe").values())).stat().st_size
    bound = 2 * entry_size + entry_size // 2  # room for two entries
    cache = tmp_path / "cache"
    args = ("--workers", "1", "--cache", str(cache), "--cache-size", str(bound))

    assert run(tmp_path, "run", str(lists["01"]), *args).hits == 0  # p0 and p1 stored
    assert run(tmp_path, "run", str(lists["0"]), *args).hits == 1  # p0 used last
    assert run(tmp_path, "run", str(lists["2"]), *args).hits == 0  # p2 stored: p1 evicted
    assert len(entries(cache)) == 2 and index_total(cache) == 2 * entry_size <= bound
    last = run(tmp_path, "run", str(lists["01"]), *args)
    assert last.hits == 1  # p0 kept, p1 recomputed
    hits = [r["partition"] for r in last.events if r["event"] == "committed" and r.get("cached")]
    assert hits == [0]
    assert last.out == reference_output(concatenation(parts[:2], tmp_path / "p01.tsv"), TOP25)
    assert sum(f.stat().st_size for f in entries(cache).values()) == index_total(cache) <= bound


def test_a_damaged_entry_is_counted_removed_and_recomputed(tmp_path: Path) -> None:
    filelist = split_round_robin(SAMPLE, tmp_path / "parts", 5)
    cache = tmp_path / "cache"
    args = ("--workers", "2", "--cache", str(cache))
    first = run(tmp_path, "run", str(filelist), *args)
    found = sorted(entries(cache).values())
    truncated, flipped = found[0], found[1]
    truncated.write_bytes(truncated.read_bytes()[:-7])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped.write_bytes(bytes(data))

    second = run(tmp_path, "run", str(filelist), *args)
    assert second.out == first.out == reference_output(SAMPLE, TOP25)
    assert second.hits == 3
    assert second.err.count("is damaged") == 2
    assert f"cache entry {truncated.name} is damaged (" in second.err
    assert f"cache entry {flipped.name} is damaged (checksum mismatch): removed" in second.err
    third = run(tmp_path, "run", str(filelist), *args)
    assert third.hits == 5 and third.out == first.out  # stored again when recomputed


def test_two_workers_share_one_cache_directory(procs: Procs, repeated_filelist: Path) -> None:
    cache = procs.tmp / "common-cache"
    expected = thousandfold_sample()

    def job(*worker_args: str) -> dict[str, Any]:
        port, stats = free_port(), procs.tmp / "stats.json"
        coordinator = procs.coordinator(repeated_filelist, port, "--min-workers", "2",
                                        "--stats", str(stats))  # fmt: skip
        workers = [procs.worker(port, "--cache", str(cache), *worker_args) for _ in range(2)]
        code, out = procs.finish(coordinator)
        assert (code, out) == (0, expected), procs.stderr(coordinator)
        for w in workers:
            assert w.wait(timeout=30) == 0 and "Traceback" not in procs.stderr(w)
        record: dict[str, Any] = json.loads(stats.read_text())
        return record

    # a bound that holds about a third of the entries: both workers file and evict at once
    small = job("--cache-size", "200KiB")
    assert small["cache_hits"] == 0
    files = entries(cache)
    assert 0 < len(files) < 100
    assert sum(f.stat().st_size for f in files.values()) == index_total(cache) <= 200 << 10
    assert not list((cache / "tmp").iterdir())

    job()  # the default bound: every partition filed (some by each worker)
    assert len(entries(cache)) == 100
    again = job()
    assert again["cache_hits"] == 100
    assert sum(f.stat().st_size for f in entries(cache).values()) == index_total(cache)


def test_objects_are_cached_by_their_version(store: Server, tmp_path: Path) -> None:
    container = store.new_container()
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    parts = {f"logs/p{i}.tsv": b"".join(lines[i::4]) for i in range(4)}
    store.upload(container, parts)
    source = f"{store.scheme}://{container}/logs/"
    args = ("--workers", "2", "--cache", str(tmp_path / "cache"))
    env = store.run_env()

    first = run(tmp_path, "run", source, *args, env=env)
    assert first.out == reference_output(SAMPLE, TOP25) and first.hits == 0
    second = run(tmp_path, "run", source, *args, env=env)
    assert second.hits == 4 and second.out == first.out

    changed = parts["logs/p2.tsv"] + b"9\thttp://changed.example/\n"
    store.upload(container, {"logs/p2.tsv": changed})  # a new ETag
    third = run(tmp_path, "run", source, *args, env=env)
    assert third.hits == 3
    whole = tmp_path / "whole.tsv"
    whole.write_bytes(b"".join({**parts, "logs/p2.tsv": changed}.values()))
    assert third.out == reference_output(whole, TOP25)


def test_http_partitions_are_not_cached(tmp_path: Path) -> None:
    from conftest import serve_http

    split_round_robin(SAMPLE, tmp_path / "parts", 3)
    (tmp_path / "parts" / "list.csv").write_text("part-000.tsv\npart-001.tsv\npart-002.tsv\n")
    args = ("--workers", "1", "--cache", str(tmp_path / "cache"))
    with serve_http(tmp_path / "parts") as root:
        first = run(tmp_path, "run", f"{root}/list.csv", *args)
        second = run(tmp_path, "run", f"{root}/list.csv", *args)
    assert first.hits == second.hits == 0 and second.out == reference_output(SAMPLE, TOP25)
    assert entries(tmp_path / "cache") == {}


@pytest.mark.parametrize("command", ["run", "sql", "worker"])
def test_a_cache_directory_that_cannot_be_written_is_one_line(tmp_path: Path, command: str) -> None:
    split_round_robin(SAMPLE, tmp_path / "parts", 2)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    where = blocker / "cache"
    args = {
        "run": ["run", str(tmp_path / "parts"), "--workers", "1"],
        "sql": ["sql", f"SELECT count(*) FROM '{tmp_path / 'parts'}'", "--workers", "1"],
        "worker": ["worker", "127.0.0.1", str(free_port()), "--connect-timeout", "1"],
    }[command]
    done = subprocess.run(
        [sys.executable, "-m", "tally", *args, "--cache", str(where)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"tally: cache directory {where} cannot be written to: Not a directory"
    ]
    assert done.stdout == ""


def test_the_python_api_takes_a_cache_directory(tmp_path: Path) -> None:
    import tally

    filelist = split_round_robin(SAMPLE, tmp_path / "parts", 3)
    first = tally.run(filelist, workers=1, cache=tmp_path / "cache", cache_size="1MiB")
    second = tally.run(filelist, workers=1, cache=tmp_path / "cache", cache_size="1MiB")
    assert (first.stats["cache_hits"], second.stats["cache_hits"]) == (0, 3)
    assert second.rows == first.rows and second.lines == first.lines


def test_workers_of_a_server_serve_a_repeated_job_from_their_cache(
    procs: Procs, tmp_path: Path
) -> None:
    from test_service_support import start_server, start_workers, wait_until, workers_alive

    filelist = split_round_robin(SAMPLE, tmp_path / "parts", 4)
    served = start_server(procs, tmp_path / "state.db")
    start_workers(procs, served.worker_port, 2, "--cache", str(tmp_path / "cache"))
    with served.client() as client:
        wait_until(workers_alive(client, 2), what="two workers joined")
        docs = []
        for _ in range(2):
            job = client.submit(str(filelist), {"top": 25})
            docs.append(client.wait(job, timeout=60))
    assert [d["state"] for d in docs] == ["succeeded", "succeeded"]
    assert [d["stats"]["cache_hits"] for d in docs] == [0, 4]
    assert docs[1]["result"] == docs[0]["result"]


def test_a_worker_killed_mid_job_leaves_only_whole_entries(
    procs: Procs, repeated_filelist: Path
) -> None:
    from tally.cache.entries import decode_entry

    cache, events = procs.tmp / "cache", procs.tmp / "events.jsonl"
    port = free_port()
    coordinator = procs.coordinator(repeated_filelist, port, "--events", str(events))
    victim = procs.worker(port, "--cache", str(cache), "--slowdown", "3")
    log = procs.events(coordinator, events)
    log.wait("committed", count=10)
    victim.kill()  # SIGKILL, most likely while computing or filing a partial
    victim.wait(timeout=30)
    rescuer = procs.worker(port, "--cache", str(cache))
    code, out = procs.finish(coordinator)
    assert (code, out) == (0, thousandfold_sample())
    assert rescuer.wait(timeout=30) == 0
    found = entries(cache)
    assert len(found) == 100  # what the victim filed, and the rest by the rescuer
    for name, path in found.items():
        decode_entry(name, path.read_bytes())  # whole: raises Damaged otherwise
    assert sum(f.stat().st_size for f in found.values()) == index_total(cache)
