"""How the client commands of `shareddb` reach a node: `--url` (several for failover), `--token`,
the TLS options of an https:// node (`--ca`, `--cert`, `--key`), and a failed request as one line.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from shareddb.client import DEFAULT_URL, Client, ClientError, PreconditionFailed
from shareddb.tls import TlsError, client_context

F = TypeVar("F", bound=Callable[..., Any])


class Fail(click.ClickException):
    """An error reported as one line: `shareddb: <message>`."""


_url = click.option(
    "--url",
    "urls",
    envvar="SHAREDDB_URL",
    multiple=True,
    default=(DEFAULT_URL,),
    show_default=True,
    help="Node to ask; give it several times (or comma-separated) to fail over to the next.",
)
TLS_META = "shareddb.tls"  # where the TLS options of a client command are kept (click's ctx.meta)


def _keep_tls(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None and param.name is not None:
        ctx.meta.setdefault(TLS_META, {})[param.name] = value


def _tls(flag: str, envvar: str, help: str) -> Callable[[F], F]:
    return click.option(
        flag,
        "tls_" + flag.removeprefix("--"),  # not `key`: that is the KEY argument of get, set, rm
        envvar=envvar,
        type=click.Path(path_type=Path),
        default=None,
        expose_value=False,
        callback=_keep_tls,
        help=help,
    )


def url_option(command: F) -> F:
    """--url, and the TLS options that go with reaching a node over https:// (--ca, --cert,
    --key); `connected` reads the latter."""
    command = _tls("--key", "SHAREDDB_KEY", "Key of --cert, when it is not in the same file.")(command)
    command = _tls("--cert", "SHAREDDB_CERT", "Client certificate (PEM) to present.")(command)
    command = _tls(
        "--ca",
        "SHAREDDB_CA",
        "CA certificate (PEM) to verify https:// nodes with, instead of the system's CAs.",
    )(command)
    return _url(command)


def client_tls() -> ssl.SSLContext | bool:
    """What the client verifies nodes with: the system's CAs, or --ca (and --cert) as given."""
    given = click.get_current_context().meta.get(TLS_META, {})
    if not given:
        return True
    try:
        return client_context(given.get("tls_ca"), given.get("tls_cert"), given.get("tls_key"))
    except TlsError as exc:
        raise Fail(str(exc)) from None


token_option = click.option("--token", envvar="SHAREDDB_TOKEN", default=None, help="Bearer token.")


def failure_line(exc: ClientError) -> str:
    """One line for a failed request; a failed condition names every key and its version."""
    if isinstance(exc, PreconditionFailed):
        held = ", ".join(
            f"{f.key!r} is absent" if f.version is None else f"{f.key!r} is at version {f.version}"
            for f in exc.failed
        )
        return f"precondition failed, nothing written: {held}"
    return exc.message


@contextmanager
def connected(urls: Sequence[str], token: str | None) -> Iterator[Client]:
    """A client of the nodes at `urls`; a failed request becomes one line (`Fail`)."""
    try:
        with Client(urls, token=token, verify=client_tls()) as client:
            yield client
    except ClientError as exc:
        raise Fail(failure_line(exc)) from None
