"""How long a burst of writes takes to reach every node: the change bus (`--bus`) against the mesh.

Starts N nodes (default 3) twice, each time in a fresh directory: as a mesh (every node with every
other in `--peers`) and on a private `nats-server -js` (`--bus`, no `--peers`). Each time it sends
a burst of writes (default 4,000 PUTs of new keys, 100-byte values, 32 in flight) to the first node
and measures, from the burst's first request: when the last write was acknowledged, and when every
node answered the same /v1/digest holding all the keys (converged). The two set-ups alternate over
`--rounds` rounds (mesh, bus, bus, mesh, ...), and each figure is the median; only their ratio
means something on a shared machine.

    .venv/bin/python bench/bus.py                   # 3 nodes, 4,000 writes, 3 rounds
    .venv/bin/python bench/bus.py --nodes 5 --writes 2000 --rounds 1

Needs nats-server (Debian: apt-get install nats-server).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import NodeProcess, free_ports, stop_all
from tests.harness.nats import NatsServer, find_nats_server

from bench.replication_http import Connection, HttpError
from bench.replication_load import run_async, write_keys

VALUE = "v" * 100
CONVERGE_TIMEOUT = 300.0


def mesh(work: Path, count: int) -> list[NodeProcess]:
    ports = free_ports(count)
    nodes = []
    for i, port in enumerate(ports):
        peers = ",".join(f"http://127.0.0.1:{p}" for p in ports if p != port)
        node = NodeProcess(work / f"n{i}", f"n{i}", "--peers", peers, port=port, session=True)
        nodes.append(node.start())
    return nodes


def on_bus(work: Path, count: int, server: NatsServer) -> list[NodeProcess]:
    return [
        NodeProcess(work / f"n{i}", f"n{i}", "--bus", server.url, session=True).start()
        for i in range(count)
    ]


def wait_members(nodes: Sequence[NodeProcess], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            views = []
            for node in nodes:
                with urllib.request.urlopen(node.url + "/v1/cluster", timeout=5) as response:
                    views.append(orjson.loads(response.read()))
        except OSError:
            time.sleep(0.1)
            continue
        if all(sum(m["state"] == "up" for m in v["members"]) == len(nodes) - 1 for v in views):
            return
        time.sleep(0.1)
    raise SystemExit("the nodes did not see each other in time")


async def converge(nodes: Sequence[NodeProcess], expected: int, deadline: float) -> None:
    """Wait until every node answers the /v1/digest of the first once it holds `expected` keys.
    Nothing writes meanwhile, so a node that matched stays matched and is not asked again: only
    the nodes still behind are polled, over one keep-alive connection each, every 10 ms."""
    connections = {node.url: Connection(node.url) for node in nodes}

    async def ask(node: NodeProcess) -> tuple[int, str] | None:
        try:
            answer = await connections[node.url].get("/v1/digest")
        except HttpError:
            return None
        if answer.status != 200:
            return None
        body = orjson.loads(answer.body)
        return int(body["count"]), str(body["digest"])

    try:
        while (target := await ask(nodes[0])) is None or target[0] < expected:
            if time.monotonic() > deadline:
                raise SystemExit(f"{nodes[0].url} holds {target} keys, not {expected}, in time")
            await asyncio.sleep(0.01)
        behind = list(nodes[1:])
        while True:
            answers = await asyncio.gather(*(ask(node) for node in behind))
            behind = [node for node, answer in zip(behind, answers, strict=True) if answer != target]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"no convergence within {CONVERGE_TIMEOUT}s: {len(behind)} behind")
            await asyncio.sleep(0.01)
    finally:
        for conn in connections.values():
            conn.close()


def measure(
    nodes: Sequence[NodeProcess], writes: int, tag: str, concurrency: int, keys: int | None = None
) -> dict[str, float]:
    """A burst of `writes` new keys to the first node: seconds until the last was acknowledged,
    and until every node holds the same data with (at least) `keys` keys, by default `writes`."""
    started = time.monotonic()
    # The replication bench's writer: aiohttp's client cost about 200 µs of CPU a write, more
    # than the node taking it, on the cores the nodes share; this one about 25.
    run_async(write_keys(nodes[0].url, f"{tag}-", writes, connections=concurrency))
    acked = time.monotonic() - started
    expected = writes if keys is None else keys
    run_async(converge(nodes, expected, started + CONVERGE_TIMEOUT))
    return {"acked_s": acked, "converged_s": time.monotonic() - started}


def run_one(kind: str, count: int, writes: int, concurrency: int, round_no: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-bus-{kind}-") as tmp:
        work = Path(tmp)
        server = NatsServer(work / "nats", session=True).start() if kind == "bus" else None
        nodes: list[NodeProcess] = []
        try:
            nodes = mesh(work, count) if server is None else on_bus(work, count, server)
            wait_members(nodes)
            return measure(nodes, writes, f"r{round_no}", concurrency)
        finally:
            stop_all(nodes)
            if server is not None:
                server.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--writes", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if find_nats_server() is None:
        print("nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, float]]] = {"mesh": [], "bus": []}
    for round_no in range(args.rounds):
        order = ("mesh", "bus") if round_no % 2 == 0 else ("bus", "mesh")
        for kind in order:
            figures = run_one(kind, args.nodes, args.writes, args.concurrency, round_no)
            results[kind].append(figures)
            print(
                f"round {round_no + 1} {kind:4}: acked {figures['acked_s']:.2f} s, "
                f"converged {figures['converged_s']:.2f} s",
                flush=True,
            )
    median = {
        kind: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for kind, runs in results.items()
    }
    print(
        f"\n{args.writes} writes to node 1 of {args.nodes}, {args.concurrency} in flight, "
        f"median of {args.rounds} rounds:"
    )
    print(f"{'':6}{'acked (s)':>12}{'converged (s)':>16}")
    for kind in ("mesh", "bus"):
        print(f"{kind:6}{median[kind]['acked_s']:>12.2f}{median[kind]['converged_s']:>16.2f}")
    ratio = median["bus"]["converged_s"] / median["mesh"]["converged_s"]
    print(f"convergence time, bus / mesh: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
