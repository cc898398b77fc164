"""One base exception and a few named subclasses; each can cross the wire as data."""

from __future__ import annotations


class TallyError(Exception):
    """Base of every error Tally raises on purpose."""

    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(TallyError):
    """Bad arguments, a bad source or a missing secret: the user must fix something."""


class ProtocolError(TallyError):
    """A peer broke the wire protocol: bad frame, oversized frame, wrong version, bad message."""


class AuthError(ProtocolError):
    """A peer could not prove knowledge of the cluster token."""


class PartitionError(TallyError):
    """A partition could not be read or processed; another attempt may succeed."""

    retryable = True
