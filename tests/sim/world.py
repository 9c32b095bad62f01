"""The simulated cluster: real nodes over a simulated network, in virtual time.

Each slot is one place in the cluster (a URL and a data dir). The node there is a real `Node`: the
real write pipeline on the memory backend (its `MemoryData` is the slot's disk: what a commit put
there survives a crash), the real replicator, feed and member list. What is simulated is
what lies between the nodes and around them: the network (`SimTransport`, which hands a pull to the
source's real `Feed` and can lose, delay or duplicate it), the wall clocks (virtual milliseconds,
skewed per node, or frozen), the process lifetimes (a crash drops the node without letting it save
anything) and the Redis of the node registry (`SimRegistry`: the real `Registry` of each node runs
its heartbeats and reads against a dict whose entries expire in virtual time).
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from shareddb.config import Settings
from shareddb.data_dir import ClockFile
from shareddb.membership import Outside, Removed
from shareddb.node import Node
from shareddb.record import Record
from shareddb.registry import HEARTBEAT, WITHDRAW, Registry
from shareddb.replication.copy import CopyBusy
from shareddb.replication.copy_frames import CopyChunk, CopyRequest, Frame
from shareddb.replication.puller import Replicator
from shareddb.replication.transport import PeerError, PeerRemoved, PullReply, PullRequest
from shareddb.store.memory import MemoryData, MemoryStore

TOMBSTONE_GRACE_MS = 2 * 60 * 60 * 1000
MINUTE = 60_000
# The skews a node's clock takes (ms): most none, some small, a few large.
SKEWS = [0, 0, 0, 250, -250, 5_000, -5_000, 90_000, -90_000, 30 * MINUTE]
# Virtual wall-clock time starts here (2027-01-15), so skews in either direction stay positive.
EPOCH_MS = 1_800_000_000_000
REGISTRY_URL = "redis://sim-registry:6390/0"


@dataclass
class Slot:
    """A place in the cluster; the node at it may be down, crash, restart, or be wiped."""

    index: int
    url: str
    data: Path
    node_id: str | None  # None: the node mints an id when its data dir is new
    peers: tuple[str, ...]
    join: str | None = None
    node: Node | None = None  # None while the node is down
    replicator: Replicator | None = None
    skew_ms: int = 0
    frozen_ms: int | None = None  # its wall clock stands still at this instant
    disk: MemoryData = field(default_factory=MemoryData)  # its store: what survives a crash
    backup: MemoryData | None = None  # a copy of `disk` taken while it was down (`restore`)
    backup_clock: bytes | None = None  # and of its data dir's clock file (data_dir.ClockFile)
    backup_ms: int = 0  # the virtual time it was taken at
    registry: Registry | None = None  # the node's registry client, while up in a registry world
    registry_cut: bool = False  # it cannot reach the registry
    removed: str | None = None  # the origin (id~incarnation) removed from the cluster, until wiped
    origin: str = ""  # id~incarnation of the node's store, as of its last start
    incarnation: int = 0  # bumped at every start: a late message to an earlier process is lost
    members_dirty: bool = False  # its member list changed since it was last saved
    joining: bool = False  # its --join announcement has not been answered yet

    @property
    def up(self) -> bool:
        return self.node is not None

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def running(self) -> tuple[Node, Replicator]:
        """The node and its replicator; only for a slot that is up."""
        if self.node is None or self.replicator is None:
            raise RuntimeError(f"{self.name} is down")
        return self.node, self.replicator


@dataclass
class Delayed:
    """A pull that the network holds back; the source gets it later, and nobody gets the answer."""

    target: int
    incarnation: int
    request: PullRequest


@dataclass
class Network:
    """Which links are cut and what is still in flight. A link (a, b) is `a` pulling from `b`."""

    cut: set[tuple[int, int]] = field(default_factory=set)
    delayed: list[Delayed] = field(default_factory=list)
    # Chances of each fate of one message, while the link is up.
    drop_request: float = 0.03
    drop_reply: float = 0.03
    delay: float = 0.03
    duplicate: float = 0.03
    # The chance that a bulk copy's stream breaks after a chunk.
    cut_copy: float = 0.2
    # The chance that a pull asks for a page of 1 to 3 changes (a transaction counts as one):
    # the pages that must never split a transaction.
    small_page: float = 0.15

    def reachable(self, puller: int, source: int) -> bool:
        return (puller, source) not in self.cut


class SimTransport:
    """The `Transport` of one slot: pulls and joins go straight to the target slot's real node."""

    def __init__(self, world: World, owner: Slot) -> None:
        self.world = world
        self.owner = owner

    def _target(self, url: str) -> Slot:
        slot = self.world.by_url.get(url)
        if slot is None or slot.node is None:
            raise PeerError(f"cannot reach {url}: connection refused")
        if not self.world.network.reachable(self.owner.index, slot.index):
            raise PeerError(f"cannot reach {url}: timed out")
        return slot

    async def pull(self, url: str, request: PullRequest) -> PullReply:
        target = self._target(url)
        net, rng = self.world.network, self.world.rng
        request = dataclasses.replace(request, wait=0.0)  # a long poll would wait in real time
        if rng.random() < net.small_page:
            request = dataclasses.replace(request, limit=rng.randint(1, 3))
        fate = rng.random()
        if fate < net.drop_request:
            raise PeerError(f"{url}: request lost")
        fate -= net.drop_request
        if fate < net.delay:
            net.delayed.append(Delayed(target.index, target.incarnation, request))
            raise PeerError(f"{url}: timed out (request delayed)")
        fate -= net.delay
        if fate < net.duplicate:
            net.delayed.append(Delayed(target.index, target.incarnation, request))
        assert target.node is not None
        try:
            reply = await target.node.feed.pull(request)
        except Removed as exc:  # what the peer API answers with 410
            raise PeerRemoved(str(exc)) from None
        if rng.random() < net.drop_reply:
            raise PeerError(f"{url}: answer lost")
        return reply

    async def copy(self, url: str, request: CopyRequest) -> AsyncGenerator[Frame, None]:
        """A bulk copy from the target's real `serve_copy`, in chunks of 1 to 5 records; the
        stream may be cut after any chunk, so a copy spans steps, with writes, crashes and
        partitions between them, and resumes from the position its chunks saved."""
        target = self._target(url)
        net, rng = self.world.network, self.world.rng
        if rng.random() < net.drop_request:
            raise PeerError(f"{url}: request lost")
        request = dataclasses.replace(request, limit=rng.randint(1, 5))
        assert target.node is not None
        node = target.node
        busy = node.replicator is not None and node.replicator.copier.busy
        frames = node.feed.serve_copy(request, busy=busy)
        try:
            async for frame in frames:
                yield frame
                if isinstance(frame, CopyChunk) and rng.random() < net.cut_copy:
                    raise PeerError(f"{url}: the copy was cut")
        except Removed as exc:
            raise PeerRemoved(str(exc)) from None
        except CopyBusy as exc:  # what the peer API answers with 503
            raise PeerError(str(exc)) from None
        finally:
            await frames.aclose()

    async def join(self, url: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        target = self._target(url)
        assert target.node is not None
        try:
            members = target.node.feed.join(entries)
        except Removed as exc:
            raise PeerRemoved(str(exc)) from None
        except Outside as exc:  # 503: the joining node retries
            raise PeerError(str(exc)) from None
        if self.world.rng.random() < self.world.network.drop_reply:
            raise PeerError(f"{url}: answer lost")
        return members

    async def close(self) -> None:
        return None


class SimRegistry:
    """The registry's Redis: the few commands `Registry` sends, on dicts, expiring in virtual time."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.values: dict[str, tuple[str, int]] = {}  # key → (value, expiry in virtual ms)
        self.hashes: dict[str, dict[str, str]] = {}

    def get(self, key: str) -> str | None:
        found = self.values.get(key)
        if found is None or found[1] <= self.world.time_ms:
            self.values.pop(key, None)
            return None
        return found[0]

    def client(self, slot: Slot) -> Callable[..., Any]:
        """The `execute_command` of `slot`'s connection: it fails while the slot is cut off."""

        async def execute(command: str, *args: Any) -> Any:
            if slot.registry_cut:
                raise RedisConnectionError("sim-registry:6390: timed out")
            if command == "EVAL" and args[0] == HEARTBEAT:
                _, _, key, nodes, entry, ttl_ms, node_id = args
                previous = self.get(key)
                self.values[key] = (entry, self.world.time_ms + int(ttl_ms))
                self.hashes.setdefault(nodes, {})[node_id] = entry
                return previous
            if command == "EVAL" and args[0] == WITHDRAW:
                _, _, key, written = args
                if self.get(key) == written:
                    del self.values[key]
                    return 1
                return 0
            if command == "HGETALL":
                return dict(self.hashes.get(args[0], {}))
            if command == "MGET":
                return [self.get(key) for key in args]
            raise AssertionError(f"the simulated registry has no {command} {args[:1]}")

        return execute


class World:
    """The slots, the network and virtual time of one simulation run."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.time_ms = EPOCH_MS
        self.slots: list[Slot] = []
        self.by_url: dict[str, Slot] = {}
        self.network = Network()
        self.registry: SimRegistry | None = None  # set: every node runs with --registry

    def add_slot(self, peers: tuple[str, ...], join: str | None = None) -> Slot:
        index = len(self.slots)
        url = f"http://sim-n{index}:7000"
        node_id = f"n{index}" if self.rng.random() < 0.5 else None
        slot = Slot(index, url, self.root / f"n{index}", node_id, peers, join)
        self.slots.append(slot)
        self.by_url[url] = slot
        return slot

    def clock_of(self, slot: Slot) -> Callable[[], int]:
        return lambda: self.time_ms + slot.skew_ms if slot.frozen_ms is None else slot.frozen_ms

    def monotonic(self) -> float:
        return self.time_ms / 1000

    async def start(self, slot: Slot) -> None:
        """Start the node at `slot` from whatever its data dir holds (the real open path)."""
        # Chunks of 4: a peer whose feed holds more than that is copied when this node has none
        # of it (replication/copy.py), so copies happen in most runs.
        settings = Settings(
            data=slot.data, node_id=slot.node_id, peers=slot.peers, join=slot.join, copy_chunk=4
        )
        node = await Node.open(
            settings,
            now=self.clock_of(slot),
            monotonic=self.monotonic,
            mint_id=lambda: f"n{slot.index}-{self.rng.randrange(16**4):04x}",
            mint_instance=lambda: f"{self.rng.getrandbits(128):032x}",
            make_store=lambda _data, high, mint, now: MemoryStore(
                slot.disk, clock_high=high, new_instance=mint, now=now, reap=False
            ),
            bound_in_background=False,
        )
        replicator = await node.attach_replication(slot.url, SimTransport(self, slot))
        # Longer than the longest jump of virtual time: a jump is time in which no node reaches
        # any other, and a node cut off for longer than the grace may bring a deleted key back
        # (docs/design.md, "Membership and removal"); that is outside what the design covers.
        replicator.purge.grace_ms = TOMBSTONE_GRACE_MS

        def members_changed() -> None:
            slot.members_dirty = True

        node.membership.on_change = members_changed
        slot.node, slot.replicator, slot.origin = node, replicator, node.origin
        if self.registry is not None:
            # The node's real registry client; only its connection is simulated.
            slot.registry = Registry(REGISTRY_URL, node.membership, clock=self.monotonic, rng=self.rng)
            slot.registry._execute = self.registry.client(slot)
        slot.incarnation += 1
        slot.members_dirty = False
        slot.joining = slot.join is not None

    async def crash(self, slot: Slot) -> None:
        """Kill the node: what it committed stays, everything it held in memory is gone.

        Every step runs to completion, so no write is half-way when this runs: releasing the store
        only closes files (nothing is queued), and the node gets no chance to save its members.
        Nor to settle its clock's bound: the data dir keeps the bound last noted ahead of the
        clock, which the node resumes from (docs/design.md, "Identity"). The simulation's nodes
        note it before their clocks go on (`bound_in_background=False`), so what a crash leaves
        never depends on when a thread ran.
        """
        node = slot.node
        assert node is not None
        if slot.replicator is not None:
            slot.replicator.drop_pages_ahead()  # the pulls the process had sent die with it
        slot.node = slot.replicator = slot.registry = None
        await node.store.close()
        node.replicator = None
        bound = node.clock.bound
        assert isinstance(bound, ClockFile)
        noted = bound.path.read_bytes() if bound.path.exists() else None
        await node.close()  # now only releases the data-dir lock, and settles the bound
        if noted is None:
            bound.path.unlink(missing_ok=True)
        else:
            bound.path.write_bytes(noted)

    async def wipe(self, slot: Slot, node_id: str | None) -> None:
        """Crash the node, destroy its data dir; it comes back empty, as `node_id` (None: it
        mints a new one)."""
        if slot.node is not None:
            await self.crash(slot)
        shutil.rmtree(slot.data)
        slot.disk = MemoryData()
        slot.backup = None  # a backup of the life before is not restored under another's id
        slot.node_id = node_id

    async def registry_tick(self, slot: Slot) -> str:
        """One round of the slot's registry loop (`Registry._run`): a heartbeat and a read."""
        registry = slot.registry
        assert registry is not None
        try:
            await registry.tick()
        except RedisConnectionError as exc:
            registry.failures += 1
            registry._trusted_since = None
            return str(exc)
        registry.failures = 0
        return "ok"

    async def shutdown(self) -> None:
        for slot in self.slots:
            if slot.node is not None:
                await self.crash(slot)


async def records(node: Node) -> dict[str, Record]:
    """Everything the node's store holds, tombstones included, by key: its rows, as committed."""
    store = node.store
    assert isinstance(store, MemoryStore)
    snapshot = store.data.snapshot
    if snapshot is None:
        return {}
    return {
        key: Record(key, value, version, expires)
        for key, (value, version, _, expires, _) in snapshot.rows.items()
    }


async def reap(node: Node) -> int:
    """One run of the node's reaper (the simulation's stores run none of their own)."""
    store = node.store
    assert isinstance(store, MemoryStore)
    return await store.reap()
