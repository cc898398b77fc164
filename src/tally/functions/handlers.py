"""The serverless flow's storage calls: thin shells around :mod:`tally.functions.flow`,
called by the Azure Functions app with what its triggers deliver.

- :meth:`Flow.on_blob` / :meth:`Flow.on_event`: an upload, from a blob trigger or from an
  Event Grid event taken off a queue, becomes one range message per line-aligned range.
- :meth:`Flow.on_range`: a map. It reads its range (``If-Match`` the version it was cut
  from: a blob replaced since is left to its own event), computes the partial with the query
  kind's own kernel, writes it, and if every partial is there and it wins the claim, merges
  them and writes the result.

Settings come from the app's environment (app settings in Azure): ``AzureWebJobsStorage``
(the connection string), ``TALLY_QUERY`` (a query as the HTTP API takes it, default
``{"top": 25}``), ``TALLY_OUTPUT`` (``container[/prefix]`` of the results), and
``TALLY_WORK_CONTAINER``, ``TALLY_RANGE_QUEUE``, ``TALLY_SPLIT_SIZE``, ``TALLY_RECORD_LIMIT``,
``TALLY_KERNEL``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import msgspec

from tally.datagen import parse_size
from tally.errors import ConfigError
from tally.functions import flow
from tally.functions.flow import BadMessage, RangeWork, Upload
from tally.protocol import Plan
from tally.queries import format_result, from_ipc, kind_of, merger_for, to_ipc
from tally.queries.infer import SAMPLE_BYTES
from tally.queries.plan import Plan as GroupByPlan
from tally.storage.ranges import open_range

log = logging.getLogger("tally.functions")
CHUNK = 4 << 20  # what one GET of a range's stream asks for
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    connection: str
    query: str = '{"top": 25}'
    output: str = "tally-results"  # container[/prefix]
    work_container: str = "tally-work"
    range_queue: str = "tally-ranges"
    split_size: int = 64 << 20
    record_limit: int = 1 << 20
    kernel: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        connection = env.get("AzureWebJobsStorage", "")
        if not connection:
            raise ConfigError("AzureWebJobsStorage is not set: the storage connection string")
        d = cls(connection)
        return cls(
            connection=connection,
            query=env.get("TALLY_QUERY", d.query),
            output=env.get("TALLY_OUTPUT", d.output),
            work_container=env.get("TALLY_WORK_CONTAINER", d.work_container),
            range_queue=env.get("TALLY_RANGE_QUEUE", d.range_queue),
            split_size=parse_size(env.get("TALLY_SPLIT_SIZE", str(d.split_size))),
            record_limit=parse_size(env.get("TALLY_RECORD_LIMIT", str(d.record_limit))),
            kernel=env.get("TALLY_KERNEL", d.kernel),
        )

    def plan(self) -> Plan:
        """The query's plan (a group-by still to be bound to the data)."""
        from tally.service.bodies import Query, plan_of

        try:
            query = msgspec.json.decode(self.query, type=Query)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ConfigError(f"TALLY_QUERY: {exc}") from None
        return plan_of(query)


