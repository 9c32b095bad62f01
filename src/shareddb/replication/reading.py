"""How far this node has read each peer's feed, how far it holds it, and which origins it pulls
straight from their node: the bookkeeping of the pullers (replication/puller.py) around the
argument of replication/paths.py.

A peer's feed has two positions here. The *position* is where the next pull reads from: the end
of the last page applied. What this node *holds* of the feed is at most that: a pull that left
out the writes of an origin pulled straight holds the feed only up to that origin's mark
(`Paths.held`). The held position is the checkpoint saved with each page, what the peer's purge
counts, and where reading starts again when an origin stops being direct (`lose`, `check`).

Two orders matter, each because of a write that would otherwise be stepped past for good:
- `check` runs before a position is read for a pull (`Replicator._fetch`): an origin that stopped
  being direct moves the positions back first;
- an answer asked for before an origin stopped being direct moves the position only to what it
  holds (`advance`), and no page is asked ahead from its end (`current`).
"""

from __future__ import annotations

from dataclasses import replace

from shareddb.membership import Membership
from shareddb.record import incarnation_of, make_origin
from shareddb.replication.paths import Asked, Paths
from shareddb.replication.transport import PullReply
from shareddb.store.base import Checkpoint, Store

NOTHING_ASKED = Asked({}, frozenset(), 0)


class Reading:
    """Where this node reads each peer's feed next, and how far it holds it (per peer id)."""

    def __init__(self, store: Store, membership: Membership) -> None:
        self.store = store
        self.membership = membership
        self.paths = Paths()
        self._positions: dict[str, Checkpoint] = {}  # where the next pull reads
        self._held: dict[str, Checkpoint] = {}  # how far this node holds it, at most the position

    async def position(self, peer_id: str) -> Checkpoint | None:
        """Where the next pull from `peer_id` reads: in memory, else the saved checkpoint."""
        position = self._positions.get(peer_id)
        if position is None:
            position = await self.store.checkpoint(peer_id)
            if position is not None:
                self._positions[peer_id] = position
                held = self._held.get(peer_id)
                if held is None or held.instance != position.instance or held.seq < position.seq:
                    self._held[peer_id] = position  # the saved checkpoint is what it holds
        return position

    def applied(self, peer_id: str, instance: str) -> int:
        """How far this node has applied `peer_id`'s feed, in its instance `instance`."""
        position = self._positions.get(peer_id)
        return position.seq if position is not None and position.instance == instance else 0

    def ask(self, peer_id: str | None, checkpoint: Checkpoint | None) -> tuple[Asked, int | None]:
        """What a pull from `peer_id` reading from `checkpoint` knows (`Asked`), and the `held`
        it tells the peer: None when it leaves nothing out and holds nothing known of that feed
        instance, 0 when it leaves writes out and holds nothing known."""
        if peer_id is None:
            return NOTHING_ASKED, None
        asked = self.paths.ask(peer_id, self._positions)
        held = self._held.get(peer_id)
        if held is not None and checkpoint is not None and held.instance == checkpoint.instance:
            return asked, held.seq
        return asked, (0 if asked.skip else None)

    def current(self, asked: Asked) -> bool:
        """Whether the origins pulled straight are still the ones of when `asked` was sent."""
        return asked.generation == self.paths.generation

    def held_after(self, reply: PullReply, asked: Asked) -> Checkpoint:
        """How far this node holds the source's feed once `reply`, asked as `asked`, is applied."""
        position = reply.reached
        held = self.paths.held(reply.node, position, asked)
        before = self._held.get(reply.node)
        if before is not None and before.instance == reply.instance:
            held = max(held, before.seq)
        # Named in the answer's epoch, as the position is: the feed up to `held` is as it was
        # when the answer was given (replication/epochs.py).
        return replace(position, seq=held)

    def advance(self, reply: PullReply, asked: Asked, held: Checkpoint) -> None:
        """`reply` is applied and this node holds the feed up to `held`: move the positions. An
        answer to a pull sent before some origin stopped being direct left out writes this node
        may now lack: the next pull reads again from what it holds. An answer that reached the
        end of the feed makes the source's writes direct (paths.py)."""
        self._held[reply.node] = held
        if self.current(asked):
            self._positions[reply.node] = reply.reached
        else:
            self._positions[reply.node] = held
        if reply.until < reply.last_seq:
            return
        generation = self.paths.generation
        origin = make_origin(reply.node, incarnation_of(reply.instance))
        self.paths.caught_up(reply.node, origin, asked)
        if self.paths.generation != generation:  # an earlier life of the peer is gone
            self._rewind()

    def went_back(self, peer_id: str) -> None:
        """`peer_id`'s feed went back below what this node had read of it (its store is an older
        copy): this node holds nothing known of it, and reads on from the answer that said so."""
        self._positions.pop(peer_id, None)
        self._held.pop(peer_id, None)

    def copied(self, peer_id: str, checkpoint: Checkpoint) -> None:
        """A bulk copy holds all of `peer_id`'s feed up to `checkpoint`, where it began."""
        self._positions[peer_id] = self._held[peer_id] = checkpoint

    def check(self) -> None:
        """An origin is direct only while its node is an active member in that life, pulled at
        its URL: one that left, expired from the registry or answers as another life is not."""
        members = self.membership.members
        for origin, peer_id in self.paths.origins():
            member = members.get(peer_id)
            if (
                member is None
                or member.left
                or member.registry_expired
                or make_origin(peer_id, member.incarnation) != origin
            ):
                self.lose(peer_id)

    def lose(self, peer_id: str) -> None:
        """`peer_id` is not pulled straight for now: its writes come through the other peers
        again, from what this node holds of their feeds."""
        if self.paths.lost(peer_id):
            self._rewind()

    def _rewind(self) -> None:
        for peer_id, position in list(self._positions.items()):
            held = self._held.get(peer_id)
            if held is None or held.instance != position.instance:
                del self._positions[peer_id]  # read again from the saved checkpoint
            elif held.seq < position.seq:
                self._positions[peer_id] = held
