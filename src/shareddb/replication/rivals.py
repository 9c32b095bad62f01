"""Another node started with this node's id: found, and the newcomer stops, as Consul refuses a
node whose name a live member holds.

Two nodes given one `--node-id` (a copied configuration, a container scaled up with the id in its
environment) each keep a store of their own and mint versions of their own, so nothing they write
collides (their incarnations differ). But every other node holds one member entry for the id,
and each life of an id announces itself above the one before (`Membership.merge`): the other
nodes took each one's entry over the other's in turn, many times a second, read that one's feed
again from the start each time (a bulk copy of the whole data set, for a large one), and counted
what one of them had applied for both (`w=N`, the tombstone purge).

Each of the two soon sees the other's entry: its own id, with another incarnation, at another URL
(`Membership.rivals`). An earlier life of its own that ran at another URL (wiped, then started
elsewhere) looks the same, but no longer answers there. So the node asks that URL, with an empty
pull under its own id (which the node there answers without taking it for a member): one that
answers with this id and another incarnation runs now, and says when this run of it announced
itself (`PullReply.announced`: its first entry's version, a clock value; the entries themselves
leapfrog each other). The one of the two that announced itself last (the greater incarnation when
both did at once) stops with an error, exit status 1: the newcomer. The other logs the error, once
per URL, and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from shareddb.membership import Membership
from shareddb.record import incarnation_of
from shareddb.replication.transport import PeerError, PullRequest, Transport

log = logging.getLogger("shareddb.replication")


class Rivals:
    """Checks the other lives of this node's id that the member lists name (`Membership.rivals`);
    `stop` ends the node with an error."""

    def __init__(
        self,
        membership: Membership,
        transport: Transport,
        stop: Callable[[str], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.membership = membership
        self.transport = transport
        self.stop = stop
        self.spawn = spawn
        self._checked: dict[str, str] = {}  # url -> the incarnation checked there
        self._checking = False

    def found(self) -> None:
        """`Membership.on_rival`: check what is new, one check at a time."""
        if not self._checking:
            self._checking = True
            self.spawn(self._check())

    async def _check(self) -> None:
        try:
            while pending := [
                (url, incarnation)
                for url, incarnation in self.membership.rivals.items()
                if self._checked.get(url) != incarnation
            ]:
                for url, incarnation in pending:
                    self._checked[url] = incarnation
                    if (announced := await self._runs_at(url)) is not None:
                        self._found_at(url, incarnation, announced)
        finally:
            self._checking = False

    async def _runs_at(self, url: str) -> int | None:
        """When the node with this id and another incarnation that answers at `url` announced
        itself; None when none answers there."""
        own = self.membership.self_entry
        me = self.membership.self_id
        request = PullRequest(0, "", 1, 0.0, me, own.url, own.version, 0, own.incarnation)
        try:
            reply = await self.transport.pull(url, request)
        except PeerError:
            return None  # an earlier life that ran there, or nobody
        if reply.node != me or incarnation_of(reply.instance) == own.incarnation:
            return None
        return reply.announced

    def _found_at(self, url: str, incarnation: str, announced: int) -> None:
        """A node with this id and `incarnation`, that announced itself at `announced`, runs at
        `url`."""
        membership = self.membership
        said = (
            f"node id {membership.self_id} is in use by another node, at {url} (with a data "
            "directory of its own): give each node its own --node-id"
        )
        if (announced, incarnation) < (membership.announced, membership.incarnation):
            self.stop(said)  # the other was there first
        else:
            log.error("%s; the node that started last stops", said)
