"""The queues ``tally serve --notify QUEUE_URL`` reads object-created events from.

QUEUE_URL is one of:

- ``azqueue://ACCOUNT/QUEUE``: an Azure Storage queue. Credentials and endpoint come from
  ``AZURE_STORAGE_CONNECTION_STRING`` when it is set (its ``QueueEndpoint``, e.g.
  Azurite's ``http://127.0.0.1:10001/devstoreaccount1``; its account must be ACCOUNT),
  else ``https://ACCOUNT.queue.core.windows.net`` with ``AZURE_STORAGE_KEY`` or Azure's
  default credential chain.
- ``https://ACCOUNT.queue.core.windows.net/QUEUE[?SAS]``: the same queue by its URL.
- ``sqs://QUEUE``: an SQS queue by name, through boto3's usual configuration
  (``AWS_REGION``, credentials; ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_SQS`` for
  a local server).
- ``https://sqs.REGION.amazonaws.com/ACCOUNT_ID/QUEUE``: an SQS queue by its URL.

A message is received with a visibility timeout, deleted once handled, and otherwise
reappears to be tried again; a message failing its last try is sent, with the reason, to
``QUEUE-poison`` (created when first needed) and deleted. The clients are synchronous
(the watcher calls them from a thread) and retry nothing themselves: the watcher's loop
does, so a queue that cannot be reached costs one log line, not a storm of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from tally.errors import ConfigError

VISIBILITY_S = 30  # a received message's time to be handled before it reappears
AZURE_EMPTY_WAIT_S = 0.05  # Azure queues have no long poll: the pause after an empty receive
POISON_SUFFIX = "-poison"


@dataclass
class Received:
    """One received message."""

    id: str
    body: str
    tries: int  # times received, this one included
    sent: float | None  # when it was put on the queue (Unix seconds), when told
    handle: Any  # what deleting or releasing it needs


class EventQueue(Protocol):
    url: str
    scheme: str  # the store whose events it carries: "az" or "s3"

    def receive(self, wait_s: float) -> list[Received]: ...
    def delete(self, message: Received) -> None: ...
    def release(self, message: Received, delay_s: int) -> None: ...
    def dead_letter(self, message: Received, reason: str) -> None: ...


def poison_record(message: Received, reason: str, source: str) -> str:
    """What the poison queue gets: the reason, and the message as it came."""
    return json.dumps({"reason": reason, "tries": message.tries, "queue": source,
                       "message_id": message.id, "body": message.body})  # fmt: skip


_AZURE_HOST = re.compile(r"^([a-z0-9]+)\.queue\.core\.windows\.net$")
_SQS_HOST = re.compile(r"^sqs\.[a-z0-9-]+\.amazonaws\.com$")


def check_url(url: str) -> str:
    """The store (``az`` or ``s3``) whose events QUEUE_URL carries; ConfigError if it is not
    one of the forms above."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    if parts.scheme == "azqueue" and parts.netloc and path and "/" not in path:
        return "az"
    if parts.scheme == "sqs" and parts.netloc and not path:
        return "s3"
    if parts.scheme == "https" and _AZURE_HOST.match(parts.hostname or "") and path:
        return "az"
    if parts.scheme == "https" and _SQS_HOST.match(parts.hostname or "") and path.count("/") == 1:
        return "s3"
    raise ConfigError(
        f"--notify {url}: give azqueue://ACCOUNT/QUEUE, "
        "https://ACCOUNT.queue.core.windows.net/QUEUE, sqs://QUEUE or "
        "https://sqs.REGION.amazonaws.com/ACCOUNT_ID/QUEUE"
    )


def open_queue(url: str) -> EventQueue:
    """A client of the queue at QUEUE_URL (no request is made yet)."""
    if check_url(url) == "az":
        return AzureQueue(url)
    return SqsQueue(url)


