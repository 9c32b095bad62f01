"""The pure planning of a batch: the LWW merge (`MergePlan`), the purge rule, results per operation."""

from __future__ import annotations

import itertools

import pytest

from shareddb.record import Record, make_version, named
from shareddb.store.base import (
    DIGEST_BUCKETS,
    Applied,
    Change,
    Checkpoint,
    Outcome,
    bucket_of,
    record_hash,
)
from shareddb.store.ops import (
    Behind,
    ClientWrite,
    Condition,
    Conflict,
    Expire,
    Op,
    PeerBatch,
    PurgeTombstones,
    SetMeta,
    Txn,
)
from shareddb.store.plan import MergePlan, Stored, Tally, plan_batch

EMPTY = (0,) * DIGEST_BUCKETS


def v(hlc: int, node: str = "n1") -> str:
    return make_version(hlc, node)


def put(key: str, value: str, hlc: int) -> Record:
    return Record(key, value, v(hlc))


def tomb(key: str, hlc: int) -> Record:
    return Record(key, None, v(hlc))


def fresh(current: Stored | None = None, seq: int = 0, live: int = 0) -> MergePlan:
    return MergePlan(dict(current or {}), seq, live, EMPTY)


def test_a_new_key_is_created_with_the_next_sequence_number() -> None:
    plan = fresh(seq=7)
    assert plan.merge(put("k", "v", 1)) is Outcome.CREATED
    assert plan.rows == {"k": ("k", "v", v(1), 8, None, 0)}
    assert (plan.seq, plan.live) == (8, 1)
    assert plan.buckets == {bucket_of("k"): record_hash("k", v(1))}
    assert plan.accepted == [put("k", "v", 1)]


def test_an_older_or_equal_version_is_superseded_and_plans_nothing() -> None:
    """Invariant 3: the stored value is the greatest version written."""
    plan = fresh({"k": (True, v(5), None)}, seq=3, live=1)
    assert plan.merge(put("k", "old", 4)) is Outcome.SUPERSEDED
    assert plan.merge(put("k", "same", 5)) is Outcome.SUPERSEDED
    assert plan.merge(tomb("k", 5)) is Outcome.SUPERSEDED
    assert (plan.rows, plan.buckets, plan.accepted, plan.seq, plan.live) == ({}, {}, [], 3, 1)


def test_a_client_delete_needs_a_live_value_but_a_peer_tombstone_does_not() -> None:
    plan = fresh()
    assert plan.merge(tomb("k", 1), only_over_live=True) is Outcome.NOT_FOUND
    assert plan.rows == {}
    assert plan.merge(tomb("k", 1)) is Outcome.DELETED  # from a peer: kept, it blocks older writes
    assert plan.live == 0
    assert plan.merge(put("k", "stale", 0)) is Outcome.SUPERSEDED


def test_a_later_record_in_the_same_plan_replaces_an_earlier_one() -> None:
    plan = fresh()
    assert plan.merge(put("k", "a", 1)) is Outcome.CREATED
    assert plan.merge(put("k", "b", 2)) is Outcome.UPDATED
    assert plan.merge(tomb("k", 3)) is Outcome.DELETED
    assert plan.rows == {"k": ("k", None, v(3), 3, None, 0)}
    assert plan.live == 0
    assert plan.buckets == {bucket_of("k"): record_hash("k", v(3))}


def test_the_digest_does_not_depend_on_the_order_records_arrive_in() -> None:
    """Invariant 2: two stores holding the same (key, version) pairs have equal digests."""
    records = [put("a", "1", 1), put("b", "2", 2), tomb("a", 3), put("c", "3", 1), put("b", "x", 1)]
    outcomes = set()
    for order in itertools.permutations(records):
        plan = fresh()
        for record in order:
            plan.merge(record)
        outcomes.add((tuple(sorted(plan.buckets.items())), plan.live))
    assert len(outcomes) == 1


def test_forgetting_a_tombstone_leaves_its_bucket_as_if_never_written() -> None:
    plan = fresh()
    plan.merge(tomb("k", 1))
    plan.forget("k", v(1))
    assert plan.buckets == {bucket_of("k"): 0}


