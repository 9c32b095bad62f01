"""The steps of the API applications build on: conditional writes, TTLs, transactions, the reaper
and watchers, each checked on the spot against what the history knows the node held.

The history's `current` of a slot is what the node held at its last check, and every step that
changes a store checks it, so it is what the node holds when the next step starts: the outcome a
condition must have is worked out from it (and the node's clock), independently of the store.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from shareddb.node import Node, PreconditionFailed, TxnOp, WriteResult
from shareddb.record import Record
from shareddb.store.base import Outcome, StoreUnavailable
from shareddb.store.ops import ANY, Condition
from tests.sim.checks import EXPIRY_READS, INVARIANT_9, Violation, Write
from tests.sim.watch import Watcher
from tests.sim.world import reap as run_reaper

if TYPE_CHECKING:
    from tests.sim.simulation import Simulation
    from tests.sim.world import Slot

CONDITIONAL = (
    "Conditional writes: a conditional write or transaction commits exactly when its conditions "
    "hold on that node at that moment"
)
CAS_ONCE = (
    "Conditional writes: of the conditional writes naming one version on one node, at most one succeeds"
)
EXPIRY_AGREES = (
    "Expiry: once every node's clock is past a value's expiry and the reaper ran, every node agrees"
)
HOT_KEYS = [f"hot-{i}" for i in range(6)]
SHORT_TTL = (1, 20)  # seconds: expires within the run's virtual time
LONG_TTL = (600, 5400)  # expires at a long jump of virtual time, or at the end


def draw_ttl(rng: random.Random) -> int:
    return rng.randint(*SHORT_TTL) if rng.random() < 0.7 else rng.randint(*LONG_TTL)


def visible(records: dict[str, Record], key: str, now: int) -> str | None:
    """The version a reader of `key` gets from `records` at wall-clock `now` (None: absent)."""
    record = records.get(key)
    return record.version if record is not None and record.live_at(now) else None


def holds(condition: Condition, version: str | None) -> bool:
    return version is not None if condition.version == ANY else version == condition.version


def show(condition: Condition) -> str:
    if condition.version is None:
        return f"If-None-Match {condition.key}"
    return f"If-Match {condition.key}@{condition.version}"


async def choose_condition(sim: Simulation, slot: Slot, key: str) -> Condition:
    """What a client names: the version it just read or last read on that node, a stale one, none
    (If-None-Match), or any."""
    node = slot.node
    assert node is not None
    draw = sim.rng.random()
    last = sim.reads.get((slot.index, key), "")
    if draw < 0.55 or (draw < 0.7 and last == ""):
        record = await node.get(key)
        read = record.version if record is not None else None
        expected = visible(sim.history.slot(slot.index).current, key, node.now())
        if read != expected:
            raise Violation(f"{EXPIRY_READS}: n{slot.index} GET {key} gave {read}, it holds {expected}")
        sim.reads[(slot.index, key)] = read
        return Condition(key, read)
    if draw < 0.7:
        return Condition(key, last)
    if draw < 0.85:
        stale = sorted(v for k, v in sim.history.written if k == key)
        return Condition(key, sim.rng.choice(stale) if stale else None)
    return Condition(key, None if draw < 0.95 else ANY)


def new_value(sim: Simulation) -> str:
    sim._values += 1
    return f"v{sim._values}"


def pick_key(sim: Simulation, hot: float = 0.75) -> str:
    if sim.rng.random() < hot:
        return sim.rng.choice(HOT_KEYS)
    sim._unique += 1
    return f"set-{sim._unique}"


async def conditional_write(sim: Simulation) -> None:
    """If-Match (the version read, a stale one, any) or If-None-Match puts and deletes on one node;
    sometimes two or three clients race with the same condition."""
    rng, slot = sim.rng, sim.pick_up()
    node = slot.node
    assert node is not None
    key = rng.choice(HOT_KEYS)
    condition = await choose_condition(sim, slot, key)
    racers = rng.randint(2, 3) if condition.version != ANY and rng.random() < 0.3 else 1
    ops = []
    for _ in range(racers):
        delete = condition.version is not None and rng.random() < 0.25
        ops.append(
            TxnOp(key, None if delete else new_value(sim), draw_ttl(rng) if rng.random() < 0.2 else None)
        )
    now = node.now()
    before = visible(sim.history.slot(slot.index).current, key, now)

    async def attempt(op: TxnOp) -> WriteResult | PreconditionFailed:
        try:
            if op.value is None:
                return await node.delete(key, condition=condition)
            return await node.put(key, op.value, ttl=op.ttl, condition=condition)
        except PreconditionFailed as exc:
            return exc

    results = await asyncio.gather(*(attempt(op) for op in ops))
    wins = [(op, r) for op, r in zip(ops, results, strict=True) if isinstance(r, WriteResult)]
    told = [[(c.key, c.version) for c in r.failed] for r in results if isinstance(r, PreconditionFailed)]
    sim.note(
        "cas",
        f"{slot.name} {show(condition)} ({'held' if holds(condition, before) else 'not held'}): "
        + ", ".join(f"{'del' if op.value is None else 'put'} {op.value} ttl={op.ttl}" for op in ops)
        + f" -> {len(wins)} won {[r.version for _, r in wins]}, failed {told}",
    )
    if not holds(condition, before):
        if wins:
            raise Violation(
                f"{CONDITIONAL}: n{slot.index} {show(condition)} won, it held {key}@{before}"
            )
        after = before
    elif len(wins) != 1:
        raise Violation(
            f"{CAS_ONCE if wins else CONDITIONAL}: {len(wins)} of {racers} writes "
            f"{show(condition)} on n{slot.index} succeeded, holding {key}@{before}"
        )
    else:
        op, result = wins[0]
        after = None if op.value is None else result.version
        marks = sim.history.slot(slot.index)
        if condition.version not in (None, ANY):
            assert condition.version is not None
            if (key, condition.version) in marks.matched:
                raise Violation(f"{CAS_ONCE}: n{slot.index} {show(condition)} succeeded again")
            marks.matched.add((key, condition.version))
        if result.outcome not in (Outcome.NOT_FOUND, Outcome.SUPERSEDED):
            expires = None if op.ttl is None else now + op.ttl * 1000
            sim.history.wrote(Write(slot.index, key, op.value, result.version, expires), True)
        sim.reads[(slot.index, key)] = after
    for failed in told:
        if failed != [(key, after)]:
            raise Violation(
                f"{CONDITIONAL}: n{slot.index} {show(condition)} failed naming {failed}, "
                f"but it held {key}@{after}"
            )
    held = await sim.check(slot)
    for op, result in wins:
        if result.outcome not in (Outcome.NOT_FOUND, Outcome.SUPERSEDED):
            sim.history.check_write(slot.index, Write(slot.index, key, op.value, result.version), held)


async def ttl_write(sim: Simulation) -> None:
    """A put with a TTL: a short one expires within the run, a long one at a jump or the end."""
    slot = sim.pick_up()
    node = slot.node
    assert node is not None
    key, value, ttl = pick_key(sim), new_value(sim), draw_ttl(sim.rng)
    expires = node.now() + ttl * 1000
    result = await node.put(key, value, ttl=ttl)
    write = Write(slot.index, key, value, result.version, expires)
    sim.history.wrote(write, acknowledged=True)
    sim.note("ttl", f"{slot.name} put {key}={value} ttl={ttl}s (expires {expires}) {result}")
    held = await sim.check(slot)
    sim.history.check_write(slot.index, write, held)


async def transaction(sim: Simulation) -> None:
    """2 to 6 puts and deletes in one transaction, some with a TTL, with or without conditions;
    a crash may cut the answer short."""
    rng, slot = sim.rng, sim.pick_up()
    node = slot.node
    assert node is not None
    keys: list[str] = []
    size = rng.randint(2, 6)
    while len(keys) < size:
        if (key := pick_key(sim, hot=0.7)) not in keys:
            keys.append(key)
    ops = [
        TxnOp(key, None)
        if rng.random() < 0.25
        else TxnOp(key, new_value(sim), draw_ttl(rng) if rng.random() < 0.25 else None)
        for key in keys
    ]
    conditions: list[Condition] = []
    if rng.random() < 0.5:
        for key in rng.sample(sorted(set(keys) | set(HOT_KEYS)), rng.randint(1, 3)):
            conditions.append(await choose_condition(sim, slot, key))
    now = node.now()
    current = sim.history.slot(slot.index).current
    failing = [(c.key, seen) for c in conditions if not holds(c, seen := visible(current, c.key, now))]
    crash = rng.random() < 0.03 and sum(s.up for s in sim.world.slots) > 1
    text = f"{slot.name} txn if [{', '.join(show(c) for c in conditions)}] then " + ", ".join(
        f"{'del' if op.value is None else 'put'} {op.key}={op.value} ttl={op.ttl}" for op in ops
    )
    try:
        result = await node.transact(conditions, ops)
    except PreconditionFailed as exc:
        failed = [(c.key, c.version) for c in exc.failed]
        sim.note("txn", f"{text} -> failed {failed}")
        if failed != failing:
            raise Violation(
                f"{CONDITIONAL}: n{slot.index} failed {failed}, expected {failing}"
            ) from None
        await sim.check(slot)
        return
    except StoreUnavailable as exc:  # lost to versions from ahead of its clock, every time
        sim.note("txn", f"{text} -> {exc}")
        return
    sim.note("txn", f"{text} -> {result}")
    if failing:
        raise Violation(f"{CONDITIONAL}: n{slot.index} committed a transaction, but {failing}")
    writes, members = [], {}
    for (key, version), op in zip(result, ops, strict=True):
        absent = visible(current, key, now) is None
        if (version is None) != (op.value is None and absent):
            raise Violation(f"{CONDITIONAL}: n{slot.index} answered {key}@{version} for {op}")
        if version is not None:
            expires = None if op.ttl is None else now + op.ttl * 1000
            writes.append(Write(slot.index, key, op.value, version, expires))
            members[key] = version
    marks = sim.history.slot(slot.index)
    for condition in conditions:
        if condition.key in members and condition.version not in (None, ANY):
            assert condition.version is not None
            if (condition.key, condition.version) in marks.matched:
                raise Violation(f"{CAS_ONCE}: n{slot.index} {show(condition)} succeeded again")
            marks.matched.add((condition.key, condition.version))
    for write in writes:
        sim.history.wrote(write, acknowledged=not crash)
        sim.reads[(slot.index, write.key)] = None if write.value is None else write.version
    sim.history.transaction(members)
    if crash:
        sim.note("crash", f"{slot.name} crashes before answering")
        await sim.world.crash(slot)
        return
    held = await sim.check(slot)
    for write in writes:
        sim.history.check_write(slot.index, write, held)


async def reap(sim: Simulation, slot: Slot | None = None) -> None:
    """The reaper on one node: every value its clock has passed the expiry of becomes a tombstone
    of its own version, and none before."""
    slot = slot or sim.pick_up()
    node = slot.node
    assert node is not None
    now = node.now()
    sim.history.reaped_at = max(sim.history.reaped_at, now)
    before = sim.history.slot(slot.index).current
    reaped = 0
    while count := await run_reaper(node):
        reaped += count
    sim.note("reap", f"{slot.name} reaped {reaped} at {now}")
    held = await sim.check(slot, count=True)
    for key, record in held.items():
        old = before.get(key)
        if record.deleted and old is not None and old.version == record.version and not old.deleted:
            if old.expires is None or old.expires > now:
                raise Violation(
                    f"{INVARIANT_9}: n{slot.index} reaped {key}@{record.version} (expires "
                    f"{old.expires}) at {now}"
                )
        elif record.value is not None and record.expires is not None and record.expires <= now:
            raise Violation(f"{EXPIRY_READS}: n{slot.index} reaper left {key}@{record.version} due")
    await check_listing(node, slot.index, held)


async def check_listing(node: Node, index: int, held: dict[str, Record]) -> None:
    """A listing shows exactly the values the node's clock has not passed the expiry of."""
    now = node.now()
    listed = [(r.key, r.value, r.version) for r in await node.store.scan("", None, 1_000_000)]
    live = sorted((k, r.value, r.version) for k, r in held.items() if r.live_at(now))
    if listed != live:
        diff = sorted(set(listed) ^ set(live))[:4]
        raise Violation(f"{EXPIRY_READS}: n{index}'s listing differs from what it holds: {diff}")


