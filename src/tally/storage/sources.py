"""Expanding a SOURCE into partition URLs, and opening partitions.

SOURCE is a glob (``data/*.tsv``), a folder (its files, sorted by name; hidden and
``_``-prefixed files and ``filelist.csv`` left out), a file list, or a single data file. A
file is told apart by its first 64 KiB: lines with tab-separated columns (or binary bytes)
make a data file, one partition; a file named ``*.csv``, ``*.txt`` or ``*.lst``, or whose
every line names a path or URL, is a file list (one partition URL or path per line; blank
lines and ``#`` comments skipped; relative entries resolved against the list, a remote one's
without its query string). Every other file is data. The decision is logged.

A list is checked before the job starts: an entry with a scheme nothing here can open, a
local entry that is not a regular file (a FIFO or a device would hang a worker), or a list
none of whose entries exists, is a ConfigError naming the first bad entry. A missing entry
among existing ones is left to fail as a partition (it may be on the workers' disks only).

Local paths and ``file://`` URLs are opened with the built-in ``open`` (the hot path: no
fsspec); remote ones through :mod:`tally.storage.remote`.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

from tally.errors import ConfigError, PartitionError
from tally.storage.remote import (
    HTTP_SCHEMES,
    Unavailable,
    display,
    missing_filesystem,
    open_remote,
    reason,
    scheme_of,
)

log = logging.getLogger("tally.storage.sources")

GLOB_CHARS = "*?["
FILELIST_NAME = "filelist.csv"
LIST_SUFFIXES = (".csv", ".txt", ".lst")
HEAD_BYTES = 64 << 10  # what decides whether a file is a list or data
BOM = b"\xef\xbb\xbf"
# an entry not known to exist still looks like a path when it has no blanks and a folder
# or a file extension in it: a list of such names is a list, and is checked as one
_PATH_LIKE = re.compile(r"[^\s]*(/|\.[A-Za-z0-9]{1,10})[^\s]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_remote(url: str) -> bool:
    scheme = urlsplit(url).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter: a Windows drive


def local_path(url: str) -> str:
    """The filesystem path of a local path or ``file://`` URL."""
    if url.startswith("file://"):
        return unquote(urlsplit(url).path)
    return url


def expand_source(source: str, options: Mapping[str, str] | None = None) -> list[str]:
    """The partition URLs that SOURCE names, in a stable order. ConfigError if none.
    ``options`` are the storage options (``KEY=VALUE`` texts) for object stores."""
    try:
        urls = _expand(source, options)
    except Unavailable as exc:
        raise ConfigError(f"cannot read source {display(source)}: {exc.reason}") from exc
    except PartitionError as exc:  # reading a remote list broke off
        raise ConfigError(exc.message) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read source {display(source)}: {reason(exc)}") from exc
    if not urls:
        raise ConfigError(f"source {display(source)} names no partitions")
    return urls


def open_partition(
    url: str,
    offset: int = 0,
    options: Mapping[str, str] | None = None,
    needed: int = -1,
    version: str = "",
) -> BinaryIO:
    """Open a partition for reading from byte ``offset``; PartitionError (retryable unless
    another attempt cannot help, like after an HTTP 404) if it cannot be opened. For an
    object store: the storage ``options``, how far the task surely reads (``needed``, -1:
    to the end) and the ``version`` it was listed with (see
    :func:`tally.storage.remote.open_remote`)."""
    if not is_remote(url):
        path = local_path(url)
        try:
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):  # reading a FIFO or a device would never end
                raise PartitionError(f"cannot open {url}: not a regular file ({_kind(mode)})")
            stream = open(path, "rb")  # noqa: SIM115
            if offset:
                stream.seek(offset)
            return stream
        except OSError as exc:
            raise PartitionError(f"cannot open {url}: {reason(exc)}") from exc
    try:
        return open_remote(url, offset, options, needed, version)
    except Unavailable as exc:
        message = f"cannot open {display(url)}: {exc.reason}"
        raise PartitionError(message, retryable=exc.retryable) from exc


