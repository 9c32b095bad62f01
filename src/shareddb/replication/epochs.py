"""The epochs of this node's changes feed: which run of the node's process named a position to a
puller, so that a position read before the store went back is found out, however far the feed
has grown since (docs/design.md, "Identity").

Each run of the node's process begins an epoch of its own, named by the run's `Membership.boot`,
at the feed position where it found the store, and notes it in the store (node meta `EPOCHS`)
before it serves anything. Every answer to a pull names the epoch of the run that gave it, and the
puller keeps that epoch with its checkpoint. A store that goes back (put back to an older copy)
takes the list back with it: the runs that began after the copy was taken are no longer in it,
and the run that starts on the copy begins its epoch where the copy ends. So, asked for the feed
from a position read in epoch E:

- E is the latest epoch: this run named the position, which the store holds;
- E is an earlier one: the store holds the feed as E's run left it up to where the next epoch
  began, and not beyond (a copy taken during E's run ends there);
- E is not in the list: the copy is older than E's run, and the puller reads the feed again from
  the start.

This is the leader epoch Kafka's replicas compare their logs by (KIP-101), for a feed whose
history changes only when its store is put back in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

EPOCHS = "feed_epochs"  # the node meta entry
KEPT = 1000  # the latest epochs kept: a puller holding an older one reads the feed again


@dataclass(frozen=True, slots=True)
class Epochs:
    """The epochs of the feed, oldest first, each as (the position it began at, its run)."""

    begun: tuple[tuple[int, str], ...] = ()

    def begin(self, seq: int, run: str) -> Epochs:
        """The epochs with one more, of the run `run` that found the feed at `seq`."""
        return Epochs((*self.begun, (seq, run))[-KEPT:])

    def agreed(self, seq: int, epoch: str) -> int:
        """How much of the feed a puller that read it up to `seq` in `epoch` holds as the feed
        stands: `seq`, or less when the store went back (module docstring)."""
        for index in range(len(self.begun) - 1, -1, -1):
            if self.begun[index][1] == epoch:
                if index + 1 == len(self.begun):
                    return seq
                return min(seq, self.begun[index + 1][0])
        return 0

    def encode(self) -> str:
        return orjson.dumps(self.begun).decode()

    @classmethod
    def decode(cls, text: str | None) -> Epochs:
        """The epochs noted in `text` (none: a store of an earlier release, or a new one)."""
        if not text:
            return cls()
        try:
            noted = orjson.loads(text)
            return cls(tuple((int(seq), str(run)) for seq, run in noted))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return cls()
