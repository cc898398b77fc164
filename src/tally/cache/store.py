"""Cached partials in a directory, bounded in size, least recently used evicted first.

Layout of the directory::

    index.sqlite        key -> size and last use (SQLite, WAL: shared by every process)
    entries/ab/abcd...  one file per entry (see :mod:`tally.cache.entries`)
    tmp/                entries being written

An entry is written to ``tmp/`` and renamed into ``entries/``, so a process killed mid-write
leaves at most a stray temporary file (removed when a later process opens the directory),
never half an entry. The rename, the index row and any eviction happen in one write
transaction of the index, so processes sharing the directory (several workers) never evict
what another is filing, and the index's total stays that of the files present. Reads take no
lock: an entry evicted while it is read stays readable (POSIX unlink), and a damaged entry is
counted, deleted and reported as a miss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tally.cache.entries import CachedPartial, Damaged, decode_entry, encode_entry
from tally.errors import ConfigError

log = logging.getLogger("tally.cache")

DEFAULT_CACHE_SIZE = 1 << 30
STALE_TMP_S = 600.0  # a temporary file this old belongs to a process that died mid-write
BUSY_TIMEOUT_MS = 30_000  # how long a process waits for another's write transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_use ON entries (used);
"""


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    evicted: int = 0
    damaged: int = 0  # entries found damaged, deleted and recomputed
    not_stored: int = 0  # partials larger than the whole cache, or a failed write

    def summary(self) -> str:
        return (
            f"{self.hits} hits, {self.misses} misses, {self.stored} stored, "
            f"{self.evicted} evicted, {self.damaged} damaged entries removed"
        )


def _open_index(path: str) -> sqlite3.Connection:
    """The index, in WAL mode with its table made. Several processes opening a new directory
    at once: switching to WAL or creating the table may say "locked" at once, without
    waiting as other statements do, so this tries again for the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        db = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # transactions are begun and ended here
            check_same_thread=False,
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class PartialStore:
    """The cache directory ``root``, holding at most ``max_bytes`` of entries."""

    def __init__(self, root: str, max_bytes: int = DEFAULT_CACHE_SIZE) -> None:
        """Open (creating) the directory; ConfigError with a one-line reason if it cannot be
        written to."""
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        self.counters = CacheCounters()
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        try:
            os.makedirs(os.path.join(self.root, "entries"), exist_ok=True)
            os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)
            probe = self._tmp_path("probe")
            with open(probe, "wb") as f:
                f.write(b"tally")
            os.unlink(probe)
            self._db = _open_index(os.path.join(self.root, "index.sqlite"))
        except (OSError, sqlite3.Error) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"cache directory {root} cannot be written to: {why}") from None
        self._remove_stale_tmp()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- paths -------------------------------------------------------------------------------

    def entry_path(self, key: str) -> str:
        return os.path.join(self.root, "entries", key[:2], key)

    def _tmp_path(self, key: str) -> str:
        name = f"{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        return os.path.join(self.root, "tmp", name)

    def _remove_stale_tmp(self) -> None:
        tmp = os.path.join(self.root, "tmp")
        now = time.time()
        with contextlib.suppress(OSError), os.scandir(tmp) as found:
            for item in found:
                with contextlib.suppress(OSError):
                    if now - item.stat().st_mtime > STALE_TMP_S:
                        os.unlink(item.path)

    # --- reading -----------------------------------------------------------------------------

    def get(self, key: str) -> CachedPartial | None:
        """The partial stored under ``key``, or None (a miss; a damaged entry is deleted)."""
        try:
            with open(self.entry_path(key), "rb") as f:
                data = f.read()
        except OSError:
            self.counters.misses += 1
            return None
        try:
            partial = decode_entry(key, data)
        except Damaged as exc:
            self.counters.damaged += 1
            self.counters.misses += 1
            log.warning("cache entry %s is damaged (%s): removed", key, exc)
            self._remove(key)
            return None
        self.counters.hits += 1
        self._touch(key, len(data))
        return partial

    def contains(self, key: str) -> bool:
        """Whether an entry is filed under ``key`` (not checked, not counted as a use)."""
        return os.path.exists(self.entry_path(key))

    def _touch(self, key: str, size: int) -> None:
        """Mark ``key`` used now (and index it if a process died between filing and
        indexing it)."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.execute(
                "INSERT INTO entries (key, size, used) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET used = excluded.used",
                (key, size, time.time()),
            )

    # --- writing -----------------------------------------------------------------------------

    def put(self, key: str, table: bytes | memoryview | None, lines: int, malformed: int) -> bool:
        """File the partial under ``key`` and evict the least recently used entries beyond
        the bound; False if it was not stored (larger than the whole cache, or the write
        failed: the task's result stands either way)."""
        data = encode_entry(key, table, lines, malformed)
        if len(data) > self.max_bytes:
            self.counters.not_stored += 1
            return False
        tmp = self._tmp_path(key)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.makedirs(os.path.dirname(self.entry_path(key)), exist_ok=True)
            with self._write() as db:
                os.replace(tmp, self.entry_path(key))
                db.execute(
                    "INSERT OR REPLACE INTO entries (key, size, used) VALUES (?, ?, ?)",
                    (key, len(data), time.time()),
                )
                self._evict(db, keep=key)
        except (OSError, sqlite3.Error) as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.counters.not_stored += 1
            log.warning("cache entry %s not stored: %s", key, exc)
            return False
        self.counters.stored += 1
        return True

    def _evict(self, db: sqlite3.Connection, keep: str) -> None:
        (total,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()
        if total <= self.max_bytes:
            return
        oldest = db.execute("SELECT key, size FROM entries ORDER BY used, rowid").fetchall()
        for key, size in oldest:
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.entry_path(key))
            total -= size
            self.counters.evicted += 1

    def _remove(self, key: str) -> None:
        with contextlib.suppress(OSError, sqlite3.Error), self._write() as db:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.entry_path(key))
            db.execute("DELETE FROM entries WHERE key = ?", (key,))

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction of the index, taken at once (BEGIN IMMEDIATE): processes
        sharing the directory file and evict one at a time."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- inspection (tests, summaries) -------------------------------------------------------

    def total_bytes(self) -> int:
        with self._lock:
            (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()
        return int(total)
