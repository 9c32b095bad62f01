"""The `shareddb` command line as a user runs it: `serve`, the client commands and `cluster up`.

A failure the user can act on is one readable line on stderr and a non-zero exit, never a
traceback. Independent command runs go in parallel (each pays the interpreter's start-up).
"""

from __future__ import annotations

import fcntl
import http.client
import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.cluster.conftest import StartNode
from tests.harness import NodeProcess, free_port_pair, get_json, run_cli, wait_for

pytestmark = pytest.mark.cluster

# A line the node's logger wrote (see cli.serve): these may come before the error line.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")
SPEC_SERVE_FLAGS = (
    "--port",
    "--host",
    "--data",
    "--node-id",
    "--advertise",
    "--peers",
    "--join",
    "--store",
    "--registry",
    "--registry-ttl",
    "--max-value-bytes",
    "--token",
    "--peer-token",
    "--tokens",
    "--peer-allow",
)
FAIL_TIMEOUT = 60.0  # a refused `serve` exits at once; one that started would hang until this
PARALLEL = 4  # command lines run at once: more only slows each one down on a small machine


# -- running the command line --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One `shareddb` command line, named so a failure message says which one it was."""

    name: str
    args: Sequence[str]
    env: dict[str, str] | None = None
    stdin: str | bytes | None = None


def shareddb(run: Run, timeout: float = FAIL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`run_cli`, with stdin (text, or bytes that need not be UTF-8)."""
    if run.stdin is None:
        return run_cli(*run.args, env=run.env, timeout=timeout)
    raw = subprocess.run(
        [sys.executable, "-m", "shareddb", *run.args],
        input=run.stdin.encode() if isinstance(run.stdin, str) else run.stdin,
        capture_output=True,
        env={**os.environ, **(run.env or {})},
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        raw.args, raw.returncode, raw.stdout.decode("utf-8", "replace"), raw.stderr.decode()
    )


def run_all(runs: Sequence[Run]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run independent command lines at the same time; results by name."""
    with ThreadPoolExecutor(max_workers=min(len(runs), PARALLEL)) as pool:
        return dict(zip((r.name for r in runs), pool.map(shareddb, runs), strict=True))


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"


def error_line(result: subprocess.CompletedProcess[str], *, only_line: bool = True) -> str:
    """The one error line of a failed command. `only_line=False` allows the node's log lines
    before it (a node that opened its store before failing has logged that)."""
    output = describe(result)
    assert result.returncode != 0, output
    assert "Traceback" not in result.stderr + result.stdout, output
    lines = result.stderr.splitlines()
    if not only_line:
        lines = [line for line in lines if not LOG_LINE.match(line)]
    assert len(lines) == 1, f"expected one line on stderr:\n{output}"
    assert lines[0].startswith("shareddb: "), output
    assert len(lines[0]) < 400, output
    return lines[0]


def check_errors(results: dict[str, subprocess.CompletedProcess[str]], says: dict[str, str]) -> None:
    """Every named run failed with one line containing its expected words (case-insensitive)."""
    problems = []
    for name, words in says.items():
        try:
            line = error_line(results[name])
            assert words.lower() in line.lower(), f"the line does not say {words!r}: {line}"
        except AssertionError as exc:
            problems.append(f"[{name}] {exc}")
    assert not problems, "\n\n".join(problems)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- serve: the data dir and its node id ---------------------------------------------------------


def test_data_dir_refuses_a_different_node_id_and_keeps_its_own(start_node: StartNode) -> None:
    node = start_node("alpha")
    assert node.stop() == 0

    refused = shareddb(
        Run("other id", ["serve", "--port", "0", "--data", str(node.data), "--node-id", "beta"])
    )
    line = error_line(refused)
    assert "alpha" in line, line
    assert "beta" in line, line

    node.start()  # the same id
    assert get_json(node.url + "/health") == {"status": "ok", "node": "alpha"}
    assert node.stop() == 0
    node.node_id = None  # no --node-id: the stored one
    node.start()
    assert get_json(node.url + "/health") == {"status": "ok", "node": "alpha"}


def test_a_node_started_without_an_id_keeps_the_one_it_made(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "anon", None)
    try:
        node.start()
        first = get_json(node.url + "/health")
        assert isinstance(first, dict)
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", first["node"])
        assert node.stop() == 0
        node.start()
        assert get_json(node.url + "/health") == first
    finally:
        node.cleanup()


# -- serve: one readable line for everything it refuses ------------------------------------------


def test_serve_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "shareddb.sqlite3").write_bytes(b"this is not an SQLite database" * 100)

    def serve(name: str, *args: str, env: dict[str, str] | None = None) -> Run:
        data = str(tmp_path / name.replace(" ", "-"))
        return Run(name, ["serve", "--port", "0", "--data", data, *args], env)

    runs = [
        Run("unknown flag", ["serve", "--bogus"]),
        serve("port not a number", "--port", "abc"),
        serve("port out of range", "--port", "70000"),
        Run(
            "port from env not a number",
            ["serve", "--data", str(tmp_path / "e")],
            {"SHAREDDB_PORT": "abc"},
        ),
        serve("node id with a space", "--node-id", "a b"),
        serve("unknown store", "--store", "bogus://x"),
        Run(
            "data under a regular file",
            ["serve", "--port", "0", "--data", str(tmp_path / "a-file" / "d")],
        ),
        Run("store is not SQLite", ["serve", "--port", "0", "--data", str(garbage)]),
    ]
    check_errors(
        run_all(runs),
        {
            "unknown flag": "--bogus",
            "port not a number": "--port",
            "port out of range": "--port",
            "port from env not a number": "SHAREDDB_PORT",
            "node id with a space": "node id",
            "unknown store": "--store",
            "data under a regular file": "a-file",
            "store is not SQLite": "store",
        },
    )