async def watch(sim: Simulation) -> None:
    """A watcher on one node reads a page of its feed, or reads to its end and is checked."""
    rng, slot = sim.rng, sim.pick_up()
    node = slot.node
    assert node is not None
    watcher = sim.watchers.get(slot.index)
    if watcher is None:
        watcher = sim.watchers[slot.index] = Watcher(slot.index)
        started = await watcher.start(node, replay=rng.random() < 0.5)
        sim.note("watch", f"{slot.name} watcher {started}")
    to_end = rng.random() < 0.5
    limit = rng.randint(1, 20)
    events, done = await watcher.read(node, limit)
    while to_end and not done:
        more, done = await watcher.read(node, limit)
        events += more
    sim.note("watch", f"{slot.name} watcher took {events} events, at {watcher.position}")
    if done:
        watcher.check_caught_up(sim.history.slot(slot.index).current)


async def settle_expiry(sim: Simulation, inside: list[Slot]) -> dict[int, dict[str, Record]]:
    """Once the nodes converged: every node's clock past every expiry, the reaper run everywhere,
    and every node must hold, list and count the same. Answers what each holds."""
    world = sim.world
    nodes = [slot.running[0] for slot in inside]
    latest = max(
        (
            record.expires
            for slot in inside
            for record in sim.history.slot(slot.index).current.values()
            if record.value is not None and record.expires is not None
        ),
        default=None,
    )
    if latest is not None and (behind := min(node.now() for node in nodes)) <= latest:
        world.time_ms += latest - behind + 1
    for slot in inside:
        await reap(sim, slot)
    states = {slot.index: await sim.check(slot) for slot in inside}
    digests = {(node.store.digest().count, node.store.digest().digest) for node in nodes}
    listings = {
        tuple((r.key, r.value, r.version) for r in await node.store.scan("", None, 1_000_000))
        for node in nodes
    }
    if len(digests) > 1 or len(listings) > 1:
        raise Violation(f"{EXPIRY_AGREES}: digests {sorted(digests)}, {len(listings)} listings")
    for slot in inside:
        watcher = sim.watchers.get(slot.index)
        node = slot.running[0]
        if watcher is not None:
            while not (await watcher.read(node, 1000))[1]:
                pass
            watcher.check_caught_up(states[slot.index])
    return states
