"""Real `shareddb serve` processes for the replication bench, and every other process it starts
(wrk, the paced load generator, py-spy): all in sessions of their own, all stopped by Fleet.close()
however the bench ends.

Nodes are the harness's (tests/harness): a node binds port 0 and names its port in its log line;
every wait polls with a deadline and, when the deadline passes, fails with the end of every log.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from tests.harness import NodeProcess, stop_all
from tests.harness import wait_for as harness_wait_for

T = TypeVar("T")

COMPLAINT = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
POLL = 0.02
LOG_TAIL = 25


class BenchError(Exception):
    """A node did not come up, did not converge in time, or a load generator failed."""


def http_json(url: str, timeout: float = 5.0) -> Any:
    """The JSON body of a GET, or None when the node cannot be reached or does not answer 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return orjson.loads(response.read())
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError):
        return None


@dataclass(frozen=True, slots=True)
class Digest:
    count: int
    digest: str


class Node(NodeProcess):
    """One `shareddb serve` process of the harness, in a session of its own, with what the bench
    reads from it: digests, members, and the warnings it logged while it was measured."""

    def __init__(self, name: str, data: Path, args: Sequence[str]) -> None:
        super().__init__(data, name, *args, session=True)
        self.name = name
        self._log_end: int | None = None  # set by retire(): what is logged after is teardown

    def start(self, timeout: float = START_TIMEOUT) -> Node:
        try:
            super().start(timeout)
        except AssertionError as exc:
            raise BenchError(str(exc)) from None
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait; SIGKILL if it is still there after `timeout`."""
        try:
            return super().stop(timeout)
        except subprocess.TimeoutExpired:
            self.cleanup()
            return -signal.SIGKILL

    def digest(self) -> Digest | None:
        data = http_json(self.url + "/v1/digest")
        if not isinstance(data, dict):
            return None
        return Digest(int(data["count"]), str(data["digest"]))

    def cluster(self) -> dict[str, Any] | None:
        data = http_json(self.url + "/v1/cluster")
        return data if isinstance(data, dict) else None

    def members_up(self) -> int:
        view = self.cluster()
        if view is None:
            return 0
        return sum(1 for m in view["members"] if m.get("state") == "up")

    def mark_end(self) -> None:
        """The measurement is over: lines logged from here on (peers going away) are not news."""
        with contextlib.suppress(OSError):
            self._log_end = self.log_path.stat().st_size

    def complaints(self) -> list[str]:
        """Every WARNING/ERROR/traceback line of its log, over all its starts, up to mark_end()."""
        try:
            with open(self.log_path, "rb") as log:
                text = log.read(self._log_end if self._log_end is not None else -1)
        except FileNotFoundError:
            return []
        lines = text.decode("utf-8", "replace").splitlines()
        return [line for line in lines if COMPLAINT.search(line)]


class Fleet:
    """Every process one bench run starts. close() stops them all, even after an error or Ctrl-C."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[Node] = []
        self.helpers: list[subprocess.Popen[Any]] = []

    def node(self, name: str, *args: str) -> Node:
        """A node with its data dir under the run's root, registered before it starts, so a failure
        half-way through its start still gets it stopped."""
        if any(n.name == name for n in self.nodes):
            raise ValueError(f"node {name} exists already in this run")
        node = Node(name, self.root / name, args)
        self.nodes.append(node)
        return node

    def start(self, name: str, *args: str) -> Node:
        return self.node(name, *args).start()

    def spawn(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """A helper process (wrk, load generator, py-spy), in a session of its own."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, start_new_session=True, **kwargs
        )
        self.helpers.append(proc)
        return proc

    def retire(self, nodes: Sequence[Node]) -> None:
        """Stop nodes a scenario is done with, so the next one runs on a quiet machine."""
        for node in nodes:
            node.mark_end()
        stop_all(nodes)

    def close(self) -> None:
        for helper in self.helpers:
            if helper.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(helper.pid, signal.SIGKILL)
                helper.wait()
        stop_all(self.nodes)


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    nodes: Sequence[Node] = (),
    interval: float = POLL,
) -> T:
    """The harness's wait, failing as soon as a node exits, as a BenchError with each log's end."""
    try:
        return harness_wait_for(
            predicate, timeout, what, nodes, interval, stop_on_exit=True, log_lines=LOG_TAIL
        )
    except AssertionError as exc:
        raise BenchError(str(exc)) from None


def converged(nodes: Sequence[Node]) -> Digest | None:
    """The common digest when every node answers the same one, else None."""
    digests = [n.digest() for n in nodes]
    first = digests[0]
    if first is None or any(d != first for d in digests[1:]):
        return None
    return first


def wait_converged(nodes: Sequence[Node], timeout: float, interval: float = POLL) -> Digest:
    return wait_for(
        lambda: converged(nodes),
        timeout,
        f"digests of {', '.join(n.name for n in nodes)} to be equal",
        nodes,
        interval,
    )


def wait_members_up(nodes: Sequence[Node], timeout: float) -> None:
    """Every node sees every other one as `up`."""
    want = len(nodes) - 1
    wait_for(
        lambda: all(n.members_up() >= want for n in nodes),
        timeout,
        "every node to see the others up",
        nodes,
        0.1,
    )


class Profiler:
    """py-spy recording one node for the length of a phase (`--profile`); the raw (collapsed
    stacks) output goes to `path`, readable with any flame-graph tool or plain grep/sort."""

    def __init__(self, fleet: Fleet, node: Node, path: Path) -> None:
        self.path = path
        self.command: list[str] = []
        self._proc: subprocess.Popen[Any] | None = None
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.command = [
            *(str(spy), "record", "--pid", str(node.pid), "--rate", "100", "--threads"),
            *("--format", "raw", "--output", str(path), "--nonblocking"),
        ]
        self._proc = fleet.spawn(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> str | None:
        """Stop recording; py-spy writes its output on SIGINT. Returns the file, if one was written."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        return str(self.path) if self.path.exists() else None
