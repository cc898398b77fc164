"""The command line: ``tally coordinator | worker | run | gen | report``.

A thin layer: arguments become a typed configuration (:class:`tally.options.JobOptions`, a
worker's or the generator's), the Python API or the runtime does the work, and this module
prints. Exit status: 0 complete result; 1 the job failed (a partition failed too often, a
refused connection); 2 bad arguments or source; 3 a partial result (``--skip-failed``
skipped partitions); 128 + N when signal N ended it. Results go to stdout, the rest to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tally.api import run_coordinator, run_job
from tally.console import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    print_result,
    read_token,
    setup_logging,
)
from tally.errors import ConfigError, TallyError
from tally.groupby_options import add_flags as add_groupby_flags
from tally.groupby_options import options_of as groupby_options
from tally.options import KERNELS, JobOptions
from tally.result import JobFailed, Result

if TYPE_CHECKING:
    from tally.spawn import LocalWorkers

FORMATS = ("text", "json", "csv", "tsv")  # tally.queries.FORMATS, without importing Arrow
log = logging.getLogger("tally")


# --- argument types: each says what it expects in its error message -----------------------


def _number(
    kind: type[int] | type[float],
    low: float,
    high: float = math.inf,
    *,
    above: bool = False,
    what: str = "",
    unit: str = "",
) -> Callable[[str], Any]:
    what = what or ("a whole number" if kind is int else f"a number of {unit}" if unit else "")
    bound = f"more than {low:g}" if above else f"at least {low:g}"
    bound = f"from {low:g} to {high:g}" if high < math.inf else bound

    def number(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if not low <= value <= high or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be {bound}{unit and ' ' + unit}, got {text}")
        return value

    return number


def _size(high: int, low: int = 1) -> Callable[[str], int]:
    def size(text: str) -> int:
        from tally.datagen import parse_size

        try:
            value = parse_size(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
        if not low <= value <= high:
            lowest = "1 byte" if low == 1 else f"{low} bytes"
            raise argparse.ArgumentTypeError(
                f"must be from {lowest} to {high >> 30} GiB, got {text}"
            )
        return value

    return size


def _storage_option(text: str) -> tuple[str, str]:
    from tally.storage.objectstore import split_option

    try:
        return split_option(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-option",
        metavar="KEY=VALUE",
        type=_storage_option,
        action="append",
        default=[],
        help="a keyword argument for the object-store filesystem (fsspec), repeatable; a "
        "VALUE that is JSON is passed parsed. Credentials come from each process's own "
        "environment; workers take their own --storage-option (default: none)",
    )


COUNT = _number(int, 1)
PORT = _number(int, 0, 65535, what="a TCP port number")


class _Version(argparse.Action):
    """``--version``: the version is looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        import tally

        print(f"tally {tally.__version__}")
        parser.exit()


# --- the parser --------------------------------------------------------------------------


def _opt(parser: Any, flag: str, metavar: str, kind: Any, default: Any, text: str) -> None:
    """An option taking a value; its help ends with the default."""
    shown = (
        "none" if default is None else format(default, "g" if isinstance(default, float) else "")
    )
    text = text if "(default: " in text else f"{text} (default: {shown})"
    parser.add_argument(flag, metavar=metavar, type=kind, default=default, help=text)


def _add_common(parser: argparse.ArgumentParser, token: bool = False) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    if token:
        _opt(parser, "--token-file", "PATH", str, None,
             "file holding the cluster secret (default: the TALLY_TOKEN variable)")  # fmt: skip