class BlobStream(io.RawIOBase):
    """A blob download (from its first requested byte on) as a readable stream."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            piece = next(self._chunks, None)
            if piece is None:
                return 0
            self._buffer = piece
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


class Flow:
    """The handlers for one set of settings, with their storage clients."""

    def __init__(self, settings: Settings) -> None:
        from azure.storage.blob import BlobServiceClient
        from azure.storage.queue import QueueClient, TextBase64EncodePolicy

        self.settings = settings
        self.blobs = BlobServiceClient.from_connection_string(
            settings.connection, max_single_get_size=CHUNK, max_chunk_get_size=CHUNK
        )
        # base64, the encoding a Functions queue trigger expects (host.json says so too)
        self.ranges = QueueClient.from_connection_string(
            settings.connection, settings.range_queue,
            message_encode_policy=TextBase64EncodePolicy(),
        )  # fmt: skip
        self.output_container, _, self.output_prefix = settings.output.partition("/")
        self.work = self.blobs.get_container_client(settings.work_container)
        self._plan = settings.plan()  # a bad TALLY_QUERY fails every invocation at once

    # --- uploads -------------------------------------------------------------------------------

    def on_blob(self, path: str, properties: dict[str, Any] | None) -> int:
        """A blob trigger fired for ``container/name``: enqueue its ranges."""
        upload = flow.upload_from_blob(path, properties)
        if upload is None:  # the trigger did not say which version: ask the blob
            container, _, name = path.partition("/")
            props = self.blobs.get_blob_client(container, name).get_blob_properties()
            upload = Upload(container, name, str(props.etag).strip('"'), int(props.size))
        return self.on_upload(upload)

    def on_event(self, body: bytes | str, message_id: str | None = None) -> int:
        """An Event Grid event off a queue: enqueue the ranges of the blob it announces."""
        try:
            upload = flow.upload_from_event(body)
        except BadMessage as exc:
            log.error("tally: bad event message %s: %s", message_id, exc.message)
            raise
        if upload is None:
            log.info("not a blob creation: event message %s ignored", message_id)
            return 0
        return self.on_upload(upload)

    def on_upload(self, upload: Upload) -> int:
        if flow.ignored(upload.name):
            log.info("%s/%s: a hidden or _ name, ignored", upload.container, upload.name)
            return 0
        works = flow.split(upload, self.settings.split_size)
        for work in works:
            message = flow.encode(work)
            _create_if_missing(
                functools.partial(self.ranges.send_message, message), self.ranges.create_queue
            )
        log.info("%s/%s (version %s, %d bytes): %d range(s) queued", upload.container,
                 upload.name, upload.version, upload.size, len(works))  # fmt: skip
        return len(works)

    # --- maps and the merge --------------------------------------------------------------------

    def on_range(self, body: bytes | str, message_id: str) -> str:
        """A map: ``partial`` (written; others still missing), ``merged``, ``merged
        elsewhere``, or ``superseded`` (the object changed since it was cut)."""
        try:
            work = flow.decode(body)
        except BadMessage as exc:
            log.error("tally: bad range message %s: %s", message_id, exc.message)
            raise
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            plan = self.plan_for(work.upload)
            with self._open(work) as stream:
                output = kind_of(plan).compute(
                    plan, stream, self.settings.record_limit, self.settings.kernel,
                    work.start == 0,
                )  # fmt: skip
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            log.warning("%s/%s version %s is gone (%s): range %d dropped", work.container,
                        work.name, work.version, type(exc).__name__, work.index)  # fmt: skip
            return "superseded"
        data = to_ipc(output.table) or b""
        meta = {"lines": str(output.lines), "malformed": str(output.malformed)}
        self._put(self.work, flow.partial_key(work), data, meta)
        prefix = flow.partials_prefix(work.upload)
        found = flow.present(self._present(prefix), prefix, work.count)
        if not flow.all_present(found, work.count):
            return "partial"
        created, owner = self._claim(flow.claim_key(work.upload), message_id)
        if not flow.merges(created, owner, message_id):
            return "merged elsewhere"
        self._merge(work, plan)
        return "merged"

    def plan_for(self, upload: Upload) -> Plan:
        """The plan, bound for a group-by to this version's first lines (the same bytes for
        every map, so every map binds it the same way)."""
        plan = self._plan
        if isinstance(plan, GroupByPlan) and not plan.bound:
            from azure.core import MatchConditions

            from tally.queries.infer import bind

            blob = self.blobs.get_blob_client(upload.container, upload.name)
            head = blob.download_blob(
                offset=0, length=SAMPLE_BYTES, etag=upload.version,
                match_condition=MatchConditions.IfNotModified,
            ).readall()  # fmt: skip
            if len(head) == SAMPLE_BYTES and b"\n" in head:
                head = head[: head.rindex(b"\n") + 1]
            plan = bind(plan, head)
        return plan

    def _open(self, work: RangeWork) -> BinaryIO:
        """The lines of ``work``'s range, read from its version of the blob."""
        from azure.core import MatchConditions

        base = max(work.start - 1, 0)
        blob = self.blobs.get_blob_client(work.container, work.name)
        download = blob.download_blob(
            offset=base, etag=work.version, match_condition=MatchConditions.IfNotModified
        )
        stream = io.BufferedReader(BlobStream(iter(download.chunks())), CHUNK)
        return open_range(stream, work.start, work.end, base)

    def _present(self, prefix: str) -> list[str]:
        return [b.name for b in self.work.list_blobs(name_starts_with=prefix)]

    def _claim(self, key: str, me: str) -> tuple[bool, str | None]:
        """Create the claim (``If-None-Match: *``); whether this call created it, and the
        owner it names."""
        from azure.core.exceptions import ResourceExistsError

        try:
            self._put(self.work, key, me.encode("utf-8"), {}, overwrite=False)
            return True, me
        except ResourceExistsError:
            owner = self.work.get_blob_client(key).download_blob().readall()
            return False, owner.decode("utf-8", "replace")

    def _merge(self, work: RangeWork, plan: Plan) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        prefix = flow.partials_prefix(work.upload)
        merger = merger_for(plan)
        for item in self.work.list_blobs(name_starts_with=prefix, include=["metadata"]):
            if not flow.present([item.name], prefix, work.count):
                continue
            meta = item.metadata or {}
            data = self.work.get_blob_client(item.name).download_blob().readall()
            merger.add(from_ipc(data or None), int(meta["lines"]), int(meta["malformed"]))
        result = format_result(merger.finalize(), "json").encode("utf-8")
        source = self.blobs.get_blob_client(work.container, work.name)
        try:
            current = str(source.get_blob_properties().etag).strip('"')
        except ResourceNotFoundError:
            current = work.version  # deleted since: its result still stands for this version
        if current != work.version:
            log.warning("%s/%s changed to version %s: the result of %s is not written",
                        work.container, work.name, current, work.version)  # fmt: skip
            return
        output = self.blobs.get_container_client(self.output_container)
        key = flow.result_key(self.output_prefix, work.name)
        self._put(output, key, result, {"version": flow.version_tag(work.version)})
        log.info("merged %s/%s (version %s, %d range(s), %d lines): wrote %s/%s",
                 work.container, work.name, work.version, work.count, merger.lines,
                 self.output_container, key)  # fmt: skip

    @staticmethod
    def _put(
        container: Any, key: str, data: bytes, meta: dict[str, str], overwrite: bool = True
    ) -> None:
        _create_if_missing(
            lambda: container.upload_blob(key, data, overwrite=overwrite, metadata=meta),
            container.create_container,
        )


def _create_if_missing(call: Callable[[], T], create: Callable[[], Any]) -> T:
    """``call()``; if its container or queue does not exist yet, create it and call again."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    try:
        return call()
    except ResourceNotFoundError as exc:
        if getattr(exc, "error_code", None) not in ("ContainerNotFound", "QueueNotFound"):
            raise
        with contextlib.suppress(ResourceExistsError):  # created meanwhile by another call
            create()
        return call()


_flows: dict[Settings, Flow] = {}
_lock = threading.Lock()


def current() -> Flow:
    """The handlers for the app's settings, made once per process (clients are reused)."""
    settings = Settings.from_env()
    with _lock:
        if settings not in _flows:
            _flows[settings] = Flow(settings)
        return _flows[settings]