class AzureQueue:
    scheme = "az"

    def __init__(self, url: str) -> None:
        from azure.storage.queue import QueueClient

        self.url = url
        parts = urlsplit(url)
        options: dict[str, Any] = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 10}
        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        self._new: Callable[[str], Any]
        if parts.scheme == "azqueue":
            account, name = parts.netloc, parts.path.strip("/")
            if connection:
                found = re.search(r"(?:^|;)AccountName=([^;]+)", connection)
                if found and found.group(1) != account:
                    raise ConfigError(
                        f"--notify {url}: AZURE_STORAGE_CONNECTION_STRING is for account "
                        f"{found.group(1)}, not {account}"
                    )
                self._new = lambda q: QueueClient.from_connection_string(connection, q, **options)
            else:
                endpoint = f"https://{account}.queue.core.windows.net"
                credential = _azure_credential(account)
                self._new = lambda q: QueueClient(endpoint, q, credential=credential, **options)
        else:
            name = parts.path.strip("/")
            base = f"https://{parts.netloc}"
            credential = parts.query or _azure_credential(parts.netloc.split(".")[0])
            self._new = lambda q: QueueClient(base, q, credential=credential, **options)
        self.name = name
        self._queue = self._new(name)
        self._poison: Any = None

    def receive(self, wait_s: float) -> list[Received]:
        import time

        got = [
            Received(m.id, str(m.content), int(m.dequeue_count or 1),
                     m.inserted_on.timestamp() if m.inserted_on else None, m)
            for m in self._queue.receive_messages(
                messages_per_page=32, max_messages=32, visibility_timeout=VISIBILITY_S
            )
        ]  # fmt: skip
        if not got:
            time.sleep(min(wait_s, AZURE_EMPTY_WAIT_S))
        return got

    def delete(self, message: Received) -> None:
        self._queue.delete_message(message.handle)

    def release(self, message: Received, delay_s: int) -> None:
        self._queue.update_message(message.handle, visibility_timeout=delay_s)

    def dead_letter(self, message: Received, reason: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        if self._poison is None:
            poison = self._new(self.name + POISON_SUFFIX)
            with contextlib.suppress(ResourceExistsError):
                poison.create_queue()
            self._poison = poison
        self._poison.send_message(poison_record(message, reason, self.url))
        self.delete(message)


def _azure_credential(account: str) -> Any:
    key = os.environ.get("AZURE_STORAGE_KEY")
    if key:
        return {"account_name": account, "account_key": key}
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


class SqsQueue:
    scheme = "s3"

    def __init__(self, url: str) -> None:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        self.url = url
        parts = urlsplit(url)
        config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                        read_timeout=30)  # fmt: skip
        if parts.scheme == "sqs":
            self.name, self._url = parts.netloc, ""
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        else:
            self.name, self._url = parts.path.rsplit("/", 1)[1], url
            region = (parts.hostname or "").split(".")[1]
        try:
            self._sqs = boto3.client("sqs", config=config, region_name=region or None)
        except Exception as exc:  # no region, a malformed endpoint: the configuration's
            raise ConfigError(f"--notify {url}: {exc}") from exc
        self._poison_url = ""

    def _queue_url(self) -> str:
        if not self._url:
            self._url = str(self._sqs.get_queue_url(QueueName=self.name)["QueueUrl"])
        return self._url

    def receive(self, wait_s: float) -> list[Received]:
        answer = self._sqs.receive_message(
            QueueUrl=self._queue_url(),
            MaxNumberOfMessages=10,
            WaitTimeSeconds=max(0, min(20, int(wait_s))),
            VisibilityTimeout=VISIBILITY_S,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        found: list[Received] = []
        for m in answer.get("Messages", []):
            attributes = m.get("Attributes", {})
            sent = attributes.get("SentTimestamp")
            found.append(Received(m["MessageId"], m.get("Body", ""),
                                  int(attributes.get("ApproximateReceiveCount", 1)),
                                  int(sent) / 1000 if sent else None,
                                  m["ReceiptHandle"]))  # fmt: skip
        return found

    def delete(self, message: Received) -> None:
        self._sqs.delete_message(QueueUrl=self._queue_url(), ReceiptHandle=message.handle)

    def release(self, message: Received, delay_s: int) -> None:
        self._sqs.change_message_visibility(
            QueueUrl=self._queue_url(), ReceiptHandle=message.handle, VisibilityTimeout=delay_s
        )

    def dead_letter(self, message: Received, reason: str) -> None:
        if not self._poison_url:  # creating an existing queue returns its URL
            made = self._sqs.create_queue(QueueName=self.name + POISON_SUFFIX)
            self._poison_url = str(made["QueueUrl"])
        self._sqs.send_message(
            QueueUrl=self._poison_url, MessageBody=poison_record(message, reason, self.url)
        )
        self.delete(message)