def _add_job_options(parser: argparse.ArgumentParser, local: bool, sql: bool = False) -> None:
    if not sql:
        query = parser.add_mutually_exclusive_group()
        _opt(query, "--domain", "D", str, None,
             "count the lines whose domain is exactly D (default: --top 25)")  # fmt: skip
        _opt(query, "--top", "K", COUNT, None, "the K most frequent domains (default: 25)")
        query.add_argument("--all", action="store_true", help="every domain, most frequent first")
    add_groupby_flags(parser, sql=sql)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text: 'domain count' lines (a group-by: an aligned table); json: one document "
        "with the accounting; csv, tsv: a header row, then the rows (default: text)",
    )
    _opt(parser, "--stats", "PATH", str, None, "write a JSON record of the run")
    _opt(parser, "--events", "PATH", str, None, "write every attempt's life as JSON lines")
    parser.add_argument(
        "--skip-failed",
        action="store_true",
        help="finish with a partial result (exit 3) instead of failing on a bad partition",
    )
    _opt(parser, "--max-attempts", "K", COUNT, 3, "failures of one partition that fail the job")
    _opt(parser, "--lease-timeout", "S", _number(float, 0.3, 86400, unit="seconds"), 3.0,
         "seconds of silence after which a worker is lost")  # fmt: skip
    every = "--workers" if local else "1"
    _opt(parser, "--min-workers", "N", COUNT, None,
         f"wait for N workers before assigning work (default: {every})")  # fmt: skip
    parser.add_argument("--no-speculation", action="store_true", help="never start backup attempts")
    _opt(parser, "--record-limit", "SIZE", _size(1 << 30), "1MiB",
         "a longer line is malformed; bytes or a size like 64KiB, 2MB")  # fmt: skip
    _opt(parser, "--split-size", "SIZE", _size(1 << 50, low=0), "64MiB",
         "a larger partition runs as line-aligned ranges of about SIZE, one task each; "
         "0 never splits")  # fmt: skip
    _opt(parser, "--task-timeout", "S", _number(float, 0.001, unit="seconds"), None,
         "an attempt without a result after S seconds fails and is retried")  # fmt: skip
    # storage: where the result goes, and options for object stores
    _opt(parser, "--output", "URL", str, None,
         "write the result to a path or object instead of stdout, in the format its "
         "extension names: .json (as --format json), .csv or .parquet")  # fmt: skip
    _add_storage_options(parser)


def _add_cache_options(parser: argparse.ArgumentParser, local: bool) -> None:
    who = "each local worker keeps" if local else "keep"
    _opt(parser, "--cache", "DIR", str, None,
         f"{who} partials in DIR, keyed by partition, version, range and query: a repeated "
         "query over unchanged data computes nothing")  # fmt: skip
    # a number, not "1GiB": a text default is parsed at start-up, and parsing a size loads
    # NumPy before a worker can take SIGTERM cleanly
    _opt(parser, "--cache-size", "SIZE", _size(1 << 50), 1 << 30,
         "at most SIZE of partials in the cache DIR; the least recently used go first "
         "(default: 1GiB)")  # fmt: skip


def _add_task_delay(parser: argparse.ArgumentParser) -> None:
    _opt(parser, "--task-delay", "S", _number(float, 0, unit="seconds"), 0.0,
         "fault injection: add S seconds to every task")  # fmt: skip


