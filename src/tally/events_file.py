"""Event records as JSON lines, each written and flushed as it happens, so that the file
can be followed while jobs run (``--events``)."""

from __future__ import annotations

import json
import logging
from typing import Any, TextIO

from tally.errors import ConfigError

log = logging.getLogger("tally.events")


class EventFile:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._file: TextIO | None = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
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
