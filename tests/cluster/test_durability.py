"""Acknowledged writes survive `kill -9`, clean shutdowns and clock jumps of a single node.

A write load of concurrent clients (v1 PUT and DELETE, seed update and remove) runs against one
real node; every answer is recorded. A write that got a 2xx is *acknowledged* and must be on disk;
a write whose answer never came (the node died, the connection dropped) is *unknown*: either
outcome is allowed, but only the value that write carried. After the node comes back on the same
data dir, every key must hold exactly what the acknowledged writes (or the unknown ones) allow.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import NodeProcess, wait_for

pytestmark = pytest.mark.cluster

WRITERS = 32
SHARED_KEYS = 16  # written by every writer: concurrent writes of one key land in one batch
OWN_KEYS = 4  # per writer, written by that writer only, so their order is known
REQUEST_TIMEOUT = 10.0
OPENED = re.compile(r"opened store .* at sequence (\d+)")


def seeded_rng() -> random.Random:
    seed = int(os.environ.get("SHAREDDB_TEST_SEED") or random.randrange(2**32))
    print(f"seed={seed}")
    return random.Random(seed)


# -- what the writers saw ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """One write a client sent. `value is None` is a delete; `version` is known once acknowledged
    (a v1 DELETE answers 204 without a version in the contract)."""

    key: str
    value: str | None
    version: str | None = None


@dataclass
class Ledger:
    """Every write of one load, sorted by what the node answered."""

    acked: list[Write] = field(default_factory=list)
    unknown: list[Write] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # The acknowledged writes of each own key, in the order their writer sent them.
    own_order: dict[str, list[Write]] = field(default_factory=dict)
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    target: int = 0
    cut: bool = False  # set just before the node is killed or signalled
    finished_after_cut: int = 0  # sent before the cut, acknowledged after it
    refused_after_cut: list[int] = field(default_factory=list)  # statuses of writes refused then

    def ack(self, write: Write) -> None:
        self.acked.append(write)
        if write.key.startswith("own/"):
            self.own_order.setdefault(write.key, []).append(write)
        if len(self.acked) >= self.target:
            self.reached.set()

    def versions(self) -> list[str]:
        return [w.version for w in self.acked if w.version is not None]


def shared_key(index: int) -> str:
    return f"shared/{index}"


def own_key(writer: int, index: int) -> str:
    return f"own/{writer}/{index}"


async def send(
    session: aiohttp.ClientSession, url: str, write: Write, seed_api: bool
) -> tuple[int, Any]:
    """Send one write; returns (status, version or None). Raises on a transport failure."""
    if write.value is None and seed_api:
        async with session.get(url + "/nodes/remove", params={"name": write.key}) as resp:
            body = await resp.json() if resp.status == 200 else None
            return resp.status, body["version"] if body else None
    if write.value is None:
        async with session.delete(f"{url}/v1/kv/{write.key}") as resp:
            await resp.read()
            return resp.status, None
    if seed_api:
        params = {"name": write.key, "value": write.value}
        async with session.get(url + "/nodes/update", params=params) as resp:
            body = await resp.json() if resp.status == 200 else None
            return resp.status, body["version"] if body else None
    async with session.put(f"{url}/v1/kv/{write.key}", data=write.value.encode()) as resp:
        body = await resp.json() if resp.status in (200, 201) else None
        return resp.status, body["version"] if body else None


async def writer(
    session: aiohttp.ClientSession, url: str, wid: int, tag: str, rng: random.Random, ledger: Ledger
) -> None:
    """Write until the node goes away. Values are unique, so a stored value names its write."""
    n = 0
    while True:
        n += 1
        value = f"{tag}-w{wid}-{n}"
        roll = rng.random()
        if roll < 0.5:
            key = shared_key(rng.randrange(SHARED_KEYS))
        else:
            key = own_key(wid, rng.randrange(OWN_KEYS))
        kind = rng.random()
        # v1 DELETE has no version in its answer: only own keys, whose order is known, get it.
        if kind < 0.12:
            write, seed_api = Write(key, None), True
        elif kind < 0.2 and key.startswith("own/"):
            write, seed_api = Write(key, None), False
        elif kind < 0.5:
            write, seed_api = Write(key, value), True
        else:
            write, seed_api = Write(key, value), False
        sent_before_cut = not ledger.cut
        try:
            status, version = await send(session, url, write, seed_api)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ledger.unknown.append(write)
            if not ledger.cut:
                ledger.failures.append(f"{write} failed before the node was stopped: {exc!r}")
            return
        if status in (200, 201, 204):
            ledger.ack(Write(write.key, write.value, version))
            ledger.finished_after_cut += sent_before_cut and ledger.cut
        elif status == 404 and write.value is None:
            pass  # nothing to delete: nothing written
        elif ledger.cut and status == 503:
            ledger.refused_after_cut.append(status)  # refused while stopping: nothing written
            return
        else:
            ledger.failures.append(f"{write} answered {status}")
            return


async def run_load(url: str, tag: str, rng: random.Random, target: int, cut: Any) -> Ledger:
    """Run WRITERS writers against `url`; once `target` writes are acknowledged call `cut()`
    (kill or signal the node) while they are still writing, then wait for every writer to stop."""
    ledger = Ledger(target=target)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=WRITERS * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks = [
            asyncio.create_task(writer(session, url, w, tag, random.Random(rng.random()), ledger))
            for w in range(WRITERS)
        ]
        reached = asyncio.create_task(ledger.reached.wait())
        try:
            await asyncio.wait([reached, *tasks], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            assert ledger.reached.is_set(), (
                f"only {len(ledger.acked)} of {target} writes acknowledged: {ledger.failures[:5]}"
            )
            in_flight = sum(not t.done() for t in tasks)
            ledger.cut = True
            cut()
            await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_TIMEOUT * 2)
        finally:
            for task in (reached, *tasks):
                task.cancel()
            await asyncio.gather(reached, *tasks, return_exceptions=True)
    assert in_flight > 0, "every writer had stopped before the cut: nothing was in flight"
    return ledger


# -- what the node holds afterwards --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    value: str
    version: str


async def read_all(url: str) -> tuple[dict[str, Stored], int]:
    """Every live key by listing (checked against a GET of each), and the digest's count."""
    found: dict[str, Stored] = {}
    async with aiohttp.ClientSession() as session:
        after: str | None = None
        while True:
            params = {"limit": "1000", **({"after": after} if after is not None else {})}
            async with session.get(url + "/v1/kv", params=params) as resp:
                assert resp.status == 200
                page = await resp.json()
            for item in page["items"]:
                found[item["key"]] = Stored(item["value"], item["version"])
            after = page["next"]
            if after is None:
                break
        for key, stored in found.items():
            async with session.get(f"{url}/v1/kv/{key}") as resp:
                assert resp.status == 200, f"{key} is listed but GET answers {resp.status}"
                assert await resp.text() == stored.value
                assert resp.headers["ETag"] == f'"{stored.version}"'
        async with session.get(url + "/v1/digest") as resp:
            count = int((await resp.json())["count"])
    return found, count


