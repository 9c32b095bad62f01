"""The Docker files, run as local processes, so they cannot drift from the code.

No Docker engine runs where the tests run, so each compose file is started the way Docker would
start it, one local process per service:

- a service built from the Dockerfile runs `python -m shareddb` followed by the Dockerfile's CMD (or
  the service's `command`), in the Dockerfile's ENV overlaid by the service's `environment`;
- a `redis:7` service is a local redis-server (tests/harness/redis.py) with the same persistence;
- each `hostname:port` of the compose network becomes a loopback port, each named volume a directory:
  `http://node1:8080` becomes the loopback URL of node1's process, `redis://redis1:6379/0` that of
  redis1's server, `/data` node1's volume directory. A URL naming a host and port that no service
  serves fails the test.

Then the nodes must replicate both ways (invariant 2 of DESIGN.md) and the Dockerfile's HEALTHCHECK
must pass against a running node and fail against a stopped one.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from shareddb.config import SETTINGS
from shareddb.store.sqlite import sqlite_path
from shareddb.tokens import parse_networks
from tests.cluster.replication_helpers import put, read_seed, seed_call, wait_all_up, wait_readable
from tests.harness import NodeProcess, RedisServer, free_port, send

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.redis.yml")
SEED_PORTS = {"node1": 8080, "node2": 8081}  # where the seed's nodes answered on the host
REDIS_PORT = 6379
URL = re.compile(r"\b([a-z][a-z0-9+.-]*)://([A-Za-z0-9_.-]+):(\d+)")
SETTING_VARS = {setting.env for setting in SETTINGS}
HEALTH_TIMEOUT = 30.0


# -- the Dockerfile --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dockerfile:
    instructions: list[tuple[str, str]]  # (INSTRUCTION, its arguments), continuation lines joined

    @classmethod
    def read(cls, path: Path = DOCKERFILE) -> Dockerfile:
        instructions: list[tuple[str, str]] = []
        pending = ""
        for raw in path.read_text("utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue  # Docker drops comment lines, also inside a continued instruction
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            name, _, args = (pending + line).partition(" ")
            instructions.append((name.upper(), args.strip()))
            pending = ""
        assert not pending, "the Dockerfile ends inside a continued instruction"
        return cls(instructions)

    def all(self, name: str) -> list[str]:
        return [args for found, args in self.instructions if found == name]

    def last(self, name: str) -> str:
        found = self.all(name)
        assert found, f"the Dockerfile has no {name}"
        return found[-1]

    def exec_form(self, name: str) -> list[str]:
        """The JSON-array (exec) form of ENTRYPOINT or CMD: no shell between Docker and the node,
        so SIGTERM reaches it and shuts it down cleanly."""
        return _exec_form(self.last(name), name)

    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for args in self.all("ENV"):
            for word in shlex.split(args):
                name, equals, value = word.partition("=")
                assert equals, f"ENV {args!r}: use the NAME=VALUE form"
                found[name] = value
        return found

    def healthcheck(self) -> list[str]:
        options, cmd, command = self.last("HEALTHCHECK").partition("CMD ")
        assert cmd, "HEALTHCHECK has no CMD"
        assert all(option.startswith("--") for option in options.split()), options
        return _exec_form(command, "HEALTHCHECK CMD")


def _exec_form(text: str, what: str) -> list[str]:
    try:
        found = json.loads(text)
    except json.JSONDecodeError:
        raise AssertionError(f"{what} {text!r} is not in the exec (JSON array) form") from None
    assert isinstance(found, list), text
    assert all(isinstance(part, str) for part in found), text
    return found


# -- a compose file, as local processes ----------------------------------------------------------------


class ComposeNode(NodeProcess):
    """A node service's process: exactly the command compose would run, rewritten to loopback."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        super().__init__(logs / name, name, env=env)
        self.argv = argv

    def command(self) -> list[str]:
        return self.argv


def environment(spec: dict[str, Any]) -> dict[str, str]:
    raw = spec.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(name): "" if value is None else str(value) for name, value in raw.items()}