def test_serve_refuses_a_port_or_data_dir_in_use_in_one_line(
    start_node: StartNode, tmp_path: Path
) -> None:
    busy = start_node("busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        own_port = taken.getsockname()[1]
        results = run_all(
            [
                Run("node's port", ["serve", "--port", str(busy.port), "--data", str(tmp_path / "p1")]),
                Run("bound port", ["serve", "--port", str(own_port), "--data", str(tmp_path / "p2")]),
                Run("node's data dir", ["serve", "--port", "0", "--data", str(busy.data)]),
            ]
        )
    for name, port in (("node's port", busy.port), ("bound port", own_port)):
        line = error_line(results[name], only_line=False)
        assert str(port) in line, f"[{name}] {line}"
        assert "in use" in line.lower(), f"[{name}] {line}"
    assert "in use" in error_line(results["node's data dir"])
    assert get_json(busy.url + "/health") == {"status": "ok", "node": "busy"}


def test_serve_refuses_an_unreadable_node_id_file_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "d" / "node-id").mkdir(parents=True)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "node-id").write_bytes(b"\xff\xfe\n")
    results = run_all(
        [
            Run("node-id is a directory", ["serve", "--port", "0", "--data", str(tmp_path / "d")]),
            Run("node-id is not UTF-8", ["serve", "--port", "0", "--data", str(tmp_path / "e")]),
        ]
    )
    check_errors(results, {"node-id is a directory": "node-id", "node-id is not UTF-8": "node-id"})


# -- serve: every flag from the environment ------------------------------------------------------


class EnvNode(NodeProcess):
    """A node started with no flags at all: its settings, --data included, come from SHAREDDB_*."""

    def __init__(self, data: Path, env: dict[str, str], *args: str) -> None:
        super().__init__(
            data, env.get("SHAREDDB_NODE_ID"), *args, env={"SHAREDDB_DATA": str(data), **env}
        )

    def command(self) -> list[str]:
        return [sys.executable, "-m", "shareddb", "serve", *self.args]


def put(url: str, key: str, value: str, token: str | None = None) -> int:
    """PUT a value; the HTTP status."""
    request = urllib.request.Request(f"{url}/v1/kv/{key}", data=value.encode(), method="PUT")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def env_nodes() -> Iterator[list[EnvNode]]:
    nodes: list[EnvNode] = []
    yield nodes
    for node in nodes:
        node.cleanup()


