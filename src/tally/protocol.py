"""Every message between coordinator and worker: typed, versioned, tagged MessagePack.

A frame on the wire is a 4-byte big-endian payload length followed by the payload, one
MessagePack-encoded message whose ``type`` field names its class. See docs/protocol.md for
the handshake and the order in which messages flow.
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

from tally.errors import ProtocolError, TallyError
from tally.queries.plan import Plan as GroupByPlan

PROTOCOL_VERSION = 2  # 2: jobs apart from the cluster; Arrow IPC partials
HEADER = struct.Struct(">I")
MAX_FRAME = 256 << 20  # after the handshake: partials of --all over a big partition are large
MAX_HANDSHAKE_FRAME = 64 << 10  # before it: an unauthenticated peer gets little memory


class Message(msgspec.Struct, tag_field="type", array_like=False, omit_defaults=True):
    """Base of all messages."""


# --- handshake -------------------------------------------------------------------------------


class Challenge(Message, tag="challenge"):
    """Coordinator -> worker, first frame: who I am and a fresh nonce to prove the token with."""

    version: int
    nonce: bytes


class Hello(Message, tag="hello"):
    """Worker -> coordinator: my proof of the token over both nonces, and my own nonce."""

    version: int
    nonce: bytes
    proof: bytes
    name: str
    slots: int  # how many tasks the worker takes at once (running + prefetched)


class Welcome(Message, tag="welcome"):
    """Coordinator -> worker: accepted; the coordinator's proof and the cluster's settings.
    Jobs come later, each with its own :class:`JobPlan`."""

    proof: bytes
    worker_id: int
    heartbeat_s: float
    lease_s: float  # silence after which the coordinator declares a worker lost
    serving: bool = False  # a long-lived server: stay across jobs until SIGTERM


class Refused(Message, tag="refused"):
    """Either side -> peer, then close: why the connection is not accepted."""

    reason: str


# --- jobs ------------------------------------------------------------------------------------


class QuerySpec(msgspec.Struct, frozen=True, tag_field="plan", tag="domains"):
    """The domain count's plan. ``kind`` is ``domain``, ``top`` or ``all``."""

    kind: Literal["domain", "top", "all"] = "top"
    domain: bytes | None = None  # for kind == "domain"
    k: int = 25  # for kind == "top"


Plan = QuerySpec | GroupByPlan  # what a job's tasks compute, by query kind


class JobPlan(Message, tag="plan"):
    """Coordinator -> worker, once per job before its first Assign: what its tasks compute."""

    job_id: str
    plan: Plan
    record_limit: int


class Task(msgspec.Struct, frozen=True):
    """A partition, or the byte range ``[start, end)`` of one (``end`` -1: to its end).
    ``version`` (an ETag, or size and mtime) is what was listed, when known."""

    url: str
    start: int = 0
    end: int = -1
    version: str = ""

    @property
    def label(self) -> str:
        """The URL, with its byte range when it is one: how messages name the task."""
        return (
            self.url if self.start == 0 and self.end < 0 else f"{self.url}[{self.start}:{self.end}]"
        )


class Assign(Message, tag="assign"):
    """Coordinator -> worker: run this attempt of this job's task."""

    attempt: int
    job_id: str
    task: Task


class JobEnded(Message, tag="job_ended"):
    """Coordinator -> worker: forget that job's plan."""

    job_id: str


class Cancel(Message, tag="cancel"):
    """Coordinator -> worker: that attempt is no longer wanted (another one won)."""

    attempt: int


class Shutdown(Message, tag="shutdown"):
    """Coordinator -> worker: the coordinator is ending (its job is over, or the server
    stops); leave with exit status 0."""

    reason: str


class Heartbeat(Message, tag="heartbeat"):
    """Worker -> coordinator, every ``heartbeat_s``: still alive."""

    seq: int


class Partial(msgspec.Struct):
    """A task's partial result: an Arrow IPC stream (None when it has no rows), decoded as a
    view into the received frame, and the task's line accounting."""

    table: memoryview | None
    lines: int
    malformed: int


class Result(Message, tag="result"):
    """Worker -> coordinator: an attempt finished; its partial and what it cost.
    ``cached``: the partial came from the worker's cache (nothing was read or computed);
    omitted when false, so older peers of protocol 2 read it as before."""

    attempt: int
    job_id: str
    partial: Partial
    bytes_read: int
    busy_s: float
    cached: bool = False


class ErrorInfo(msgspec.Struct):
    """An error as data: its type name, message and whether another attempt may succeed."""

    type: str
    message: str
    retryable: bool

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        if isinstance(exc, TallyError):
            return cls(type(exc).__name__, exc.message, exc.retryable)
        return cls(type(exc).__name__, str(exc) or repr(exc), True)


class Failed(Message, tag="failed"):
    """Worker -> coordinator: an attempt failed."""

    attempt: int
    job_id: str
    error: ErrorInfo


class Leaving(Message, tag="leaving"):
    """Worker -> coordinator: I am stopping; these attempts go back unfinished."""

    returned: list[int]


AnyMessage = (
    Challenge
    | Hello
    | Welcome
    | Refused
    | JobPlan
    | Assign
    | JobEnded
    | Cancel
    | Shutdown
    | Heartbeat
    | Result
    | Failed
    | Leaving
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


def encode(message: Message) -> bytes:
    """One whole frame: length header + payload."""
    payload = _encoder.encode(message)
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes | bytearray) -> AnyMessage:
    """A message from a frame's payload; ProtocolError if it is not one."""
    try:
        message: AnyMessage = _decoder.decode(payload)
        return message
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from exc


def check_length(length: int, limit: int) -> None:
    if length > limit:
        raise ProtocolError(f"oversized frame: {length} bytes, limit {limit}")
