"""The version of a partition as this process sees it, before and after computing a task.

The coordinator plans each task with the version it listed (size and mtime for a file, the
ETag or last-modified of an object). A cached partial must belong to the bytes the worker
reads, not only to what was planned:

- a local file is looked up only if its size and mtime are still the planned ones, and keyed
  by them together with its inode and ctime (a file replaced by another with the same size
  and mtime is another file); it is stored only if all four are unchanged after computing;
- an object is read with its version checked when opened (and on every read for S3), and its
  partial is stored only if describing it again after computing gives the same version;
- an ``http(s)`` partition is never cached: its single GET does not check the version it was
  planned with, and that version may be a Last-Modified time of one-second resolution.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from tally.errors import PartitionError
from tally.protocol import Task
from tally.storage.ranges import describe
from tally.storage.remote import HTTP_SCHEMES, scheme_of
from tally.storage.sources import is_remote, local_path


def seen_version(task: Task) -> str | None:
    """The version to key ``task`` by, or None when it must not be cached: its version is
    unknown, it is read over http(s), or a local file no longer has the planned size and
    mtime. Objects are keyed by
    their planned version (the read checks it); files by what ``stat`` says now."""
    if not task.version or scheme_of(task.url) in HTTP_SCHEMES:
        return None
    if is_remote(task.url):
        return task.version
    try:
        st = os.stat(local_path(task.url))
    except OSError:
        return None
    if f"{st.st_size}-{st.st_mtime_ns}" != task.version:
        return None
    return f"{task.version}/{st.st_ino}-{st.st_ctime_ns}"


def unchanged(task: Task, version: str, options: Mapping[str, str] | None = None) -> bool:
    """After computing: whether the partition still has the ``version`` it was keyed by."""
    if not is_remote(task.url):
        return seen_version(task) == version
    try:
        return describe(task.url, options)[1] == version
    except PartitionError:
        return False
