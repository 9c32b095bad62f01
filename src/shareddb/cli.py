"""The `shareddb` command line: `serve`, `cluster up`, and a client for every key operation.

How a client command reaches a node (--url, --token, TLS) is in cli_client.py. A failure the user
can act on is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
import orjson

from shareddb.cli_client import Fail, client_tls, connected, token_option, url_option
from shareddb.client import ClientError, Event
from shareddb.config import SETTINGS, Settings
from shareddb.console import INTERRUPTED
from shareddb.record import DEFAULT_MAX_VALUE_BYTES
from shareddb.tokens import Network, TokenError, parse_networks

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _setting(flag: str, **kwargs: Any) -> Callable[[F], F]:
    """A `serve` option whose help and environment variable come from config.SETTINGS."""
    setting = next(s for s in SETTINGS if s.flag == flag)
    return click.option(flag, envvar=setting.env, show_envvar=True, help=setting.meaning, **kwargs)


def _networks(ctx: click.Context, param: click.Parameter, value: str) -> tuple[Network, ...]:
    try:
        return parse_networks(value)
    except TokenError as exc:
        raise click.BadParameter(str(exc).removeprefix("--peer-allow: ")) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shareddb")
def cli() -> None:
    """shareddb: a replicated key-value database for text."""


@cli.command()
@_setting("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@_setting("--host", default="127.0.0.1", show_default=True)
@_setting("--data", type=click.Path(path_type=Path), default=Path("data"), show_default=True)
@_setting("--node-id", default=None)
@_setting("--advertise", default=None)
@_setting("--peers", default="")
@_setting("--join", default=None)
@_setting("--store", default="sqlite", show_default=True)
@_setting("--registry", default=None)
@_setting("--registry-ttl", type=click.FloatRange(min=1), default=15.0, show_default=True)
@_setting("--bus", default=None)
@_setting("--bus-retention", type=click.FloatRange(min=1), default=604_800.0, show_default=True)
@_setting(
    "--max-value-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_VALUE_BYTES,
    show_default=True,
)
@_setting("--token", default=None)
@_setting("--tokens", type=click.Path(path_type=Path, dir_okay=False), default=None)
@_setting("--peer-token", default=None)
@_setting("--peer-allow", default="", callback=_networks)
@_setting("--watch-ping", type=click.FloatRange(min=0.01, max=15), default=15.0, show_default=True)
@_setting("--tls-cert", type=click.Path(path_type=Path), default=None)
@_setting("--tls-key", type=click.Path(path_type=Path), default=None)
@_setting("--tls-ca", type=click.Path(path_type=Path), default=None)
@_setting("--head-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@_setting("--body-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@_setting("--idle-timeout", type=click.FloatRange(min=0.1), default=75.0, show_default=True)
@_setting("--max-connections", type=click.IntRange(min=1), default=None)
@_setting("--workers", type=click.IntRange(1, 64), default=None)
@_setting("--copy-chunk", type=click.IntRange(1, 100_000), default=20_000, show_default=True)
def serve(
    port: int,
    host: str,
    data: Path,
    node_id: str | None,
    advertise: str | None,
    peers: str,
    join: str | None,
    store: str,
    registry: str | None,
    registry_ttl: float,
    bus: str | None,
    bus_retention: float,
    max_value_bytes: int,
    token: str | None,
    tokens: Path | None,
    peer_token: str | None,
    peer_allow: tuple[Network, ...],
    watch_ping: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    head_timeout: float,
    body_timeout: float,
    idle_timeout: float,
    max_connections: int | None,
    workers: int | None,
    copy_chunk: int,
) -> None:
    """Run one node in the foreground until SIGTERM or Ctrl-C."""
    # The node's modules load here, not with the command line: a client command never pays for them.
    from shareddb.node import NodeError
    from shareddb.server import serve as serve_node
    from shareddb.store.sqlite_faults import StoreOpenError

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = Settings(
        port=port,
        host=host,
        data=data,
        node_id=node_id,
        advertise=advertise.rstrip("/") if advertise else None,
        peers=tuple(p.strip().rstrip("/") for p in peers.split(",") if p.strip()),
        join=join.strip().rstrip("/") if join and join.strip() else None,
        store=store,
        registry=registry,
        registry_ttl=registry_ttl,
        bus=bus.strip() if bus and bus.strip() else None,
        bus_retention=bus_retention,
        max_value_bytes=max_value_bytes,
        token=token or None,
        tokens=tokens,
        peer_token=peer_token or None,
        peer_allow=peer_allow,
        watch_ping=watch_ping,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        head_timeout=head_timeout,
        body_timeout=body_timeout,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
        workers=workers,
        copy_chunk=copy_chunk,
    )
    try:
        run(serve_node(settings))
    except (NodeError, StoreOpenError) as exc:
        raise Fail(str(exc)) from None


@cli.group()
def cluster() -> None:
    """Run several local nodes as one cluster."""


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--base-port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--data", type=click.Path(path_type=Path), default=Path("data"), show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--token", envvar="SHAREDDB_TOKEN", default=None, help="Client token for every node.")
@click.option(
    "--peer-token",
    envvar="SHAREDDB_PEER_TOKEN",
    default=None,
    help="Peer token of every node (default: one made for this run).",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Serve HTTPS with mutual TLS between the nodes: make a throwaway CA and a certificate "
    "per node in DATA/tls (prints the CA file clients use).",
)
def cluster_up(
    nodes: int,
    base_port: int,
    data: Path,
    host: str,
    token: str | None,
    peer_token: str | None,
    tls: bool,
) -> None:
    """Start NODES local nodes on consecutive ports (node1, node2, ...); Ctrl-C stops them all."""
    from shareddb.launcher import Launcher

    try:
        launcher = Launcher(nodes, base_port, data, host, token, peer_token, tls=tls)
    except OSError as exc:
        raise Fail(f"cannot write the certificates in {data / 'tls'}: {exc.strerror or exc}") from None
    code = run(launcher.run())
    sys.exit(code)


# -- client commands ------------------------------------------------------------------------------


@cli.command()
@click.argument("key")
@url_option
@token_option
def get(key: str, urls: tuple[str, ...], token: str | None) -> None:
    """Print the value of KEY."""
    with connected(urls, token) as client:
        entry = client.get(key)
    if entry is None:
        raise Fail(f"key {key!r} not found")
    click.echo(entry.value)


@cli.command("set")
@click.argument("key")
@click.argument("value", required=False)
@click.option("--ttl", type=click.IntRange(min=1), default=None, help="Expire after S seconds.")
@click.option("--if-version", default=None, metavar="VER", help="Only if KEY is at version VER.")
@click.option("--if-absent", is_flag=True, help="Only if KEY does not exist.")
@click.option("-w", "copies", type=click.IntRange(min=1), default=None, help="Wait for N copies.")
@url_option
@token_option
def set_(
    key: str,
    value: str | None,
    ttl: int | None,
    if_version: str | None,
    if_absent: bool,
    copies: int | None,
    urls: tuple[str, ...],
    token: str | None,
) -> None:
    """Set KEY to VALUE (read from stdin when VALUE is left out); prints the new version."""
    if if_version is not None and if_absent:
        raise Fail("--if-version and --if-absent exclude each other")
    if value is None:
        try:
            value = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError:
            raise Fail("the value on standard input is not valid UTF-8") from None
    with connected(urls, token) as client:
        written = client.put(key, value, ttl=ttl, if_version=if_version, if_absent=if_absent, w=copies)
    click.echo(written.version)


@cli.command()
@click.argument("key")
@click.option("--if-version", default=None, metavar="VER", help="Only if KEY is at version VER.")
@url_option
@token_option
def rm(key: str, if_version: str | None, urls: tuple[str, ...], token: str | None) -> None:
    """Delete KEY."""
    with connected(urls, token) as client:
        client.delete(key, if_version=if_version)


@cli.command()
@click.argument("prefix", default="")
@click.option("-l", "--long", "long_", is_flag=True, help="Also print version and value.")
@url_option
@token_option
def ls(prefix: str, long_: bool, urls: tuple[str, ...], token: str | None) -> None:
    """List the keys under PREFIX (all keys when left out), in order."""
    with connected(urls, token) as client:
        for entry in client.items(prefix):
            if long_:
                click.echo(f"{entry.key}\t{entry.version}\t{orjson.dumps(entry.value).decode()}")
            else:
                click.echo(entry.key)


@cli.command()
@url_option
@token_option
def dump(urls: tuple[str, ...], token: str | None) -> None:
    """Print every key and value as one JSON object."""
    with connected(urls, token) as client:
        separator = ""
        click.echo("{", nl=False)
        for entry in client.items():
            pair = orjson.dumps(entry.key).decode() + ": " + orjson.dumps(entry.value).decode()
            click.echo(f"{separator}\n  {pair}", nl=False)
            separator = ","
        click.echo("\n}" if separator else "}")


def event_line(event: Event) -> str:
    """`SEQ<TAB>put<TAB>KEY<TAB>VERSION<TAB>VALUE-as-JSON[<TAB>expires ISO]`; a delete shows `-`
    for the value (and for the version when it was learnt from a listing)."""
    value = "-" if event.value is None else orjson.dumps(event.value).decode()
    line = f"{event.seq}\t{event.kind}\t{event.key}\t{event.version or '-'}\t{value}"
    return line + (f"\texpires {event.to_json()['expires']}" if event.expires else "")


@cli.command()
@click.argument("prefix", default="")
@click.option("--json", "as_json", is_flag=True, help="Print each event as one JSON object.")
@click.option("--since", type=click.IntRange(min=0), default=None, help="Replay the changes after SEQ.")
@click.option("-n", "--count", type=click.IntRange(min=1), default=None, help="Exit after N events.")
@url_option
@token_option
def watch(
    prefix: str,
    as_json: bool,
    since: int | None,
    count: int | None,
    urls: tuple[str, ...],
    token: str | None,
) -> None:
    """Print every change to keys under PREFIX (all keys when left out), one line each, until
    Ctrl-C (or N events)."""
    try:
        with connected(urls, token) as client, client.watch(prefix, since=since) as events:
            for seen, event in enumerate(events, start=1):
                click.echo(orjson.dumps(event.to_json()).decode() if as_json else event_line(event))
                if seen == count:
                    return
    except KeyboardInterrupt:
        return


@cli.command()
@click.argument("file", type=click.File("rb"))
@url_option
@token_option
def txn(file: BinaryIO, urls: tuple[str, ...], token: str | None) -> None:
    """Apply the transaction in FILE (`-`: standard input), JSON {"if": [...], "then": [...]};
    prints KEY and new version (`-` for the delete of an absent key) per operation."""
    name = "standard input" if file.name in ("-", "<stdin>") else file.name
    try:
        document = orjson.loads(file.read())
    except orjson.JSONDecodeError as exc:
        raise Fail(f"{name} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise Fail(f'{name} is not a JSON object {{"if": [...], "then": [...]}}')
    with connected(urls, token) as client:
        results = client.txn_json(document)
    for result in results:
        click.echo(f"{result.key}\t{result.version or '-'}")


@cli.command()
@url_option
@token_option
def status(urls: tuple[str, ...], token: str | None) -> None:
    """Show this node and every member it knows: state, lag, last contact, URL."""
    with connected(urls, token) as client:
        view, digest = client.cluster(), client.digest()
    me = view["node"]
    rows = [("NODE", "STATE", "LAG", "LAST CONTACT", "URL")]
    rows.append((f"{me['id']} (this)", me.get("state", "up"), "-", "-", me["url"]))
    for m in view["members"]:
        contact = "never" if m.get("last_contact") is None else f"{m['last_contact']:.1f}s ago"
        rows.append((m["id"] or "?", m["state"], str(m["lag"]), contact, m["url"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    click.echo(f"\n{digest['count']} live keys, digest {digest['digest']}")


@cli.command()
@url_option
@token_option
def verify(urls: tuple[str, ...], token: str | None) -> None:
    """Compare every member's digest; list the keys that differ. Exit 1 unless all agree."""
    from shareddb.verify import verify as run_verify

    try:
        report = run(run_verify(urls, token, client_tls()))
    except ClientError as exc:
        raise Fail(exc.message) from None
    for line in report.lines():
        click.echo(line)
    if not report.agree:
        sys.exit(1)