def allowed_states(
    key: str, before: Stored | None, ledger: Ledger
) -> tuple[list[Stored | None], str | None]:
    """What `key` may hold after the load, and the version it must not fall below.

    The newest acknowledged write of the key (greatest version; for own keys, the last one its
    writer sent) must be there, unless an unknown write of the same key superseded it.
    """
    acked = [w for w in ledger.acked if w.key == key]
    if key.startswith("own/"):
        newest: Write | None = ledger.own_order[key][-1] if key in ledger.own_order else None
    else:
        newest = max(acked, key=lambda w: w.version or "", default=None)
    floor = None if newest is None else newest.version
    states: list[Stored | None] = []
    if newest is None:
        states.append(before)
    else:
        states.append(None if newest.value is None else Stored(newest.value, newest.version or ""))
    for w in ledger.unknown:
        if w.key == key:
            states.append(None if w.value is None else Stored(w.value, "?"))
    return states, floor


def check_recovered(
    before: dict[str, Stored], ledger: Ledger, after: dict[str, Stored], count: int
) -> list[str]:
    """Every broken promise, one line each."""
    problems: list[str] = list(ledger.failures)
    keys = set(before) | set(after) | {w.key for w in ledger.acked} | {w.key for w in ledger.unknown}
    for key in sorted(keys):
        got = after.get(key)
        states, floor = allowed_states(key, before.get(key), ledger)
        ok = False
        for state in states:
            if state is None or got is None:
                ok = ok or state is got
            elif state.version == "?":  # an unknown write: its value, at a version past the floor
                ok = ok or (got.value == state.value and (floor is None or got.version > floor))
            else:
                ok = ok or got == state
        if not ok:
            problems.append(f"{key}: holds {got}, allowed {states} (newest acknowledged {floor})")
    if count != len(after):
        problems.append(f"/v1/digest count is {count}, the listing has {len(after)} live keys")
    return problems


