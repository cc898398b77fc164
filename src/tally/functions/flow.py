"""The serverless flow's decisions, without I/O: what an upload is (from an Event Grid event
or a blob trigger's properties), how it is cut into range messages, where each piece is kept,
and whether a map is the one that merges.

Keys, in the work container (``_``-prefixed, so a watcher of the same container skips them):

- ``_partials/<container>/<name>/<version>/<index>.arrow``: one range's partial (an Arrow IPC
  stream; its line counts in the blob's metadata). A duplicate delivery rewrites the same
  bytes, so the merge counts each range once however often it ran.
- ``_claims/<container>/<name>/<version>``: created with ``If-None-Match: *`` by a map that
  sees all the partials; the one whose create succeeds merges, and the claim holds its queue
  message id, so that a redelivery of that same message (a merge that failed half-way)
  merges again, while every other map leaves.

Each map writes its partial before it lists them, and Blob Storage is strongly consistent, so
the listing of whichever map wrote last sees every partial: some map always merges, and the
claim makes it exactly one.

The result goes to ``<output prefix>/<name>.json``, the layout of ``tally serve --watch``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import msgspec

from tally.errors import TallyError
from tally.storage.ranges import cut

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SUBJECT = re.compile(r"^/blobServices/default/containers/([^/]+)/blobs/(.+)$")
PARTIALS = "_partials"
CLAIMS = "_claims"
SUFFIX = ".arrow"
UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class BadMessage(TallyError):
    """A queue message or event that can never be processed (retrying cannot help)."""


class Upload(msgspec.Struct, frozen=True):
    """One version of an uploaded object."""

    container: str
    name: str
    version: str  # the ETag, without quotes
    size: int


class RangeWork(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A map's queue message: range ``index`` of ``count`` of one object version."""

    container: str
    name: str
    version: str
    index: int
    count: int
    start: int
    end: int  # -1: to the end of the object

    @property
    def upload(self) -> Upload:
        return Upload(self.container, self.name, self.version, -1)


# --- what was uploaded -----------------------------------------------------------------------


def upload_from_event(body: bytes | str) -> Upload | None:
    """The upload an Event Grid event (Event Grid or CloudEvents schema; one event, or a list
    of one) announces; None for another event type (a deletion: nothing to do); BadMessage
    if it is not such an event."""
    try:
        event: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"not a JSON event ({exc})") from None
    if isinstance(event, list):
        if len(event) != 1:
            raise BadMessage(f"a list of {len(event)} events, not one")
        event = event[0]
    if not isinstance(event, dict):
        raise BadMessage("not an event object")
    kind = event.get("eventType", event.get("type"))
    if not isinstance(kind, str):
        raise BadMessage("an event without eventType")
    if kind != BLOB_CREATED:
        return None
    subject = event.get("subject")
    data = event.get("data")
    found = SUBJECT.match(subject) if isinstance(subject, str) else None
    if found is None or not isinstance(data, dict):
        raise BadMessage(f"a {BLOB_CREATED} event without a blob subject and data")
    etag, size = data.get("eTag"), data.get("contentLength")
    if not isinstance(etag, str) or not etag.strip('"'):
        raise BadMessage("a blob event without data.eTag")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadMessage("a blob event without a valid data.contentLength")
    return Upload(found.group(1), found.group(2), etag.strip('"'), size)


def upload_from_blob(path: str, properties: dict[str, Any] | None) -> Upload | None:
    """The upload a blob trigger names: ``path`` is ``container/name``, as the host gives
    it; None when ``properties`` lack the ETag or the length (the caller reads them)."""
    container, _, name = path.partition("/")
    if not container or not name:
        raise BadMessage(f"blob trigger path {path!r} is not container/name")
    props = properties or {}
    etag = props.get("ETag") or props.get("etag")
    size = props.get("ContentLength", props.get("Length"))
    if not isinstance(etag, str) or not etag.strip('"') or size is None:
        return None
    try:
        length = int(size)
    except (TypeError, ValueError):
        return None
    return Upload(container, name, etag.strip('"'), length)


def ignored(name: str) -> bool:
    """Names the flow never processes: its own ``_`` outputs and hidden files."""
    return any(part.startswith(("_", ".")) for part in name.split("/"))


# --- cutting and messages ----------------------------------------------------------------------


def split(upload: Upload, split_size: int) -> list[RangeWork]:
    """One message per line-aligned range of about ``split_size`` bytes (one for the whole
    object when it is smaller)."""
    cuts = cut(upload.size, split_size)
    return [
        RangeWork(upload.container, upload.name, upload.version, i, len(cuts), a, b)
        for i, (a, b) in enumerate(cuts)
    ]


def encode(work: RangeWork) -> str:
    return msgspec.json.encode(work).decode("utf-8")


def decode(body: bytes | str) -> RangeWork:
    """A range message; BadMessage saying what is wrong with it."""
    try:
        work = msgspec.json.decode(body, type=RangeWork)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadMessage(f"not a range message ({exc})") from None
    if not work.container or not work.name or not work.version:
        raise BadMessage("a range message without container, name or version")
    if not 0 <= work.index < work.count or work.start < 0:
        raise BadMessage(f"range {work.index} of {work.count} from byte {work.start}")
    if work.end != -1 and work.end <= work.start:
        raise BadMessage(f"range [{work.start}, {work.end}) is empty")
    return work


# --- keys ------------------------------------------------------------------------------------


def version_tag(version: str) -> str:
    """A version as a path segment."""
    return UNSAFE.sub("_", version.strip('"'))


def partials_prefix(upload: Upload) -> str:
    return f"{PARTIALS}/{upload.container}/{upload.name}/{version_tag(upload.version)}/"


def partial_key(work: RangeWork) -> str:
    return f"{partials_prefix(work.upload)}{work.index:06d}{SUFFIX}"


def claim_key(upload: Upload) -> str:
    return f"{CLAIMS}/{upload.container}/{upload.name}/{version_tag(upload.version)}"


def result_key(prefix: str, name: str) -> str:
    """The result blob's name under the output prefix (``""``: the container's top)."""
    return f"{prefix.strip('/')}/{name}.json" if prefix.strip("/") else f"{name}.json"


# --- am I the one that merges ----------------------------------------------------------------


def present(names: Iterable[str], prefix: str, count: int) -> set[int]:
    """The range indices among the listed partial blob ``names`` under ``prefix``."""
    found = set()
    for name in names:
        stem = name[len(prefix) :] if name.startswith(prefix) else ""
        if stem.endswith(SUFFIX) and stem[: -len(SUFFIX)].isdigit():
            index = int(stem[: -len(SUFFIX)])
            if index < count:
                found.add(index)
    return found


def all_present(found: set[int], count: int) -> bool:
    return len(found) == count


def merges(created_claim: bool, owner: str | None, me: str) -> bool:
    """Whether this map merges: it created the claim, or the claim is its own message's
    (a redelivery after a merge that did not finish)."""
    return created_claim or owner == me
