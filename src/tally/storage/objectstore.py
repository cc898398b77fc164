"""Object stores (``az://``, ``abfs://``, ``s3://``, any fsspec scheme): the filesystem for a
URL with the process's storage options, ranged streaming reads, and one-line failure reasons.

Credentials come from each process's own environment, read by the storage library itself
(``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT_NAME`` with ``_KEY`` or
``_SAS_TOKEN``; ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``); ``--storage-option KEY=VALUE`` adds keyword arguments for the fsspec
filesystem (a VALUE that parses as JSON is passed parsed: ``anon=true``, ``config_kwargs={...}``).

Each request is retried by the storage library a few times with exponential backoff from
0.1 s (s3fs ``S3FS_TRIES`` tries, botocore none of its own; Azure's client ``SDK_RETRIES``
more, from 0.2 s: its own backoff starts at 15 s) on throttling, server errors, timeouts and
an unreachable endpoint; what still fails is a failed attempt, which the scheduler retries
elsewhere unless retrying cannot help (a missing object, container or bucket; credentials
the store refuses).

An object is read a few chunks ahead of the caller (:mod:`tally.storage.object_readers`), so the
network works while the caller computes and a partition of any size costs a few chunks of
memory.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Mapping
from typing import Any

from tally.errors import ConfigError

SDK_RETRIES = 3  # retries of one request by Azure's client, with backoff from 0.2 s
S3FS_TRIES = 3  # tries of one request by s3fs, 0.1 s apart and growing
AZURE_SCHEMES = ("az", "abfs", "abfss")
# storage error codes, by what they mean for the job
_MISSING_CONTAINER = {"NoSuchBucket": "no such bucket", "ContainerNotFound": "no such container"}
_MISSING = frozenset({"NoSuchKey", "BlobNotFound", "ResourceNotFound", "404", "NotFound"})
_DENIED = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "InvalidAuthenticationInfo",
        "NoAuthenticationInformation",
        "ExpiredToken",
        "InvalidToken",
        "403",
    }
)
_THROTTLED = frozenset(
    {"SlowDown", "ServerBusy", "Throttling", "ThrottlingException", "TooManyRequests"}
)
_UNREACHABLE = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
        "ServiceRequestError",
        "ClientConnectorError",
        "ServerDisconnectedError",
    }
)
NO_AZURE_CREDENTIALS = (
    "no credentials: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with "
    "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN"
)
NO_AWS_CREDENTIALS = "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
_TIMEOUTS = frozenset({"ReadTimeoutError", "ServiceResponseTimeoutError", "TimeoutError"})

# size and version of objects as a prefix or glob listed them, until planning takes them
_listed: dict[str, tuple[int | None, str]] = {}
LISTED_LIMIT = 1 << 20


def parse_storage_options(pairs: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for fsspec from ``KEY=VALUE`` texts: JSON values parsed, others kept
    as text."""
    options: dict[str, Any] = {}
    for key, text in pairs.items():
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    return options


def split_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as a pair; ConfigError naming the text if it is not one."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not key.replace("_", "").isalnum():
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ConfigError(f"storage option {shown!r} is not KEY=VALUE")
    return key, value