def test_every_serve_flag_reads_its_environment_variable(
    tmp_path: Path, env_nodes: list[EnvNode]
) -> None:
    help_text = " ".join(shareddb(Run("help", ["serve", "--help"])).stdout.split())
    missing = [
        flag
        for flag in SPEC_SERVE_FLAGS
        if f"env var: SHAREDDB_{flag[2:].replace('-', '_').upper()}" not in help_text
    ]
    assert not missing, f"serve --help names no environment variable for {missing}:\n{help_text}"

    env = {
        "SHAREDDB_PORT": "0",
        "SHAREDDB_HOST": "127.0.0.1",
        "SHAREDDB_NODE_ID": "from-env",
        "SHAREDDB_MAX_VALUE_BYTES": "16",
        "SHAREDDB_TOKEN": "s3cret",
    }
    node = EnvNode(tmp_path / "env", env)
    env_nodes.append(node)
    node.start()
    assert get_json(node.url + "/health") == {"status": "ok", "node": "from-env"}
    assert (node.data / "shareddb.sqlite3").exists()
    assert put(node.url, "k", "v") == 401
    assert put(node.url, "k", "v", token="wrong") == 401
    assert put(node.url, "k", "x" * 17, token="s3cret") == 413
    assert put(node.url, "k", "x" * 16, token="s3cret") == 201

    # A flag wins over its environment variable.
    env = {"SHAREDDB_PORT": "0", "SHAREDDB_NODE_ID": "from-env", "SHAREDDB_MAX_VALUE_BYTES": "1"}
    node = EnvNode(tmp_path / "flags", env, "--node-id", "from-flag", "--max-value-bytes", "100")
    env_nodes.append(node)
    node.start()
    assert get_json(node.url + "/health") == {"status": "ok", "node": "from-flag"}
    assert put(node.url, "k", "x" * 100) == 201


# -- the entry points ----------------------------------------------------------------------------


def test_module_and_console_script_both_run() -> None:
    script = Path(sys.executable).parent / "shareddb"
    assert script.exists(), f"no console script at {script}"
    version = importlib.metadata.version("shareddb")

    def script_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), *args], capture_output=True, text=True, timeout=FAIL_TIMEOUT, check=False
        )

    with ThreadPoolExecutor(4) as pool:
        module_help = pool.submit(run_cli, "--help")
        module_version = pool.submit(run_cli, "--version")
        script_help = pool.submit(script_run, "--help")
        script_version = pool.submit(script_run, "--version")
        for future in (module_help, script_help):
            result = future.result()
            assert result.returncode == 0, describe(result)
            for command in ("serve", "cluster", "get", "set", "rm", "ls", "dump", "status"):
                assert re.search(rf"^\s+{command}\s", result.stdout, re.M), describe(result)
        for future in (module_version, script_version):
            result = future.result()
            assert result.returncode == 0, describe(result)
            assert version in result.stdout, describe(result)


def test_the_command_line_loads_the_node_only_to_serve() -> None:
    """A client command (`get`, `set`, `watch`, ...) starts without loading the node: its store,
    replication, HTTP server and the Redis and NATS clients load only for `serve` and `cluster
    up`, so each client command starts in about half the time."""
    node_modules = ("shareddb.node", "shareddb.server", "shareddb.store", "aiohttp", "redis", "nats")
    code = f"import sys, shareddb.cli; print(' '.join(m for m in {node_modules!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=FAIL_TIMEOUT, check=False
    )
    assert result.returncode == 0, describe(result)
    assert result.stdout.split() == [], describe(result)


