"""What serving the changes feed costs the origin, on real node processes: no busy loop when the
feed ends in purged tombstones, and memory bounded by the answer budget for a far-behind puller.

The origin's data is written in-process into its SQLite file before it starts, so the node's
memory figures start from a fresh process.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from shareddb.record import Record, make_version
from shareddb.replication.feed import MAX_ANSWER_BYTES
from shareddb.store.sqlite import SQLiteStore, sqlite_path
from tests.cluster.conftest import StartNode
from tests.harness import NodeProcess, wait_for
from tests.harness.metrics import sample

pytestmark = pytest.mark.cluster

HLC = 1 << 40  # versions of the prepared data: far in the past, so their tombstones may be purged
IDLE_WINDOW = 2.0  # seconds of an idle pair measured; a spinning pair exchanges pulls in ms
IDLE_CPU_SHARE = 0.25  # an idle pair uses ~1% of a core; a spinning one most of two


async def prepare(data: Path, values: list[tuple[str, str]], deleted: int = 0) -> int:
    """Write `values` as node "a" would have, delete the last `deleted` keys and purge those
    tombstones. Returns the feed's last sequence number."""
    store = SQLiteStore(sqlite_path(data))
    await store.open()
    try:
        for start in range(0, len(values), 20):
            batch = values[start : start + 20]
            await store.apply(
                [Record(k, v, make_version(HLC + start + i, "a")) for i, (k, v) in enumerate(batch)]
            )
        gone = [Record(k, None, make_version(HLC + 10**6 + i, "a")) for i, (k, _) in enumerate(values)]
        if deleted:
            await store.apply(gone[-deleted:])
            assert await store.purge_tombstones(store.last_seq, make_version(HLC * 2, "")) == deleted
        return store.last_seq
    finally:
        await store.close()


def metric(node: NodeProcess, name: str, **labels: str) -> int | None:
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = sample(text, name, **labels)
    return None if found is None else int(found)


def cpu_seconds(node: NodeProcess) -> float:
    assert node.proc is not None
    fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def memory_kib(node: NodeProcess, field: str) -> int:
    assert node.proc is not None
    status = Path(f"/proc/{node.proc.pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    assert found is not None, f"no {field} in /proc/PID/status"
    return int(found.group(1))


def test_a_new_puller_moves_past_purged_tombstones_and_then_idles(
    tmp_path: Path, start_node: StartNode
) -> None:
    """A new node pulling a feed whose newest rows are purged tombstones reaches the end of the
    feed and then long-polls, instead of exchanging empty pulls in a busy loop."""
    (tmp_path / "a").mkdir()
    last = asyncio.run(prepare(tmp_path / "a", [(f"k{i}", "v") for i in range(5)], deleted=2))
    a = start_node("a")
    b = start_node("b", "--peers", a.url)
    # A shows how far B has applied its feed: the checkpoint B sent with its last pull.
    wait_for(
        lambda: metric(a, "shareddb_member_lag", member="b") == 0,
        15,
        f"b's checkpoint in a's feed to reach its last sequence {last}",
        [a, b],
    )
    before = cpu_seconds(a) + cpu_seconds(b)
    started = time.monotonic()
    wait_for(lambda: time.monotonic() - started >= IDLE_WINDOW, IDLE_WINDOW + 5, "the window")
    used = cpu_seconds(a) + cpu_seconds(b) - before
    elapsed = time.monotonic() - started
    print(f"idle pair: {used:.2f}s of CPU in {elapsed:.2f}s")
    assert used < IDLE_CPU_SHARE * elapsed, f"the idle pair used {used:.2f}s of CPU in {elapsed:.2f}s"


def reset_peak(node: NodeProcess) -> None:
    """Make VmHWM start again from the current RSS (Linux: clear_refs 5)."""
    assert node.proc is not None
    Path(f"/proc/{node.proc.pid}/clear_refs").write_text("5")


def test_a_far_behind_pull_holds_about_one_answer_in_memory(
    tmp_path: Path, start_node: StartNode
) -> None:
    """Pulls from 0 asking for 10,000 changes of a ~100 MiB feed make the origin hold about one
    answer budget (MAX_ANSWER_BYTES) at a time, not the feed.

    Measured per pull: the peak RSS growth (VmHWM after, from VmRSS before) less the file pages
    the read mapped in (RssFile: SQLite reads through mmap; those are the kernel's page cache,
    shared and reclaimable). The read comes before the encoding and the send, so those pages
    are already mapped when the process holds the most memory of its own.
    """
    value = "x" * (512 * 1024)
    values = [(f"big{i:03}", value) for i in range(200)]
    (tmp_path / "a").mkdir()
    asyncio.run(prepare(tmp_path / "a", values))
    a = start_node("a")
    seen: list[str] = []
    since, instance = 0, ""
    growths: list[int] = []
    while since < len(values):
        assert len(growths) < len(values), f"the feed did not advance past {since}"
        url = f"{a.url}/v1/peer/changes?since={since}&instance={instance}&limit=10000&wait=0"
        reset_peak(a)
        rss, mapped = memory_kib(a, "VmRSS"), memory_kib(a, "RssFile")
        with urllib.request.urlopen(url, timeout=30) as response:
            body = orjson.loads(response.read())
        growths.append(memory_kib(a, "VmHWM") - rss - (memory_kib(a, "RssFile") - mapped))
        changes = body["changes"]
        assert 0 < len(changes) <= MAX_ANSWER_BYTES // len(value), "an answer passed the budget"
        seen += [key for key, _, _ in changes]
        since, instance = body["until"], body["instance"]
    assert seen == [key for key, _ in values]
    bound = 3 * MAX_ANSWER_BYTES // 1024
    print(f"{len(growths)} pulls; peak RSS growth per pull (KiB, less mapped file): {growths}")
    anon, mapped = memory_kib(a, "RssAnon"), memory_kib(a, "RssFile")
    print(f"origin at the end: {anon} KiB anonymous, {mapped} KiB file")
    assert max(growths) < bound, f"a pull grew the origin by {max(growths)} KiB (bound {bound} KiB)"


def test_puller_that_hangs_up_during_a_long_poll_leaves_no_traceback(start_node: StartNode) -> None:
    """Invariant 6: no request crashes a node. A puller that stops while its long poll waits (a
    peer shutting down) is no error of the origin's: the answer goes nowhere, nothing is logged."""
    node = start_node("a")
    put = urllib.request.Request(node.url + "/v1/kv/k", data=b"1", method="PUT")
    urllib.request.urlopen(put, timeout=10).close()
    with urllib.request.urlopen(node.url + "/v1/peer/changes?since=0", timeout=10) as response:
        first = orjson.loads(response.read())
    target = f"/v1/peer/changes?since={first['last_seq']}&instance={first['instance']}&wait=20"
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as hung_up:
        hung_up.sendall(f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    put = urllib.request.Request(node.url + "/v1/kv/k", data=b"2", method="PUT")
    urllib.request.urlopen(put, timeout=10).close()  # wakes the long poll, whose puller is gone
    assert node.stop() == 0
    assert "Traceback" not in node.logs(), node.logs()
