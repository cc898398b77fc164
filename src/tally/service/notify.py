"""What a notification means, without any I/O: the objects a queue message says were
created, whether each lies under the watched prefix, and what becomes of the message.

Two kinds of message are read:

- An Azure Storage queue fed by Event Grid: one event in the Event Grid schema (or a JSON
  array of them), as JSON text or Base64-encoded JSON text (how Event Grid writes to a
  storage queue). ``Microsoft.Storage.BlobCreated`` events name their blob in ``subject``
  (``/blobServices/default/containers/C/blobs/NAME``) and carry ``data.eTag``. CloudEvents
  (``type``/``subject``/``data``) are read the same way.
- An SQS queue fed by S3 event notifications: ``{"Records": [...]}`` with
  ``eventName`` ``ObjectCreated:*``, ``s3.bucket.name``, ``s3.object.key`` (URL-encoded,
  spaces as ``+``) and ``s3.object.eTag``; also wrapped in an SNS envelope
  (``{"Type": "Notification", "Message": "..."}``).

A message about something else of storage (a deleted blob, S3's ``s3:TestEvent``) holds
no object and is simply deleted; one that is not JSON, or JSON but no storage event, is
*poison*: it is left on the queue to be tried again and dead-lettered once it has been
received ``max_tries`` times. Events are at-least-once and unordered, so an event only
says "look at this object": its version comes from describing the object, and the
watcher's checkpoint by version (:mod:`tally.service.watch_state`) drops duplicates.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
_SUBJECT = "/blobServices/default/containers/"


class Poison(Exception):
    """A message that is no storage event; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Created:
    """One object-created event."""

    scheme: str  # "az" or "s3": the store whose URLs name the object
    container: str  # container or bucket
    key: str  # the object's full name in it
    version: str | None = None  # the ETag the event carries, unquoted


@dataclass
class Message:
    """What one queue message holds: the created objects, and how many other storage
    events (deletions, test events) came with them."""

    created: list[Created] = field(default_factory=list)
    other: int = 0


def parse(body: str | bytes) -> Message:
    """The events of a message body; :class:`Poison` if it holds none."""
    doc = _json(body)
    message = Message()
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
        doc = _json(str(doc["Message"]))  # an SNS envelope
    if isinstance(doc, dict) and isinstance(doc.get("Records"), list):
        for record in doc["Records"]:
            _s3_record(record, message)
    elif isinstance(doc, dict) and doc.get("Event") == "s3:TestEvent":
        message.other += 1
    elif isinstance(doc, list) and doc:
        for event in doc:
            _grid_event(event, message)
    elif isinstance(doc, dict):
        _grid_event(doc, message)
    else:
        raise Poison("not a storage event")
    return message


def _json(body: str | bytes) -> Any:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        try:  # Event Grid writes Base64-encoded JSON to storage queues
            stripped = base64.b64decode(stripped, validate=True).decode("utf-8").strip()
        except (binascii.Error, ValueError):
            raise Poison("neither JSON nor Base64-encoded JSON") from None
    try:
        return json.loads(stripped)
    except ValueError as exc:
        raise Poison(f"malformed JSON: {exc}") from None


def _s3_record(record: Any, message: Message) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("eventName"), str):
        raise Poison("an S3 record without eventName")
    if not record["eventName"].startswith(("ObjectCreated:", "s3:ObjectCreated:")):
        message.other += 1
        return
    try:
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        key = unquote_plus(obj["key"])
    except (KeyError, TypeError):
        raise Poison("an S3 ObjectCreated record without bucket name and key") from None
    tag = obj.get("eTag") or obj.get("etag")
    message.created.append(Created("s3", str(bucket), key, _unquoted(tag)))


def _grid_event(event: Any, message: Message) -> None:
    if not isinstance(event, dict):
        raise Poison("an event that is not a JSON object")
    kind = event.get("eventType", event.get("type"))
    subject = event.get("subject")
    if not isinstance(kind, str) or not isinstance(subject, str):
        raise Poison("not an Event Grid event (no eventType and subject)")
    if kind != BLOB_CREATED:
        message.other += 1
        return
    if not subject.startswith(_SUBJECT) or "/blobs/" not in subject:
        raise Poison(f"a BlobCreated event with subject {subject!r}")
    container, _, key = subject[len(_SUBJECT) :].partition("/blobs/")
    if not container or not key:
        raise Poison(f"a BlobCreated event with subject {subject!r}")
    data = event.get("data")
    tag = data.get("eTag") if isinstance(data, dict) else None
    message.created.append(Created("az", container, key, _unquoted(tag)))


def _unquoted(tag: Any) -> str | None:
    return str(tag).strip('"') if tag else None


def name_under(event: Created, source: str) -> str | None:
    """The object's name under the watched prefix SOURCE (``az://container/prefix/`` or
    ``s3://bucket/prefix/``), or None if it lies outside (another store, container or
    prefix). ``abfs://`` and ``abfss://`` are ``az://``; ``s3a://`` is ``s3://``."""
    scheme, _, rest = source.partition("://")
    scheme = {"abfs": "az", "abfss": "az", "s3a": "s3"}.get(scheme, scheme)
    container, _, prefix = rest.partition("/")
    if scheme != event.scheme or container != event.container:
        return None
    prefix = prefix.strip("/")
    if not prefix:
        return event.key or None
    if not event.key.startswith(prefix + "/"):
        return None
    return event.key[len(prefix) + 1 :] or None


def dead_letter(tries: int, max_tries: int) -> bool:
    """Whether a message that failed on its ``tries``-th receipt goes to the poison queue
    (else it is tried again once it is visible again)."""
    return tries >= max_tries


@dataclass
class Counts:
    """What the notifications have brought, for the log and the events file."""

    messages: int = 0
    objects: int = 0  # created objects under the prefix
    submitted: int = 0  # ... that became a job
    duplicates: int = 0  # ... whose version already had one
    outside: int = 0  # created objects outside the watched prefix
    other: int = 0  # storage events that are not a creation
    retried: int = 0  # failed receipts left to be tried again
    dead_lettered: int = 0

    def shown(self) -> str:
        return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in vars(self).items())