def opened_at(node: NodeProcess) -> int:
    """The sequence number the node reported when it opened its store at its last start."""
    match = OPENED.search(node.new_log())
    assert match, f"no 'opened store' line in the log:\n{node.new_log()}"
    return int(match.group(1))


def check_versions_increase(acked_before: list[str], ledger: Ledger) -> list[str]:
    """Invariant 5: every version taken after a restart is above every one acknowledged before,
    and the writes of one own key, sent one after another, got increasing versions."""
    problems: list[str] = []
    if acked_before and ledger.versions():
        high, low = max(acked_before), min(ledger.versions())
        if low <= high:
            problems.append(f"version {low} after the restart is not above {high} from before it")
    for key, writes in ledger.own_order.items():
        versions = [w.version for w in writes if w.version is not None]
        if versions != sorted(versions) or len(set(versions)) != len(versions):
            problems.append(f"{key}: versions of successive writes do not increase: {versions}")
    all_versions = ledger.versions()
    if len(set(all_versions)) != len(all_versions):
        problems.append("two acknowledged writes got the same version")
    return problems


# -- clock skew for a node process ---------------------------------------------------------------

SKEW_ENV = "SHAREDDB_TEST_WALL_SKEW_MS"
SITECUSTOMIZE = f"""\
# Loaded at interpreter start through PYTHONPATH: moves this process's wall clock by
# ${SKEW_ENV} milliseconds, as a badly set system clock would. Monotonic time is untouched.
import os
import time

_skew_ns = int(os.environ.get("{SKEW_ENV}", "0")) * 1_000_000
if _skew_ns:
    _time_ns, _time = time.time_ns, time.time
    time.time_ns = lambda: _time_ns() + _skew_ns
    time.time = lambda: _time() + _skew_ns / 1e9
"""


def skewed_env(tmp_path: Path, skew_ms: int) -> dict[str, str]:
    hook = tmp_path / "clock-skew"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, SKEW_ENV: str(skew_ms)}


def log_clock_lag(node: NodeProcess) -> float:
    """How far behind real time the node's log timestamps are, in seconds (its wall clock)."""
    stamp = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", node.new_log(), re.M)
    assert stamp, node.new_log()
    return time.time() - time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S"))


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    process = NodeProcess(tmp_path / "d1", "d1")
    yield process
    process.cleanup()


def sigkill(node: NodeProcess) -> None:
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGKILL)


async def test_acknowledged_writes_survive_kill_9_under_concurrent_load(node: NodeProcess) -> None:
    """Invariants 1, 4 and 5: no acknowledged write is lost (unless a greater version superseded
    it); a deleted key never comes back; the sequence never goes backwards across restarts.

    Three cycles of: a concurrent write load, `kill -9` after a seeded number of acknowledged
    writes (with writes in flight), restart on the same data dir, check every key.
    """
    rng = seeded_rng()
    await asyncio.to_thread(node.start)
    seq = opened_at(node)
    assert seq == 0
    state: dict[str, Stored] = {}
    acked_versions: list[str] = []
    for cycle in range(3):
        target = rng.randrange(200, 800)
        ledger = await run_load(node.url, f"c{cycle}", rng, target, lambda: sigkill(node))
        await asyncio.to_thread(node.proc.wait, 10)  # type: ignore[union-attr]
        assert node.proc is not None
        assert node.proc.returncode == -signal.SIGKILL

        await asyncio.to_thread(node.start)
        after, count = await read_all(node.url)
        problems = check_recovered(state, ledger, after, count)
        problems += check_versions_increase(acked_versions, ledger)
        reopened = opened_at(node)
        # Every acknowledged write took one sequence number; an unknown one at most one more.
        low, high = seq + len(ledger.acked), seq + len(ledger.acked) + len(ledger.unknown)
        if not low <= reopened <= high:
            problems.append(f"reopened at sequence {reopened}, expected {low}..{high}")
        assert not problems, (
            f"cycle {cycle} ({len(ledger.acked)} acknowledged, {len(ledger.unknown)} unknown):\n"
            + "\n".join(problems[:40])
        )
        state, seq = after, reopened
        acked_versions += ledger.versions()


