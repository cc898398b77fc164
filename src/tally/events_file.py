"""Event records as JSON lines, each written and flushed as it happens, so that the file
can be followed while jobs run (``--events``). For an object-store URL the lines go to a
local temporary file as they happen, and the whole log is uploaded when the file closes."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any, TextIO

from tally.errors import ConfigError, TallyError
from tally.storage.outputs import is_url, local_target, write
from tally.storage.remote import display

log = logging.getLogger("tally.events")


class EventFile:
    def __init__(self, path: str, options: Mapping[str, str] | None = None) -> None:
        self.path = path
        self._options = dict(options or {})
        self._upload = is_url(path)
        try:
            if self._upload:
                fd, self._local = tempfile.mkstemp(prefix="tally-events-", suffix=".jsonl")
                self._file: TextIO | None = open(fd, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
            else:
                self._local = local_target(path)
                self._file = open(self._local, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"cannot write --events {path}: {exc.strerror}") from exc

    def write(self, record: dict[str, Any]) -> str | None:
        """Append one record; the reason if it could not be written (then no more are)."""
        if self._file is None:
            return None
        try:
            self._file.write(json.dumps(record) + "\n")  # line-buffered: flushed per record
        except OSError as exc:
            self.close()
            return f"cannot write --events {self.path}: {exc.strerror or exc}"
        return None

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:  # the last records may be lost: say so
                log.error("cannot write --events %s: %s", self.path, exc.strerror or exc)
            if self._upload:
                self._send()

    def _send(self) -> None:
        """Upload the log written so far, then forget the local copy."""
        try:
            with open(self._local, "rb") as f:
                write(self.path, f.read(), "events", self._options)
        except TallyError as exc:
            log.error("%s", exc.message)
        except OSError as exc:
            log.error("cannot write --events %s: %s", display(self.path), exc.strerror)
        finally:
            os.unlink(self._local)
