"""One simulation run: a seeded scheduler drives real nodes through client writes and faults.

Every choice comes from one `random.Random(seed)`, and every step runs to completion before the next
one starts, so a seed always replays the same run. After each step the safety invariants are checked
against what the stores hold; at the end every fault is healed and the nodes must converge within
`heal.HEAL_ROUNDS` rounds of pulls (liveness). The steps live beside it: the API's in clients.py,
membership in members.py, the loss of a node's data in lives.py; the end of a run in heal.py.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import orjson

from shareddb.membership import Removed
from shareddb.node import Node
from shareddb.record import Record
from shareddb.replication.transport import PeerError
from shareddb.store.base import Outcome
from tests.sim import clients, lives, members
from tests.sim.checks import EXPIRY_READS, History, Violation, Write
from tests.sim.clients import HOT_KEYS
from tests.sim.heal import heal
from tests.sim.watch import Watcher
from tests.sim.world import MINUTE, SKEWS, SimRegistry, Slot, World, records

ALL_KINDS = (
    "write",
    "pull",
    "deliver",
    "time",
    "crash",
    "restart",
    "wipe",
    "partition",
    "heal",
    "skew",
    "purge",
    "save-members",
    "join",
    "add-node",
    "rewind",
    "restore",
    "remove",
    "leave",
    "rejoin",
    "registry",
    "cas",
    "ttl",
    "txn",
    "reap",
    "watch",
    "snapshot",
    "restore-snapshot",
)
# Fault kinds a failing run may be replayed without, to find a shorter trace.
OPTIONAL_KINDS = (
    "deliver",
    "crash",
    "wipe",
    "rewind",
    "restore",
    "remove",
    "leave",
    "rejoin",
    "partition",
    "skew",
    "purge",
    "add-node",
    "registry",
    "cas",
    "ttl",
    "txn",
    "reap",
    "watch",
    "snapshot",
    "restore-snapshot",
)
# Every run wipes a node that comes back under its old id with its clock turned back, at a step in
# this range (drawn before the first step, so a shorter replay of the seed keeps the same steps).
REWIND_STEPS = (40, 240)


@dataclass(frozen=True)
class Config:
    steps: int = 400
    disabled: frozenset[str] = frozenset()
    # A restore puts the backup of the store back in place as the same life, the data dir (and
    # its clock bound) kept: a Redis restored from a dump. Else the whole directory comes back,
    # and the store opens as a new life.
    restores_keep_life: bool = False
    # Snapshots of a node's data (`shareddb backup`) taken and restored into a node, of any age
    # (`shareddb restore`), in runs without transactions. Off by default, so that every other
    # seed replays as it always did.
    snapshots: bool = False


@dataclass
class Result:
    seed: int
    nodes: int
    steps: int
    trace: list[str]
    counts: Counter[str] = field(default_factory=Counter)
    heal_rounds: int = 0
    error: str | None = None


class Simulation:
    def __init__(self, seed: int, root: Path, config: Config = Config()) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config
        self.world = World(root, self.rng)
        self.history = History()
        self.trace: list[str] = []
        self.counts: Counter[str] = Counter()
        self._values = 0
        self._unique = 0
        self.reads: dict[tuple[int, str], str | None] = {}  # (slot, key) → the version last read
        self.watchers: dict[int, Watcher] = {}  # by slot
        self.snapshots: list[tuple[int, list[Record]]] = []  # (virtual time, records), newest last
        self._checked: dict[int, object] = {}  # slot → the store snapshot it was last checked at

    # -- the run ----------------------------------------------------------------------------------

    async def run(self) -> Result:
        nodes = self.rng.randint(3, 5)
        rewind_at = self.rng.randrange(*REWIND_STEPS)
        if self.rng.random() < 0.5 and "registry" not in self.config.disabled:
            self.world.registry = SimRegistry(self.world)
        result = Result(self.seed, nodes, 0, self.trace, self.counts)
        try:
            urls = tuple(f"http://sim-n{i}:7000" for i in range(nodes))
            for _ in range(nodes):
                slot = self.world.add_slot(urls)
                await self.world.start(slot)
            for step in range(self.config.steps):
                result.steps = step + 1
                if step >= rewind_at and not self.counts["rewind"] and "rewind" in self.enabled_kinds():
                    await lives.rewind(self)
                    continue
                await self.step()
            result.heal_rounds = await heal(self)
        except Violation as exc:
            result.error = str(exc)
        finally:
            await self.world.shutdown()
        return result

    async def step(self) -> None:
        kinds = self.enabled_kinds()
        weights = {
            "write": 30,
            "pull": 40,
            "deliver": 3,
            "time": 8,
            "crash": 2,
            "restart": 6,
            "wipe": 0.4,
            "partition": 2,
            "heal": 2,
            "skew": 1.5,
            "purge": 3,
            "save-members": 4,
            "join": 4,
            "add-node": 0.3,
            "rewind": 0.3,
            "restore": 0.4,
            "remove": 0.4,
            "leave": 0.3,
            "rejoin": 0.5,
            "registry": 6,
            "cas": 6,
            "ttl": 4,
            "txn": 5,
            "reap": 3,
            "watch": 4,
            "snapshot": 1,
            "restore-snapshot": 1,
        }
        kind = self.rng.choices(kinds, [weights[k] for k in kinds])[0]
        await self.ACTIONS[kind](self)

    def enabled_kinds(self) -> list[str]:
        up = [s for s in self.world.slots if s.up]
        down = [s for s in self.world.slots if not s.up]
        inside = [s for s in self.world.slots if s.removed is None]
        possible = {
            "write": bool(up),
            "pull": bool(up),
            "deliver": bool(self.world.network.delayed),
            "time": True,
            "crash": len(up) > 1,
            "restart": bool(down),
            "wipe": len(up) > 1,
            "partition": True,
            "heal": bool(self.world.network.cut),
            "skew": bool(up),
            "purge": bool(up),
            "save-members": any(s.members_dirty for s in up),
            "join": any(s.joining for s in up),
            "add-node": len(self.world.slots) < 7 and any(s.up for s in inside),
            "rewind": len(up) > 1 and any(s.up for s in inside),
            "restore": len(up) > 1 and bool(lives.restorable(self)),
            "remove": len(inside) > 2 and bool(members.removal_candidates(self)),
            "leave": len(inside) > 2 and any(members.can_remove(s) for s in inside),
            "rejoin": len(inside) < len(self.world.slots) and any(s.up for s in inside),
            "registry": any(s.registry is not None for s in up),
            "cas": bool(up),
            "ttl": bool(up),
            # A restored snapshot puts a transaction's keys back as separate writes (README,
            # "Limits of a restore"): with snapshots, no transactions.
            "txn": bool(up) and not self.config.snapshots,
            "reap": bool(up),
            "watch": bool(up),
            "snapshot": self.config.snapshots and bool(lives.snapshotable(self)),
            "restore-snapshot": bool(up and self.snapshots),
        }
        return [k for k in ALL_KINDS if possible[k] and k not in self.config.disabled]

    def note(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        self.trace.append(f"{len(self.trace):4d} t={self.world.time_ms % 10**8:>8} {text}")

    def pick_up(self) -> Slot:
        return self.rng.choice([s for s in self.world.slots if s.up])

    # -- steps ------------------------------------------------------------------------------------

    async def client_write(self, slot: Slot | None = None, may_crash: bool = True) -> None:
        """A client writes or deletes through one node; a crash may cut the request short."""
        slot = slot or self.pick_up()
        node = slot.node
        assert node is not None
        if self.rng.random() < 0.25:
            self._unique += 1
            key = f"set-{self._unique}"
        else:
            key = self.rng.choice(HOT_KEYS)
        delete = self.rng.random() < 0.3
        self._values += 1
        value = None if delete else f"v{self._values}"
        crash = may_crash and self.rng.random() < 0.03 and sum(s.up for s in self.world.slots) > 1
        if crash and self.rng.random() < 0.5:
            self.note("write", f"{slot.name} crashes before writing {key}={value}")
            await self.world.crash(slot)
            return
        result = await (node.delete(key) if delete else node.put(key, value or ""))
        written = result.outcome not in (Outcome.NOT_FOUND, Outcome.SUPERSEDED)
        write = Write(slot.index, key, value, result.version)
        if written:
            self.history.wrote(write, acknowledged=not crash)
        self.note("write", f"{slot.name} {'del' if delete else 'put'} {key}={value} {result}")
        if crash:
            self.note("crash", f"{slot.name} crashes before answering")
            await self.world.crash(slot)
            return
        held = await self.check(slot)
        if written:
            self.history.check_write(slot.index, write, held)

    async def pull(self) -> None:
        """One node pulls one batch from one of the peers it wants to pull (the real `pull_once`)."""
        slot = self.pick_up()
        node, replicator = slot.running
        urls = sorted(node.membership.pull_urls())
        if not urls:
            return
        url = self.rng.choice(urls)
        try:
            await replicator.pull_once(url)
            outcome = "ok"
        except PeerError as exc:
            outcome = str(exc)
        self.note("pull", f"{slot.name} pulls {url}: {outcome}")
        await self.check(slot)

    async def deliver(self) -> None:
        """The network delivers a held-back pull late; its answer goes nowhere."""
        net = self.world.network
        message = net.delayed.pop(self.rng.randrange(len(net.delayed)))
        target = self.world.slots[message.target]
        if target.node is None or target.incarnation != message.incarnation:
            self.note("deliver", f"late pull to n{message.target} finds no process")
            return
        try:
            await target.node.feed.pull(message.request)
            outcome = "answered"
        except Removed as exc:
            outcome = str(exc)
        self.note(
            "deliver", f"late pull since={message.request.since} reaches n{message.target}: {outcome}"
        )

    async def advance_time(self) -> None:
        if self.rng.random() < 0.05:
            delta = self.rng.randint(10, 90) * MINUTE
        else:
            delta = self.rng.randint(1, 3_000)
        self.world.time_ms += delta
        self.note("time", f"+{delta} ms")
        if delta > MINUTE:  # the reapers of the nodes that are up ran meanwhile
            for slot in self.world.slots:
                if slot.up:
                    await clients.reap(self, slot)

    async def crash(self) -> None:
        slot = self.pick_up()
        self.note("crash", f"{slot.name} crashes")
        await self.world.crash(slot)

    async def restart(self) -> None:
        slot = self.rng.choice([s for s in self.world.slots if not s.up])
        if self.rng.random() < 0.5:
            lives.back_up(slot, self.world.time_ms)
        await self.world.start(slot)
        assert slot.node is not None
        self.note("restart", f"{slot.name} restarts as {slot.node.id}")
        await self.check(slot)

    async def partition(self) -> None:
        """Cut links in one of the shapes real networks fail in."""
        slots = [s.index for s in self.world.slots]
        self.rng.shuffle(slots)
        shape = self.rng.choice(["isolate", "split", "one-way", "bridge"])
        cut: set[tuple[int, int]] = set()
        if shape == "isolate":
            lone = slots[0]
            cut = {(a, b) for a in slots for b in slots if (a == lone) != (b == lone)}
        elif shape == "split":
            half = set(slots[: len(slots) // 2])
            cut = {(a, b) for a in slots for b in slots if (a in half) != (b in half)}
        elif shape == "one-way":
            a, b = slots[0], slots[1]
            cut = {(a, b)}
        else:  # two sides that only reach each other through a bridge node
            bridge, rest = slots[0], slots[1:]
            left = set(rest[: len(rest) // 2])
            cut = {(a, b) for a in rest for b in rest if (a in left) != (b in left)}
            assert bridge not in left
        self.world.network.cut = cut
        cut_off = []
        if self.world.registry is not None:
            for slot in self.world.slots:
                slot.registry_cut = self.rng.random() < 0.3
                if slot.registry_cut:
                    cut_off.append(slot.name)
        self.note("partition", f"{shape}: cut {sorted(cut)}, registry cut off from {cut_off}")

    async def heal_network(self) -> None:
        self.world.network.cut = set()
        for slot in self.world.slots:
            slot.registry_cut = False
        self.note("heal", "network healed")

    async def skew(self) -> None:
        slot = self.pick_up()
        slot.skew_ms = self.rng.choice(SKEWS)
        self.note("skew", f"{slot.name} clock at {slot.skew_ms:+d} ms")
        await self.check(slot)

    async def purge(self) -> None:
        slot = self.pick_up()
        purged = await slot.running[1].purge.run()
        self.note("purge", f"{slot.name} purged {purged} tombstones")
        await self.check(slot)

    ACTIONS: ClassVar[dict[str, Callable[[Simulation], Awaitable[None]]]] = {
        "write": client_write,
        "pull": pull,
        "deliver": deliver,
        "time": advance_time,
        "crash": crash,
        "restart": restart,
        "wipe": lives.wipe,
        "partition": partition,
        "heal": heal_network,
        "skew": skew,
        "purge": purge,
        "save-members": members.save_members,
        "join": members.join,
        "add-node": members.add_node,
        "rewind": lives.rewind,
        "restore": lives.restore,
        "remove": members.remove,
        "leave": members.leave,
        "rejoin": members.rejoin,
        "registry": members.registry,
        "cas": clients.conditional_write,
        "ttl": clients.ttl_write,
        "txn": clients.transaction,
        "reap": clients.reap,
        "watch": clients.watch,
        "snapshot": lives.snapshot,
        "restore-snapshot": lives.restore_snapshot,
    }

    # -- checks -----------------------------------------------------------------------------------

    async def check(self, slot: Slot, count: bool = False) -> dict[str, Record]:
        """The safety invariants on one node, after a step that touched it; with `count`, also
        that it counts the values its clock has not passed the expiry of."""
        node = slot.node
        assert node is not None
        if slot.removed == node.origin and await saved_as_left(node):
            # From here on it knows for good (a crash cannot make it forget): nothing it
            # writes may reach another node.
            self.history.seal(node.origin, node.clock.last)
        snapshot = slot.disk.snapshot  # replaced by every commit
        if snapshot is not None and self._checked.get(slot.index) is snapshot:
            held = self.history.slot(slot.index).current  # as checked: nothing committed since
        else:
            held = await records(node)
            self.history.check_records(slot.index, held)
            self._checked[slot.index] = snapshot
        if count:
            now = node.now()
            counted = node.store.digest().count
            if counted != (live := sum(r.live_at(now) for r in held.values())):
                raise Violation(f"{EXPIRY_READS}: n{slot.index} counts {counted} keys, {live} live")
        self.history.check_sealed(slot.index, node.origin, held)
        self.history.check_clock_steady(slot.index, node.clock.last)
        self.history.check_progress(
            slot.index, node.store.last_seq, node.clock.last, node.store.clock_high
        )
        return held


async def saved_as_left(node: Node) -> bool:
    """The node's saved member list says this incarnation of it left or was removed."""
    saved = await node.store.get_meta("members")
    return any(
        entry["id"] == node.id and entry.get("inc") == node.incarnation and entry["left"]
        for entry in (orjson.loads(saved) if saved else [])
    )
