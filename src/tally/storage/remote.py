"""Opening remote objects: one streamed GET for ``http(s)://``, fsspec for object stores.

An HTTP object is read with a single plain GET whose body is streamed, so a server that
ignores ``Range`` (Python's ``http.server``, many static servers) serves it whole, and a query
string (a SAS token, a presigned signature) is sent exactly as given. Other schemes go through
fsspec, whose filesystem package (adlfs, s3fs, gcsfs, ...) must be installed.

Every failure is a :class:`Unavailable` with a one-line reason and whether another attempt
may help (a 404 cannot); messages show URLs without their query string, which may be secret.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import io
import re
import socket
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from tally.errors import PartitionError, TallyError

if TYPE_CHECKING:
    import http.client

HTTP_SCHEMES = ("http", "https")
HTTP_TIMEOUT_S = 30.0  # per connect and per read: a silent server fails the attempt
USER_AGENT = "tally"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")
# a client error that another attempt cannot fix; 401/403 may (another worker's credentials
# or network), and 408/429 are the server asking to come back later
_RETRYABLE_4XX = frozenset({401, 403, 408, 425, 429})
# object-store clients' "cannot connect" errors (botocore, azure-core, aiohttp), by name:
# their packages are optional
_UNREACHABLE = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ServiceRequestError",
        "ClientConnectorError",
    }
)


class Unavailable(Exception):
    """A remote object cannot be opened or read: a one-line reason, and if a retry may help."""

    def __init__(self, reason: str, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


def scheme_of(url: str) -> str | None:
    """The scheme of ``url`` (lower case) when it has the ``scheme://`` form, else None."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def display(url: str) -> str:
    """``url`` for messages and logs, its query string (maybe a secret token) not shown."""
    if scheme_of(url) not in (None, "file") and "?" in url:
        return url.split("?", 1)[0] + "?..."
    return url


def missing_filesystem(scheme: str) -> str | None:
    """Why ``scheme://`` URLs cannot be opened in this process, or None if they can."""
    if scheme in HTTP_SCHEMES or scheme == "file":
        return None
    return _missing_filesystem(scheme)


@functools.cache
def _missing_filesystem(scheme: str) -> str | None:
    import fsspec
    from fsspec.registry import known_implementations, registry

    if scheme in registry:
        return None
    known = known_implementations.get(scheme)
    if known is None:
        return f"unknown scheme {scheme}://"
    package = str(known["class"]).split(".", 1)[0]
    if package != "fsspec":  # check without importing: an SDK import can take a second
        if importlib.util.find_spec(package) is None:
            return f"{scheme}:// needs the {package} package: pip install {package}"
        return None
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        return f"{scheme}:// cannot be used here: {known.get('err') or exc}"
    return None


def open_remote(
    url: str,
    offset: int = 0,
    options: Mapping[str, str] | None = None,
    needed: int = -1,
    version: str = "",
) -> BinaryIO:
    """A stream of the object at ``url`` from byte ``offset``; :class:`Unavailable` if it
    cannot be opened. An object store's is read in ranged chunks (whole ones up to byte
    ``needed``), with the storage ``options`` given, and must still have the ``version``
    listed (see :mod:`tally.storage.objectstore`)."""
    scheme = scheme_of(url) or ""
    if scheme in HTTP_SCHEMES:
        return io.BufferedReader(_Guarded(_http_get(url, offset), url, True), buffer_size=1 << 16)
    problem = missing_filesystem(scheme)
    if problem is not None:
        raise Unavailable(problem)  # another worker may have the package
    from tally.storage.objectstore import open_object

    return open_object(url, offset, options, needed, version)


def _http_get(url: str, offset: int = 0) -> http.client.HTTPResponse:
    """A GET from byte ``offset`` (a range request; a server that ignores it sends the whole
    object, whose first ``offset`` bytes are then read and dropped)."""
    import http.client  # here, not at the top: local partitions need none of it
    import urllib.error
    import urllib.request

    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(Exception):
            exc.close()
        code = exc.code
        retryable = code >= 500 or code in _RETRYABLE_4XX or code < 400
        raise Unavailable(reason(exc), retryable) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        raise Unavailable(reason(exc)) from exc
    if offset and response.status != 206:  # no range support: skip to the offset
        _drop(response, offset)
    return response


def _drop(response: http.client.HTTPResponse, count: int) -> None:
    try:
        while count > 0:
            piece = response.read(min(count, 1 << 20))
            if not piece:
                break
            count -= len(piece)
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(reason(exc)) from exc


def reason(exc: BaseException) -> str:
    """A one-line reason for a storage failure, for people."""
    import http.client
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return _status_reason(exc.code, str(exc.reason or ""))
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        return reason(inner) if isinstance(inner, BaseException) else _one_line(str(inner))
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unreachable: cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {HTTP_TIMEOUT_S:g} s"
    if any(cls.__name__ in _UNREACHABLE for cls in type(exc).__mro__):
        return _one_line(f"unreachable: {exc}")
    if isinstance(exc, ssl.SSLError):
        return _one_line(f"TLS error: {exc.reason or exc}")
    if isinstance(exc, http.client.IncompleteRead):
        more = f" ({exc.expected} more bytes expected)" if exc.expected else ""
        return f"the connection closed before the end{more}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset"
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, PermissionError):
        return "access denied"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"unreachable: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return _one_line(exc.strerror)
    text = str(exc)
    return _one_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _status_reason(code: int, phrase: str) -> str:
    if code == 404:
        return "not found (HTTP 404)"
    if code == 410:
        return "gone (HTTP 410)"
    if code == 401:
        return "not authorized (HTTP 401)"
    if code == 403:
        return "access denied (HTTP 403)"
    if code >= 500:
        return f"server error {code}" + (f" ({phrase})" if phrase else "")
    return f"HTTP {code}" + (f" {phrase}" if phrase else "")


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class _Guarded(io.RawIOBase):
    """A remote stream whose read errors become one-line PartitionErrors naming the URL."""

    def __init__(self, inner: Any, url: str, is_http: bool) -> None:
        self._inner = inner
        self._url = url
        self._http = is_http  # an http.client.HTTPResponse: its ``length`` is what is left

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            got = int(self._inner.readinto(buffer) or 0)
        except TallyError:
            raise
        except Exception as exc:  # a reset connection, a truncated body, a storage error
            raise PartitionError(f"cannot read {display(self._url)}: {reason(exc)}") from exc
        if not got and len(buffer) and self._http:
            missing = self._inner.length  # what Content-Length promised and never came
            if missing:
                raise PartitionError(
                    f"cannot read {display(self._url)}: the connection closed before the end "
                    f"({missing} more bytes expected)"
                )
        return got

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing to say
                self._inner.close()
        super().close()
