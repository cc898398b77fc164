"""A real ``tally serve`` with real ``tally worker`` processes, driven by the real client
commands and :class:`tally.Client`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tally
from conftest import Procs
from groupby_helpers import LINEITEM, Q1, tpch
from tally.service.bodies import ServiceError
from test_service_support import (
    QUERIES,
    TOKEN,
    Server,
    expected_result,
    start_server,
    start_workers,
    wait_until,
    workers_alive,
)

ENV = {"TALLY_TOKEN": TOKEN}
__all__ = ["tpch"]  # the session fixture, used by name


@pytest.fixture
def server(procs: Procs, tmp_path: Path) -> Server:
    served = start_server(procs, tmp_path / "state.db")
    start_workers(procs, served.worker_port, 2)
    with served.client() as client:
        wait_until(workers_alive(client, 2), what="two workers joined")
    return served


def run_cli(procs: Procs, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = procs.start(*args, env=env if env is not None else ENV)
    code, out = procs.finish(proc)
    return code, out, procs.stderr(proc)


def failure_line(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tally: ")]


@pytest.mark.parametrize(
    "query",
    [("--top", "25"), ("--all", "--format", "json"), ("--domain", "google.ru"), ("--top", "3")],
)
def test_submit_wait_prints_what_tally_run_prints(
    procs: Procs, server: Server, sample_filelist: Path, query: tuple[str, ...]
) -> None:
    ran = run_cli(procs, "run", str(sample_filelist), "--workers", "2", *query)
    submitted = run_cli(procs, "submit", str(sample_filelist), *query, "--wait",
                        "--server", server.url)  # fmt: skip
    assert ran[0] == 0 and ran[1]
    assert submitted[:2] == ran[:2]


def test_submit_wait_fails_and_skips_as_tally_run_does(
    procs: Procs, server: Server, sample_filelist: Path, tmp_path: Path
) -> None:
    listed = sample_filelist.read_text().splitlines()
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join([*listed[:5], "file:///no/such/partition.tsv", *listed[5:10]]))
    for extra, code in (
        (("--max-attempts", "2"), 1),
        (("--skip-failed", "--max-attempts", "1"), 3),
    ):
        ran = run_cli(procs, "run", str(broken), "--workers", "2", *extra)
        submitted = run_cli(procs, "submit", str(broken), *extra, "--wait",
                            "--server", server.url)  # fmt: skip
        assert (ran[0], submitted[0]) == (code, code)
        assert submitted[1] == ran[1]
        assert failure_line(submitted[2]) == failure_line(ran[2]) != []


def test_submit_without_wait_prints_the_id_and_the_other_commands_show_the_job(
    procs: Procs, server: Server, sample_filelist: Path
) -> None:
    code, out, _ = run_cli(procs, "submit", str(sample_filelist), "--domain", "google.ru",
                           "--server", server.url)  # fmt: skip
    job_id = out.strip()
    assert code == 0 and len(job_id) == 16
    with server.client() as client:
        client.wait(job_id, timeout=60)
    code, out, _ = run_cli(procs, "job", job_id, "--server", server.url)
    doc = json.loads(out)
    assert (code, doc["state"], doc["result"]) == (0, "succeeded", expected_result("google"))
    code, out, _ = run_cli(procs, "jobs", "--server", server.url)
    header, row = out.splitlines()
    assert header.split() == ["ID", "STATE", "SUBMITTED", "PROGRESS", "SOURCE"]
    assert row.split()[:2] == [job_id, "succeeded"] and row.split()[-2:] == [
        "100/100",
        str(sample_filelist),
    ]
    code, out, err = run_cli(procs, "cancel", job_id, "--server", server.url)
    assert (code, out) == (1, "")
    assert failure_line(err) == [f"tally: job {job_id} has already succeeded"]
    code, out, err = run_cli(procs, "job", "nope", "--server", server.url)
    assert (code, failure_line(err)) == (1, ["tally: no job nope"])


def test_the_client_side_refusals_have_clear_reasons(
    procs: Procs, server: Server, sample_filelist: Path
) -> None:
    code, _, err = run_cli(procs, "jobs", "--server", server.url, env={"TALLY_TOKEN": "wrong"})
    assert (code, failure_line(err)) == (
        1, [f"tally: the server at {server.url} refused the token (TALLY_TOKEN)"]
    )  # fmt: skip
    code, _, err = run_cli(procs, "submit", "/no/such.csv", "--server", server.url)
    assert (code, failure_line(err)) == (2, ["tally: source /no/such.csv does not exist"])
    code, _, err = run_cli(procs, "jobs", "--server", "http://127.0.0.1:9")
    assert code == 1
    assert failure_line(err)[0].startswith("tally: cannot reach the server at http://127.0.0.1:9")


def test_three_concurrent_jobs_each_give_the_exact_result(
    server: Server, sample_filelist: Path
) -> None:
    names = ["top25", "all", "google"]
    with tally.Client(server.url, TOKEN) as client:
        ids = {client.submit(str(sample_filelist), QUERIES[name][0]): name for name in names}
        assert {job["state"] for job in client.jobs()} <= {"queued", "running", "succeeded"}
        for job_id, name in ids.items():
            doc = client.wait(job_id, timeout=60)
            assert (doc["state"], doc["result"]) == ("succeeded", expected_result(name))


def test_a_short_job_behind_a_long_one_is_not_starved(
    procs: Procs, tmp_path: Path, repeated_filelist: Path, sample_filelist: Path
) -> None:
    served = start_server(procs, tmp_path / "state.db")
    start_workers(procs, served.worker_port, 2, "--task-delay", "0.05")
    short_list = tmp_path / "short.csv"
    short_list.write_text("\n".join(sample_filelist.read_text().splitlines()[:4]) + "\n")
    with served.client() as client:
        wait_until(workers_alive(client, 2), what="two workers joined")
        long_job = client.submit(str(repeated_filelist), {"domain": "go.mail"})
        wait_until(lambda: client.job(long_job)["progress"]["partitions_done"] >= 4)
        short_job = client.submit(str(short_list), {"top": 3})
        assert client.wait(short_job, timeout=60)["state"] == "succeeded"
        long_then = client.job(long_job)
        # the short job took every slot that freed: it ended with most of the long one to go
        assert long_then["state"] == "running"
        assert long_then["progress"]["partitions_done"] <= 50, long_then["progress"]
        assert client.wait(long_job, timeout=60)["result"]["count"] == 28 * 10 * 100


def test_a_lost_worker_is_shown_lost_and_its_attempts_run_elsewhere(
    procs: Procs, tmp_path: Path, repeated_filelist: Path
) -> None:
    served = start_server(procs, tmp_path / "state.db")
    workers = start_workers(procs, served.worker_port, 2, "--task-delay", "0.05")
    with served.client() as client:
        wait_until(workers_alive(client, 2), what="two workers joined")
        job_id = client.submit(str(repeated_filelist), {"domain": "go.mail"})
        wait_until(lambda: client.job(job_id)["progress"]["partitions_done"] >= 10)
        workers[0].kill()
        states = wait_until(
            lambda: (s := sorted(w["state"] for w in client.workers())) == ["alive", "lost"] and s
        )
        assert states == ["alive", "lost"]
        doc = client.wait(job_id, timeout=60)
        assert (doc["state"], doc["result"]["count"]) == ("succeeded", 28 * 10 * 100)
        assert doc["stats"]["workers_lost"] == 1
        assert "tally_workers_lost_total 1.0" in client.metrics()


def test_sigterm_drains_tells_workers_to_leave_and_a_restart_resumes(
    procs: Procs, tmp_path: Path, repeated_filelist: Path, sample_filelist: Path
) -> None:
    state = tmp_path / "state.db"
    served = start_server(procs, state)
    workers = start_workers(procs, served.worker_port, 2, "--task-delay", "0.05")
    with served.client() as client:
        wait_until(workers_alive(client, 2), what="two workers joined")
        done_id = client.submit(str(sample_filelist), {"top": 25})
        assert client.wait(done_id, timeout=60)["state"] == "succeeded"
        job_id = client.submit(str(repeated_filelist), {"domain": "go.mail"})
        wait_until(lambda: client.job(job_id)["progress"]["partitions_done"] >= 5)
    assert served.terminate() == 0
    assert [w.wait(timeout=30) for w in workers] == [0, 0]
    assert "stopping: draining" in served.log()
    restarted = start_server(procs, state)
    assert "(1 job(s) resumed)" in restarted.log()
    start_workers(procs, restarted.worker_port, 2)
    with restarted.client() as client:
        assert client.job(done_id)["result"] == expected_result("top25")
        doc = client.wait(job_id, timeout=60)
    assert (doc["state"], doc["result"]["count"]) == ("succeeded", 28 * 10 * 100)
    resumed = doc["stats"]["partitions_resumed"]
    assert resumed >= 5
    assert resumed + sum(w["partitions"] for w in doc["stats"]["workers"]) == 100
    assert restarted.terminate() == 0


def test_a_result_finished_after_the_server_died_is_dropped_as_late(
    procs: Procs, tmp_path: Path, sample_filelist: Path
) -> None:
    state = tmp_path / "state.db"
    one = tmp_path / "one.csv"
    one.write_text(sample_filelist.read_text().splitlines()[0] + "\n")
    served = start_server(procs, state)
    port, http_port = served.worker_port, int(served.url.rsplit(":", 1)[1])
    # the attempt outlasts the kill and the restart, even on a loaded machine
    [worker] = start_workers(procs, port, 1, "--task-delay", "4", "-v")
    with served.client() as client:
        wait_until(workers_alive(client, 1), what="the worker joined")
        job_id = client.submit(str(one), {"top": 25})
    procs.wait_for_log(worker, f"of job {job_id}: computing")  # assigned is not enough
    served.proc.kill()
    served.proc.wait()
    restarted = start_server(procs, state, port=port, http_port=http_port)
    with restarted.client() as client:
        doc = client.wait(job_id, timeout=60)
    assert doc["state"] == "succeeded" and doc["stats"]["duplicates_dropped"] == 1
    assert worker.poll() is None  # the same worker reconnected by itself
    assert restarted.terminate() == 0


def test_a_bad_job_request_from_the_client_library(server: Server) -> None:
    with tally.Client(server.url, TOKEN) as client, pytest.raises(ServiceError) as refused:
        client.submit("x", {"sql": "SELECT 1"})
    assert (refused.value.status, refused.value.message) == (400, "FROM 'SOURCE' is missing")


def test_a_sql_group_by_on_the_server_equals_tally_sql(server: Server, tpch: Path) -> None:
    table = tpch / "lineitem.tbl"
    query = Q1.replace("'lineitem.tbl'", f"'{table}'")
    with tally.Client(server.url, TOKEN) as client:
        job = client.submit(str(table), {"sql": query, "columns": ",".join(LINEITEM)},
                            split_size=1 << 20)  # fmt: skip
        doc = client.wait(job, timeout=120)
    assert doc["state"] == "succeeded", doc
    assert doc["stats"]["partitions"] == 7  # 7.3 MB in ranges of 1 MiB
    local = tally.sql(query, columns=LINEITEM, workers=1)
    assert doc["result"] == json.loads(local.format("json"))


def test_cancel_ends_a_job_that_a_submit_waits_for(
    procs: Procs, server: Server, sample_filelist: Path
) -> None:
    waiting = procs.start("submit", str(sample_filelist), "--min-workers", "5", "--wait",
                          "--server", server.url, env=ENV)  # fmt: skip
    with server.client() as client:
        [job] = wait_until(client.jobs, what="the job was accepted")
        assert job["state"] == "queued"  # it waits for five workers
        code, out, _ = run_cli(procs, "cancel", job["id"], "--server", server.url)
        assert (code, out) == (0, f"{job['id']} cancelled\n")
        assert procs.finish(waiting) == (1, "")
        assert failure_line(procs.stderr(waiting)) == ["tally: job failed: cancelled"]
        assert client.job(job["id"])["state"] == "cancelled"
