"""`shareddb verify`: do all members hold the same data? Which keys differ if not?

Every member's digest is compared; where they differ, the digest buckets that differ are listed
and, for the first few, the keys whose versions differ between nodes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shareddb.client import AsyncClient, ClientError

MAX_BUCKETS_SHOWN = 5
MAX_KEYS_SHOWN = 20


@dataclass
class Report:
    nodes: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    differing_buckets: list[int] = field(default_factory=list)
    differing_keys: dict[str, dict[str, str | None]] = field(default_factory=dict)

    @property
    def agree(self) -> bool:
        digests = {d["digest"] for _, _, d in self.nodes if d is not None}
        return not self.unreachable and len(digests) == 1

    def lines(self) -> list[str]:
        out = []
        for node_id, url, digest in self.nodes:
            if digest is None:
                out.append(f"{node_id:<12} {url:<28} unreachable")
            else:
                out.append(f"{node_id:<12} {url:<28} {digest['count']:>10} keys  {digest['digest']}")
        if self.agree:
            count = len(self.nodes)
            out.append(f"all {count} nodes agree" if count > 1 else "1 node, no other member to compare")
            return out
        if self.unreachable:
            out.append("not compared: " + ", ".join(self.unreachable))
        if self.differing_buckets:
            buckets = ", ".join(str(b) for b in self.differing_buckets)
            out.append(f"{len(self.differing_buckets)} digest bucket(s) differ: {buckets}")
        for key, versions in sorted(self.differing_keys.items())[:MAX_KEYS_SHOWN]:
            held = ", ".join(f"{n}={v or 'missing'}" for n, v in versions.items())
            out.append(f"  key {key!r}: {held}")
        return out


async def verify(
    urls: str | Sequence[str], token: str | None, tls: ssl.SSLContext | bool = True
) -> Report:
    """Ask the first node of `urls` that answers for the members, then every member; `tls` is
    what https:// nodes are verified with (the clients' `verify`)."""
    async with AsyncClient(urls, token=token, verify=tls) as entry:
        view = await entry.cluster()
    targets = [(view["node"]["id"], view["node"]["url"])]
    targets += [(m["id"] or "?", m["url"]) for m in view["members"] if m["state"] != "left"]
    report = Report()
    clients = [AsyncClient(u, token=token, timeout=60, verify=tls) for _, u in targets]
    try:
        digests = await asyncio.gather(*(_digest(c) for c in clients))
        for (node_id, node_url), digest in zip(targets, digests, strict=True):
            report.nodes.append((node_id, node_url, digest))
            if digest is None:
                report.unreachable.append(node_id)
        reachable = [
            (t[0], c, d) for t, c, d in zip(targets, clients, digests, strict=True) if d is not None
        ]
        if len({d["digest"] for _, _, d in reachable}) > 1:
            for bucket in range(len(reachable[0][2]["buckets"])):
                if len({d["buckets"][bucket] for _, _, d in reachable}) > 1:
                    report.differing_buckets.append(bucket)
            for bucket in report.differing_buckets[:MAX_BUCKETS_SHOWN]:
                listings = await asyncio.gather(*(c.bucket_versions(bucket) for _, c, _ in reachable))
                keys = set().union(*listings)
                for key in keys:
                    versions = {
                        n: listing.get(key)
                        for (n, _, _), listing in zip(reachable, listings, strict=True)
                    }
                    if len(set(versions.values())) > 1:
                        report.differing_keys[key] = versions
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return report


async def _digest(client: AsyncClient) -> dict[str, Any] | None:
    try:
        return await client.digest(buckets=True)
    except ClientError:
        return None
