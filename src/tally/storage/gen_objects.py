"""``tally gen`` into an object store: the same partitions as :func:`tally.datagen.generate`,
uploaded as ``PREFIX/part-NNNNN.tsv`` with ``PREFIX/filelist.csv`` listing their URLs.

Each partition is streamed up in blocks (S3 multipart, Azure staged blocks) and committed
only when whole; a failed upload is abandoned, never committed half-written. A data set
generated under the prefix before is replaced: its partitions beyond the new count are
deleted; other objects are left alone. A missing bucket or container is created.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tally.datagen import _PARTITION_RE, FILELIST, build_vocabulary, iter_partition
from tally.errors import ConfigError, TallyError
from tally.storage.objectstore import failure, filesystem
from tally.storage.remote import Unavailable, display

log = logging.getLogger("tally.gen")
UPLOADS = 4  # partitions uploaded at once


def generate_objects(
    prefix: str,
    partitions: int,
    partition_size: int,
    seed: int,
    options: Mapping[str, str] | None = None,
) -> list[str]:
    """Write the data set under ``prefix``; return the partition URLs in order."""
    if partitions < 1 or partition_size < 1 or seed < 0:
        raise ConfigError("partitions and partition size must be positive, seed at least 0")
    started = time.perf_counter()
    try:
        fs, root = filesystem(prefix.rstrip("/") + "/", options)
    except Unavailable as exc:
        raise TallyError(f"cannot write into {display(prefix)}: {exc.reason}") from exc
    root = root.rstrip("/")
    scheme = prefix.split("://", 1)[0]

    def url(path: str) -> str:  # the prefix's own scheme (az://, not abfs://)
        return f"{scheme}://{path}"

    _ensure_container(fs, root, prefix)
    vocab = build_vocabulary(seed)
    paths = [posixpath.join(root, f"part-{i:05d}.tsv") for i in range(partitions)]

    def upload(index: int) -> int:
        return _upload(fs, paths[index], iter_partition(vocab, seed, index, partition_size))

    try:
        with ThreadPoolExecutor(min(UPLOADS, partitions)) as pool:
            total = sum(pool.map(upload, range(partitions)))
        urls = [url(p) for p in paths]
        _upload(fs, posixpath.join(root, FILELIST), ["".join(u + "\n" for u in urls).encode()])
        _remove_beyond(fs, root, partitions)
    except TallyError:
        raise
    except Exception as exc:  # any storage library's failure: one line, never a traceback
        raise TallyError(f"cannot write into {display(prefix)}: {failure(exc)[0]}") from exc
    elapsed = time.perf_counter() - started
    log.info(
        "wrote %d partitions, %.1f MB in %.2fs (%.0f MB/s); file list %s",
        partitions,
        total / 1e6,
        elapsed,
        total / 1e6 / max(elapsed, 1e-9),
        url(posixpath.join(root, FILELIST)),
    )
    return urls


def _ensure_container(fs: Any, root: str, prefix: str) -> None:
    """Create the bucket or container when it is missing."""
    container = root.split("/", 1)[0]
    if not container:
        raise ConfigError(
            f"cannot generate into {display(prefix)}: it names no bucket or container"
        )
    try:
        if not fs.exists(container):
            fs.mkdir(container)
            log.info("created %s", f"{prefix.split('://', 1)[0]}://{container}")
    except Exception as exc:  # any storage library's failure: one line, never a traceback
        raise TallyError(f"cannot write into {display(prefix)}: {failure(exc)[0]}") from exc


def _upload(fs: Any, path: str, chunks: Iterable[bytes]) -> int:
    """Stream ``chunks`` to ``path``, committed only when all were written."""
    written = 0
    f = fs.open(path, "wb")
    try:
        for chunk in chunks:
            f.write(chunk)
            written += len(chunk)
    except BaseException:
        f.discard()  # abandon the staged upload (S3: abort the multipart upload)
        f.closed = True  # and never commit it, not even when the file object is collected
        raise
    f.close()
    return written


def _remove_beyond(fs: Any, root: str, partitions: int) -> None:
    """Partitions of an earlier, larger data set under the same prefix."""
    stale = []
    for path in fs.find(root + "/", maxdepth=1):
        match = _PARTITION_RE.fullmatch(posixpath.basename(path))
        if match and int(match[1]) >= partitions:
            stale.append(path)
    if stale:
        fs.rm(stale)
        log.info("removed %d partition(s) of an earlier data set", len(stale))