def test_a_batch_answers_each_operation_in_order() -> None:
    base = Tally(10, 1, 500, EMPTY)
    ops: list[Op] = [
        ClientWrite(put("a", "1", 1)),
        SetMeta("members", "[]"),
        PeerBatch([put("a", "old", 0), put("b", "2", 2)], Checkpoint("p", "i", 4)),
        ClientWrite(tomb("zz", 3)),
        PeerBatch([], Checkpoint("p", "i", 9)),
        SetMeta("members", '["x"]'),
    ]
    batch = plan_batch(ops, 400, base, {}, {})
    assert batch.results == [
        Outcome.CREATED, None, Applied(1, 12, 12), Outcome.NOT_FOUND, Applied(0, 13, 12), None
    ]  # fmt: skip
    assert batch.checkpoints == [Checkpoint("p", "i", 9)]  # the last one of a peer wins
    assert batch.meta == {"members": '["x"]'}
    assert (batch.tally.seq, batch.tally.live) == (12, 3)
    assert batch.tally.clock_high == 500  # never goes backwards
    assert plan_batch([], 900, base, {}, {}).tally.clock_high == 900


def test_a_purge_drops_old_tombstones_at_or_below_its_sequence_and_counts_them() -> None:
    """Invariant 4: a tombstone some member may still need is never dropped."""
    base = Tally(20, 0, 0, EMPTY)
    stored_tombs = {"old": (5, v(5)), "young": (6, v(500)), "late": (15, v(6))}
    ops = [PurgeTombstones(10, v(100, ""))]
    batch = plan_batch(ops, 0, base, {}, stored_tombs)
    assert batch.results == [1]
    assert batch.purged == ["old"]
    assert batch.accepted == [Record("old", None, "")]  # the cache forgets it
    assert batch.tally.seq == 20


def test_a_purge_sees_the_batch_it_is_in() -> None:
    """A key written live in the batch is kept; a tombstone written in it may go (never stored)."""
    base = Tally(2, 1, 0, EMPTY)
    stored: Stored = {"back": (False, v(1), None), "gone": (True, v(1), None)}
    ops: list[Op] = [
        PeerBatch([put("back", "again", 2), tomb("gone", 2)]),
        PurgeTombstones(100, v(1000, "")),
    ]
    batch = plan_batch(ops, 0, base, stored, {"back": (1, v(1))})
    assert batch.results == [Applied(2, 3, 4), 1]
    assert batch.purged == ["gone"]
    assert [row[0] for row in batch.rows] == ["back"]
    assert batch.tally.live == 1


def test_two_purges_in_one_batch_each_count_only_what_they_dropped() -> None:
    tombs = {"a": (1, v(1)), "b": (2, v(2)), "c": (3, v(3))}
    ops = [PurgeTombstones(1, v(100, "")), PurgeTombstones(3, v(100, ""))]
    batch = plan_batch(ops, 0, Tally(3, 0, 0, EMPTY), {}, tombs)
    assert batch.results == [1, 2]
    assert sorted(batch.purged) == ["a", "b", "c"]


# -- conditions, transactions, expiry -------------------------------------------------------------


def test_a_condition_is_checked_against_the_batch_so_far_and_one_of_many_wins() -> None:
    base = Tally(1, 1, 0, EMPTY)
    stored: Stored = {"k": (True, v(1), None)}
    ops: list[Op] = [ClientWrite(put("k", f"w{n}", 10 + n), Condition("k", v(1))) for n in range(3)]
    batch = plan_batch(ops, 0, base, stored, {})
    assert batch.results[0] is Outcome.UPDATED
    assert batch.results[1:] == [Conflict([Condition("k", v(10))])] * 2
    assert [row[:3] for row in batch.rows] == [("k", "w0", v(10))]


def test_absent_means_never_written_deleted_or_expired() -> None:
    stored: Stored = {"gone": (False, v(1), None), "old": (True, v(1), 500), "live": (True, v(1), None)}
    ops: list[Op] = [
        ClientWrite(put(key, "x", 5), Condition(key, None)) for key in ("new", "gone", "old", "live")
    ]
    batch = plan_batch(ops, 0, Tally(3, 2, 0, EMPTY), stored, {}, now=1000)
    assert batch.results == [Outcome.CREATED] * 3 + [Conflict([Condition("live", v(1))])]
    assert batch.tally.live == 4  # "old" held a value that had expired: it still counted