@cli.command()
@click.option("--node", "node_id", default=None, help="Remove this member instead of the node at --url.")
@url_option
@token_option
def leave(node_id: str | None, urls: tuple[str, ...], token: str | None) -> None:
    """Take the node at --url out of the cluster (or, with --node, another member)."""
    with connected(urls, token) as client:
        client.leave(node_id)
        target = client.url
    click.echo(f"{node_id or 'the node at ' + target} left the cluster")


# -- backup, restore, import ----------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@url_option
@token_option
def backup(file: Path, urls: tuple[str, ...], token: str | None) -> None:
    """Save the data of the node at --url, at one point in time, to FILE (a snapshot). FILE is
    replaced only once the whole snapshot has arrived and checks out. Needs an admin token."""
    from shareddb.backup import TransferError
    from shareddb.backup import backup as save

    try:
        result = save(file, urls, token, client_tls())
    except TransferError as exc:
        raise Fail(str(exc)) from None
    click.echo(result.line(file))


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@url_option
@token_option
def restore(file: Path, urls: tuple[str, ...], token: str | None) -> None:
    """Merge the snapshot in FILE into the node at --url (a newer version there is kept); it
    replicates to the cluster as usual. Nothing is applied unless FILE is a whole snapshot.
    Needs an admin token."""
    from shareddb.backup import TransferError
    from shareddb.backup import restore as send

    try:
        answer = send(file, urls, token, client_tls())
    except TransferError as exc:
        raise Fail(str(exc)) from None
    click.echo(
        f"restored {file}: {answer['applied']} records applied, {answer['skipped']} kept as "
        "they were (the node held the same or a newer version)"
    )


@cli.command("import")
@click.option(
    "--from-redis",
    "source",
    required=True,
    metavar="redis://HOST:PORT/DB",
    help="The Redis database to read (the prototype's data: one string key per key).",
)
@url_option
@token_option
def import_(source: str, urls: tuple[str, ...], token: str | None) -> None:
    """Write every string key of a Redis database into the cluster, each as a new write (with
    its TTL, when it has one). Keys of other types, names that are not valid keys and values that
    are not UTF-8 are left out and counted."""
    from shareddb.backup import TransferError, import_redis

    try:
        result = import_redis(source, urls, token, client_tls())
    except TransferError as exc:
        raise Fail(str(exc)) from None
    click.echo(result.line(source))


def main() -> None:
    """Entry point: click's errors become one line instead of a usage block."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(INTERRUPTED)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"shareddb: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
