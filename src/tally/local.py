"""``tally run``: a coordinator in this process and N worker processes on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys

from tally.cli import coordinator_config, report
from tally.coordinator import Coordinator
from tally.storage import expand_source

log = logging.getLogger("tally.local")
WORKER_EXIT_GRACE_S = 5.0


async def start_workers(
    port: int, count: int, token: bytes, extra_args: list[str]
) -> list[asyncio.subprocess.Process]:
    env = dict(os.environ, TALLY_TOKEN=token.decode())
    return [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tally",
            "worker",
            "127.0.0.1",
            str(port),
            "-q",
            "--connect-timeout",
            "10",
            *extra_args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


async def stop_workers(workers: list[asyncio.subprocess.Process]) -> None:
    """Workers leave by themselves when the job ends; terminate any that lingers."""
    try:
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers)), WORKER_EXIT_GRACE_S)
    except TimeoutError:
        for w in workers:
            if w.returncode is None:
                w.kill()
        await asyncio.gather(*(w.wait() for w in workers))


async def run_local(args: argparse.Namespace) -> int:
    token = secrets.token_hex(16).encode()
    urls = expand_source(args.source)
    config = coordinator_config(args, token)
    coordinator = Coordinator(urls, config)
    port = await coordinator.start()
    workers = await start_workers(port, args.workers, token, ["--kernel", args.kernel])
    job = asyncio.create_task(coordinator.run())
    exited = asyncio.create_task(asyncio.wait([asyncio.create_task(w.wait()) for w in workers]))
    try:
        await asyncio.wait([job, exited], return_when=asyncio.FIRST_COMPLETED)
        if not job.done():  # every worker process ended before the job did
            codes = ", ".join(str(w.returncode) for w in workers)
            coordinator.abort(f"all {len(workers)} worker processes exited (status {codes})")
        outcome = await job
        return report(outcome, args)  # the result first; workers finish leaving meanwhile
    finally:
        exited.cancel()
        await stop_workers(workers)
