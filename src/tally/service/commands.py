"""The service's command line: ``tally serve | submit | jobs | job | cancel``.

``tally submit --wait`` prints exactly what ``tally run`` prints for the same query (the
result table comes back as Arrow and is formatted here as ``tally run`` formats it) and
exits with the same status. The server's URL comes from ``--server`` or ``TALLY_SERVER``
(default http://127.0.0.1:8080), the token from ``--token-file`` or ``TALLY_TOKEN``. A
SOURCE that is a local path is sent as an absolute path (the server reads it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from tally.errors import ConfigError

SERVICE_COMMANDS = ("serve", "submit", "jobs", "job", "cancel")


def _bounded(kind: type, low: float, high: float) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, got {value}")
        return value

    return parse


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--token-file", help="file holding the cluster secret (else TALLY_TOKEN)")


def _server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        metavar="URL",
        help="the server (default: TALLY_SERVER or http://127.0.0.1:8080)",
    )
    _common(parser)


def add_parsers(sub: Any) -> None:
    """Add the service's subcommands to ``tally``'s subparsers."""
    port = _bounded(int, 0, 65535)
    serve = sub.add_parser("serve", help="a long-lived cluster: workers stay, jobs come over HTTP")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=port, default=7070, help="for workers (default 7070)")
    serve.add_argument("--http-port", type=port, default=8080, help="for the API (default 8080)")
    serve.add_argument(
        "--state", default=os.path.join(".tally", "state.db"), metavar="PATH",
        help="the SQLite journal of jobs and committed partitions (default .tally/state.db)",
    )  # fmt: skip
    serve.add_argument(
        "--max-queued", type=_bounded(int, 1, 10**9), default=1000, metavar="N",
        help="refuse new jobs (429) while N are unfinished (default 1000)",
    )  # fmt: skip
    serve.add_argument(
        "--lease-timeout", type=_bounded(float, 0.3, 86400), default=3.0, metavar="S",
        help="seconds of silence after which a worker is lost (default 3)",
    )  # fmt: skip
    serve.add_argument(
        "--drain-timeout", type=_bounded(float, 0, 86400), default=10.0, metavar="S",
        help="on SIGTERM, seconds running attempts get to finish (default 10)",
    )  # fmt: skip
    _watch_options(serve)
    _common(serve)

    submit = sub.add_parser("submit", help="submit a job to a tally serve cluster")
    submit.add_argument(
        "source", help="file list, folder or glob of partitions (read by the server)"
    )
    query = submit.add_mutually_exclusive_group()
    query.add_argument("--domain", metavar="D", help="count the lines whose domain is exactly D")
    query.add_argument("--top", metavar="K", type=_bounded(int, 1, 1 << 31),
                       help="the K most frequent domains (default 25)")  # fmt: skip
    query.add_argument("--all", action="store_true", help="every domain")
    submit.add_argument("--format", choices=("text", "json", "csv", "tsv"), default="text")
    submit.add_argument("--stats", metavar="PATH", help="with --wait: write the job's record")
    submit.add_argument("--skip-failed", action="store_true",
                        help="finish with a partial result instead of failing")  # fmt: skip
    submit.add_argument("--max-attempts", type=_bounded(int, 1, 1000), default=3, metavar="K")
    submit.add_argument("--min-workers", type=_bounded(int, 1, 100_000), default=1, metavar="N")
    submit.add_argument("--no-speculation", action="store_true")
    submit.add_argument("--record-limit", type=_bounded(int, 1, 1 << 30), default=1 << 20,
                        metavar="BYTES")  # fmt: skip
    submit.add_argument("--wait", action="store_true",
                        help="wait and print the result as tally run does")  # fmt: skip
    submit.set_defaults(events=None)
    _server(submit)

    jobs = sub.add_parser("jobs", help="list a server's jobs")
    jobs.add_argument("--format", choices=("text", "json"), default="text")
    _server(jobs)
    job = sub.add_parser("job", help="show one job: state, progress, result")
    job.add_argument("id")
    _server(job)
    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("id")
    _server(cancel)


def _watch_options(serve: argparse.ArgumentParser) -> None:
    from tally.groupby_options import add_flags

    watch = serve.add_argument_group(
        "watching storage",
        "With --watch, every object under SOURCE becomes a job whose result (the --format "
        "json document) is written to PREFIX/<object name>.json, and PREFIX/_total.json holds "
        "the same query over every object seen so far. Each object version (size and mtime "
        "of a file, ETag of an object) is processed once, across restarts too; a changed "
        "object is processed again and replaces its old contribution to the total. Hidden "
        "and _-prefixed names are left out. With --notify, object-created events from a "
        "queue trigger the jobs at once and the listing becomes a backfill. QUEUE_URL: "
        "azqueue://ACCOUNT/QUEUE or https://ACCOUNT.queue.core.windows.net/QUEUE (Event Grid "
        "BlobCreated events on an Azure Storage queue; credentials from "
        "AZURE_STORAGE_CONNECTION_STRING, else AZURE_STORAGE_KEY or Azure's default chain), "
        "sqs://QUEUE or https://sqs.REGION.amazonaws.com/ACCOUNT_ID/QUEUE (S3 event "
        "notifications; boto3's configuration, AWS_ENDPOINT_URL for a local server). A "
        "message that cannot be used is tried --notify-tries times, then moved with its "
        "reason to the queue QUEUE-poison.",
    )
    watch.add_argument(
        "--watch",
        metavar="SOURCE",
        help="a folder or prefix (az://container/p/, s3://bucket/p/) to watch",
    )
    watch.add_argument(
        "--output", metavar="PREFIX", help="a folder or prefix for the results (not inside SOURCE)"
    )
    watch.add_argument(
        "--poll-interval",
        type=_bounded(float, 0.01, 86400),
        default=None,
        metavar="S",
        help="seconds between listings (default 0.5; 60 with --notify)",
    )
    watch.add_argument(
        "--full-listing-interval",
        type=_bounded(float, 0, 86400),
        default=None,
        metavar="S",
        help="az:// and s3://: seconds between full listings; the listings between them ask "
        "only for names after the greatest one seen, so a re-uploaded object or a new name "
        "that sorts earlier is found by the next full one (default: every poll while a full "
        "listing takes less than --poll-interval, else ten times as long as it took)",
    )
    watch.add_argument(
        "--notify",
        metavar="QUEUE_URL",
        help="a queue of object-created events for the watched az:// or s3:// prefix",
    )
    watch.add_argument(
        "--notify-tries",
        type=_bounded(int, 1, 1000),
        default=3,
        metavar="K",
        help="receipts of an unusable message before it is dead-lettered (default 3)",
    )
    watch.add_argument(
        "--watch-events",
        metavar="PATH",
        help="write the watcher's records (detected, submitted, written) as JSON lines",
    )
    watch.add_argument(
        "--settle",
        type=_bounded(float, 0, 86400),
        default=0.5,
        metavar="S",
        help="a file is read once unchanged for S seconds, or last modified "
        "S seconds ago: a file still being written is not read (default 0.5; a blob or "
        "object is listed only once committed, so it is read at once)",
    )
    query = watch.add_mutually_exclusive_group()
    query.add_argument("--domain", metavar="D", help="count the lines whose domain is exactly D")
    query.add_argument(
        "--top",
        metavar="K",
        type=_bounded(int, 1, 1 << 31),
        help="the K most frequent domains (default 25)",
    )
    query.add_argument("--all", action="store_true", help="every domain")
    watch.add_argument(
        "--max-attempts",
        type=_bounded(int, 1, 1000),
        default=3,
        metavar="K",
        help="failures of one object that fail its job (default 3)",
    )
    watch.add_argument(
        "--record-limit",
        type=_bounded(int, 1, 1 << 30),
        default=1 << 20,
        metavar="BYTES",
        help="a longer line is malformed (default 1048576)",
    )
    watch.add_argument(
        "--split-size",
        type=_bounded(int, 0, 1 << 50),
        default=64 << 20,
        metavar="BYTES",
        help="a larger object runs as ranges of about this size (default 67108864; 0 never splits)",
    )
    add_flags(serve)


def run(args: argparse.Namespace) -> int:
    token = _token(args)
    if args.command == "serve":
        from tally.service.serve import serve

        if args.watch is None and (
            args.output
            or args.domain is not None
            or args.top
            or args.all
            or args.notify
            or args.watch_events
        ):
            raise ConfigError("--output, --notify and the query options go with --watch SOURCE")

        return asyncio.run(serve(args, token))
    from tally.service.client import Client

    with Client(args.server, token.decode()) as client:
        if args.command == "submit":
            return _submit(client, args)
        if args.command == "jobs":
            return _jobs(client, args)
        if args.command == "job":
            _print_json(client.job(args.id))
            return 0
        doc = client.cancel(args.id)
        print(f"{doc['id']} {doc['state']}")
        return 0


def _token(args: argparse.Namespace) -> bytes:
    from tally.console import read_token  # the command line's own: --token-file, else TALLY_TOKEN

    return read_token(args)


def server_source(source: str) -> str:
    """A local path as an absolute one (the server may run elsewhere); URLs as they are."""
    from tally.storage.sources import GLOB_CHARS, is_remote

    if is_remote(source) or source.startswith("file://"):
        return source
    if os.path.exists(source) or any(c in source for c in GLOB_CHARS):
        return os.path.abspath(source)
    return source


def _query(args: argparse.Namespace) -> dict[str, Any]:
    if args.domain is not None:
        try:
            args.domain.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError("--domain must be valid UTF-8 to be sent to a server") from None
        return {"domain": args.domain}
    if args.all:
        return {"all": True}
    return {"top": args.top or 25}


def _check_stats(path: str | None) -> None:
    """Fail before the job, not after it, when the stats file cannot be written."""
    if path:
        try:
            with open(path, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot write --stats {path}: {exc.strerror}") from exc


def _submit(client: Any, args: argparse.Namespace) -> int:
    if args.wait:
        _check_stats(args.stats)
    job_id = client.submit(
        server_source(args.source),
        _query(args),
        max_attempts=args.max_attempts,
        skip_failed=args.skip_failed,
        speculation=not args.no_speculation,
        min_workers=args.min_workers,
        record_limit=args.record_limit,
    )
    if not args.wait:
        print(job_id)
        return 0
    return report_job(client, client.wait(job_id), args)


def report_job(client: Any, doc: dict[str, Any], args: argparse.Namespace) -> int:
    """Print an ended job as ``tally run`` prints its job; return the same exit status
    (a failed job raises :class:`tally.result.JobFailed`, which the command line reports)."""
    import msgspec

    from tally.console import EXIT_OK, EXIT_PARTIAL, print_result
    from tally.queries import QueryResult
    from tally.result import JobFailed, Result
    from tally.service.bodies import SUCCEEDED, Query, plan_of

    stats: dict[str, Any] = doc.get("stats") or {}
    if args.stats:
        with open(args.stats, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2)
    if doc["state"] != SUCCEEDED:
        raise JobFailed(doc.get("error") or doc["state"], stats)
    plan = plan_of(msgspec.convert(doc["query"], Query))
    table = client.result_table(doc["id"])
    raw = QueryResult(plan, table, stats["lines"], stats["malformed_lines"],
                      stats["failed_partitions"])  # fmt: skip
    result = Result.of(raw, stats)
    print_result(result, args.format)
    return EXIT_OK if result.complete else EXIT_PARTIAL


def _jobs(client: Any, args: argparse.Namespace) -> int:
    jobs = client.jobs()
    if args.format == "json":
        _print_json(jobs)
        return 0
    print(f"{'ID':<16}  {'STATE':<9}  {'SUBMITTED':<19}  {'PROGRESS':>11}  SOURCE")
    for job in jobs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["submitted"]))
        progress = job["progress"]
        done = f"{progress['partitions_done']}/{progress['partitions']}"
        print(f"{job['id']:<16}  {job['state']:<9}  {when:<19}  {done:>11}  {job['source']}")
    return 0


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