def _subcommand(sub: Any, name: str, text: str, more: str = "") -> argparse.ArgumentParser:
    made: argparse.ArgumentParser = sub.add_parser(
        name, help=text, description=f"{text[0].upper()}{text[1:]}. {more}", allow_abbrev=False
    )
    return made


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tally",
        description="Distributed aggregation over partitioned data: "
        "a coordinator and N workers over TCP.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    source = "file list, folder or glob of partitions (paths or URLs)"
    kernel = "partition kernel: fast (NumPy and Arrow), reference (plain Python), auto"

    coord = _subcommand(sub, "coordinator", "run one job for the workers that connect")
    coord.add_argument("source", help=source)
    coord.add_argument("port", type=PORT, help="TCP port to listen on (0: any free port)")
    _opt(coord, "--host", "HOST", str, "127.0.0.1", "address to listen on")
    _add_job_options(coord, local=False)
    _add_common(coord, token=True)

    work = _subcommand(sub, "worker", "work for a coordinator until its job ends")
    work.add_argument("host", help="the coordinator's host name or address")
    work.add_argument("port", type=PORT, help="the coordinator's port")
    _opt(work, "--slots", "N", COUNT, 2, "tasks held at once, the running one included")
    work.add_argument(
        "--kernel",
        choices=KERNELS,
        default=os.environ.get("TALLY_KERNEL", "auto"),
        help=f"{kernel} (default: TALLY_KERNEL, else auto: fast when installed)",
    )
    _opt(work, "--connect-timeout", "S", _number(float, 0, above=True, unit="seconds"), 60.0,
         "give up connecting after S seconds")  # fmt: skip
    _add_task_delay(work)
    _opt(work, "--slowdown", "F", _number(float, 0, above=True, what="a positive number"), 1.0,
         "fault injection: make every task F times slower")  # fmt: skip
    _add_storage_options(work)
    _add_cache_options(work, local=False)
    _add_common(work, token=True)

    cpus = os.cpu_count() or 2
    for name in ("run", "sql"):
        local = _subcommand(
            sub,
            name,
            "run a coordinator and N local workers on 127.0.0.1"
            if name == "run"
            else "answer a SQL group-by query with a coordinator and N local workers",
            ""
            if name == "run"
            else "QUERY is SELECT ... FROM 'SOURCE' [WHERE ...] "
            "[GROUP BY ...] [ORDER BY ...] [LIMIT N] over one source of delimited files.",
        )
        if name == "run":
            local.add_argument("source", help=source)
        else:
            local.add_argument("sql", metavar="QUERY", help="the query, in SQL")
        _opt(local, "--workers", "N", COUNT, None,
             f"processes to start (default: one per CPU: {cpus})")  # fmt: skip
        local.add_argument("--kernel", choices=KERNELS, default="auto",
                           help=f"{kernel} (default: auto)")  # fmt: skip
        _add_task_delay(local)
        _add_cache_options(local, local=True)
        _add_job_options(local, local=True, sql=name == "sql")
        _add_common(local)

    gen = _subcommand(
        sub,
        "gen",
        "generate a synthetic web-request log",
        "Writes OUT_DIR/part-NNNNN.tsv and OUT_DIR/filelist.csv. A data set generated into "
        "OUT_DIR before is replaced: its part-NNNNN.tsv files are rewritten or removed; other "
        "files are left alone.",
    )
    gen.add_argument(
        "out_dir",
        help="folder to write into (created if missing), or an object-store prefix such as "
        "az://container/logs/ or s3://bucket/logs/",
    )
    _opt(gen, "--partitions", "N", COUNT, 16, "files to write")
    _opt(gen, "--partition-size", "SIZE", _size(1 << 40), "32MiB",
         "bytes per file, or a size like 4MiB")  # fmt: skip
    _opt(gen, "--seed", "S", _number(int, 0), 1, "the same seed gives the same bytes")
    _add_storage_options(gen)
    _add_common(gen)

    rep = _subcommand(sub, "report", "run the experiments and write a report with plots")
    rep.add_argument("--out", required=True, metavar="DIR", help="where report.md, plots go")
    rep.add_argument("--quick", action="store_true", help="small data: done in under 2 minutes")
    _opt(rep, "--prices", "TOML", str, None, "price table overriding the defaults")
    _opt(rep, "--from", "RESULTS", str, None,
         "re-price an earlier run's results.json and write its report again")  # fmt: skip
    _add_common(rep)
    from tally.service.commands import add_parsers

    add_parsers(sub)  # serve, submit, jobs, job, cancel
    return parser


# --- running ----------------------------------------------------------------------------


def job_options(args: argparse.Namespace) -> JobOptions:
    group_by = groupby_options(args)
    source = args.source if args.command != "sql" else group_by.source_and_plan()[0]
    return JobOptions(
        source=source or "",
        top=getattr(args, "top", None),
        domain=getattr(args, "domain", None),
        all=getattr(args, "all", False),
        group_by=group_by,
        workers=getattr(args, "workers", None),
        kernel=getattr(args, "kernel", "auto"),
        max_attempts=args.max_attempts,
        lease_timeout=args.lease_timeout,
        skip_failed=args.skip_failed,
        record_limit=args.record_limit,
        min_workers=args.min_workers,
        speculation=not args.no_speculation,
        stats=args.stats,
        events=args.events,
        progress=not args.quiet,
        task_delay=getattr(args, "task_delay", 0.0),
        split_size=args.split_size,
        task_timeout=args.task_timeout,
        output=args.output,
        storage_options=dict(args.storage_option),
        **({"cache": args.cache, "cache_size": args.cache_size} if "cache" in args else {}),
    )


