"""TLS for nodes, peers and clients: the SSL contexts made from `--tls-cert/--tls-key/--tls-ca`.

A node with a certificate serves HTTPS only. With a CA as well, peers verify each other against
that CA alone (mutual TLS): the server asks for a client certificate but does not require one, so
browsers and clients without one still connect to the client endpoints, and a peer endpoint can tell
a verified peer (`peer_certified`) from anyone else. A client certificate that does not verify
against the CA fails the handshake. Only the standard library's `ssl` here: clients import this
module, certificates are made in certs.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

log = logging.getLogger("shareddb.tls")

StrPath = str | os.PathLike[str]
REFUSAL_LOG_INTERVAL = 60.0  # seconds: a peer retrying a refused handshake logs once a minute


class TlsError(ValueError):
    """A certificate, key or CA that cannot be used; the message is one line for the user."""


def server_context(cert: StrPath, key: StrPath, ca: StrPath | None = None) -> ssl.SSLContext:
    """The context a node serves HTTPS with; with `ca`, it also verifies client certificates
    against that CA (and nothing else) when a client presents one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(context, cert, key, "--tls-cert", "--tls-key")
    if ca is not None:
        _load_ca(context, ca, "--tls-ca")
        # Optional, not required: client endpoints and browsers connect without a certificate.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.sslobject_class = _RefusalLoggingSSLObject
    return context


def client_context(
    ca: StrPath | None = None,
    cert: StrPath | None = None,
    key: StrPath | None = None,
    *,
    flags: tuple[str, str, str] = ("--ca", "--cert", "--key"),
) -> ssl.SSLContext:
    """A context that verifies servers against `ca` alone (the system's CAs when it is None) and
    presents `cert` (with `key`, or a key in the same file) when one is given. `flags` name the
    options in error messages."""
    ca_flag, cert_flag, key_flag = flags
    if ca is None:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
        _load_ca(context, ca, ca_flag)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        _load_pair(context, cert, key, cert_flag, key_flag)
    elif key is not None:
        raise TlsError(f"{key_flag} needs {cert_flag}: a key without its certificate")
    return context


def node_contexts(
    cert: Path | None, key: Path | None, ca: Path | None
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """A node's (server, peer client) contexts from its settings; (None, None) without TLS. The
    peer client presents the node's own certificate and verifies peers against the CA."""
    if cert is None and key is None:
        if ca is not None:
            raise TlsError("--tls-ca needs --tls-cert and --tls-key: a node serves TLS to use a CA")
        return None, None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise TlsError(f"{given} needs {missing} as well")
    flags = ("--tls-ca", "--tls-cert", "--tls-key")
    return server_context(cert, key, ca), client_context(ca, cert, key, flags=flags)


def check_peer_urls(urls: Iterable[tuple[str, str | None]]) -> None:
    """A node serving TLS talks to its peers over https:// only (they serve it too): a plain
    http:// URL among its flags (`("--peers", url)`, ...) is a mistake to report at start."""
    for flag, url in urls:
        if url and url.startswith("http://"):
            raise TlsError(
                f"{flag} {url} is plain HTTP: a node with --tls-cert reaches its peers, and is "
                "reached, over https://"
            )


class Request(Protocol):
    """What `peer_certified` needs of a request (aiohttp's has it)."""

    @property
    def transport(self) -> asyncio.BaseTransport | None: ...


def peer_certified(request: Request) -> bool:
    """Whether the request came over a connection whose client certificate verified against the
    node's --tls-ca. Only then does the handshake leave a certificate (`getpeercert()` is empty for
    one that was not verified, None for none), so this is False without TLS or without a CA.
    A request a worker forwarded says what the worker's handshake found (forward.py)."""
    forwarded: bool | None = getattr(request, "forwarded_certified", None)
    if forwarded is not None:
        return forwarded
    transport = request.transport
    if transport is None:
        return False
    return bool(transport.get_extra_info("peercert"))


class _Refusals:
    """Handshakes refused for a client certificate that does not verify: the first is logged,
    then at most one line a minute with the count since, so a peer that retries (or a flood of
    bad handshakes) cannot fill the log."""

    def __init__(self) -> None:
        self.last = -REFUSAL_LOG_INTERVAL
        self.unlogged = 0

    def note(self, reason: str) -> None:
        now = time.monotonic()
        if now - self.last < REFUSAL_LOG_INTERVAL:
            self.unlogged += 1
            return
        more = f" ({self.unlogged} more refused since the last report)" if self.unlogged else ""
        log.warning(
            "refused a TLS connection: its client certificate does not verify against --tls-ca (%s)%s",
            reason,
            more,
        )
        self.last, self.unlogged = now, 0


_refusals = _Refusals()


class _RefusalLoggingSSLObject(ssl.SSLObject):
    """The server side of one TLS connection; the event loop drives its handshake. The handshake
    fails without a word (asyncio and uvloop log a failed handshake only in debug mode), so a
    refused client certificate is reported here."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLCertVerificationError as exc:
            _refusals.note(str(exc.verify_message or exc.reason))
            raise


def _load_pair(
    context: ssl.SSLContext, cert: StrPath, key: StrPath | None, cert_flag: str, key_flag: str
) -> None:
    for path, flag in ((cert, cert_flag), (key, key_flag)):
        if path is not None:
            _readable(path, flag)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TlsError(f"{key_flag} {key} is not the key of the certificate in {cert}") from None
        which = f"{cert_flag} {cert}" + (f" or {key_flag} {key}" if key is not None else "")
        raise TlsError(f"{which} is not a PEM certificate and key ({_reason(exc)})") from None
    except OSError as exc:
        raise TlsError(f"cannot read {cert_flag} {cert}: {exc.strerror or exc}") from None


def _load_ca(context: ssl.SSLContext, ca: StrPath, flag: str) -> None:
    _readable(ca, flag)
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TlsError(f"{flag} {ca} holds no PEM CA certificate ({_reason(exc)})") from None
    except OSError as exc:
        raise TlsError(f"cannot read {flag} {ca}: {exc.strerror or exc}") from None


def _readable(path: StrPath, flag: str) -> None:
    """A missing or unreadable file named as such, not as OpenSSL's `[Errno 2]` or `PEM lib`."""
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise TlsError(f"cannot read {flag} {os.fspath(path)}: {exc.strerror or exc}") from None


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason).lower().replace("_", " ") if exc.reason else str(exc)