# Loaded by Python at start-up from PYTHONPATH: a Ctrl-C that lands while the command line imports
# click, as one pressed in the first few tenths of a second of any command does.
CTRL_C_WHILE_LOADING = """
import sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "click":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, CtrlC())
"""


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_ctrl_c_while_the_command_line_loads_ends_it_quietly(tmp_path: Path, how: str) -> None:
    """Exit status 130 and nothing printed, as a Ctrl-C later on; it was Python's traceback."""
    (tmp_path / "sitecustomize.py").write_text(CTRL_C_WHILE_LOADING)
    script = Path(sys.executable).with_name("shareddb")
    command = [str(script)] if how == "console script" else [sys.executable, "-m", "shareddb"]
    result = subprocess.run(
        [*command, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=FAIL_TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (130, "", ""), describe(result)


# -- the client commands -------------------------------------------------------------------------


def test_client_commands_against_a_node(start_node: StartNode) -> None:
    node = start_node("c1")
    url = ["--url", node.url]
    odd_key = "dir/with space & ünïcode?=#%+"
    written = run_all(
        [
            Run("set", ["set", "app/a", "alpha", *url]),
            Run("set odd key", ["set", odd_key, "odd", *url]),
            Run("set from stdin", ["set", "app/b", *url], stdin="line 1\nline 2\n"),
            Run("set empty", ["set", "other", "", *url]),
        ]
    )
    for name, result in written.items():
        assert result.returncode == 0, f"[{name}] {describe(result)}"
        version = r"[0-9a-f]{16}-c1~[0-9a-f]{12}\n"
        assert re.fullmatch(version, result.stdout), f"[{name}] prints the version"

    results = run_all(
        [
            Run("get", ["get", "app/a", *url]),
            Run("ls prefix", ["ls", "app/", *url]),
            Run("ls -l", ["ls", "-l", *url]),
            Run("dump", ["dump", *url]),
            Run("status", ["status", *url]),
            Run("get missing", ["get", "nope", *url]),
            Run("rm missing", ["rm", "nope", *url]),
            Run("bad key", ["set", "", "v", *url]),
        ]
    )
    for name in ("get", "ls prefix", "ls -l", "dump", "status"):
        assert results[name].returncode == 0, f"[{name}] {describe(results[name])}"
    assert results["get"].stdout == "alpha\n"
    assert results["ls prefix"].stdout.splitlines() == ["app/a", "app/b"]
    everything = {"app/a": "alpha", "app/b": "line 1\nline 2\n", "other": "", odd_key: "odd"}
    versions = {
        "app/a": written["set"].stdout.strip(),
        "app/b": written["set from stdin"].stdout.strip(),
        "other": written["set empty"].stdout.strip(),
        odd_key: written["set odd key"].stdout.strip(),
    }
    long_lines = [line.split("\t") for line in results["ls -l"].stdout.splitlines()]
    assert long_lines == [
        [k, versions[k], orjson.dumps(everything[k]).decode()] for k in sorted(everything)
    ]
    assert orjson.loads(results["dump"].stdout) == everything
    assert "c1" in results["status"].stdout
    assert node.url in results["status"].stdout
    check_errors(results, {"get missing": "nope", "rm missing": "nope", "bad key": "key"})
    assert results["get missing"].returncode == 1

    removed = shareddb(Run("rm", ["rm", "app/a", *url]))
    assert removed.returncode == 0, describe(removed)
    after = run_all([Run("ls removed", ["ls", "app/", *url])])
    assert after["ls removed"].stdout.splitlines() == ["app/b"]


def test_client_token_from_flag_or_environment(start_node: StartNode) -> None:
    node = start_node("t1", "--token", "s3cret")
    url = ["--url", node.url]
    stored = shareddb(Run("set", ["set", "k", "v", "--token", "s3cret", *url]))
    assert stored.returncode == 0, describe(stored)
    results = run_all(
        [
            Run("flag", ["get", "k", "--token", "s3cret", *url]),
            Run("env", ["get", "k", *url], {"SHAREDDB_TOKEN": "s3cret"}),
            Run("no token", ["get", "k", *url], {"SHAREDDB_TOKEN": ""}),
            Run("wrong token", ["ls", "--token", "nope", *url]),
        ]
    )
    assert results["flag"].stdout == "v\n", describe(results["flag"])
    assert results["env"].stdout == "v\n", describe(results["env"])
    check_errors(results, {"no token": "token", "wrong token": "token"})


def test_client_reports_an_unreachable_node_in_one_line() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    results = run_all(
        [
            Run("closed port get", ["get", "k", "--url", closed]),
            Run("not a url", ["ls", "--url", "not-a-url"]),
        ]
    )
    check_errors(
        results,
        {
            "closed port get": closed,
            "not a url": "not-a-url",
        },
    )


def test_client_reports_a_url_that_is_not_a_shareddb_node_in_one_line(other_server: str) -> None:
    url = ["--url", other_server]
    results = run_all(
        [
            Run("set", ["set", "k", "v", *url]),
            Run("ls", ["ls", *url]),
        ]
    )
    check_errors(results, {name: other_server for name in results})


def test_set_refuses_a_value_that_is_not_utf8_in_one_line(start_node: StartNode) -> None:
    node = start_node("u1")
    results = run_all([Run("stdin", ["set", "k", "--url", node.url], stdin=b"ab\xffcd\n")])
    check_errors(results, {"stdin": "UTF-8"})
    assert get_json(node.url + "/v1/kv") == {"items": [], "next": None, "seq": 0}


# -- cluster up ----------------------------------------------------------------------------------


# Not listening yet. A connection to a port of the ephemeral range where nothing listens can also
# meet itself (TCP's simultaneous open) and read back its own request: http.client's BadStatusLine.
NOT_UP = (OSError, http.client.HTTPException)


def health(url: str) -> object:
    try:
        return get_json(url + "/health", timeout=2)
    except NOT_UP:
        return None


def value_of(url: str, key: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/v1/kv/{key}", timeout=2) as response:
            text: str = response.read().decode()
            return text
    except NOT_UP:
        return None


def unlocked(data: Path) -> bool:
    """No process holds the node's data dir lock (node.py's LOCK file): the node is gone, or it
    never got as far as making its data dir."""
    if not data.exists():
        return True
    with open(data / "LOCK", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


class Launcher:
    """`shareddb cluster up` as a process, its output in a file."""

    def __init__(self, data: Path, base_port: int, log: Path) -> None:
        self.data = data
        self.base_port = base_port
        self.log = log
        args = ["cluster", "up", "--nodes", "2", "--base-port", str(base_port), "--data", str(data)]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shareddb", *args], stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text("utf-8", "replace")

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.base_port + i}" for i in range(2)]

    def up(self) -> bool:
        return all(
            health(u) == {"status": "ok", "node": f"node{i + 1}"} for i, u in enumerate(self.urls())
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_cluster_up_runs_two_nodes_until_ctrl_c(tmp_path: Path) -> None:
    launcher: Launcher | None = None
    try:
        for attempt in range(3):
            data = tmp_path / f"cluster{attempt}"
            current = Launcher(data, free_port_pair(), tmp_path / f"cluster{attempt}.out")
            launcher = current
            wait_for(
                lambda: current.up() or current.proc.poll() is not None,  # noqa: B023
                30,
                "both nodes of cluster up to answer /health",
            )
            if current.proc.poll() is None:
                break
            assert "in use" in current.output(), current.output()  # lost a race for a port: retry
            launcher = None
        assert launcher is not None, "cluster up could not get a free pair of ports in 3 tries"
        node1, node2 = launcher.urls()

        # The nodes replicate to each other: cluster up passed --peers.
        assert put(node1, "hello", "from node1") == 201
        wait_for(
            lambda: value_of(node2, "hello") == "from node1",
            15,
            f"node2 to receive a write made on node1:\n{launcher.output()}",
        )

        launcher.proc.send_signal(signal.SIGINT)
        running = launcher.proc
        wait_for(lambda: running.poll() is not None, 25, f"cluster up to exit:\n{launcher.output()}")
        out = launcher.output()
        assert running.returncode == 0, out
        for index in (1, 2):
            node_lines = [line for line in out.splitlines() if line.startswith(f"node{index} | ")]
            assert any(f"node node{index} listening on" in line for line in node_lines), out
            assert any(f"node node{index} stopped" in line for line in node_lines), out
            assert (launcher.data / f"node{index}" / "shareddb.sqlite3").exists()
            assert unlocked(launcher.data / f"node{index}"), f"node{index} is still running:\n{out}"
        assert all(re.match(r"node[12] \| ", line) for line in out.splitlines() if line), out
        assert "Traceback" not in out, out
        assert health(node1) is None
        assert health(node2) is None
    finally:
        if launcher is not None:
            launcher.stop()


def test_cluster_up_stops_every_node_when_one_cannot_start(tmp_path: Path) -> None:
    base = free_port_pair()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))  # node2's port
        taken.listen()
        launcher = Launcher(tmp_path / "data", base, tmp_path / "cluster.out")
        try:
            running = launcher.proc
            wait_for(lambda: running.poll() is not None, 30, "cluster up to give up")
        finally:
            launcher.stop()
    out = launcher.output()
    assert launcher.proc.returncode != 0, out
    assert "Traceback" not in out, out
    failed = [line for line in out.splitlines() if line.startswith("node2 | shareddb: ")]
    assert len(failed) == 1, out
    assert str(base + 1) in failed[0], out
    assert unlocked(tmp_path / "data" / "node1"), f"node1 is still running:\n{out}"
    assert health(f"http://127.0.0.1:{base}") is None
