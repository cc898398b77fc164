"""``tally run``: a coordinator in this process and N worker processes on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys

from tally.cli import check_outputs, coordinator_config, job_spec, report
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
            stdout=asyncio.subprocess.DEVNULL,  # stdout carries the result alone
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


async def watch_workers(
    coordinator: Coordinator, workers: list[asyncio.subprocess.Process]
) -> None:
    """Abort the job when it can no longer finish: every worker process has exited, or one
    exited before the job could start (it waits for all of them to join)."""
    pending = {asyncio.create_task(w.wait()) for w in workers}
    while pending:
        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if not pending or not coordinator.any_job_started:
            codes = ", ".join(str(w.returncode) for w in workers if w.returncode is not None)
            gone = len(workers) - len(pending)
            every = "all " if not pending else ""
            coordinator.abort(
                f"{every}{gone} of {len(workers)} worker processes exited (status {codes}) "
                "before the job ended"
            )
            return


async def run_local(args: argparse.Namespace) -> int:
    token = secrets.token_hex(16).encode()
    check_outputs(args)
    spec = job_spec(args, expand_source(args.source))
    coordinator = Coordinator(coordinator_config(args, token))
    port = await coordinator.start()
    workers = await start_workers(port, args.workers, token, ["--kernel", args.kernel])
    job = asyncio.create_task(coordinator.run_one(spec))
    watch = asyncio.create_task(watch_workers(coordinator, workers))
    try:
        outcome = await job
        return report(outcome, args)  # the result first; workers finish leaving meanwhile
    finally:
        watch.cancel()
        await stop_workers(workers)