def test_a_transaction_is_all_or_nothing_and_lists_every_failed_condition() -> None:
    stored: Stored = {"a": (True, v(1), None)}
    txn = Txn(
        [Condition("a", v(2)), Condition("b", v(1)), Condition("a", v(1))],
        [put("a", "x", 5), put("b", "y", 6)],
    )
    batch = plan_batch([txn], 0, Tally(1, 1, 0, EMPTY), stored, {})
    assert batch.results == [Conflict([Condition("a", v(1)), Condition("b", None)])]
    assert (batch.rows, batch.entries) == ([], [])


def test_a_transaction_losing_to_a_stored_version_writes_nothing() -> None:
    stored: Stored = {"b": (True, v(9), None)}
    batch = plan_batch(
        [Txn([], [put("a", "x", 5), put("b", "y", 6)])], 0, Tally(1, 1, 0, EMPTY), stored, {}
    )
    assert batch.results == [Behind("b", v(9))]
    assert batch.rows == []


def test_a_transaction_becomes_one_entry_covering_its_rows() -> None:
    txn = Txn([], [put("a", "x", 5), tomb("gone", 6), put("b", "y", 7)])
    batch = plan_batch([txn], 0, Tally(10, 0, 0, EMPTY), {}, {})
    assert batch.results == [[Outcome.CREATED, Outcome.NOT_FOUND, Outcome.CREATED]]
    assert batch.entries == [(12, [Change(11, put("a", "x", 5)), Change(12, put("b", "y", 7))])]
    assert [(row[0], row[3], row[5]) for row in batch.rows] == [("a", 11, 12), ("b", 12, 12)]


def test_a_peer_transaction_is_kept_whole_even_where_this_node_has_newer() -> None:
    stored: Stored = {"a": (True, v(50), None)}
    records = [put("x", "1", 1), put("a", "old", 5), put("b", "new", 6), put("y", "2", 2)]
    batch = plan_batch([PeerBatch(records, None, [(1, 3)])], 0, Tally(1, 1, 0, EMPTY), stored, {})
    assert batch.results == [Applied(3, 2, 4)]  # x, b, y: the positions hold nothing else
    assert batch.entries == [(3, [Change(0, put("a", "old", 5)), Change(3, put("b", "new", 6))])]
    assert {row[0]: row[5] for row in batch.rows} == {"x": 0, "b": 3, "y": 0}


def test_expiry_keeps_the_version_and_the_digest_and_never_touches_a_later_write() -> None:
    stored: Stored = {"k": (True, v(1), 1000), "newer": (True, v(3), None)}
    base = Tally(2, 2, 0, EMPTY)
    early = plan_batch([Expire([("k", v(1))], 999)], 0, base, dict(stored), {}, now=999)
    assert early.results == [0]  # not expired yet
    batch = plan_batch(
        [Expire([("k", v(1)), ("newer", v(2))], 1000)], 0, base, dict(stored), {}, now=1000
    )
    assert batch.results == [1]
    assert batch.rows == [("k", None, v(1), 3, None, 0)]
    assert batch.buckets == {}
    assert batch.tally.live == 1


def test_a_purge_drops_the_transaction_entries_that_cover_no_row() -> None:
    batch = plan_batch([PurgeTombstones(7, v(100))], 0, Tally(9, 0, 0, EMPTY), {}, {})
    assert batch.drop_uncovered
    assert not plan_batch([SetMeta("m", "x")], 0, Tally(9, 0, 0, EMPTY), {}, {}).drop_uncovered


def test_the_tombstone_an_expiry_left_wins_over_the_value_at_the_same_version() -> None:
    """Every node comes to hold the expiry's tombstone once one has it, so the purge horizon
    (every member has applied it) holds for expiries too."""
    stored: Stored = {"k": (True, v(1), 500)}
    batch = plan_batch([PeerBatch([tomb("k", 1)])], 0, Tally(1, 1, 0, EMPTY), stored, {})
    assert batch.results == [Applied(1, 2, 2)]
    assert batch.rows == [("k", None, v(1), 2, None, 0)]
    assert (batch.buckets, batch.tally.live) == ({}, 0)
    again = plan_batch([PeerBatch([put("k", "v", 1)])], 0, batch.tally, {"k": (False, v(1), None)}, {})
    assert again.results == [Applied(0, 3, 2)]  # and the value never comes back over it


