"""The change bus's heartbeats (replication/bus_beats.py): small beats while the member list
stays the same, the whole list when it changed or another node's differs, and a period that
grows with the number of nodes but stays within a third of the window in which a member is up."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from nats.aio.client import Client

from shareddb.membership import UP_WINDOW, Membership
from shareddb.replication.bus_beats import HEARTBEAT, Heartbeats
from shareddb.replication.bus_publish import Publisher
from shareddb.replication.bus_view import BusState, parse_bus_url
from shareddb.store.base import Store

ADDRESS = parse_bus_url("nats://127.0.0.1:4999")


class Wire:
    """Stands in for the NATS connection: keeps what was sent, hands it to the listeners."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.listeners: list[Heartbeats] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.sent.append(orjson.loads(data))
        for listener in self.listeners:
            await listener.heard(_Msg(data))


class _Msg:
    def __init__(self, data: bytes) -> None:
        self.data = data


def node(node_id: str) -> Heartbeats:
    membership = Membership(node_id, f"http://{node_id}", f"inc-{node_id}", clock=lambda: 0.0)
    state = BusState()
    publisher = Publisher(ADDRESS, node_id, f"{node_id}~i", cast(Store, None), membership, state)
    return Heartbeats(ADDRESS, node_id, f"{node_id}~i", membership, publisher, state)


def test_member_list_goes_whole_only_when_it_changed_or_differs() -> None:
    async def run() -> None:
        a, b = node("a"), node("b")
        wire = Wire()
        wire.listeners = [b]
        conn = cast(Client, wire)
        await a.beat(conn)
        await a.beat(conn)
        assert [len(beat["entries"]) for beat in wire.sent] == [1, 1]  # a knows only itself
        a.membership.merge([{"id": "z", "url": "http://z", "left": False, "v": 5, "inc": "iz"}])
        await a.beat(conn)  # changed: the whole list, which b takes in
        await a.beat(conn)
        assert [len(beat["entries"]) for beat in wire.sent[2:]] == [2, 1]
        assert "z" in b.membership.members
        assert b.membership.members["a"].last_contact is not None  # a small beat still counts
        # b knows one more member than a: a's digest differs, so b sends its whole list.
        b.membership.merge([{"id": "y", "url": "http://y", "left": False, "v": 7, "inc": "iy"}])
        back = Wire()
        back.listeners = [a]
        await b.beat(cast(Client, back))
        assert len(back.sent[-1]["entries"]) == 4  # b, a, z, y
        assert "y" in a.membership.members
        assert a.digest() == b.digest()

    asyncio.run(run())


def test_the_period_grows_with_the_nodes_but_a_member_stays_up() -> None:
    beats = node("a")
    assert beats.period() == HEARTBEAT
    beats.state.members.update(f"n{i}" for i in range(8))
    assert HEARTBEAT < beats.period() <= UP_WINDOW / 3
    beats.state.members.update(f"m{i}" for i in range(100))
    assert beats.period() == UP_WINDOW / 3