def _run_job(args: argparse.Namespace) -> int:
    spawned = _spawn_workers(args) if args.command in ("run", "sql") else None
    try:
        options = job_options(args)

        def show(result: Result) -> None:
            print_result(result, args.format, to_stdout=options.output is None)

        if args.command in ("run", "sql"):
            result = run_job(options, on_result=show, spawned=spawned)
        else:
            token = read_token(args)
            result = run_coordinator(options, args.host, args.port, token, on_result=show)
    finally:
        if spawned is not None:
            spawned.stop()  # they have left, unless the job never started
    return EXIT_OK if result.complete else EXIT_PARTIAL


def _spawn_workers(args: argparse.Namespace) -> LocalWorkers:
    """The local workers, started before anything else (see :mod:`tally.spawn`)."""
    from tally.spawn import LocalWorkers, worker_args

    if args.cache is not None:  # checked here, or each worker would say so too
        from tally.cache import PartialStore

        PartialStore(args.cache, args.cache_size).close()  # ConfigError if unwritable
    count = args.workers or os.cpu_count() or 2
    extra = worker_args(args.kernel, dict(args.storage_option), args.task_delay,
                        args.cache, args.cache_size)  # fmt: skip
    spawned = LocalWorkers(count, extra)
    try:
        spawned.start()
    except OSError as exc:
        spawned.stop()
        raise ConfigError(f"cannot start the local workers: {exc}") from exc
    return spawned


def main(argv: list[str] | None = None) -> int:
    # Arrow's default pool keeps freed memory (30 MB more at the coordinator's peak); malloc
    # returns it. Only an environment variable read when Arrow loads changes the pool.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    # NumPy's BLAS (loaded with Arrow) starts a thread per core that spins while idle; Tally
    # does no linear algebra, and those spins take processor time from the tasks
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    setup_logging(args)
    try:
        if args.command in ("coordinator", "run", "sql"):
            return _run_job(args)
        if args.command == "worker":
            return _work(args)
        if args.command == "gen":
            return _generate(args)
        if args.command == "report":
            from tally.report import run_report

            return run_report(args)
        from tally.service.commands import SERVICE_COMMANDS, run

        if args.command in SERVICE_COMMANDS:
            return run(args)
    except ConfigError as exc:
        print(f"tally: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except TallyError as exc:
        failed = "job failed: " if isinstance(exc, JobFailed) else ""
        print(f"tally: {failed}{exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"tally: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    raise AssertionError(args.command)


def _work(args: argparse.Namespace) -> int:
    # nothing is held before joining: SIGTERM while importing is a clean exit (``tally worker``;
    # ``python -m tally worker`` sets this earlier); the worker's own handler takes over later
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    from tally.kernels.memory import retain_freed_memory
    from tally.worker import Worker, WorkerConfig

    retain_freed_memory()

    config = WorkerConfig(
        host=args.host,
        port=args.port,
        token=read_token(args),
        slots=args.slots,
        connect_timeout_s=args.connect_timeout,
        kernel=args.kernel,
        task_delay_s=args.task_delay,
        slowdown=args.slowdown,
        storage_options=dict(args.storage_option),
        cache_dir=args.cache,
        cache_size=args.cache_size,
    )
    code = asyncio.run(Worker(config).run())
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for a computation that nobody wants any more


def _generate(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from tally.datagen import FILELIST, foreign_files, generate
    from tally.storage.outputs import is_url

    if is_url(args.out_dir):
        from tally.storage.gen_objects import generate_objects

        generate_objects(args.out_dir, args.partitions, args.partition_size, args.seed,
                         dict(args.storage_option))  # fmt: skip
        return EXIT_OK
    started = time.perf_counter()
    paths = generate(args.out_dir, args.partitions, args.partition_size, args.seed)
    elapsed = time.perf_counter() - started
    total = sum(os.path.getsize(p) for p in paths)
    log.info(
        "wrote %d partitions, %.1f MB in %.2fs (%.0f MB/s); file list %s",
        len(paths),
        total / 1e6,
        elapsed,
        total / 1e6 / max(elapsed, 1e-9),
        os.path.join(args.out_dir, FILELIST),
    )
    others = foreign_files(Path(args.out_dir))
    if others:
        log.warning(
            "%s also holds %d other file(s) (%s) that the folder as a source would read; "
            "%s names the generated partitions alone",
            args.out_dir,
            len(others),
            ", ".join(others[:3]) + (", ..." if len(others) > 3 else ""),
            os.path.join(args.out_dir, FILELIST),
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
