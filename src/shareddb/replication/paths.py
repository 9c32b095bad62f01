"""Which writes reach this node straight from the node that took them: what lets a full mesh stay
linear (docs/design.md, "Linear replication").

Every node's feed holds every change it applied, so in a full mesh each write would come to a node
from every peer, N-1 times. A node that keeps up with a peer X's feed gets X's writes from X: it
asks its other peers to leave X's writes out (`PullRequest.skip`), and each write crosses about
N-1 links. Where X cannot be pulled (down, cut off, a new life of it, not caught up yet), its
writes come through whoever has them, as before.

What a left-out write costs is knowing how far the puller *holds* a peer's feed, not only how far
it has read it. After a pull from X that reached the end of X's feed, this node holds every write
X had taken by the time it read that page, or a newer version of its key (X's feed keeps every
key's latest row, and a pull that reaches the end has read every row there is). Any write of X
that a peer P served below this node's position in P's feed at the time the pull to X was *sent*
was taken by X before then. So that position is a **mark**: below it, nothing of X's in P's feed
is missing here. How far this node holds P's feed (`held`) is its position there, capped by the
mark of every origin its pulls from P leave out. That is the checkpoint it saves, the position it
tells P for P's tombstone purge, and where it reads P's feed again from (`lost`) when X stops being
pulled straight: a failed pull, a new life, a member removed. Marks only grow; a peer's marks are
positions in one instance of its feed and mean nothing in another.
"""

from __future__ import annotations

from dataclasses import dataclass

from shareddb.store.base import Checkpoint


@dataclass(frozen=True, slots=True)
class Asked:
    """What this node knew when it sent one pull: its position in each peer's feed (what a
    caught-up answer makes marks of), which origins the pull left out, and the generation of
    the set of direct origins (an answer of an older one moves no position)."""

    positions: dict[str, Checkpoint]
    skip: frozenset[str]
    generation: int


class Paths:
    """The origins this node pulls straight from their node, and its marks in each peer's feed."""

    def __init__(self) -> None:
        self._direct: dict[str, str] = {}  # origin -> id of the peer that took its writes
        self._marks: dict[str, dict[str, Checkpoint]] = {}  # peer id -> origin -> mark
        self.generation = 0  # one more each time an origin stops being direct

    def skip_for(self, peer_id: str) -> frozenset[str]:
        """The origins a pull from `peer_id` leaves out: the direct ones taken by other nodes."""
        return frozenset(o for o, peer in self._direct.items() if peer != peer_id)

    def ask(self, peer_id: str, positions: dict[str, Checkpoint]) -> Asked:
        return Asked(dict(positions), self.skip_for(peer_id), self.generation)

    def caught_up(self, peer_id: str, origin: str, asked: Asked) -> None:
        """A pull from `peer_id`, sent as `asked`, reached the end of its feed and is applied:
        `origin` (the peer's writes, this life of it) is direct from now on, and every position
        this node had in another peer's feed when the pull was sent is a mark for `origin`."""
        if self._direct.get(origin) != peer_id:
            # Stale origins of the same peer (an earlier life of it) are no longer pulled from it.
            self.lost(peer_id)
            self._direct[origin] = peer_id
        for peer, position in asked.positions.items():
            if peer == peer_id:
                continue
            marks = self._marks.setdefault(peer, {})
            mark = marks.get(origin)
            if mark is None or mark.instance != position.instance or mark.seq < position.seq:
                marks[origin] = position

    def origins(self) -> list[tuple[str, str]]:
        """(origin, peer id) of every direct origin."""
        return list(self._direct.items())

    def lost(self, peer_id: str) -> bool:
        """`peer_id` is not pulled straight any more (a pull failed, it answered as another life
        or another node, it is no longer a member): its origins are relayed again. True when that
        changed anything: the caller reads its other peers' feeds again from what it holds."""
        gone = [origin for origin, peer in self._direct.items() if peer == peer_id]
        for origin in gone:
            del self._direct[origin]
        if gone:
            self.generation += 1
        return bool(gone)

    def held(self, peer_id: str, position: Checkpoint, asked: Asked) -> int:
        """How far this node holds `peer_id`'s feed once a page up to `position`, asked for as
        `asked`, is applied (not counting what it held before: the caller keeps the greater)."""
        held = position.seq
        marks = self._marks.get(peer_id, {})
        for origin in asked.skip:
            mark = marks.get(origin)
            if mark is None or mark.instance != position.instance:
                return 0
            held = min(held, mark.seq)
        return held
