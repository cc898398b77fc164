"""Tally as an Azure Functions app (Python v2 programming model).

An uploaded blob becomes one queue message per line-aligned range; each range's map writes
its partial; the last map (the winner of a conditional create) merges them and writes
``<TALLY_OUTPUT>/<name>.json``. The work is Tally's own (``tally.functions``): these
functions only hand each trigger's input to it.

- ``on_upload``: Event Grid-based blob trigger (what the Flex Consumption plan requires)
  on ``%TALLY_UPLOADS%/{name}``.
- ``on_upload_event``: the same from an Event Grid subscription that delivers
  ``Microsoft.Storage.BlobCreated`` events to the queue ``%TALLY_EVENT_QUEUE%``.
- ``on_range``: the map (and, for the last one, the merge), on ``%TALLY_RANGE_QUEUE%``.

A message that fails is retried by the host; after ``maxDequeueCount`` (host.json) it goes
to ``<queue>-poison``.
"""

from __future__ import annotations

import azure.functions as func

from tally.functions import handlers

app = func.FunctionApp()


@app.function_name("on_upload")
@app.blob_trigger(
    arg_name="blob",
    path="%TALLY_UPLOADS%/{name}",
    connection="AzureWebJobsStorage",
    source="EventGrid",
)
def on_upload(blob: func.InputStream) -> None:
    handlers.current().on_blob(blob.name or "", blob.blob_properties)


@app.function_name("on_upload_event")
@app.queue_trigger(
    arg_name="msg", queue_name="%TALLY_EVENT_QUEUE%", connection="AzureWebJobsStorage"
)
def on_upload_event(msg: func.QueueMessage) -> None:
    handlers.current().on_event(msg.get_body(), msg.id)


@app.function_name("on_range")
@app.queue_trigger(
    arg_name="msg", queue_name="%TALLY_RANGE_QUEUE%", connection="AzureWebJobsStorage"
)
def on_range(msg: func.QueueMessage) -> None:
    handlers.current().on_range(msg.get_body(), msg.id or "")