async def test_versions_and_sequence_never_go_backwards_when_the_wall_clock_jumps_back(
    node: NodeProcess, tmp_path: Path
) -> None:
    """Invariant 5: a node's clock and sequence never go backwards, also across restarts.

    The node is killed with `kill -9` under load and restarted with its wall clock one hour behind,
    then again two hours behind: every version it takes afterwards is still above every version it
    acknowledged before, and the sequence it reopens at covers every acknowledged write.
    """
    rng = seeded_rng()
    await asyncio.to_thread(node.start)
    seq = opened_at(node)
    acked_versions: list[str] = []
    for cycle, skew_hours in enumerate((0, -1)):
        if cycle:
            node.env = skewed_env(tmp_path, skew_hours * 3_600_000)
            await asyncio.to_thread(node.start)
            lag = log_clock_lag(node)
            assert lag > -skew_hours * 3600 - 60, f"the clock skew did not apply (lag {lag:.0f}s)"
            reopened = opened_at(node)
            assert reopened >= seq, f"sequence went back from {seq} to {reopened}"
            seq = reopened
        target = rng.randrange(100, 400)
        ledger = await run_load(node.url, f"c{cycle}", rng, target, lambda: sigkill(node))
        await asyncio.to_thread(node.proc.wait, 10)  # type: ignore[union-attr]
        problems = check_versions_increase(acked_versions, ledger)
        assert not problems, f"cycle {cycle}, wall clock {skew_hours}h:\n" + "\n".join(problems)
        seq += len(ledger.acked)
        acked_versions += ledger.versions()
    node.env = skewed_env(tmp_path, -2 * 3_600_000)
    await asyncio.to_thread(node.start)
    assert opened_at(node) >= seq
    async with (
        aiohttp.ClientSession() as session,
        session.put(node.url + "/v1/kv/after-the-jumps", data=b"x") as resp,
    ):
        assert resp.status == 201
        version = (await resp.json())["version"]
    assert version > max(acked_versions)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_clean_shutdown_under_load_finishes_in_flight_writes(
    node: NodeProcess, signum: signal.Signals
) -> None:
    """Invariant 1: no acknowledged write is lost. SIGTERM/SIGINT under a write load: the node
    answers (after committing) the writes in flight, refuses none with 503, closes the store, logs
    that it stopped and exits 0; every write it acknowledged is there after a restart."""
    rng = seeded_rng()
    await asyncio.to_thread(node.start)
    seq = opened_at(node)
    ledger = await run_load(node.url, "t", rng, rng.randrange(200, 600), lambda: node.signal(signum))
    await asyncio.to_thread(
        wait_for,
        lambda: node.proc is not None and node.proc.poll() is not None,
        20,
        "the node to exit after the signal",
        [node],
    )
    assert node.proc is not None
    log = node.new_log()
    assert node.proc.returncode == 0, log
    assert "node d1 stopped" in log, log
    assert "Traceback" not in log, log
    # Writers keep a request in flight all the time: some were being handled at the signal.
    assert ledger.finished_after_cut > 0, "no write in flight at the signal was answered"
    assert not ledger.refused_after_cut, f"writes refused while stopping: {ledger.refused_after_cut}"

    await asyncio.to_thread(node.start)
    after, count = await read_all(node.url)
    problems = check_recovered({}, ledger, after, count)
    reopened = opened_at(node)
    if not seq + len(ledger.acked) <= reopened <= seq + len(ledger.acked) + len(ledger.unknown):
        problems.append(f"reopened at sequence {reopened} after {len(ledger.acked)} acknowledged")
    assert not problems, "\n".join(problems[:40])
