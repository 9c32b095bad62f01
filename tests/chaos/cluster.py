"""The cluster under test: real nodes on loopback, each behind its fault proxy, and what can be done
to one node (kill -9, restart, SIGSTOP, clock skew, wipe).

Every blocking call of `NodeProcess` runs in a thread, so the proxies and the clients, which share
this event loop, keep running while a node starts or stops.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shareddb.data_dir import NODE_ID_FILE
from tests.cluster.replication_helpers import digest, http, live_items, wait_all_up
from tests.harness import FaultProxy, Links, NodeProcess, skewed_clock_env, wait_for
from tests.harness.metrics import by_label, sample

COPY_TIMEOUT = 2.0  # seconds a wipe waits for the others to pull what the node has acknowledged
LOG_TAIL = 40


@dataclass(slots=True)
class Slot:
    """One node's place in the cluster: its process (whose id changes when a wipe renames it) and
    its proxy, and what the schedule has done to it."""

    index: int
    node: NodeProcess
    proxy: FaultProxy
    incarnation: int = 0  # one more every time its data dir is wiped
    killed: bool = False
    paused: bool = False
    skew: int = 0  # seconds its wall clock runs ahead (negative: behind)
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)  # one change to the process at a time

    @property
    def name(self) -> str:
        """The slot's name in fault descriptions and logs: n1, n2, ... whatever the node's id."""
        return f"n{self.index + 1}"

    @property
    def node_id(self) -> str | None:
        """None while a wiped node that mints a new id starts, until its id is read back."""
        return self.node.node_id

    def stored_id(self) -> str | None:
        """The id in the node's data dir (a node started without --node-id makes one up)."""
        try:
            return (self.node.data / NODE_ID_FILE).read_text("utf-8").strip()
        except FileNotFoundError:
            return None


Incarnation = tuple[int, int]  # (slot, incarnation): one data dir's life


@dataclass(frozen=True, slots=True)
class Wipe:
    """A data dir the schedule deleted, and which of its acknowledged writes other nodes held."""

    copied_until: float  # time.monotonic(): everything acknowledged before was on every holder
    holders: frozenset[Incarnation]  # the members that had applied all of its feed just before


