"""The tombstone purge: a delete's tombstone goes once no member can bring the key back.

That is once every active member holds this node's feed past it (`Member.held`, reported by its
pulls or on the change bus) and it is older than the grace period. The grace covers members that
nobody here has heard of, and members cut off for less than it (docs/design.md, "Membership and
removal"). Transaction entries that cover nothing any more go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from shareddb.clock import from_millis
from shareddb.membership import Membership
from shareddb.record import make_version
from shareddb.store.base import Store, StoreUnavailable

log = logging.getLogger("shareddb.replication")

PURGE_INTERVAL = 60.0
# Tombstones stay at least this long, even once every member has applied them: a member that was
# cut off for less than this can never bring a deleted key back.
TOMBSTONE_GRACE_MS = 3_600_000


class Purge:
    def __init__(
        self,
        store: Store,
        membership: Membership,
        *,
        now: Callable[[], int],
        grace_ms: int = TOMBSTONE_GRACE_MS,
    ) -> None:
        self.store = store
        self.membership = membership
        self.now = now
        self.grace_ms = grace_ms

    def horizon(self) -> int | None:
        """The sequence up to which every member holds this node's feed, or None when that
        is not known (a member has not pulled since this node started, or a peer is unidentified)."""
        if self.membership.static_urls:
            return None
        held = [m.held for m in self.membership.active()]
        if any(h is None for h in held):
            return None
        return min((h for h in held if h is not None), default=self.store.last_seq)

    async def run(self) -> int:
        """Drop the tombstones every member holds and that are past the grace period (none while
        that is not known), and the transaction entries that cover nothing any more."""
        horizon = self.horizon()
        if horizon is None:
            horizon = 0
        before = make_version(from_millis(self.now() - self.grace_ms), "")
        purged = await self.store.purge_tombstones(horizon, before)
        if purged:
            log.info("purged %d tombstones up to sequence %d", purged, horizon)
        return purged

    async def forever(self, rng: random.Random) -> None:
        """Purge about every PURGE_INTERVAL seconds (with jitter), until cancelled."""
        while True:
            await asyncio.sleep(PURGE_INTERVAL * rng.uniform(0.8, 1.2))
            with contextlib.suppress(StoreUnavailable):
                await self.run()