def command_of(spec: dict[str, Any], default: list[str]) -> list[str]:
    command = spec.get("command", default)
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def mounts(spec: dict[str, Any], declared: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume, for every volume of the service (all must be named)."""
    found: dict[str, str] = {}
    for entry in spec.get("volumes", []):
        volume, _, target = str(entry).partition(":")
        assert volume in declared, f"{entry!r}: only named volumes, declared under `volumes:`"
        found[target.split(":")[0]] = volume
    return found


def host_of(url: str) -> str:
    """The service a `scheme://host:port...` URL of the compose network names."""
    match = URL.match(url)
    assert match is not None, f"{url!r} is not scheme://HOST:PORT..."
    return match.group(2)


def redis_aof(command: list[str]) -> bool:
    """Whether a redis service's command turns the fsynced append-only file on (as RedisServer(aof=
    True) does) or runs without persistence (as RedisServer() does); anything else is refused."""
    assert command[0] == "redis-server", command
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert set(flags) <= {"--appendonly", "--appendfsync", "--save"}, command
    if flags.get("--appendonly") == "yes":
        assert flags.get("--appendfsync") == "always", command
        return True
    assert flags.get("--appendonly", "no") == "no", command
    return False


class Compose:
    """The services of one compose file, started as local processes in dependency order."""

    def __init__(self, name: str, tmp: Path, dockerfile: Dockerfile) -> None:
        self.name = name
        self.project = yaml.safe_load((ROOT / name).read_text("utf-8"))
        self.services: dict[str, dict[str, Any]] = self.project["services"]
        self.volumes: dict[str, Any] = self.project.get("volumes") or {}
        self.tmp = tmp
        self.dockerfile = dockerfile
        self.address: dict[tuple[str, int], int] = {}  # (host, port) in the network -> loopback port
        self.redis: dict[str, RedisServer] = {}
        self.nodes: dict[str, ComposeNode] = {}
        self.node_env: dict[str, dict[str, str]] = {}  # as in the container, before any rewriting

    def is_node(self, service: str) -> bool:
        return "build" in self.services[service]

    def hostnames(self, service: str) -> set[str]:
        spec = self.services[service]
        return {service, *([spec["hostname"]] if "hostname" in spec else [])}

    def order(self) -> list[str]:
        """Every service after the ones it depends on."""
        done: list[str] = []

        def visit(service: str, path: tuple[str, ...]) -> None:
            assert service not in path, f"dependency cycle {path}"
            if service in done:
                return
            for dependency in self.services[service].get("depends_on") or []:
                assert dependency in self.services, f"{service} depends on unknown {dependency}"
                visit(dependency, (*path, service))
            done.append(service)

        for service in self.services:
            visit(service, ())
        return done

    def start(self) -> None:
        for service in self.services:
            if self.is_node(service):
                env = {**self.dockerfile.env(), **environment(self.services[service])}
                self.node_env[service] = env
                port = free_port()
                for host in self.hostnames(service):
                    self.address[host, int(env["SHAREDDB_PORT"])] = port
        for service in self.order():
            if self.is_node(service):
                self.start_node(service)
            else:
                self.start_redis(service)

    def start_redis(self, service: str) -> None:
        spec = self.services[service]
        assert str(spec.get("image", "")).startswith("redis:7"), f"{service}: only redis:7 is known"
        server = RedisServer(self.tmp / service, aof=redis_aof(command_of(spec, ["redis-server"])))
        self.redis[service] = server.start()
        for host in self.hostnames(service):
            self.address[host, REDIS_PORT] = server.port

    def start_node(self, service: str) -> None:
        spec = self.services[service]
        env = self.node_env[service]
        volumes = {
            target: self.tmp / "volumes" / name for target, name in mounts(spec, self.volumes).items()
        }
        for directory in volumes.values():
            directory.mkdir(parents=True, exist_ok=True)

        def rewrite(value: str) -> str:
            def to_loopback(match: re.Match[str]) -> str:
                host, port = match.group(2), int(match.group(3))
                local = self.address.get((host, port))
                assert local is not None, (
                    f"{self.name}: {service} names {host}:{port}, which no service serves"
                )
                return f"{match.group(1)}://127.0.0.1:{local}"

            value = URL.sub(to_loopback, value)
            for target, directory in volumes.items():
                if value == target or value.startswith(target + "/"):
                    value = str(directory) + value[len(target) :]
            return value

        local_env = {name: rewrite(value) for name, value in env.items()}
        assert env.get("SHAREDDB_HOST") == "0.0.0.0", f"{service} must listen on every interface"
        local_env["SHAREDDB_HOST"] = "127.0.0.1"
        local_env["SHAREDDB_PORT"] = str(self.address[service, int(env["SHAREDDB_PORT"])])
        entrypoint = spec.get("entrypoint", self.dockerfile.exec_form("ENTRYPOINT"))
        assert entrypoint == ["shareddb"], entrypoint
        command = command_of(spec, self.dockerfile.exec_form("CMD"))
        argv = [sys.executable, "-m", "shareddb", *(rewrite(arg) for arg in command)]
        node = ComposeNode(service, argv, local_env, self.tmp / "logs")
        (self.tmp / "logs").mkdir(exist_ok=True)
        self.nodes[service] = node
        node.start()

    def close(self) -> None:
        for node in self.nodes.values():
            node.cleanup()
        for server in self.redis.values():
            server.kill()


@pytest.fixture
def no_shareddb_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container sees only the image's and the service's variables, not the test runner's."""
    for name in list(os.environ):
        if name.startswith("SHAREDDB_"):
            monkeypatch.delenv(name)