def _expand(source: str, options: Mapping[str, str] | None) -> list[str]:
    scheme = scheme_of(source)
    if scheme is not None and scheme != "file":
        problem = missing_filesystem(scheme)
        if problem is not None:
            raise ConfigError(f"source {display(source)}: {problem}")
        if scheme in HTTP_SCHEMES:  # taken literally: no globs, the query string kept
            return _expand_file(source, open_remote(source), _http_resolver(source), None)
        return _expand_fsspec(source, options)
    path = local_path(source)
    if any(c in path for c in GLOB_CHARS) and not os.path.lexists(path):
        import glob

        urls = [os.path.abspath(p) for p in sorted(glob.glob(path)) if os.path.isfile(p)]
        log.info("source %s: a glob matching %d file(s)", source, len(urls))
        return urls
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"source {source} does not exist") from None
    if stat.S_ISDIR(mode):
        urls = [
            os.path.join(os.path.abspath(path), name)
            for name in sorted(os.listdir(path))
            if _listed(name) and os.path.isfile(os.path.join(path, name))
        ]
        log.info("source %s: a folder of %d file(s)", source, len(urls))
        return urls
    if not stat.S_ISREG(mode):
        raise ConfigError(f"source {source} is not a file or a folder ({_kind(mode)})")
    base = os.path.dirname(os.path.abspath(path))
    resolve = lambda entry: os.path.join(base, entry)  # noqa: E731
    return _expand_file(source, open(path, "rb"), resolve, os.path.abspath(path))


def _expand_fsspec(source: str, options: Mapping[str, str] | None) -> list[str]:
    """A glob, a prefix (folder), a list or a data file in an object store. What the
    listing said of each object is kept for planning: its size and version (ETag)."""
    from tally.storage.objectstore import failure, filesystem, remember_listed

    fs, path = filesystem(source, options)
    scheme = scheme_of(source)

    def unstrip(found: str) -> str:  # the source's own scheme (az://, not abfs://)
        return f"{scheme}://{found}"

    try:
        fs.invalidate_cache()  # a long-lived process lists afresh, never from an old listing
        if any(c in path for c in GLOB_CHARS):
            found = fs.glob(path, detail=True)  # one listing, not a request per object
            files = [p for p in sorted(found) if found[p]["type"] == "file"]
            urls = [remember_listed(unstrip(p), found[p]) for p in files]
            log.info("source %s: a glob matching %d object(s)", display(source), len(urls))
            return urls
        if fs.isdir(path):
            listed = fs.find(path, maxdepth=1, detail=True)
            names = sorted(p for p in listed if _listed(posixpath.basename(p)))
            urls = [remember_listed(unstrip(p), listed[p]) for p in names]
            log.info("source %s: a prefix of %d object(s)", display(source), len(urls))
            return urls
    except Exception as exc:  # any storage library's failure: one line, never a traceback
        raise Unavailable(*failure(exc)) from exc
    folder = posixpath.dirname(path)

    def resolve(entry: str) -> str:
        return unstrip(posixpath.normpath(posixpath.join(folder, entry)))

    return _expand_file(source, open_remote(source, 0, options), resolve, None)


def _http_resolver(source: str) -> Callable[[str], str]:
    base = source.split("#", 1)[0].split("?", 1)[0]  # a list's token is not its entries'
    return lambda entry: urljoin(base, entry)


def _expand_file(
    source: str, stream: Any, resolve: Callable[[str], str], local: str | None
) -> list[str]:
    """One file: a list (its entries) or data (itself). ``local`` is its path if local."""
    with stream:
        head = _read_head(stream)
        exists = os.path.exists if local is not None else lambda _: False
        is_list, why = classify(source, head, len(head) < HEAD_BYTES, resolve, exists)
        if not is_list:
            log.info("source %s: a data file, one partition (%s)", display(source), why)
            return [local if local is not None else source]
        data = head + stream.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"file list {display(source)} is not UTF-8 text (byte {exc.start})"
        ) from None
    urls = parse_list(display(source), text, resolve)
    log.info("source %s: a file list of %d partition(s) (%s)", display(source), len(urls), why)
    return urls


