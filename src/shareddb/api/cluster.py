"""The cluster view and membership changes: GET /v1/cluster, leaving, removing a member."""

from __future__ import annotations

import time
from functools import partial

from aiohttp import web

from shareddb.api.errors import ApiError, json_response
from shareddb.api.query import decode, split_target
from shareddb.api.routing import Route
from shareddb.node import Node
from shareddb.tokens import Role

MEMBERS = "/v1/cluster/members/"


async def cluster(node: Node, request: web.BaseRequest) -> web.Response:
    membership = node.membership
    last_seq = node.store.last_seq
    now = time.monotonic()
    members = []
    for member in sorted(membership.members.values(), key=lambda m: m.id):
        members.append(
            {
                "id": member.id,
                "url": member.url,
                "state": membership.state(member),
                "lag": max(0, last_seq - (member.applied or 0)),
                "last_contact": None
                if member.last_contact is None
                else round(now - member.last_contact, 3),
            }
        )
    for url in sorted(membership.static_urls):
        members.append({"id": None, "url": url, "state": "down", "lag": last_seq, "last_contact": None})
    answer = {
        "node": {
            "id": node.id,
            "url": node.url,
            "state": "left" if membership.self_entry.left else "up",
        },
        "members": members,
    }
    if node.bus is not None:
        answer["bus"] = node.bus.status()
    return json_response(answer)


async def leave(node: Node, request: web.BaseRequest) -> web.Response:
    """This node leaves the cluster: its peers stop pulling from it, it stops pulling."""
    await node.leave(node.id)
    return json_response({"node": node.id, "state": "left"})


async def remove_member(node: Node, request: web.BaseRequest) -> web.Response:
    """Mark another member as having left (e.g. a node that is gone for good)."""
    member_id = decode(split_target(request.raw_path)[0][len(MEMBERS) :], plus_is_space=False)
    if not await node.leave(member_id):
        raise ApiError(404, f"no member {member_id!r}")
    return json_response({"node": member_id, "state": "left"})


def routes(node: Node) -> list[Route]:
    return [
        Route("GET", "/v1/cluster", partial(cluster, node), Role.READ),
        Route("POST", "/v1/cluster/leave", partial(leave, node), Role.ADMIN),
        Route("DELETE", "/v1/cluster/members/*", partial(remove_member, node), Role.ADMIN),
    ]
