"""What both write APIs share: `?w=N&timeout=S`, the wait for N copies of a write."""

from __future__ import annotations

from dataclasses import dataclass

from shareddb.api.errors import ApiError, bad_request
from shareddb.api.query import positive_int, positive_number
from shareddb.node import Node

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class CopyPolicy:
    copies: int
    timeout: float


DEFAULT_POLICY = CopyPolicy(1, DEFAULT_TIMEOUT)


def copy_policy(params: dict[str, str], node: Node) -> CopyPolicy:
    """Read and check `w` and `timeout` before anything is written."""
    if not params:  # the common write: nothing to read, and w=1 is always within the cluster
        return DEFAULT_POLICY
    copies = positive_int(params, "w", 1)
    timeout = positive_number(params, "timeout", DEFAULT_TIMEOUT)
    if copies > node.member_count:
        raise bad_request(
            f"w={copies} is more than the {node.member_count} node(s) this node knows, itself included"
        )
    return CopyPolicy(copies, timeout)


async def await_copies(node: Node, version: str, policy: CopyPolicy) -> None:
    """Return once `policy.copies` nodes hold `version`; 504 (the write is kept) on timeout."""
    if policy.copies <= 1:
        return
    held = await node.wait_for_copies(policy.copies, policy.timeout)
    if held < policy.copies:
        raise ApiError(
            504,
            f"write {version} is held by {held} of the {policy.copies} nodes asked for after "
            f"{policy.timeout:g}s; it is kept and replication goes on",
            version=version,
        )
