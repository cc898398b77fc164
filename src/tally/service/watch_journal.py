"""The storage watcher's checkpoint in the service's journal (:mod:`tally.service.store`).

- ``watch_objects``: each object's last version given a job, the job, its state
  (``running``, ``done``, ``failed``) and whether its result file has been written.
- ``watch_partials``: the partials of the tasks of each object's done version (Arrow IPC,
  small: one row per group), from which the running total is merged.
- ``watch_meta``: ``config``, what is watched and the query, so that a journal is never
  resumed by a watcher of something else.

A job's checkpoint entry is written in the transaction that journals the job, and its
end (the partials copied, the state) in the transaction that records the job's end: after
a SIGKILL at any moment, every version is either not yet submitted, running (the resumed
job finishes it) or done, and never both done and submitted again.
"""

from __future__ import annotations

import json
from typing import Any

from tally.coordinator import TaskPartial
from tally.errors import ConfigError
from tally.queries import from_ipc
from tally.service.store import Statements, StateStore
from tally.service.watch_state import DONE, FAILED, RUNNING, Checkpointed


def started(name: str, version: str, job: str) -> Statements:
    return [(
        "INSERT OR REPLACE INTO watch_objects (name, version, job, state, written) "
        "VALUES (?, ?, ?, ?, 0)",
        (name, version, job, RUNNING),
    )]  # fmt: skip


def ended(name: str, job: str, succeeded: bool) -> Statements:
    """The end of ``job``: a success replaces the object's partials with the job's."""
    statements: list[tuple[str, tuple[Any, ...]]] = [
        ("DELETE FROM watch_partials WHERE name = ?", (name,)),
        (
            "UPDATE watch_objects SET state = ? WHERE name = ? AND job = ?",
            (DONE if succeeded else FAILED, name, job),
        ),
    ]
    if succeeded:
        statements.insert(1, (
            "INSERT INTO watch_partials (name, task, lines, malformed, tbl) "
            "SELECT ?, task, lines, malformed, tbl FROM partials WHERE job = ?",
            (name, job),
        ))  # fmt: skip
    return statements


def written(store: StateStore, name: str, job: str) -> None:
    store.db.execute("UPDATE watch_objects SET written = 1 WHERE name = ? AND job = ?", (name, job))


def checkpoint(store: StateStore) -> dict[str, tuple[Checkpointed, bool]]:
    """Every object's entry, and whether its result file was written."""
    rows = store.db.execute("SELECT name, version, job, state, written FROM watch_objects")
    return {name: (Checkpointed(version, job, state), bool(done)) for name, version, job,
            state, done in rows}  # fmt: skip


def partials(store: StateStore, name: str | None = None) -> dict[str, list[TaskPartial]]:
    """The partials of every object with a version in the total (or of ``name``)."""
    found: dict[str, list[TaskPartial]] = {}
    where, params = ("WHERE name = ? ", (name,)) if name is not None else ("", ())
    rows = store.db.execute(
        f"SELECT name, lines, malformed, tbl FROM watch_partials {where}ORDER BY name, task",
        params,
    )
    for name, lines, malformed, tbl in rows:
        found.setdefault(name, []).append(TaskPartial(from_ipc(tbl), lines, malformed))
    return found


def check_config(store: StateStore, config: dict[str, Any]) -> None:
    """Record what is watched; ConfigError if the journal holds another watcher's record."""
    shown = json.dumps(config, sort_keys=True)
    row = store.db.execute("SELECT value FROM watch_meta WHERE key = 'config'").fetchone()
    if row is None:
        store.db.execute("INSERT INTO watch_meta (key, value) VALUES ('config', ?)", (shown,))
        return
    if row[0] != shown:
        before = json.loads(row[0])
        raise ConfigError(
            f"state {store.path} belongs to a watcher of {before.get('source')} into "
            f"{before.get('output')} with query {json.dumps(before.get('query'))}: "
            "give this one another --state"
        )
