"""Who is in the cluster, and how each member is doing. Pure bookkeeping: no I/O, time passed in.

Membership is replicated state of its own, never visible through the key API. Each entry (id, url,
incarnation, left) carries a version (an HLC timestamp) and entries merge by last-writer-wins, like
records, so every node ends up with the same list however the entries travel. Entries spread in every
answer to a pull, and a node that pulls from us is added as a member: that is how a node joined
through one member becomes known to all.

A member that left or was removed stays out for good in that incarnation (invariant 8): no later
entry, pull or announcement of the same incarnation makes it active again, whatever its version, so
it can never bring back the deletes whose tombstones were purged without it. Only a new incarnation
of the id (an empty store, started with --join) is a member again.

What is local, not replicated: when a member was last heard from, which pulls with it are held open
now, and how far it has applied this node's changes feed (reported by its pulls). From those come
`state` and `lag` in /v1/cluster and the copy count that `?w=N` waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# A member is `up` when it exchanged with this node (either direction) this recently, in seconds,
# or while a pull between the two is held open within its time (`Membership.exchange`).
UP_WINDOW = 6.0
# A held pull keeps counting as contact this long past its time (seconds): the time its answer
# takes on the way, and, on the side that answered, the time the next pull takes to come in.
EXCHANGE_SLACK = 1.0
RIVALS_KEPT = 64  # other lives of this node's id remembered at most (`Membership.rivals`)
LONG_POLL = 2.0  # seconds a source may hold an idle pull, with two peers or fewer (`long_poll`)
MAX_LONG_POLL = 12.0


def long_poll(peers: int) -> float:
    """How long a source may hold this node's idle pull, when it pulls `peers` sources.

    Each idle pull is answered once per long poll, so a mesh of N nodes answers N·(N−1) of them
    per period. The period grows by LONG_POLL per peer past the second, so a node's idle
    exchanges per second fall as the mesh grows and its idle cost stays about linear in N. A
    held pull counts as contact (`Membership.exchange`), so members stay `up` through it; one that
    hangs shows `down` when its answer is late, within MAX_LONG_POLL + EXCHANGE_SLACK."""
    return min(MAX_LONG_POLL, LONG_POLL * max(1, peers - 1))


@dataclass(slots=True)
class Member:
    id: str
    url: str
    left: bool
    version: int  # HLC of the entry's last change; the greater one wins
    incarnation: str = ""  # which life of the node the entry is about (record.incarnation_of)
    last_contact: float | None = None  # monotonic seconds of the last successful exchange
    applied: int | None = None  # how far it has applied this node's feed, from its last pull
    held: int | None = None  # how far it holds all of it, left-out writes included (purge)
    expired: int | None = None  # local: its version when its registry entry expired (see expire)
    # Pulls with it held open now, either way: when each is due to end, and whether its
    # connection is still open (`Membership.exchange`).
    open: dict[object, tuple[float, Callable[[], bool]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def entry(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "left": self.left,
            "v": self.version,
            "inc": self.incarnation,
        }

    @property
    def registry_expired(self) -> bool:
        """Its registry entry expired, and no newer entry of it has arrived since."""
        return self.expired is not None and self.expired >= self.version

    def removed(self, incarnation: str) -> bool:
        """This incarnation of the member left or was removed: it is never taken back."""
        return self.left and incarnation == self.incarnation

    def renew(self, incarnation: str) -> None:
        """Another life of the member: how far the one we knew had applied our feed says nothing
        about it."""
        if incarnation != self.incarnation:
            self.incarnation = incarnation
            self.applied = self.held = None


class Removed(Exception):
    """A node that left or was removed asked to take part again with the same incarnation."""


class Outside(Exception):
    """A node was asked to admit a member, but it left the cluster itself."""


class Membership:
    """The member list of one node. `changed` is set whenever the set of members to pull changes."""

    def __init__(
        self,
        self_id: str,
        self_url: str,
        incarnation: str = "",
        *,
        clock: Callable[[], float],
        boot: str = "",
    ) -> None:
        self.self_id = self_id
        self.incarnation = incarnation
        # This run of the node's process, made anew at each start (unlike the incarnation, which
        # lasts as long as the store): what this run served and still holds is known only to it
        # (`Feed.copied_from`).
        self.boot = boot or secrets.token_hex(8)
        self.self_entry = Member(self_id, self_url, left=False, version=0, incarnation=incarnation)
        self.members: dict[str, Member] = {}
        self.static_urls: set[str] = set()  # --peers / --join URLs whose node id is not known yet
        # URLs where a member that left answered again: not pulled (see `pull_urls`).
        self.refused_urls: set[str] = set()
        # On a change bus (replication/bus.py) the members' writes come through it: only the
        # --peers and --join URLs not identified yet are pulled, to learn who answers there.
        self.bus = False
        self._clock = clock
        self._progress = asyncio.Event()
        self.on_change: Callable[[], None] = lambda: None
        self.generation = 0  # counts the changes of the list (a pull held open answers at one)
        self.announced = 0  # the version of this run's first entry (`announce`)
        # Other lives of this node's id announced at other URLs (url -> incarnation): an earlier
        # life that ran there, or another node started with this id (replication/rivals.py).
        # `on_rival` is told of each one new here.
        self.rivals: dict[str, str] = {}
        self.on_rival: Callable[[], None] = lambda: None

    def _changed(self) -> None:
        self.generation += 1
        self.on_change()

    # -- what gets pulled -----------------------------------------------------------------------

    def pull_urls(self) -> set[str]:
        """Every URL this node should pull from: active members, unidentified static peers, and
        the URLs of members that left where nobody active is known now: another node may answer
        there (a new life of the one that left, or a node in its place), and pulling is how we
        find it. Those do not hold up the tombstone purge: a node gone for good may never answer.
        """
        if self.self_entry.left:
            return set()
        urls = {m.url for m in self.members.values() if not m.left and not m.registry_expired}
        departed = {m.url for m in self.members.values() if m.left} - urls - self.refused_urls
        if self.bus:
            return set(self.static_urls)  # members replicate through the bus, not by pulls
        return urls | self.static_urls | (departed - {self.self_entry.url})

    def id_for_url(self, url: str) -> str | None:
        """The member at `url`: the one not left, else the latest entry."""
        found = [m for m in self.members.values() if m.url == url]
        if not found:
            return None
        return max(found, key=lambda m: (not m.left, m.version)).id

    def active(self) -> list[Member]:
        return [m for m in self.members.values() if not m.left]

    # -- changes ----------------------------------------------------------------------------------

    def announce(self, url: str, version: int) -> None:
        """This node (re)starts or moves: its own entry at a new version; active, unless this
        incarnation left or was removed before (that is final)."""
        left = self.self_entry.left
        self.self_entry = Member(self.self_id, url, left, version, self.incarnation)
        self.announced = version

    def add_static(self, url: str) -> None:
        if url != self.self_entry.url and self.id_for_url(url) is None:
            self.static_urls.add(url)

    def identified(self, url: str, node_id: str) -> None:
        """A static URL answered as `node_id` (maybe ourselves: then it is never pulled)."""
        if url in self.static_urls:
            self.static_urls.discard(url)
            self._changed()

    def refuse(self, url: str) -> None:
        """A member that left answered at `url`: it is not pulled again (until a member that
        is active is known there)."""
        self.static_urls.discard(url)
        self.refused_urls.add(url)

    def merge(self, entries: list[dict[str, Any]]) -> bool:
        """Fold in entries from another node by LWW on their versions, except that within one
        incarnation `left` is final. Returns whether anything changed."""
        changed = False
        for raw in entries:
            node_id, url, left, version = raw["id"], raw["url"], bool(raw["left"]), int(raw["v"])
            incarnation = str(raw.get("inc", ""))
            if node_id == self.self_id:
                own = self.self_entry
                if incarnation != own.incarnation:
                    # An earlier life of this id: this life's entry must be the greater one, so
                    # that every node takes it over that one (see `heard_from`).
                    if version >= own.version:
                        own.version = version + 1
                        changed = True
                    self.rival(url, incarnation)
                    continue
                if left and not own.left:
                    # Another node removed us from the cluster: we stop replicating for good.
                    version = max(version, own.version)
                    self.self_entry = Member(node_id, own.url, True, version, own.incarnation)
                    changed = True
                elif version > own.version:
                    own.version = version  # a member that admitted us wrote our entry anew
                continue
            current = self.members.get(node_id)
            if current is None:
                self.members[node_id] = Member(node_id, url, left, version, incarnation)
                self.static_urls.discard(url)
                changed = True
            elif incarnation == current.incarnation and left != current.left:
                # Within one incarnation, left wins whatever the versions: it is final, and a
                # removal written with a clock behind the member's own entries must still count.
                if left:
                    current.left, current.version = True, max(version, current.version)
                    changed = True
            elif version > current.version:
                current.url, current.left, current.version = url, left, version
                current.renew(incarnation)
                changed = True
        if changed:
            self._changed()
        return changed

    def rival(self, url: str, incarnation: str) -> None:
        """An entry of this node's id, of another incarnation, at `url`: noted when the URL is
        not this node's own (`rivals`)."""
        if incarnation == self.incarnation or url == self.self_entry.url:
            return
        if self.rivals.get(url) != incarnation:
            if len(self.rivals) >= RIVALS_KEPT:
                self.rivals.clear()  # only ever a safety bound
            self.rivals[url] = incarnation
            self.on_rival()

    def check(self, node_id: str, incarnation: str) -> None:
        """Raise `Removed` when that incarnation of `node_id` left or was removed."""
        member = self.members.get(node_id)
        if member is not None and member.removed(incarnation):
            raise Removed(
                f"node {node_id} was removed from the cluster (or left it); to add it again, "
                "start it with an empty --data and --join"
            )

    def heard_from(
        self,
        node_id: str,
        url: str | None,
        version: int | None = None,
        incarnation: str | None = None,
    ) -> bool:
        """A successful exchange with `node_id`; adds it as a member when it is new to us.

        `version` and `incarnation` come from the node's own announcement (its pulls). Lives of
        one id are ordered by their entries' versions: a new life sees the entry of the one before
        in the member list and announces itself above it (see `merge`). So a late message of an
        earlier life never takes the place of a later one. Returns whether the message comes from
        the life of the member we hold (its progress counts).
        """
        member = self.members.get(node_id)
        if member is None and node_id != self.self_id and url:
            member = Member(node_id, url, False, version or 0, incarnation or "")
            self.members[node_id] = member
            self.static_urls.discard(url)
            self._changed()
        elif (
            member is not None
            and url
            and version is not None
            and version > member.version
            and not member.removed(incarnation or member.incarnation)
        ):
            # It announced itself again (restarted, maybe as a new life): active, at its URL.
            member.url, member.left, member.version = url, False, version
            if incarnation is not None:
                member.renew(incarnation)
            self._changed()
        if member is None:
            return False
        member.last_contact = self._clock()
        return incarnation is None or incarnation == member.incarnation

    @contextlib.contextmanager
    def exchange(
        self, node_id: str, wait: float, connected: Callable[[], bool] = lambda: True
    ) -> Iterator[None]:
        """A pull with `node_id`, sent by either side, held open for up to `wait` seconds: the member
        stays `up` meanwhile, as long as `connected()` says its connection is open.

        An idle long poll may outlast UP_WINDOW (`long_poll`): a member that holds
        one with us, or whose pull we hold, is in touch all along, though nothing completes. One
        that crashes closes the connection (the pull fails, or `connected()` turns false), and one
        that hangs or is cut off lets `wait` pass. Only a member `up` already counts: a pull sent
        to a member that is down proves nothing until it is answered.

        It counts for EXCHANGE_SLACK more: past `wait` while the answer is on its way, and past
        the answer while the next pull is (the puller's `last_contact` is when its pull came in,
        which an idle long poll leaves older than UP_WINDOW). Without the slack after an answer,
        the side that answered showed the puller `down` for a moment after every idle answer,
        unless a pull of its own the other way was held open then. A member that hangs shows
        `down` that much later.
        """
        member = self.members.get(node_id)
        if member is None or wait <= 0 or self.state(member) != "up":
            yield
            return
        now = self._clock()
        for ended in [t for t, (until, _) in member.open.items() if until <= now]:
            del member.open[ended]  # the slack of pulls answered before
        token = object()
        member.open[token] = (now + wait + EXCHANGE_SLACK, connected)
        answered = False
        try:
            yield
            answered = True
        finally:
            if answered:
                member.open[token] = (self._clock() + EXCHANGE_SLACK, connected)
            else:
                del member.open[token]

    def record_progress(self, node_id: str, applied: int, held: int | None = None) -> None:
        """How far a member has applied this node's feed (`w=N`, lag) and how far it holds all
        of it (the tombstone purge; a puller that leaves out others' writes holds less)."""
        member = self.members.get(node_id)
        if member is not None:
            member.applied = applied
            member.held = applied if held is None else min(held, applied)
            self._progress.set()
            self._progress = asyncio.Event()

    def leave(self, node_id: str, version: int) -> bool:
        """Mark a member (or this node) as having left. False when the id is unknown.

        The entry's version only grows (to just past its current one if `version` is not above
        it, say from a clock behind the one that wrote the entry), so the change always wins.
        """
        if node_id == self.self_id:
            version = max(version, self.self_entry.version + 1)
            self.self_entry = Member(node_id, self.self_entry.url, True, version, self.incarnation)
            self._changed()
            return True
        member = self.members.get(node_id)
        if member is None:
            return False
        member.left, member.version = True, max(version, member.version + 1)
        self._changed()
        return True

    def ids_at(self, url: str) -> list[str]:
        """Every member listed at `url`, left or not."""
        return [m.id for m in self.members.values() if m.url == url]

    def others_at(self, url: str, node_id: str) -> list[str]:
        """Active members other than `node_id` listed at `url`, where `node_id` answers now."""
        return [m.id for m in self.members.values() if m.url == url and m.id != node_id and not m.left]

    # -- the registry (local to this node, never replicated) ---------------------------------------

    def expire(self, node_id: str, version: int) -> bool:
        """The registry entry of `node_id`, at `version`, expired without a heartbeat: show it as
        left and stop pulling it, unless a newer entry of it arrived meanwhile (it restarted and
        announced itself through a pull). False when nothing changed.

        Local, unlike `leave`: every node reads the registry itself, and a replicated `left` would
        reach the member too, which would then stop replicating for good although it only missed
        heartbeats. It still counts for the tombstone purge, so it cannot bring a delete back.
        """
        member = self.members.get(node_id)
        if member is None or member.left or member.version > version or member.registry_expired:
            return False
        member.expired = member.version
        self._changed()
        return True

    def unexpire(self, node_id: str) -> bool:
        """The registry lists `node_id` again. True when it was expired until now."""
        member = self.members.get(node_id)
        if member is None or member.expired is None:
            return False
        was_expired = member.registry_expired
        member.expired = None
        if was_expired:
            self._changed()
        return was_expired

    # -- views --------------------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, this node's own included: what a pull answer carries."""
        return [self.self_entry.entry(), *(m.entry() for m in self.members.values())]

    def state(self, member: Member) -> str:
        if member.left or member.registry_expired:
            return "left"
        now = self._clock()
        if member.last_contact is not None and now - member.last_contact < UP_WINDOW:
            return "up"
        if any(now < until and connected() for until, connected in member.open.values()):
            return "up"
        return "down"

    def copies_of(self, seq: int) -> int:
        """How many nodes hold this node's feed up to `seq`, this one included."""
        return 1 + sum(1 for m in self.active() if m.applied is not None and m.applied >= seq)

    async def progress(self, timeout: float) -> None:
        """Return when any member reports progress, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.wait(), timeout)
