"""Real `shareddb serve` processes for the replication bench, and every other process it starts
(wrk, the paced load generator, py-spy): all in sessions of their own, all stopped by Fleet.close()
however the bench ends.

A node binds port 0 and names its port in its log line; every wait polls with a deadline and,
when the deadline passes, fails with the end of every node's log.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from bench.replication_http import now

T = TypeVar("T")

LISTENING = re.compile(r"listening on http://([^\s:/]+):(\d+)")
COMPLAINT = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
POLL = 0.02
LOG_TAIL = 25


class BenchError(Exception):
    """A node did not come up, did not converge in time, or a load generator failed."""


def serve_command(data: Path, node_id: str, port: int, args: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        *("-m", "shareddb", "serve", "--host", "127.0.0.1", "--port", str(port)),
        *("--data", str(data), "--node-id", node_id, *args),
    ]


def node_env() -> dict[str, str]:
    """Our environment without SHAREDDB_* settings, so nothing but the flags configures a node."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SHAREDDB_")}


def proc_status(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmHWM, VmRSS), in bytes; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; the fields after its closing parenthesis do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


class Node:
    """One `shareddb serve` process; `start()` again restarts it on the same port and data dir."""

    def __init__(self, name: str, data: Path, args: Sequence[str]) -> None:
        self.name = name
        self.data = data
        self.args = list(args)
        self.log_path = data.parent / f"{name}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0  # now() when the process was spawned
        self.listening_at = 0.0  # now() when its listening line was seen
        self.commands: list[str] = []  # every command line it was started with
        self._log_offset = 0
        self._log_end: int | None = None  # set by retire(): what is logged after is teardown

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"node {self.name} was never started"
        return self.proc.pid

    def command(self) -> list[str]:
        return serve_command(self.data, self.name, self.port, self.args)

    def start(self, timeout: float = START_TIMEOUT) -> Node:
        cmd = self.command()
        self.commands.append(" ".join(cmd))
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.spawned_at = now()
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=node_env(),
                # A Ctrl-C reaches only the bench, which then stops every node in order.
                start_new_session=True,
            )
        match = wait_for(
            lambda: LISTENING.search(self.new_log()), timeout, f"{self.name} to listen", [self]
        )
        self.listening_at = now()
        self.port = int(match.group(2))
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait; SIGKILL if it is still there after `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """`kill -9`: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait()

    def _signal(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def hwm_bytes(self) -> int | None:
        """Peak resident memory of the current process so far (VmHWM)."""
        return proc_status(self.pid, "VmHWM") if self.running() else None

    def rss_bytes(self) -> int | None:
        return proc_status(self.pid, "VmRSS") if self.running() else None

    def anon_bytes(self) -> int | None:
        """Resident memory that is the process's own (heap), without mapped file pages: SQLite's
        mmap of the store counts in VmRSS/VmHWM but is page cache, shared and reclaimable."""
        return proc_status(self.pid, "RssAnon") if self.running() else None

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.pid) if self.running() else None

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

    def new_log(self) -> str:
        """The log written since the last start."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

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


def stop_all(nodes: Sequence[Node]) -> None:
    """SIGTERM every running node at once (each takes a second or two), then wait; SIGKILL what
    is still there after STOP_TIMEOUT."""
    running = [n for n in nodes if n.running()]
    for node in running:
        node._signal(signal.SIGCONT)
        node._signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for node in running:
        assert node.proc is not None
        try:
            node.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.kill()


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    nodes: Sequence[Node] = (),
    interval: float = POLL,
) -> T:
    """Poll `predicate` until it is truthy; on timeout, or when a node exits, fail with the logs."""
    deadline = now() + timeout
    while True:
        result = predicate()
        if result:
            return result
        dead = [n for n in nodes if n.proc is not None and not n.running()]
        if dead or now() > deadline:
            why = (
                f"{', '.join(n.name for n in dead)} exited" if dead else f"timed out after {timeout:g}s"
            )
            tails = "\n".join(
                f"--- end of {n.name}.log ---\n" + "\n".join(n.log().splitlines()[-LOG_TAIL:])
                for n in nodes
            )
            raise BenchError(f"{why} waiting for {what}\n{tails}")
        time.sleep(interval)


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
