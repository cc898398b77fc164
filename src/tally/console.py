"""What the command line shows: its exit codes, its log lines on stderr, the token it reads, and
a job's result on stdout with its summary on stderr. Shared by ``tally run`` and the service's
commands (``tally submit --wait``), so both print a result the same way."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from tally.errors import ConfigError

if TYPE_CHECKING:
    from tally.result import Result

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
log = logging.getLogger("tally")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now, so log lines go above a live progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level,
        handlers=[_StderrHandler()],
        format=f"%(asctime)s.%(msecs)03d tally {args.command}[{os.getpid()}] "
        "%(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:  # storage clients log each request at INFO: shown with -v only
        for name in ("azure", "botocore", "aiobotocore", "s3fs", "adlfs"):
            logging.getLogger(name).setLevel(logging.WARNING)


def read_token(args: argparse.Namespace) -> bytes:
    if args.token_file:
        try:
            with open(args.token_file, "rb") as f:
                return f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file: {exc}") from exc
    return os.environ.get("TALLY_TOKEN", "").strip().encode()


def print_result(result: Result, fmt: str, to_stdout: bool = True) -> None:
    """The result on stdout (unless it went to ``--output``); on stderr, the summary and
    (always) any malformed lines."""
    if to_stdout:
        sys.stdout.buffer.write(result.format(fmt).encode("utf-8"))
        sys.stdout.flush()
    st = result.stats
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
    if st.get("cache_hits"):
        log.info("%d of %d partitions served from the workers' caches", st["cache_hits"],
                 st["partitions"])  # fmt: skip
    if result.malformed:
        lines = "line" if result.malformed == 1 else "lines"
        print(f"tally: {result.malformed} malformed {lines} skipped", file=sys.stderr)
    if not result.complete:
        failed = result.failed_partitions
        print(
            f"tally: partial result: {len(failed)} partition(s) skipped: {', '.join(failed)}",
            file=sys.stderr,
        )
