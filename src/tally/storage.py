"""Expanding a SOURCE into partition URLs, and opening partitions, through fsspec.

SOURCE is a glob (``data/*.tsv``), a folder (its files, sorted by name; hidden and
``_``-prefixed files and ``filelist.csv`` left out) or a file list (a text file, local or
remote, with one partition URL or path per line; blank lines and ``#`` comments skipped;
relative paths are relative to the list). Local paths and ``file://`` URLs are opened with
the built-in ``open`` (no fsspec overhead on the hot path); everything else via fsspec.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from tally.errors import ConfigError, PartitionError

GLOB_CHARS = "*?["
FILELIST_NAME = "filelist.csv"


def is_remote(url: str) -> bool:
    scheme = urlsplit(url).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter: a Windows drive


def local_path(url: str) -> str:
    """The filesystem path of a local path or ``file://`` URL."""
    if url.startswith("file://"):
        return unquote(urlsplit(url).path)
    return url


def _fs_and_path(url: str) -> tuple[object, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def expand_source(source: str) -> list[str]:
    """The partition URLs that SOURCE names, in a stable order. ConfigError if none."""
    try:
        urls = _expand(source)
    except ConfigError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"cannot read source {source}: {exc}") from exc
    if not urls:
        raise ConfigError(f"source {source} names no partitions")
    return urls


def _expand(source: str) -> list[str]:
    if not is_remote(source):
        path = local_path(source)
        if any(c in path for c in GLOB_CHARS):
            import glob

            return [os.path.abspath(p) for p in sorted(glob.glob(path)) if os.path.isfile(p)]
        if os.path.isdir(path):
            return [
                os.path.join(os.path.abspath(path), name)
                for name in sorted(os.listdir(path))
                if not name.startswith((".", "_"))
                and name != FILELIST_NAME
                and os.path.isfile(os.path.join(path, name))
            ]
        if not os.path.exists(path):
            raise ConfigError(f"source {source} does not exist")
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        base = os.path.dirname(os.path.abspath(path))
        return _parse_list(text, lambda p: os.path.join(base, p))
    fs, path = _fs_and_path(source)
    if any(c in path for c in GLOB_CHARS):
        protocol = source.split("://", 1)[0]
        return [f"{protocol}://{p}" for p in sorted(fs.glob(path))]  # type: ignore[attr-defined]
    with fs.open(path, "rb") as f:  # type: ignore[attr-defined]
        text = f.read().decode("utf-8")
    base = source.rsplit("/", 1)[0]
    return _parse_list(text, lambda p: f"{base}/{p}")


def _parse_list(text: str, resolve: Callable[[str], str]) -> list[str]:
    urls = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not is_remote(line) and not line.startswith("file://") and not os.path.isabs(line):
            line = resolve(line)
        urls.append(line)
    return urls


def open_partition(url: str) -> BinaryIO:
    """Open a partition for reading; PartitionError (retryable) if it cannot be opened."""
    try:
        if not is_remote(url):
            return open(local_path(url), "rb")
        import fsspec

        return fsspec.open(url, "rb").open()  # type: ignore[no-any-return]
    except (OSError, ValueError, ImportError) as exc:
        raise PartitionError(f"cannot open {url}: {exc}") from exc
