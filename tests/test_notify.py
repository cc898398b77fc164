"""Reading object-created events (Event Grid on Azure Storage queues, S3 notifications on
SQS) and the decisions they lead to, without any server."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tally.errors import ConfigError
from tally.service.notify import Created, Poison, dead_letter, name_under, parse
from tally.service.notify_io import check_url
from tally.service.watch_state import Listed, WatchState


def blob_created(container: str, name: str, etag: str = "0x8DC1") -> dict[str, Any]:
    """A BlobCreated event as Event Grid delivers it (Microsoft's documented sample)."""
    return {
        "topic": "/subscriptions/s/resourceGroups/Storage/providers/"
        "Microsoft.Storage/storageAccounts/devstoreaccount1",
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": "2026-06-26T18:41:00.9584103Z",
        "id": "831e1650-001e-001b-66ab-eeb76e069631",
        "data": {
            "api": "PutBlockList",
            "eTag": etag,
            "contentType": "text/plain",
            "contentLength": 524288,
            "blobType": "BlockBlob",
            "url": f"https://devstoreaccount1.blob.core.windows.net/{container}/{name}",
            "sequencer": "00000000000004420000000000028963",
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


def s3_created(bucket: str, key: str, etag: str = "abc", event: str = "ObjectCreated:Put") -> str:
    """An S3 event notification as SQS carries it (keys URL-encoded, spaces as +)."""
    from urllib.parse import quote_plus

    record = {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": event,
              "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                     "object": {"key": quote_plus(key), "size": 3, "eTag": etag}}}  # fmt: skip
    return json.dumps({"Records": [record]})


def test_an_event_grid_blob_created_event_plain_or_base64_or_in_an_array() -> None:
    event = blob_created("in", "day 1/a.tsv", '"0x8DC1"')
    want = [Created("az", "in", "day 1/a.tsv", "0x8DC1")]
    text = json.dumps(event)
    assert parse(text).created == want
    assert parse(base64.b64encode(text.encode()).decode()).created == want
    assert parse(json.dumps([event, blob_created("in", "b")])).created == [
        *want,
        Created("az", "in", "b", "0x8DC1"),
    ]
    cloud = {"type": event["eventType"], "subject": event["subject"], "data": event["data"]}
    assert parse(json.dumps(cloud)).created == want


def test_s3_notifications_plain_or_in_an_sns_envelope() -> None:
    body = s3_created("bk", "p/a b+c.tsv", '"e1"')
    want = [Created("s3", "bk", "p/a b+c.tsv", "e1")]
    assert parse(body).created == want
    assert parse(json.dumps({"Type": "Notification", "Message": body})).created == want


def test_other_storage_events_hold_no_object_and_are_not_poison() -> None:
    deleted = blob_created("in", "a")
    deleted["eventType"] = "Microsoft.Storage.BlobDeleted"
    message = parse(json.dumps(deleted))
    assert (message.created, message.other) == ([], 1)
    message = parse(s3_created("bk", "a", event="ObjectRemoved:Delete"))
    assert (message.created, message.other) == ([], 1)
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "bk"}
    assert parse(json.dumps(test_event)).other == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "malformed JSON"),
        ("!!! not base64 !!!", "neither JSON nor Base64"),
        (base64.b64encode(b"plain words").decode(), "malformed JSON"),
        (base64.b64encode(b'"a string"').decode(), "not a storage event"),
        ("[]", "not a storage event"),
        ('{"hello": "world"}', "not an Event Grid event"),
        ('{"Records": [{"eventName": "ObjectCreated:Put"}]}', "without bucket name and key"),
        ('{"Records": ["x"]}', "without eventName"),
        ('{"eventType": "Microsoft.Storage.BlobCreated", "subject": "/elsewhere"}', "subject"),
    ],
)
def test_a_message_that_is_no_storage_event_is_poison_with_its_reason(
    body: str, reason: str
) -> None:
    with pytest.raises(Poison, match=reason):
        parse(body)


def test_which_events_lie_under_the_watched_prefix() -> None:
    a = Created("az", "in", "day1/a.tsv")
    assert name_under(a, "az://in/day1/") == "a.tsv"
    assert name_under(a, "az://in/day1") == "a.tsv"
    assert name_under(a, "abfs://in/day1/") == "a.tsv"
    assert name_under(a, "az://in/") == "day1/a.tsv"
    assert name_under(a, "az://in") == "day1/a.tsv"
    assert name_under(a, "az://in/day") is None  # a prefix of a name is not a folder
    assert name_under(a, "az://other/day1/") is None
    assert name_under(a, "s3://in/day1/") is None
    assert name_under(Created("s3", "in", "day1/a.tsv"), "s3://in/day1/") == "a.tsv"


def test_a_failing_message_is_dead_lettered_on_its_last_try() -> None:
    assert [dead_letter(tries, 3) for tries in (1, 2, 3, 4)] == [False, False, True, True]


def test_duplicate_and_out_of_order_events_never_give_a_version_two_jobs() -> None:
    state = WatchState(settle_s=0)
    v1, v2 = Listed("a", "az://c/a", "e1"), Listed("a", "az://c/a", "e2")
    assert state.wanted(v1) == "new"
    state.started(v1, "j1")
    assert state.wanted(v1) == "known"  # a duplicate event
    assert state.wanted(v2) == "waiting"  # a newer version waits for j1
    assert state.ended("a", "j1", succeeded=True) == "add"
    assert state.wanted(v2) == "new"
    state.started(v2, "j2")
    assert state.ended("a", "j2", succeeded=True) == "rebuild"
    # an old event arriving late: describing the object gives its current version, known
    assert state.wanted(v2) == "known"
    assert state.wanted(Listed("_tmp/a", "az://c/_tmp/a", "e1")) == "ignored"


@pytest.mark.parametrize(
    ("url", "store"),
    [
        ("azqueue://devstoreaccount1/events", "az"),
        ("https://acct.queue.core.windows.net/events?sv=1&sig=x", "az"),
        ("sqs://events", "s3"),
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/events", "s3"),
    ],
)
def test_queue_urls(url: str, store: str) -> None:
    assert check_url(url) == store


@pytest.mark.parametrize(
    "url",
    ["events", "azqueue://acct", "azqueue://acct/a/b", "sqs://", "sqs://q/x",
     "https://example.com/q", "http://acct.queue.core.windows.net/q"],
)  # fmt: skip
def test_other_queue_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="give azqueue://ACCOUNT/QUEUE"):
        check_url(url)
