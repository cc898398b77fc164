"""The storage watcher's I/O: listing a folder or prefix with each object's version, and
writing a result file atomically.

A local folder is listed with ``os.scandir`` (versions as :func:`tally.storage.ranges.describe`
gives them: size and mtime in nanoseconds); any other URL through its fsspec filesystem
(``az://``, ``s3://`` when adlfs or s3fs is installed): one recursive listing per poll,
the version being the ETag the listing carries (a blob or object is listed only once its
upload is committed, so it never needs to settle).

What bounds a listing's cost: a full listing is one flat listing of the prefix, paged by
the store (5,000 blobs a page on Azure, 1,000 keys on S3), so it costs about N/1000
requests and time linear in the N objects under the prefix (seconds at 10,000 objects on
the local servers: see ``bench/watch_latency.py``). Both stores list in name order and can
start after a name (S3's ``StartAfter``, Azure's ``startFrom``), so between full listings
:func:`list_after` asks only for the names after the greatest one seen: one request when
names grow (dated or numbered uploads), whatever the prefix holds. A re-uploaded object,
or a new one whose name sorts earlier, waits for the next full listing
(``--full-listing-interval``; by default every poll while a full listing is quicker than
``--poll-interval``, else ten times the last one's duration: about every minute for
10,000 objects on the local servers). With
``--notify`` the listing is only a slow backfill (``--poll-interval`` defaults to 60 s
there) and each event costs one describe.
"""

from __future__ import annotations

import os
import posixpath
from datetime import datetime
from typing import Any

from tally.errors import ConfigError
from tally.service.watch_state import Listed, ignored
from tally.storage.sources import is_remote, local_path


def check_places(source: str, output: str) -> None:
    """ConfigError unless SOURCE is a folder or prefix and PREFIX is not inside it."""
    if is_remote(source):
        if not is_remote(output) and output.rstrip("/").startswith(source.rstrip("/") + "/"):
            raise ConfigError(f"--output {output} is inside the watched {source}")
        return
    folder = local_path(source)
    if not os.path.isdir(folder):
        raise ConfigError(f"--watch {source} is not a folder")
    if is_remote(output):
        return
    inside = os.path.realpath(local_path(output)) + os.sep
    if inside.startswith(os.path.realpath(folder) + os.sep):
        raise ConfigError(f"--output {output} is inside the watched folder {source}")


def list_objects(source: str) -> list[Listed]:
    """Every object under SOURCE (hidden and ``_``-prefixed names left out)."""
    if is_remote(source):
        return _list_fsspec(source)
    root = os.path.abspath(local_path(source))
    found: list[Listed] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith((".", "_")):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except FileNotFoundError:  # removed while listed
                    continue
                name = os.path.relpath(entry.path, root).replace(os.sep, "/")
                version = f"{st.st_size}-{st.st_mtime_ns}"
                found.append(Listed(name, entry.path, version, st.st_mtime))
    return found


def _list_fsspec(source: str) -> list[Listed]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    root = root.rstrip("/")
    fs.invalidate_cache()  # a listing kept from the previous poll would hide new objects
    found: list[Listed] = []
    for path, info in fs.find(root, detail=True).items():
        if info.get("type") == "directory":
            continue
        name = path[len(root) :].lstrip("/") if path.startswith(root) else posixpath.basename(path)
        if not name or ignored(name):
            continue
        version, mtime = version_of(info)
        found.append(Listed(name, object_url(source, name), version, mtime))
    return found


def list_after(source: str, after: str) -> list[Listed]:
    """The objects under the remote prefix SOURCE whose names sort after ``after``."""
    import fsspec
    from fsspec.asyn import sync

    fs, root = fsspec.core.url_to_fs(source)
    container, _, prefix = root.strip("/").partition("/")
    prefix = f"{prefix}/" if prefix else ""
    found: list[Listed] = []

    def add(key: str, info: dict[str, Any]) -> None:
        name = key[len(prefix) :]
        if key.startswith(prefix) and name > after and not ignored(name):
            version, mtime = version_of(info)
            found.append(Listed(name, object_url(source, name), version, mtime))

    if "s3" in fs.protocol:
        options: dict[str, Any] = {"Bucket": container, "Prefix": prefix}
        options["StartAfter"] = prefix + after
        while True:
            page = fs.call_s3("list_objects_v2", **options)
            for item in page.get("Contents", []):
                add(item["Key"], {**item, "size": item.get("Size")})
            if not page.get("IsTruncated"):
                return found
            options = {"Bucket": container, "Prefix": prefix,
                       "ContinuationToken": page["NextContinuationToken"]}  # fmt: skip

    async def blobs() -> None:
        client = fs.service_client.get_container_client(container)
        async for blob in client.list_blobs(name_starts_with=prefix, start_from=prefix + after):
            add(blob.name, {"etag": blob.etag, "last_modified": blob.last_modified,
                            "size": blob.size})  # fmt: skip

    sync(fs.loop, blobs)
    return found


def object_url(source: str, name: str) -> str:
    """The URL of object ``name`` under the watched prefix SOURCE."""
    return f"{source.rstrip('/')}/{name}"


def describe(url: str, name: str) -> Listed | None:
    """Object ``url`` as a listing would show it under ``name``; None if it does not exist
    (other errors, such as access refused or storage down, are raised)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info.get("type") == "directory":
        return None
    version, mtime = version_of(info)
    return Listed(name, url, version, mtime)


def version_of(info: dict[str, Any]) -> tuple[str, float | None]:
    """An object's version (its ETag, else its size and last-modified time) and its
    last-modified time in Unix seconds, from a listing's entry."""
    when = info.get("LastModified") or info.get("last_modified") or info.get("mtime")
    mtime: float | None = None
    if isinstance(when, datetime):
        mtime = when.timestamp()
    elif isinstance(when, int | float):
        mtime = float(when)
    tag = info.get("ETag") or info.get("etag")
    version = str(tag).strip('"') if tag else f"{info.get('size')}-{when}"
    return version, mtime


def output_url(prefix: str, name: str) -> str:
    """Where the result of object ``name`` goes under PREFIX."""
    if is_remote(prefix):
        return f"{prefix.rstrip('/')}/{name}"
    return os.path.join(local_path(prefix), *name.split("/"))


def write_atomic(url: str, data: bytes) -> None:
    """Write ``data`` so that a reader sees all of it or the previous file: a temporary file
    renamed over the target locally; one PUT (atomic in object stores) remotely."""
    if is_remote(url):
        import fsspec

        with fsspec.open(url, "wb") as f:
            f.write(data)
        return
    path = local_path(url)
    folder, base = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    temp = os.path.join(folder, f".{base}.{os.getpid()}.tmp")
    with open(temp, "wb") as f:
        f.write(data)
    os.replace(temp, path)
