"""`make bench-scale`: what a write costs as the cluster grows, on the mesh and on the change bus.

For each set-up (`--setups`, default mesh and bus at 3, 5 and 9 nodes, and the bus at 25), in a
fresh directory, it starts the nodes on loopback (the mesh: every node with every other in
`--peers`; the bus: a private `nats-server -js` and `--bus`, no `--peers`), waits until every node
sees every other up, and measures:

- **idle CPU**: the CPU time of every node (and of nats-server) over `--idle` seconds with no
  writes, as a percentage of one core. The default, 24 s, spans two of the mesh's longest idle
  long polls (12 s, membership.long_poll), so each pull is answered about as often in the
  window at every size;
- **bursts**: `--bursts` (3) times, `--writes` PUTs of new keys (100-byte values, 32 in flight)
  to node 1, a second apart; writes/s is how many node 1 acknowledged per second, and the time
  until every node answers the same /v1/digest is the convergence time, each the median over the
  bursts (one burst on a shared machine swings by a third either way);
- **CPU per write**: the CPU time of every process of the set-up (nodes and nats-server) from
  each burst's start to its convergence, summed, divided by the writes and by the number of nodes;
- **`PUT ?w=N`**: `--probes` writes one after another to node 1, each answered once all N nodes
  hold it: p50 and p99.

With `--rounds N` every set-up runs N times, in a fresh cluster each time, the order alternating
(forward, backward, ...) so that a change in the machine's load hits every set-up alike; each
figure is then the median over the rounds, and each ratio is given for every round too.

Then the issue's ratios, all of one run: CPU per write per node at 9 nodes over that at 3 (goal
<= 1.3), idle CPU of 9 nodes over that of 3 (goal <= 3), and the bus's convergence time at 25
nodes over that of 3 nodes (goal <= 2). Every node shares the machine's cores, so absolute figures
only mean something next to each other.

    make bench-scale                                            # every set-up (many minutes)
    .venv/bin/python bench/scale_cluster.py --setups mesh:3,bus:3 --writes 1000 --probes 20
    .venv/bin/python bench/scale_cluster.py --setups bus:3,bus:25 --rounds 3   # the bus's ratio

Needs nats-server for the bus set-ups (Debian: apt-get install nats-server).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import NodeProcess, stop_all
from tests.harness.nats import NatsServer, find_nats_server
from tests.harness.procfs import cpu_seconds

from bench.bus import VALUE, mesh, on_bus, wait_members
from bench.bus import measure as burst_until_converged
from bench.replication_http import Connection
from bench.replication_load import percentile, run_async

DEFAULT_SETUPS = "mesh:3,mesh:5,mesh:9,bus:3,bus:5,bus:9,bus:25"


def parse_setups(text: str) -> list[tuple[str, int]]:
    setups = []
    for part in text.split(","):
        kind, _, count = part.partition(":")
        if kind not in ("mesh", "bus") or not count.isdigit() or int(count) < 2:
            raise argparse.ArgumentTypeError(f"a set-up is mesh:N or bus:N with N >= 2, not {part!r}")
        setups.append((kind, int(count)))
    return setups


def cpu_of(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid, children=True) or 0.0 for pid in pids)


async def copies(node: NodeProcess, count: int, probes: int) -> list[float]:
    """Milliseconds of `probes` PUTs with `?w=count`, one after another."""
    took = []
    conn = Connection(node.url)
    try:
        for i in range(probes):
            started = time.monotonic()
            answer = await conn.put(f"/v1/kv/copies-{i}?w={count}&timeout=30", VALUE.encode())
            if answer.status not in (200, 201):
                raise SystemExit(f"PUT ?w={count} answered {answer.status}")
            took.append(1000 * (time.monotonic() - started))
    finally:
        conn.close()
    return took


def run_setup(kind: str, count: int, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-scale-{kind}{count}-") as tmp:
        work = Path(tmp)
        server = NatsServer(work / "nats", session=True).start() if kind == "bus" else None
        nodes: list[NodeProcess] = []
        try:
            nodes = mesh(work, count) if server is None else on_bus(work, count, server)
            wait_members(nodes, timeout=120.0)
            pids = [n.pid for n in nodes] + ([server.pid] if server is not None else [])
            time.sleep(1.0)  # past the start-up's own work
            before, started = cpu_of(pids), time.monotonic()
            time.sleep(args.idle)
            idle = 100 * (cpu_of(pids) - before) / (time.monotonic() - started)
            bursts, busy = [], 0.0  # busy: CPU seconds from each burst's start to its convergence
            for number in range(args.bursts):
                if number:
                    time.sleep(1.0)  # a pause between bursts, not counted
                before = cpu_of(pids)
                keys = args.writes * (number + 1)
                bursts.append(burst_until_converged(nodes, args.writes, f"burst{number}", 32, keys))
                busy += cpu_of(pids) - before
            per_write = busy / (args.writes * args.bursts) / count * 1e6
            took = run_async(copies(nodes[0], count, args.probes))
            return {
                "idle_pct": idle,
                "writes_per_s": statistics.median(args.writes / b["acked_s"] for b in bursts),
                "converged_s": statistics.median(b["converged_s"] for b in bursts),
                "cpu_us_per_write_per_node": per_write,
                "w_p50_ms": percentile(took, 50),
                "w_p99_ms": percentile(took, 99),
            }
        finally:
            stop_all(nodes)
            if server is not None:
                server.kill()


def ratio_line(name: str, top: float | None, bottom: float | None, goal: float) -> str:
    if top is None or bottom is None or bottom <= 0:
        return f"  {name:48} -     (goal <= {goal:g}; a set-up it needs did not run)"
    value = top / bottom
    verdict = "met" if value <= goal else "NOT met"
    return f"  {name:48} {value:5.2f} goal <= {goal:g}  {verdict}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--setups", type=parse_setups, default=parse_setups(DEFAULT_SETUPS))
    parser.add_argument("--writes", type=int, default=4000, help="writes in a burst")
    parser.add_argument(
        "--bursts", type=int, default=3, help="bursts per set-up (figures: their median)"
    )
    parser.add_argument("--probes", type=int, default=100, help="PUT ?w=N probes")
    parser.add_argument("--idle", type=float, default=24.0, help="seconds of idle CPU measured")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of every set-up, alternating (figures: medians)"
    )
    args = parser.parse_args(argv)
    if any(kind == "bus" for kind, _ in args.setups) and find_nats_server() is None:
        print("nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 2
    rounds: list[dict[tuple[str, int], dict[str, float]]] = []
    header = (
        f"{'set-up':8}{'writes/s':>10}{'w=N p50':>10}{'w=N p99':>10}"
        f"{'CPU us/write/node':>19}{'idle CPU %':>12}{'converged s':>13}"
    )
    for number in range(args.rounds):
        this: dict[tuple[str, int], dict[str, float]] = {}
        rounds.append(this)
        for kind, count in args.setups if number % 2 == 0 else reversed(args.setups):
            this[(kind, count)] = run_setup(kind, count, args)
            print(f"round {number + 1}  {row(kind, count, this[(kind, count)])}", flush=True)
    results = {
        setup: {name: statistics.median(r[setup][name] for r in rounds) for name in rounds[0][setup]}
        for setup in args.setups
    }
    print(
        f"\n{header}\n(w=N in ms; {args.writes} writes to node 1 per burst; writes/s and converged:"
        f" medians of {args.bursts} bursts; every figure the median of {args.rounds} round(s))"
    )
    for (kind, count), figures in results.items():
        print(row(kind, count, figures))

    def ratio(label: str, field: str, top: tuple[str, int], bottom: tuple[str, int], goal: float) -> str:
        if top not in results or bottom not in results:
            return ratio_line(label, None, None, goal)
        line = ratio_line(label, results[top][field], results[bottom][field], goal)
        if len(rounds) > 1:
            each = ", ".join(f"{r[top][field] / r[bottom][field]:.2f}" for r in rounds)
            line += f" (rounds: {each})"
        return line

    print("\ntargets (ratios of this run):")
    for kind in ("mesh", "bus"):
        label = f"{kind}: CPU per write per node, 9 / 3 nodes"
        print(ratio(label, "cpu_us_per_write_per_node", (kind, 9), (kind, 3), 1.3))
        print(ratio(f"{kind}: idle CPU, 9 / 3 nodes", "idle_pct", (kind, 9), (kind, 3), 3.0))
    label = "bus: convergence, 25 / 3 nodes"
    print(ratio(label, "converged_s", ("bus", 25), ("bus", 3), 2.0))
    return 0


def row(kind: str, count: int, f: dict[str, float]) -> str:
    return (
        f"{kind}:{count:<4}{f['writes_per_s']:>10,.0f}{f['w_p50_ms']:>10.1f}{f['w_p99_ms']:>10.1f}"
        f"{f['cpu_us_per_write_per_node']:>19,.0f}{f['idle_pct']:>12.1f}{f['converged_s']:>13.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
