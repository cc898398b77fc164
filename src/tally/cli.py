"""The command line: ``tally coordinator | worker | run | gen | report`` (see README.md).

Exit status: 0 complete result; 1 the job failed (a partition failed too often, a refused
connection); 2 bad arguments or source; 3 a partial result (``--skip-failed`` skipped
partitions). Results go to stdout, everything else to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from tally.errors import ConfigError, TallyError

if TYPE_CHECKING:  # the command line imports what a subcommand needs only when it runs
    from tally.coordinator import CoordinatorConfig, Outcome

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
log = logging.getLogger("tally")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0 to 65535, not {value}")
    return value


def _bounded(kind: type, low: float, high: float) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, got {value}")
        return value

    return parse


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--token-file", help="file holding the cluster secret (else TALLY_TOKEN)")


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    query = parser.add_mutually_exclusive_group()
    query.add_argument("--domain", metavar="D", help="count the lines whose domain is exactly D")
    query.add_argument(
        "--top", metavar="K", type=_positive_int, help="the K most frequent domains (default 25)"
    )
    query.add_argument("--all", action="store_true", help="every domain")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--stats", metavar="PATH", help="write a JSON record of the run")
    parser.add_argument("--events", metavar="PATH", help="write every attempt's life as JSON lines")
    parser.add_argument(
        "--skip-failed",
        action="store_true",
        help="finish with a partial result instead of failing on a bad partition",
    )
    parser.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=3,
        metavar="K",
        help="failures of one partition that fail the job (default 3)",
    )
    parser.add_argument(
        "--lease-timeout",
        type=_bounded(float, 0.3, 86400),
        default=3.0,
        metavar="S",
        help="seconds of silence after which a worker is lost (default 3)",
    )
    parser.add_argument(
        "--min-workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="wait for N workers before assigning work (default 1)",
    )
    parser.add_argument(
        "--no-speculation",
        action="store_true",
        help="never start backup attempts for slow partitions",
    )
    parser.add_argument(
        "--record-limit",
        type=_bounded(int, 1, 1 << 30),
        default=1 << 20,
        metavar="BYTES",
        help="a longer line is malformed (default 1 MiB)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    coord = sub.add_parser("coordinator", help="run one job for the workers that connect")
    coord.add_argument("source", help="file list, folder or glob of partitions")
    coord.add_argument("port", type=_port)
    coord.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    _add_job_options(coord)
    _add_common(coord)

    work = sub.add_parser("worker", help="work for a coordinator until its job ends")
    work.add_argument("host")
    work.add_argument("port", type=_port)
    work.add_argument(
        "--slots",
        type=_positive_int,
        default=2,
        help="tasks held at once, the running one included (default 2)",
    )
    work.add_argument(
        "--kernel",
        choices=("auto", "fast", "reference"),
        default=os.environ.get("TALLY_KERNEL", "auto"),
        help="partition kernel (default: TALLY_KERNEL or auto: fast when installed)",
    )
    work.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="give up connecting after S seconds (default 60)",
    )
    work.add_argument(
        "--task-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="fault injection: add S seconds to every task",
    )
    work.add_argument(
        "--slowdown",
        type=float,
        default=1.0,
        metavar="F",
        help="fault injection: make every task F times slower",
    )
    _add_common(work)

    run = sub.add_parser("run", help="coordinator and N local workers on 127.0.0.1")
    run.add_argument("source")
    run.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 2)
    run.add_argument("--kernel", choices=("auto", "fast", "reference"), default="auto")
    _add_job_options(run)
    _add_common(run)

    gen = sub.add_parser("gen", help="generate a synthetic web-request log")
    gen.add_argument("out_dir")
    gen.add_argument("--partitions", type=_positive_int, default=16)
    gen.add_argument("--partition-size", default="32MiB")
    gen.add_argument("--seed", type=int, default=1)
    _add_common(gen)

    rep = sub.add_parser("report", help="run the experiments and write a report with plots")
    rep.add_argument("--out", required=True, metavar="DIR", help="where report.md, plots go")
    rep.add_argument("--quick", action="store_true", help="small data: done in under 2 minutes")
    rep.add_argument("--prices", metavar="TOML", help="price table overriding the defaults")
    _add_common(rep)
    return parser


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now, so log lines go above a live progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level,
        handlers=[_StderrHandler()],
        format=f"%(asctime)s.%(msecs)03d tally {args.command}[{os.getpid()}] "
        "%(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


def read_token(args: argparse.Namespace) -> bytes:
    if args.token_file:
        try:
            with open(args.token_file, "rb") as f:
                return f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file: {exc}") from exc
    return os.environ.get("TALLY_TOKEN", "").strip().encode()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def coordinator_config(args: argparse.Namespace, token: bytes) -> CoordinatorConfig:
    from tally.coordinator import CoordinatorConfig
    from tally.protocol import QuerySpec
    from tally.scheduler import SchedulerConfig

    if args.domain is not None:
        query = QuerySpec("domain", domain=args.domain.encode("utf-8", "surrogateescape"))
    elif args.all:
        query = QuerySpec("all")
    else:
        query = QuerySpec("top", k=args.top or 25)
    return CoordinatorConfig(
        query=query,
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 0),
        token=token,
        record_limit=args.record_limit,
        progress=not args.quiet,
        events=args.events,
        scheduler=SchedulerConfig(
            max_attempts=args.max_attempts,
            lease_timeout_s=args.lease_timeout,
            skip_failed=args.skip_failed,
            min_workers=args.min_workers or getattr(args, "workers", 1),
            speculate=not args.no_speculation,
        ),
    )


def check_outputs(args: argparse.Namespace) -> None:
    """Fail before the job, not after it, when --stats or --events cannot be written."""
    for option in ("stats", "events"):
        path = getattr(args, option)
        if path:
            try:
                with open(path, "a", encoding="utf-8"):
                    pass
            except OSError as exc:
                raise ConfigError(f"cannot write --{option} {path}: {exc.strerror}") from exc


def _write_records(outcome: Outcome, args: argparse.Namespace) -> None:
    if args.stats:
        with open(args.stats, "w", encoding="utf-8") as f:
            json.dump(outcome.stats, f, indent=2)


def report(outcome: Outcome, args: argparse.Namespace) -> int:
    """Print the result (stdout) and the summary (stderr); write --stats."""
    from tally.queries import format_result

    _write_records(outcome, args)
    if outcome.result is None:
        print(f"tally: job failed: {outcome.error}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.buffer.write(format_result(outcome.result, args.format).encode("utf-8"))
    sys.stdout.flush()
    st = outcome.stats
    log.info(
        "done in %.3fs: %d partitions, %d lines, %d malformed (skipped), %d attempts, "
        "%d workers lost, %d duplicates dropped",
        st["wall_s"],
        st["partitions"],
        st["lines"],
        st["malformed_lines"],
        st["attempts"],
        st["workers_lost"],
        st["duplicates_dropped"],
    )
    if not outcome.result.complete:
        failed = outcome.result.failed_partitions
        print(
            f"tally: partial result: {len(failed)} partition(s) skipped: {', '.join(failed)}",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


async def _coordinate(args: argparse.Namespace) -> int:
    from tally.coordinator import Coordinator
    from tally.storage import expand_source

    token = read_token(args)
    if not token and not _is_loopback(args.host):
        raise ConfigError(
            f"refusing to listen on {args.host} without a cluster token: "
            "set TALLY_TOKEN or pass --token-file"
        )
    check_outputs(args)
    urls = expand_source(args.source)
    coordinator = Coordinator(urls, coordinator_config(args, token))
    try:
        await coordinator.start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    return report(await coordinator.run(), args)


def main(argv: list[str] | None = None) -> int:
    # Arrow's default pool keeps freed memory (30 MB more at the coordinator's peak); malloc
    # returns it. Only an environment variable read when Arrow loads changes the pool.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    try:
        if args.command == "coordinator":
            return asyncio.run(_coordinate(args))
        if args.command == "worker":
            return _work(args)
        if args.command == "run":
            from tally.local import run_local

            return asyncio.run(run_local(args))
        if args.command == "gen":
            return _generate(args)
        if args.command == "report":
            from tally.report import run_report

            return run_report(args)
    except ConfigError as exc:
        print(f"tally: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except TallyError as exc:
        print(f"tally: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("tally: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(args.command)


def _work(args: argparse.Namespace) -> int:
    from tally.worker import Worker, WorkerConfig

    config = WorkerConfig(
        host=args.host,
        port=args.port,
        token=read_token(args),
        slots=args.slots,
        connect_timeout_s=args.connect_timeout,
        kernel=args.kernel,
        task_delay_s=args.task_delay,
        slowdown=args.slowdown,
    )
    code = asyncio.run(Worker(config).run())
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for a computation that nobody wants any more


def _generate(args: argparse.Namespace) -> int:
    import time

    from tally.datagen import generate, parse_size

    size = parse_size(args.partition_size)
    started = time.perf_counter()
    paths = generate(args.out_dir, args.partitions, size, args.seed)
    elapsed = time.perf_counter() - started
    total = sum(os.path.getsize(p) for p in paths)
    log.info(
        "wrote %d partitions, %.1f MB in %.2fs (%.0f MB/s); file list %s",
        len(paths),
        total / 1e6,
        elapsed,
        total / 1e6 / max(elapsed, 1e-9),
        os.path.join(args.out_dir, "filelist.csv"),
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
