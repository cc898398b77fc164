"""Writing a job's records: the result (``--output``), the stats (``--stats``) and the event
log (``--events``) to a local path or any object store fsspec reaches.

Writes are atomic: a local file is written under a temporary name in its folder and renamed
over the target; an object is uploaded in one request or as blocks committed at the end
(S3 multipart, Azure block lists), and is visible only once whole. A reader sees the whole
record or none, and a job that fails writes no result. Before a job starts,
:func:`probe` writes and deletes a small marker beside each target, so that a destination
that cannot be written is a clear error then, not after the work is done.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tally.errors import ConfigError, TallyError
from tally.storage.remote import HTTP_SCHEMES, Unavailable, display, missing_filesystem, scheme_of

if TYPE_CHECKING:
    from tally.result import Result

log = logging.getLogger("tally.storage.outputs")

RESULT_SUFFIXES = (".json", ".csv", ".parquet")


def is_url(target: str) -> bool:
    """Whether ``target`` names an object rather than a local path."""
    return scheme_of(target) not in (None, "file")


def local_target(target: str) -> str:
    return target.removeprefix("file://")


def check_name(target: str, option: str) -> None:
    """ConfigError when ``target`` can never be written: a scheme nothing here writes, or
    (for ``--output``) a name without a known extension."""
    scheme = scheme_of(target)
    if scheme in HTTP_SCHEMES:
        raise ConfigError(f"--{option} {display(target)}: http(s) URLs are read-only here")
    if scheme not in (None, "file"):
        problem = missing_filesystem(scheme or "")
        if problem is not None:
            raise ConfigError(f"--{option} {display(target)}: {problem}")
    if option == "output" and suffix(target) not in RESULT_SUFFIXES:
        raise ConfigError(
            f"--output {display(target)}: the name must end in "
            f"{', '.join(RESULT_SUFFIXES[:-1])} or {RESULT_SUFFIXES[-1]} (the format written)"
        )


def suffix(target: str) -> str:
    path = target.split("?", 1)[0] if is_url(target) else target
    return posixpath.splitext(path)[1].lower()


def probe(target: str, option: str, options: Mapping[str, str] | None = None) -> None:
    """ConfigError, before the job, if ``target`` cannot be written: its folder, bucket or
    container is missing, or writing there is denied. A marker is written and deleted."""
    check_name(target, option)
    marker_name = f".tally-probe-{secrets.token_hex(6)}"
    if not is_url(target):
        path = local_target(target)
        if os.path.isdir(path):
            raise ConfigError(f"cannot write --{option} {target}: it is a folder")
        marker = os.path.join(os.path.dirname(os.path.abspath(path)), marker_name)
        try:
            with open(marker, "wb"):
                pass
            os.unlink(marker)
        except OSError as exc:
            raise ConfigError(f"cannot write --{option} {target}: {exc.strerror}") from exc
        return
    from tally.storage.objectstore import failure, filesystem

    try:
        fs, path = filesystem(target, options)
    except Unavailable as exc:
        raise ConfigError(f"cannot write --{option} {display(target)}: {exc.reason}") from exc
    marker = posixpath.join(posixpath.dirname(path), marker_name)
    try:
        fs.pipe_file(marker, b"")
        fs.rm_file(marker)
    except Exception as exc:  # any storage library's failure: one line, never a traceback
        why, _ = failure(exc)
        raise ConfigError(f"cannot write --{option} {display(target)}: {why}") from exc


def write(target: str, data: bytes, option: str, options: Mapping[str, str] | None = None) -> None:
    """Write ``data`` to ``target`` atomically; TallyError with a one-line reason if it
    cannot be written."""
    if not is_url(target):
        _write_local(local_target(target), data, option)
        return
    from tally.storage.objectstore import failure, filesystem

    try:
        fs, path = filesystem(target, options)
    except Unavailable as exc:
        raise TallyError(f"cannot write --{option} {display(target)}: {exc.reason}") from exc
    try:
        fs.pipe_file(path, data)  # one PUT, or blocks committed at the end: whole or absent
    except Exception as exc:  # any storage library's failure: one line, never a traceback
        why, _ = failure(exc)
        raise TallyError(f"cannot write --{option} {display(target)}: {why}") from exc
    log.info("wrote --%s %s (%d bytes)", option, display(target), len(data))


def _write_local(path: str, data: bytes, option: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise TallyError(f"cannot write --{option} {path}: {exc.strerror or exc}") from exc


def result_bytes(result: Result, target: str) -> bytes:
    """The result as ``target``'s extension says: ``.json`` the ``--format json`` document,
    ``.csv`` the ``--format csv`` text, ``.parquet`` the result's Arrow table."""
    kind = suffix(target)
    if kind == ".parquet":
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        sink = io.BytesIO()
        pq.write_table(result.to_arrow(), sink)
        return sink.getvalue()
    return result.format(kind.lstrip(".")).encode("utf-8")


def write_result(result: Result, target: str, options: Mapping[str, str] | None = None) -> None:
    write(target, result_bytes(result, target), "output", options)


def write_json(record: Any, target: str, option: str, options: Mapping[str, str] | None) -> None:
    import json

    write(target, json.dumps(record, indent=2).encode("utf-8"), option, options)