def filesystem(url: str, options: Mapping[str, str] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` with ``options`` (raw ``KEY=VALUE`` texts) and
    Tally's request retries, and the path inside it."""
    import fsspec

    scheme = url.split("://", 1)[0].lower()
    kwargs = parse_storage_options(options or {})
    if scheme == "s3":  # s3fs retries (below), not botocore too: one layer of backoff
        kwargs.setdefault(
            "config_kwargs",
            {"connect_timeout": 10, "read_timeout": 60, "retries": {"total_max_attempts": 1}},
        )
    _quiet_client_logs()
    from tally.storage.remote import Unavailable

    try:
        fs, path = fsspec.core.url_to_fs(url, **kwargs)
    except TypeError as exc:  # an option the filesystem does not take
        raise ConfigError(f"storage options for {scheme}://: {exc}") from exc
    except Exception as exc:  # no credentials, a malformed connection string: one line
        if scheme in AZURE_SCHEMES and "connection_string or account_name" in str(exc):
            raise Unavailable(NO_AZURE_CREDENTIALS) from exc
        raise Unavailable(*failure(exc)) from exc
    if scheme == "s3":
        _retry_s3_where_it_helps()
        fs.retries = S3FS_TRIES  # per layer: s3fs nests two (a ranged read: 9 requests)
    elif scheme in AZURE_SCHEMES:
        _tune_azure_retries(fs)
    return fs, str(path)


def _quiet_client_logs() -> None:
    """The storage clients log every request (Azure) or credential lookup (botocore) at
    INFO: Tally's own lines say what matters, so theirs show with -v (DEBUG) only."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("azure", "botocore", "aiobotocore", "s3fs", "adlfs"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _retry_s3_where_it_helps() -> None:
    """s3fs retries a request on throttling and timeouts, 0.1 s apart and growing; also on
    what :func:`failure` calls retryable (server errors, an unreachable endpoint)."""
    import s3fs.core  # type: ignore[import-untyped]

    s3fs.core.set_custom_error_handler(lambda exc: failure(exc)[1])


def _tune_azure_retries(fs: Any) -> None:
    """Azure Storage's client waits 15 s and more between tries (85 s for an endpoint that
    is down): Tally retries elsewhere too, so a request gets SDK_RETRIES quick retries."""
    config = getattr(getattr(fs, "service_client", None), "_config", None)
    policy = getattr(config, "retry_policy", None)
    if policy is None or getattr(policy, "_tally_tuned", False):
        return
    for name in ("total_retries", "connect_retries", "read_retries", "status_retries"):
        if hasattr(policy, name):
            setattr(policy, name, SDK_RETRIES)
    policy.get_backoff_time = lambda settings: backoff_s(int(settings.get("count", 1)))
    policy._tally_tuned = True


def backoff_s(retry: int) -> float:
    """Seconds before retry number ``retry`` (1, 2, ...): 0.2, 0.4, 0.8 ... up to 5, with
    jitter."""
    return min(0.1 * 2.0**retry, 5.0) * random.uniform(0.5, 1.5)


def remember_listed(url: str, info: Mapping[str, Any]) -> str:
    """Keep what a listing said of ``url`` for :func:`describe`; return ``url``."""
    if len(_listed) >= LISTED_LIMIT:  # listed and never planned: forget the oldest half
        for old in list(_listed)[: LISTED_LIMIT // 2]:
            _listed.pop(old, None)
    _listed[url] = (_size(info), version_of(info))
    return url


def describe(url: str, options: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """An object's size and version (its ETag, else size and last-modified): as listed, when
    a prefix or glob listed it (taken once), else from one metadata request. Raises
    Unavailable."""
    listed = _listed.pop(url, None)
    if listed is not None:
        return listed
    info = _info(url, options)
    return _size(info), version_of(info)


def _info(
    url: str, options: Mapping[str, str] | None, fs: Any = None, path: str = ""
) -> dict[str, Any]:
    from tally.storage.remote import Unavailable

    if fs is None:
        fs, path = filesystem(url, options)
    try:
        info: dict[str, Any] = fs.info(path, refresh=True)  # never an old listing's
    except Exception as exc:  # any storage library's failure: one line, never a traceback
        why, retryable = failure(exc)
        if why == "not found":  # the object, or its whole bucket or container?
            why = _missing(fs, path)
        raise Unavailable(why, retryable) from exc
    return info


def _missing(fs: Any, path: str) -> str:
    container = path.split("/", 1)[0]
    kind = "bucket" if "s3" in getattr(fs, "protocol", ()) else "container"
    try:
        return "not found" if fs.exists(container) else f"no such {kind}"
    except Exception:  # the store said "not found" once already: leave it at that
        return "not found"


def version_of(info: Mapping[str, Any]) -> str:
    """The version of an object as listed: its ETag, else its size and modification time."""
    tag = info.get("ETag") or info.get("etag")
    if tag:
        return str(tag).strip('"')
    when = info.get("LastModified") or info.get("last_modified") or info.get("mtime")
    size = info.get("size")
    return "-".join(str(x) for x in (size, when) if x is not None)


def _size(info: Mapping[str, Any]) -> int | None:
    size = info.get("size")
    return int(size) if size is not None else None


def open_object(
    url: str,
    offset: int = 0,
    options: Mapping[str, str] | None = None,
    needed: int = -1,
    version: str = "",
) -> io.BufferedReader:
    """A stream of the object at ``url`` from byte ``offset``. ``needed`` (the end of a
    range; -1: all) is how far to read in whole chunks; past it, small reads finish a line.
    ``version``, when given, must still be the object's: a range of a changed object would
    mix two versions. Raises Unavailable; reads raise PartitionError."""
    from tally.storage.object_readers import RangedReader, StreamedReader
    from tally.storage.remote import Unavailable

    fs, path = filesystem(url, options)
    if url.split("://", 1)[0].lower() == "s3" and version and needed >= 0:
        # a range of an object listed with its ETag: the GET itself checks the version
        # (If-Match) and says the size; no metadata request first
        stream = StreamedReader(fs, path, url, None, offset, needed, version)
        return io.BufferedReader(stream, buffer_size=1 << 16)
    info = _info(url, options, fs, path)
    if info.get("type") == "directory":
        raise Unavailable("a prefix, not an object", retryable=False)
    size = _size(info)
    if size is None:
        raise Unavailable("its size is not known", retryable=False)
    now = version_of(info)
    if version and now and now != version:
        raise Unavailable(
            f"changed since it was listed (version {version}, now {now})", retryable=False
        )
    reader: io.RawIOBase
    if url.split("://", 1)[0].lower() == "s3":
        etag = str(info.get("ETag") or "").strip('"')
        reader = StreamedReader(fs, path, url, size, offset, needed, etag if version else "")
    else:
        reader = RangedReader(fs, path, url, size, offset, needed)
    return io.BufferedReader(reader, buffer_size=1 << 16)


# --- failures -------------------------------------------------------------------------------


def failure(exc: BaseException) -> tuple[str, bool]:
    """A one-line reason for a storage library's exception, and whether another attempt may
    help. Built from status codes and error codes only: a store's message text may quote a
    request signature."""
    chain = _chain(exc)
    for err in chain:
        status, code = _status_and_code(err)
        if status is not None or code:
            return _coded(status, code)
    names = {cls.__name__ for err in chain for cls in type(err).__mro__}
    if "NoCredentialsError" in names:  # another worker may have some: retryable
        return NO_AWS_CREDENTIALS, True
    if names & _UNREACHABLE:
        return f"unreachable: cannot connect to {_endpoint(chain)}", True
    if names & _TIMEOUTS:
        return "no answer from the storage endpoint in time", True
    if isinstance(exc, FileNotFoundError):
        return "not found", False
    if isinstance(exc, PermissionError):
        return "access denied", False
    if "IncompleteRead" in names or "ClientPayloadError" in names:
        return "the connection closed before the end", True
    from tally.storage.remote import reason

    return reason(exc), True


def _endpoint(chain: list[BaseException]) -> str:
    """host:port of the endpoint an error could not reach, as its client said."""
    from urllib.parse import urlsplit

    for err in chain:
        host, port = getattr(err, "host", None), getattr(err, "port", None)
        if isinstance(host, str) and host:  # aiohttp's connection errors
            return f"{host}:{port}" if port else host
        kwargs = getattr(err, "kwargs", None)  # botocore's
        if isinstance(kwargs, dict) and kwargs.get("endpoint_url"):
            return urlsplit(str(kwargs["endpoint_url"])).netloc or "the storage endpoint"
    return "the storage endpoint"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _status_and_code(err: BaseException) -> tuple[int | None, str]:
    response = getattr(err, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        error = response.get("Error") or {}
        meta = response.get("ResponseMetadata") or {}
        status = meta.get("HTTPStatusCode")
        return (int(status) if status else None), str(error.get("Code") or "")
    status = getattr(err, "status_code", None)  # azure-core's HttpResponseError
    if isinstance(status, int):
        code = getattr(err, "error_code", None)
        return status, str(getattr(code, "value", code) or "")  # an enum's value
    return None, ""


def _coded(status: int | None, code: str) -> tuple[str, bool]:
    if code == str(status):  # a HEAD answer has no body, so no code of its own
        code = ""
    what = " ".join(x for x in (f"HTTP {status}" if status else "", code) if x)
    if code in _MISSING_CONTAINER:
        return f"{_MISSING_CONTAINER[code]} ({what})", False
    if code in _MISSING or status == 404:
        return f"not found ({what})", False
    if code == "PreconditionFailed" or status == 412:  # If-Match: another version now
        return f"changed since it was listed ({what})", False
    if code in _THROTTLED or status in (429, 503):
        return f"throttled ({what})", True
    if code in _DENIED or status in (401, 403):
        return f"access denied ({what})", False
    if (status is not None and status >= 500) or status == 408:
        return f"server error ({what})", True
    return f"refused by the store ({what})", False