def test_a_purge_that_drops_tombstones_raises_the_feed_floor() -> None:
    batch = plan_batch([PurgeTombstones(7, v(100))], 0, Tally(9, 0, 0, EMPTY), {}, {"t": (5, v(1))})
    assert batch.purged == ["t"]
    assert batch.tally.floor == 7


def test_a_purge_that_drops_a_tombstone_raises_the_purge_mark_and_never_lowers_it() -> None:
    mark = "purged_before"  # plan.PURGED_BEFORE, as it is stored in the node's metadata
    stored = {"t": (5, v(1))}
    batch = plan_batch([PurgeTombstones(7, v(100))], 0, Tally(9, 0, 0, EMPTY), {}, stored)
    assert batch.meta == {mark: v(100)}
    later = plan_batch(
        [PurgeTombstones(7, v(50))], 0, Tally(9, 0, 0, EMPTY), {}, stored, 0, v(100)
    )  # a clock that stepped back
    assert later.meta == {mark: v(100)}
    nothing = plan_batch([PurgeTombstones(7, v(200))], 0, Tally(9, 0, 0, EMPTY), {}, {})
    assert nothing.meta == {}


def test_a_restored_record_older_than_the_purge_mark_is_left_out_only_where_nothing_is_held() -> None:
    """Invariant 4: a snapshot's old value of a key whose tombstone was purged must not come
    back. Where the plan holds the key (a value, a tombstone, or a tombstone its own purge drops
    in the same batch), the merge rule decides."""
    mark = v(100, "")
    stored: Stored = {"older-tomb": (False, v(5), None), "newer-tomb": (False, v(20), None)}
    records = [put("gone", "old", 10), put("older-tomb", "old", 10), put("newer-tomb", "old", 10)]
    records.append(put("new", "after the mark", 150))
    ops: list[Op] = [PeerBatch(records, restored=True), PurgeTombstones(9, v(100))]
    tombstones = {"older-tomb": (1, v(5)), "newer-tomb": (2, v(20))}
    batch = plan_batch(ops, 0, Tally(2, 0, 0, EMPTY), dict(stored), tombstones, 0, mark)
    assert batch.results[0] == Applied(2, 3, 4)  # "older-tomb" (over its tombstone) and "new"
    assert {row[0] for row in batch.rows} == {"older-tomb", "new"}
    assert batch.purged == ["newer-tomb"]  # the tombstone that beat the restored value
    plain = plan_batch([PeerBatch(records)], 0, Tally(2, 0, 0, EMPTY), dict(stored), {}, 0, mark)
    assert plain.results[0] == Applied(3, 3, 5)  # a peer's page is merged whatever the mark


def test_a_restored_batch_refuses_groups_which_its_records_left_out_would_misplace() -> None:
    with pytest.raises(ValueError, match="no groups"):
        PeerBatch([put("a", "1", 1), put("b", "2", 1)], None, [(0, 2)], restored=True)


def test_a_peer_page_plans_as_merging_each_record_and_passes_over_keys_only_named() -> None:
    """A peer's page or bus message outside any transaction goes through `MergePlan.load` (one
    loop); it must plan exactly what merging its records one by one plans. A key the peer only
    names (it holds no version) is no write."""
    stored: Stored = {"a": (True, v(5), None), "b": (False, v(5), None), "c": (True, v(9), 10)}
    records = [
        put("a", "new", 6),
        put("b", "old", 4),
        named("c"),
        tomb("c", 9),  # the tombstone an expiry left, at the value's version: it wins
        put("d", "x", 3),
        named("e"),
        put("a", "newer", 8),
    ]
    one = MergePlan(dict(stored), 3, 2, EMPTY, now=20)
    won = sum(one.merge(r) is not Outcome.SUPERSEDED for r in records if not r.named_only)
    batch = plan_batch([PeerBatch(records, None, [])], 0, Tally(3, 2, 0, EMPTY, 0), stored, {}, 20)
    assert batch.results == [Applied(won, 4, one.seq)]
    assert won == 4
    assert batch.rows == list(one.rows.values())
    assert batch.accepted == one.accepted
    assert batch.buckets == one.buckets
    assert (batch.tally.seq, batch.tally.live) == (one.seq, one.live)