class ChaosCluster:
    """The nodes on loopback behind their proxies, and the faults the schedule applies to one node."""

    def __init__(self, workdir: Path, size: int) -> None:
        self.links = Links(self.slot_of)
        self.wipes: dict[Incarnation, Wipe] = {}
        self.slots: list[Slot] = []
        for index in range(size):
            node = NodeProcess(workdir / f"n{index + 1}", f"n{index + 1}")
            proxy = FaultProxy(index, self.links, _port_of(node))
            self.slots.append(Slot(index, node, proxy))

    @property
    def nodes(self) -> list[NodeProcess]:
        return [slot.node for slot in self.slots]

    async def start(self) -> None:
        """Start every proxy, then every node advertising its proxy; wait until all see each other."""
        for slot in self.slots:
            await slot.proxy.start()
        for slot in self.slots:
            slot.node.args = self._args(slot, "--peers", ",".join(self._other_urls(slot)))
        await asyncio.gather(*(asyncio.to_thread(slot.node.start) for slot in self.slots))
        await asyncio.to_thread(wait_all_up, self.nodes)

    async def close(self) -> None:
        """Kill every node, then close the proxies (whose connections have all ended by then)."""
        for slot in self.slots:
            slot.node.cleanup()
        for slot in self.slots:
            await slot.proxy.close()

    def slot_of(self, node_id: str) -> int | None:
        for slot in self.slots:
            known = slot.node_id if slot.node_id is not None else slot.stored_id()
            if known == node_id:
                return slot.index
        return None

    def _other_urls(self, slot: Slot) -> list[str]:
        return [other.proxy.url for other in self.slots if other is not slot]

    def _args(self, slot: Slot, *rejoin: str) -> list[str]:
        return ["--advertise", slot.proxy.url, *rejoin]

    # -- faults on one node ------------------------------------------------------------------------

    async def kill(self, index: int) -> None:
        slot = self.slots[index]
        async with slot.busy:
            await asyncio.to_thread(slot.node.kill)
            slot.killed = True

    async def revive(self, index: int) -> None:
        """Start a killed node again, on its port and under its advertised URL."""
        slot = self.slots[index]
        async with slot.busy:
            await asyncio.to_thread(slot.node.start)
            slot.node.node_id = slot.stored_id()  # restarts pass the id it made up, if it did
            slot.killed = False

    async def pause(self, index: int) -> None:
        slot = self.slots[index]
        async with slot.busy:
            slot.node.pause()
            slot.paused = True

    async def resume(self, index: int) -> None:
        slot = self.slots[index]
        async with slot.busy:
            slot.node.resume()
            slot.paused = False

    async def set_skew(self, index: int, seconds: int) -> None:
        """Restart the node (SIGTERM) with its wall clock `seconds` off, or right again for 0."""
        slot = self.slots[index]
        async with slot.busy:
            slot.node.env = skewed_clock_env(seconds) if seconds else None
            await asyncio.to_thread(slot.node.restart)
            slot.skew = seconds

    async def wipe(self, index: int, new_id: bool, join_via: int | None) -> Wipe:
        """kill -9 and delete the data dir; the node stays down until `revive`. It comes back empty,
        with its old --node-id or none (it makes a new id up), through --join of one member or
        --peers of all."""
        slot = self.slots[index]
        wipe = self.wipes[index, slot.incarnation] = await asyncio.to_thread(self._copies_of, slot)
        await self.kill(index)
        await asyncio.to_thread(shutil.rmtree, slot.node.data)
        slot.incarnation += 1
        if new_id:
            slot.node.node_id = None
        if join_via is None:
            slot.node.args = self._args(slot, "--peers", ",".join(self._other_urls(slot)))
        else:
            slot.node.args = self._args(slot, "--join", self.slots[join_via].proxy.url)
        return wipe

    async def heal(self) -> None:
        """Clear every partition, resume paused nodes, restart killed ones, set every clock right."""
        self.links.heal()
        for slot in self.slots:
            if slot.paused:
                await self.resume(slot.index)
            if slot.killed:
                await self.revive(slot.index)
            if slot.skew:
                await self.set_skew(slot.index, 0)

    def _copies_of(self, slot: Slot) -> Wipe:
        """Which members hold everything `slot` has acknowledged so far: those that, within a
        moment, report having applied its feed up to the sequence it had now."""
        asked = time.monotonic()
        try:
            now_seq, _ = _feed_progress(slot.node)
            holders = wait_for(
                lambda: {m for m, applied in _feed_progress(slot.node)[1].items() if applied >= now_seq},
                COPY_TIMEOUT,
                f"a member to hold all of {slot.name}",
            )
        except (OSError, AssertionError):
            return Wipe(asked, frozenset())
        found = {self.slot_of(member) for member in holders}
        return Wipe(asked, frozenset((i, self.slots[i].incarnation) for i in found if i is not None))

    def crashed(self) -> list[str]:
        """The nodes whose process ended without the schedule killing it."""
        return [slot.name for slot in self.slots if not slot.killed and not slot.node.running()]

    # -- observing ---------------------------------------------------------------------------------

    async def wait_converged(self, timeout: float) -> None:
        """Until every node answers the same /v1/digest and lists the same keys at the same versions
        (a write that was held in a paused node's socket may land just after the digests agreed)."""

        def agree() -> bool:
            try:
                digests = [digest(node) for node in self.nodes]
                if any(d != digests[0] for d in digests):
                    return False
                listings = [live_items(node) for node in self.nodes]
            except OSError:  # a node that is still starting: ask again
                return False
            return all(listing == listings[0] for listing in listings)

        await asyncio.to_thread(wait_for, agree, timeout, "equal digests on every node", (), 0.1)

    async def listings(self) -> list[dict[str, tuple[str, str]]]:
        """Every live key of every node: key -> (value, version)."""
        return [await asyncio.to_thread(live_items, node) for node in self.nodes]

    def log_tails(self, lines: int = LOG_TAIL) -> str:
        return "\n".join(
            f"--- last {lines} log lines of {slot.name}, now {slot.node_id} ({slot.node.log_path}) ---\n"
            + "\n".join(slot.node.logs().splitlines()[-lines:])
            for slot in self.slots
        )


def _feed_progress(node: NodeProcess) -> tuple[int, dict[str, int]]:
    """From /metrics: the node's latest sequence, and how far each member has applied its feed."""
    text = http("GET", node.url + "/metrics").body.decode()
    found = sample(text, "shareddb_sequence")
    assert found is not None, f"no shareddb_sequence in /metrics of {node.node_id}"
    sequence = int(found)
    lags = by_label(text, "shareddb_member_lag", "member")
    return sequence, {member: sequence - int(lag) for member, lag in lags.items()}


def _port_of(node: NodeProcess) -> Callable[[], int]:
    return lambda: node.port
