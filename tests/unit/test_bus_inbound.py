"""What a node takes from the messages its bus consumer received (replication/bus_inbound.py):
the others' writes as one batch, and the stream position its commit may save. Invariant 1 rests
on the checkpoint: it never passes the first part of a message not whole yet, so a restart reads
that message again rather than lose it."""

from __future__ import annotations

from shareddb.clock import HybridClock, from_millis
from shareddb.membership import Membership
from shareddb.record import Record, make_origin, make_version
from shareddb.replication.bus_inbound import Inbound, Received
from shareddb.replication.bus_publish import ORIGIN, PART, UNIT
from shareddb.replication.transport import PullReply, encode_reply

NOW = 1_800_000_000_000
ME = make_origin("n1", "i1")
OTHER = make_origin("n2", "i2")


def inbound() -> tuple[Inbound, list[str]]:
    heard: list[str] = []
    membership = Membership("n1", "http://n1", "i1", clock=lambda: 0.0)
    return Inbound(ME, membership, HybridClock(), lambda: NOW, heard.append), heard


def body(*keys: str, origin: str = OTHER, txn: bool = False) -> bytes:
    node = origin.partition("~")[0]
    records = [Record(k, f"v-{k}", make_version(NOW + i, origin)) for i, k in enumerate(keys)]
    reply = PullReply(node, "feed", 0, 0, records, [], [(0, len(records))] if txn else [])
    return b"".join(encode_reply(reply))


def message(seq: int, data: bytes, origin: str = OTHER, **headers: str) -> Received:
    return Received(seq, {ORIGIN: origin, **headers}, data)


def test_the_others_writes_come_as_one_batch_up_to_the_last_message() -> None:
    taking, heard = inbound()
    batch = taking.take([message(4, body("a")), message(5, body("b", "c", txn=True))], position=3)
    assert batch is not None
    assert [r.key for r in batch.records] == ["a", "b", "c"]
    assert batch.groups == [(1, 3)]
    assert batch.checkpoint == 5
    assert heard == [OTHER, OTHER]


def test_messages_again_and_this_nodes_own_are_skipped() -> None:
    taking, _ = inbound()
    assert taking.take([message(3, body("old"))], position=3) is None
    batch = taking.take(
        [message(3, body("old")), message(4, body("mine", origin=ME), origin=ME)], position=3
    )
    assert batch is not None
    assert batch.records == []
    assert batch.checkpoint == 4  # past this node's own message, which it holds


def test_a_message_in_parts_waits_for_its_last_part_and_holds_the_checkpoint_back() -> None:
    taking, _ = inbound()
    data = body("big", "bigger")
    half = len(data) // 2
    first = message(10, data[:half], **{UNIT: "u1", PART: "1/2"})
    between = message(11, body("small"))
    last = message(12, data[half:], **{UNIT: "u1", PART: "2/2"})
    batch = taking.take([first, between], position=9)
    assert batch is not None
    assert [r.key for r in batch.records] == ["small"]
    assert batch.checkpoint == 9  # before the first part: a restart reads it again
    batch = taking.take([last], position=11)
    assert batch is not None
    assert [r.key for r in batch.records] == ["big", "bigger"]
    assert batch.checkpoint == 12


def test_parts_kept_are_dropped_when_the_consumer_reads_again() -> None:
    taking, _ = inbound()
    data = body("big")
    taking.take([message(10, data[:5], **{UNIT: "u1", PART: "1/2"})], position=9)
    taking.restart()
    batch = taking.take([message(11, body("small"))], position=10)
    assert batch is not None
    assert batch.checkpoint == 11


def test_a_removed_members_writes_and_a_bad_message_are_not_taken() -> None:
    taking, _ = inbound()
    taking.membership.merge([{"id": "n2", "url": "http://n2", "left": True, "v": 5, "inc": "i2"}])
    batch = taking.take(
        [
            message(4, body("from-removed")),
            message(5, b"not json"),
            message(6, body("x", origin=make_origin("n3", "i3")), origin=make_origin("n3", "i3")),
        ],
        position=3,
    )
    assert batch is not None
    assert [r.key for r in batch.records] == ["x"]
    assert batch.checkpoint == 6


def test_versions_far_ahead_of_the_clock_are_counted() -> None:
    taking, _ = inbound()
    far = [Record("k", "v", make_version(from_millis(NOW + 3_600_000), OTHER))]
    data = b"".join(encode_reply(PullReply("n2", "feed", 0, 0, far, [])))
    taking.take([message(4, data)], position=3)
    assert taking.skewed == 1
