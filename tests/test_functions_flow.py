"""The serverless flow's decisions without I/O: events and trigger properties to uploads,
uploads to range messages, the keys, and who merges."""

from __future__ import annotations

import itertools
import json

import pytest

from conftest import SAMPLE
from tally.functions import flow
from tally.functions.flow import BadMessage, RangeWork, Upload
from tally.storage.ranges import open_range

UPLOAD = Upload("uploads", "logs/day 1.tsv", "0x8DC1", 20547)


def event(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "subject": "/blobServices/default/containers/uploads/blobs/logs/day 1.tsv",
        "eventType": "Microsoft.Storage.BlobCreated",
        "data": {"eTag": '"0x8DC1"', "contentLength": 20547, "api": "PutBlob"},
    }
    base.update(changes)
    return base


def test_an_event_grid_blob_created_event_is_an_upload() -> None:
    assert flow.upload_from_event(json.dumps(event())) == UPLOAD
    assert flow.upload_from_event(json.dumps([event()]).encode()) == UPLOAD
    cloud = {k: v for k, v in event().items() if k != "eventType"}
    assert flow.upload_from_event(json.dumps({**cloud, "type": flow.BLOB_CREATED})) == UPLOAD
    deleted = event(eventType="Microsoft.Storage.BlobDeleted")
    assert flow.upload_from_event(json.dumps(deleted)) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "not a JSON event"),
        ("[]", "a list of 0 events, not one"),
        ('"text"', "not an event object"),
        (json.dumps({"subject": "x"}), "an event without eventType"),
        (json.dumps(event(subject="/containers/uploads")), "without a blob subject and data"),
        (json.dumps(event(data={"contentLength": 1})), "without data.eTag"),
        (json.dumps(event(data={"eTag": "e", "contentLength": -1})), "valid data.contentLength"),
        (json.dumps(event(data={"eTag": "e", "contentLength": True})), "data.contentLength"),
    ],
)
def test_a_bad_event_says_what_is_wrong(body: str, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        flow.upload_from_event(body)


def test_blob_trigger_properties_name_the_version() -> None:
    props = {"ETag": '"0x8DC1"', "ContentLength": 20547}
    assert flow.upload_from_blob("uploads/logs/day 1.tsv", props) == UPLOAD
    assert flow.upload_from_blob("uploads/logs/day 1.tsv", {"ETag": "0x8DC1"}) is None
    assert flow.upload_from_blob("uploads/logs/day 1.tsv", None) is None
    with pytest.raises(BadMessage, match="not container/name"):
        flow.upload_from_blob("uploads", props)


def test_split_covers_every_line_once() -> None:
    data = SAMPLE.read_bytes()
    works = flow.split(Upload("c", "n", "v", len(data)), 2048)
    assert [w.index for w in works] == list(range(len(works)))
    assert {w.count for w in works} == {len(works)} and len(works) == 11
    assert works[0].start == 0 and works[-1].end == len(data)
    assert all(a.end == b.start for a, b in itertools.pairwise(works))
    import io

    pieces = [
        open_range(
            io.BytesIO(data[max(w.start - 1, 0) :]), w.start, w.end, max(w.start - 1, 0)
        ).read()
        for w in works
    ]
    assert b"".join(pieces) == data
    assert flow.split(Upload("c", "n", "v", 100), 2048) == [RangeWork("c", "n", "v", 0, 1, 0, -1)]
    assert flow.split(Upload("c", "n", "v", 0), 2048) == [RangeWork("c", "n", "v", 0, 1, 0, -1)]


def test_range_messages_round_trip_and_bad_ones_are_named() -> None:
    work = RangeWork("uploads", "logs/day 1.tsv", "0x8DC1", 3, 11, 5604, 7472)
    assert flow.decode(flow.encode(work)) == work
    assert flow.decode(flow.encode(work).encode()) == work
    bad = {
        "nope": "not a range message",
        json.dumps({"container": "c"}): "missing required field",
        flow.encode(RangeWork("c", "n", "v", 11, 11, 0, -1)): "range 11 of 11",
        flow.encode(RangeWork("c", "n", "v", 0, 1, 10, 10)): r"range \[10, 10\) is empty",
        flow.encode(RangeWork("", "n", "v", 0, 1, 0, -1)): "without container, name",
        json.dumps({**json.loads(flow.encode(work)), "extra": 1}): "unknown field",
    }
    for body, reason in bad.items():
        with pytest.raises(BadMessage, match=reason):
            flow.decode(body)


def test_keys() -> None:
    work = RangeWork("uploads", "logs/day 1.tsv", '"0x8DC1"', 3, 11, 5604, 7472)
    assert flow.partials_prefix(work.upload) == "_partials/uploads/logs/day 1.tsv/0x8DC1/"
    assert flow.partial_key(work) == "_partials/uploads/logs/day 1.tsv/0x8DC1/000003.arrow"
    assert flow.claim_key(work.upload) == "_claims/uploads/logs/day 1.tsv/0x8DC1"
    assert flow.version_tag("a/b:c") == "a_b_c"
    assert flow.result_key("results/", "logs/day 1.tsv") == "results/logs/day 1.tsv.json"
    assert flow.result_key("", "a.tsv") == "a.tsv.json"
    assert flow.ignored("_partials/x") and flow.ignored("logs/.tmp") and not flow.ignored("a/b")


def test_only_the_map_that_sees_every_partial_and_wins_the_claim_merges() -> None:
    prefix = "_partials/c/n/v/"
    listed = [f"{prefix}000000.arrow", f"{prefix}000002.arrow", f"{prefix}junk", "other/1.arrow"]
    assert flow.present(listed, prefix, 3) == {0, 2}
    assert not flow.all_present({0, 2}, 3)
    assert flow.all_present(flow.present([*listed, f"{prefix}000001.arrow"], prefix, 3), 3)
    assert flow.present([f"{prefix}000007.arrow"], prefix, 3) == set()
    assert flow.merges(True, "m1", "m1")  # created the claim
    assert not flow.merges(False, "m1", "m2")  # another message's claim
    assert flow.merges(False, "m1", "m1")  # its own claim: a redelivery after a failed merge
