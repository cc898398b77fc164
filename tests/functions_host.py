"""What the Azure Functions host does for deploy/azure-functions, done in the test process:
Azurite's queue service beside the session's blob service, the app's functions found the
way the Python worker finds them (``app.get_functions()``, ``get_user_function()``), their
inputs built by the azure-functions converters from the data and trigger metadata the host
sends, and the queue trigger's delivery rules (delete on success; on failure the message
comes back after host.json's ``visibilityTimeout``, and after ``maxDequeueCount`` tries it
goes to ``<queue>-poison``)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from storage_servers import (
    ROOT,
)

APP_DIR = ROOT / "deploy" / "azure-functions"
WAIT_S = 60.0


def load_functions() -> dict[str, Callable[..., Any]]:
    """The functions of deploy/azure-functions/function_app.py by name, found as the Python
    worker finds them when it indexes the app (once per process: indexing twice is an
    error of the app object)."""
    app = load_app()
    return {f.get_function_name(): f.get_user_function() for f in app.app.get_functions()}


def load_app() -> ModuleType:
    """deploy/azure-functions/function_app.py, imported as the worker imports it."""
    spec = importlib.util.spec_from_file_location("function_app", APP_DIR / "function_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_app"] = module
    spec.loader.exec_module(module)
    return module


def host_settings() -> tuple[int, float]:
    """host.json's queue trigger retry settings: maxDequeueCount, visibilityTimeout (s)."""
    queues = json.loads((APP_DIR / "host.json").read_text())["extensions"]["queues"]
    hours, minutes, seconds = (float(x) for x in queues["visibilityTimeout"].split(":"))
    return int(queues["maxDequeueCount"]), hours * 3600 + minutes * 60 + seconds


def _datum(value: Any, kind: str) -> Any:
    from azure.functions import meta

    return meta.Datum(value, kind)


@dataclass
class Delivery:
    message_id: str
    dequeue_count: int
    body: str
    outcome: str  # "ok", or the exception's type name


class Host:
    """The app's functions, called with real inputs, over real blobs and queues."""

    def __init__(self, functions: dict[str, Callable[..., Any]], connection: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.functions = functions
        self.connection = connection
        self.blobs = BlobServiceClient.from_connection_string(connection)
        self.max_dequeue, self.retry_s = host_settings()
        self.deliveries: list[Delivery] = []

    def queue(self, name: str) -> Any:
        from azure.storage.queue import (
            QueueClient,
            TextBase64DecodePolicy,
            TextBase64EncodePolicy,
        )

        return QueueClient.from_connection_string(
            self.connection, name, message_encode_policy=TextBase64EncodePolicy(),
            message_decode_policy=TextBase64DecodePolicy(),
        )  # fmt: skip

    # --- triggers ------------------------------------------------------------------------------

    def blob_created(self, container: str, name: str) -> None:
        """The Event Grid-based blob trigger fires for ``container/name``: the host reads the
        blob and passes it with its properties."""
        from azure.functions.blob import BlobConverter

        client = self.blobs.get_blob_client(container, name)
        props = client.get_blob_properties()
        data = client.download_blob().readall()
        properties = {"ETag": props.etag, "ContentLength": props.size,
                      "LastModified": props.last_modified.isoformat(),
                      "BlobType": "BlockBlob"}  # fmt: skip
        stream = BlobConverter.decode(
            _datum(data, "bytes"),
            trigger_metadata={
                "BlobTrigger": _datum(f"{container}/{name}", "string"),
                "Uri": _datum(client.url, "string"),
                "Properties": _datum(json.dumps(properties), "json"),
                "Metadata": _datum("{}", "json"),
            },
        )
        self.functions["on_upload"](stream)

    def message(self, received: Any) -> Any:
        """A queue message as the host hands it to a Python function."""
        from azure.functions.queue import QueueMessageInConverter

        def when(value: Any) -> Any:
            return _datum(value.isoformat() if value else None, "string")

        return QueueMessageInConverter.decode(
            _datum(received.content, "string"),
            trigger_metadata={
                "Id": _datum(received.id, "string"),
                "DequeueCount": _datum(str(received.dequeue_count), "json"),
                "PopReceipt": _datum(received.pop_receipt, "string"),
                "InsertionTime": when(received.inserted_on),
                "ExpirationTime": when(received.expires_on),
                "NextVisibleTime": when(received.next_visible_on),
            },
        )

    def deliver(self, queue_name: str, function: str, received: Any) -> str:
        """Run ``function`` on one received message, and settle it as the host does."""
        queue = self.queue(queue_name)
        try:
            self.functions[function](self.message(received))
        except Exception as exc:
            outcome = type(exc).__name__
            if received.dequeue_count >= self.max_dequeue:
                poison = self.queue(f"{queue_name}-poison")
                with contextlib.suppress(Exception):
                    poison.create_queue()
                poison.send_message(received.content)
                queue.delete_message(received)
            else:
                queue.update_message(received, visibility_timeout=int(self.retry_s))
        else:
            outcome = "ok"
            queue.delete_message(received)
        self.deliveries.append(
            Delivery(received.id, received.dequeue_count, received.content, outcome)
        )
        return outcome

    def drain(self, queue_name: str, function: str) -> None:
        """Deliver the queue's messages until none is left (retries included)."""
        queue = self.queue(queue_name)
        deadline = time.monotonic() + WAIT_S
        while queue.get_queue_properties().approximate_message_count > 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{queue_name} still holds messages after {WAIT_S:g}s")
            batch = list(queue.receive_messages(messages_per_page=16, visibility_timeout=60))
            for received in batch:
                self.deliver(queue_name, function, received)
            if not batch:  # messages waiting out their retry delay
                time.sleep(0.05)

    def bodies(self, queue_name: str) -> list[str]:
        return [m.content for m in self.queue(queue_name).peek_messages(max_messages=32)]