@pytest.fixture
def compose_run(tmp_path: Path, no_shareddb_env: None) -> Iterator[list[Compose]]:
    started: list[Compose] = []
    yield started
    for compose in started:
        compose.close()


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's HEALTHCHECK command, run here with the container's environment."""
    command = Dockerfile.read().healthcheck()
    assert command[0] == "python", command  # the slim image has python, not curl
    return subprocess.run(
        [sys.executable, *command[1:]],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=HEALTH_TIMEOUT,
        check=False,
    )


# -- the tests -----------------------------------------------------------------------------------------


def test_the_dockerfile_installs_the_package_and_runs_its_console_script() -> None:
    dockerfile = Dockerfile.read()
    assert dockerfile.last("FROM") == "python:3.11-slim"
    assert any(re.search(r"\bpip install \.(\s|$)", run) for run in dockerfile.all("RUN"))
    assert dockerfile.last("USER") not in ("root", "0"), "the node must not run as root"
    env = dockerfile.env()
    volume = dockerfile.last("VOLUME")
    assert (_exec_form(volume, "VOLUME") if volume.startswith("[") else volume.split()) == [
        env["SHAREDDB_DATA"]
    ]
    assert dockerfile.last("EXPOSE") == env["SHAREDDB_PORT"]
    assert env["SHAREDDB_HOST"] == "0.0.0.0"
    assert set(env) - SETTING_VARS <= {
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
    }

    # ENTRYPOINT is the console script, which is what `python -m shareddb` runs.
    assert dockerfile.exec_form("ENTRYPOINT") == ["shareddb"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    assert scripts["shareddb"] == "shareddb.console:main"
    assert "from shareddb.console import main" in (ROOT / "src/shareddb/__main__.py").read_text("utf-8")
    assert dockerfile.exec_form("CMD")[0] == "serve"

    # What the image copies is in the build context (.dockerignore lets it through).
    copied = [part for args in dockerfile.all("COPY") for part in shlex.split(args)[:-1]]
    assert {"pyproject.toml", "README.md"} <= set(copied)  # hatchling reads the readme
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not ignored(source.rstrip("/"), patterns), f"{source} is left out by .dockerignore"


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path (or a parent of it) decides."""
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            verdict = not negated
    return verdict


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_the_compose_file_configures_its_nodes_through_the_environment_only(name: str) -> None:
    compose = Compose(name, Path("/nonexistent"), Dockerfile.read())
    nodes = [service for service in compose.services if compose.is_node(service)]
    assert nodes == ["node1", "node2"]
    for service in nodes:
        spec = compose.services[service]
        env = {**compose.dockerfile.env(), **environment(spec)}
        assert "command" not in spec, "configure through SHAREDDB_* only"
        assert "entrypoint" not in spec, "configure through SHAREDDB_* only"
        assert set(environment(spec)) <= SETTING_VARS, sorted(set(environment(spec)) - SETTING_VARS)
        assert env["SHAREDDB_NODE_ID"] == service
        port = int(env["SHAREDDB_PORT"])
        assert spec["ports"] == [f"{SEED_PORTS[service]}:{port}"]
        # The others reach it by its service name, inside the compose network.
        assert env["SHAREDDB_ADVERTISE"] == f"http://{service}:{port}"
        # Its data directory is a named volume: it survives the container.
        assert mounts(spec, compose.volumes).get(env["SHAREDDB_DATA"]) == f"{service}-data"
        store = env.get("SHAREDDB_STORE", "sqlite")
        if store != "sqlite":
            # The store's Redis keeps every acknowledged write (appendfsync always).
            redis = compose.services[host_of(store)]
            assert redis_aof(command_of(redis, ["redis-server"])), f"{host_of(store)} is not durable"
    if name == "docker-compose.redis.yml":
        for service in nodes:
            env = environment(compose.services[service])
            assert "SHAREDDB_PEERS" not in env  # they find each other in the registry
            assert "SHAREDDB_JOIN" not in env
            assert env["SHAREDDB_REGISTRY"] == "redis://registry:6379/0"
        stores = {environment(compose.services[s])["SHAREDDB_STORE"] for s in nodes}
        assert stores == {"redis://redis1:6379/0", "redis://redis2:6379/0"}  # one Redis per node


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_the_compose_file_runs_a_replicating_cluster(
    name: str, tmp_path: Path, compose_run: list[Compose]
) -> None:
    """Invariant 2: node1 and node2, started as compose would start them, replicate both ways."""
    compose = Compose(name, tmp_path, Dockerfile.read())
    compose_run.append(compose)
    compose.start()
    node1, node2 = compose.nodes["node1"], compose.nodes["node2"]
    everyone = [node1, node2]
    wait_all_up(everyone)

    written = put(node1, "from/node1", "one")
    assert written.status == 201, written
    wait_readable([node2], "from/node1", ("one", written.json()["version"]), everyone)
    update = seed_call(node2, "update", name="from node2", value="two & more")
    assert update.status == 200, update
    version = update.json()["version"]
    wait_readable([node1], "from node2", ("two & more", version), everyone)
    assert read_seed(node1, "from node2") == ("two & more", version)

    for service in compose.nodes:
        env = compose.node_env[service]
        store = env.get("SHAREDDB_STORE", "sqlite")
        if store == "sqlite":  # the store is in the service's volume
            assert sqlite_path(tmp_path / "volumes" / f"{service}-data").exists()
        else:  # the store is in the service's own Redis
            redis = compose.redis[host_of(store)]
            assert send(redis.port, "EXISTS", "sdb:meta") == b":1", service
        if "SHAREDDB_REGISTRY" in env:
            registry = compose.redis[host_of(env["SHAREDDB_REGISTRY"])]
            assert send(registry.port, "EXISTS", f"shareddb:node:{service}") == b":1", service

    # The image's health check: healthy while the node serves, unhealthy once it is gone.
    local_env = node1.env or {}
    healthy = healthcheck(local_env)
    assert healthy.returncode == 0, healthy.stderr
    assert node1.stop() == 0  # what `docker compose stop` sends: SIGTERM, a clean exit
    unhealthy = healthcheck(local_env)
    assert unhealthy.returncode != 0


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_the_compose_nodes_serve_the_peer_endpoints_only_to_each_other(name: str) -> None:
    """Nodes talk over the compose network, not loopback: each allows exactly the other nodes'
    fixed addresses, which the network's dynamic range (other containers, the published ports'
    gateway) never hands out."""
    compose = Compose(name, Path("/nonexistent"), Dockerfile.read())
    [pool] = compose.project["networks"]["default"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(pool["subnet"]), ipaddress.ip_network(pool["ip_range"])
    nodes = [service for service in compose.services if compose.is_node(service)]
    address = {
        s: ipaddress.ip_address(compose.services[s]["networks"]["default"]["ipv4_address"])
        for s in nodes
    }
    for service in nodes:
        assert address[service] in subnet, service
        assert address[service] not in dynamic, service
        assert address[service] != next(subnet.hosts()), f"{service} has the gateway's address"
        allowed = parse_networks(environment(compose.services[service])["SHAREDDB_PEER_ALLOW"])
        others = {ipaddress.ip_network(address[s]) for s in nodes if s != service}
        assert set(allowed) == others, service
