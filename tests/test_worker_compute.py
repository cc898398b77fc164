"""One task on a worker's compute path, without a coordinator: results and failures as data."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SAMPLE
from tally import protocol as p
from tally.prefetch import Prefetcher
from tally.worker import Worker, WorkerConfig


def compute(url: str, job: str = "job") -> p.Result | p.Failed:
    worker = Worker(WorkerConfig("127.0.0.1", 1, kernel="fast"))
    worker.plans["job"] = p.JobPlan("job", p.QuerySpec("all"), 1 << 20)
    return worker._compute(p.Assign(7, job, p.Task(url)), Prefetcher())


def test_a_partition_becomes_a_result() -> None:
    result = compute(str(SAMPLE))
    assert isinstance(result, p.Result)
    assert (result.attempt, result.job_id, result.bytes_read) == (7, "job", SAMPLE.stat().st_size)
    assert (result.partial.lines, result.partial.malformed) == (200, 0)


def test_a_task_of_a_job_without_a_plan_fails_as_data() -> None:
    failed = compute(str(SAMPLE), job="other")
    assert isinstance(failed, p.Failed)
    assert (failed.error.type, failed.error.message) == ("ProtocolError", "no plan for job other")


def test_a_missing_partition_is_a_retryable_failure(tmp_path: Path) -> None:
    failed = compute(str(tmp_path / "missing.tsv"))
    assert isinstance(failed, p.Failed)
    assert (failed.error.type, failed.error.retryable) == ("PartitionError", True)


def test_a_partial_over_the_frame_limit_fails_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p, "MAX_FRAME", 4096)  # the sample's partial is larger than this
    failed = compute(str(SAMPLE))
    assert isinstance(failed, p.Failed)
    assert failed.error.retryable is False
    assert "exceeds the frame limit (4096 bytes)" in failed.error.message