def _read_head(stream: Any) -> bytes:
    head = b""
    while len(head) < HEAD_BYTES and (piece := stream.read(HEAD_BYTES - len(head))):
        head += piece
    return bytes(head)


def classify(
    name: str,
    head: bytes,
    complete: bool,
    resolve: Callable[[str], str],
    exists: Callable[[str], bool],
) -> tuple[bool, str]:
    """Whether a file whose first bytes are ``head`` (all of it if ``complete``) is a file
    list rather than data, and why."""
    head = head.removeprefix(BOM)
    if b"\0" in head:
        return False, "it holds binary bytes"
    lines = head.split(b"\n")
    if not complete:
        if len(lines) == 1:
            return False, f"its first line is longer than {HEAD_BYTES >> 10} KiB"
        lines = lines[:-1]  # maybe cut short
    stripped = [line.strip() for line in lines]
    entries = [line for line in stripped if line and not line.startswith(b"#")]
    if any(b"\t" in entry for entry in entries):
        return False, "its lines have tab-separated columns"
    suffix = posixpath.splitext(urlsplit(name).path if scheme_of(name) else name)[1].lower()
    if suffix in LIST_SUFFIXES:
        return True, f"named {suffix}"
    if not entries:
        comments = any(line.startswith(b"#") for line in stripped)
        return (True, "only comments") if comments else (False, "it has no lines")
    try:
        texts = [entry.decode("utf-8") for entry in entries]
    except UnicodeDecodeError:
        return False, "it is not UTF-8 text"
    for text in texts:
        if not (
            scheme_of(text)
            or os.path.isabs(text)
            or _PATH_LIKE.fullmatch(text)
            or exists(resolve(text))
        ):
            return False, f"a line names no path or URL: {text[:60]!r}"
    return True, "every line names a path or URL"


def parse_list(name: str, text: str, resolve: Callable[[str], str]) -> list[str]:
    """The partition URLs of a file list. ConfigError for an entry that cannot be a
    partition (a control character, a scheme nothing here opens, a local non-regular file),
    or for a list none of whose local entries exists."""
    urls: list[str] = []
    first_missing: tuple[int, str] | None = None
    found = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        def bad(why: str, number: int = number) -> ConfigError:
            return ConfigError(f"file list {name}, line {number}: {why}")

        if _CONTROL.search(line):
            raise bad(f"{line[:80]!r} is not a path or URL (a tab or control character)")
        scheme = scheme_of(line)
        if scheme is not None and scheme != "file":
            problem = missing_filesystem(scheme)
            if problem is not None:
                raise bad(f"{display(line)}: {problem}")
            urls.append(line)
            found = True
            continue
        url = line if scheme == "file" or os.path.isabs(line) else resolve(line)
        urls.append(url)
        if is_remote(url):  # relative to a remote list
            found = True
            continue
        try:
            mode = os.stat(local_path(url)).st_mode
        except OSError:
            first_missing = first_missing or (number, url)
            continue
        if not stat.S_ISREG(mode):
            raise bad(f"{url} is not a regular file ({_kind(mode)})")
        found = True
    if not found and first_missing is not None:
        number, url = first_missing
        raise ConfigError(
            f"file list {name} names no existing file: line {number}, {url}, does not exist "
            "(a data file's lines have tab-separated columns)"
        )
    return urls


def _listed(name: str) -> bool:
    """Whether a folder's file named ``name`` is one of its partitions."""
    return not name.startswith((".", "_")) and name != FILELIST_NAME


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"
