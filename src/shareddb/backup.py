"""`shareddb backup`, `restore` and `import --from-redis`: data into and out of a cluster.

Each is a client of a node's HTTP API: backup saves `GET /v1/snapshot` to a file, checking the
snapshot line by line as it arrives and moving the file into place only once it is whole; restore
sends a file to `POST /v1/snapshot`; import reads every string key of a Redis database (how the
prototype kept its data: one Redis string per key, `SET name value`) and writes them through
`POST /v1/txn` in batches. On a terminal each shows a progress bar with counts and rate; elsewhere
it prints only its one-line result. A failure is a `TransferError` with one readable line.
"""

from __future__ import annotations

import contextlib
import math
import os
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from shareddb.client import Client, ClientError, Put, TooLarge
from shareddb.client.calls import describe, node_urls
from shareddb.client.errors import error_from_answer
from shareddb.record import key_error
from shareddb.redis_urls import check_redis_url, redact_url
from shareddb.snapshot import Checker, SnapshotError

Verify = ssl.SSLContext | bool  # how a node's certificate is checked (cli_client.client_tls)

CHUNK = 256 * 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # between two chunks of a snapshot stream
APPLY_TIMEOUT = 3600.0  # for a node to merge a whole snapshot once it has it
IMPORT_BATCH = 500  # keys per transaction
IMPORT_BATCH_BYTES = 4 * 1024 * 1024  # and about this many bytes of values
SCAN_COUNT = 1000


class TransferError(Exception):
    """A backup, restore or import failed; the message is one line for the user."""


# -- progress ---------------------------------------------------------------------------------


class RateColumn(ProgressColumn):
    """Items (or bytes) per second."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("", style="progress.data.speed")
        if self.unit == "B":
            return Text(f"{speed / 1_048_576:,.1f} MiB/s", style="progress.data.speed")
        return Text(f"{speed:,.0f} {self.unit}/s", style="progress.data.speed")


def progress(unit: str, console: Console | None = None) -> Progress:
    """A progress display that shows only on a terminal (stderr), with counts and rate."""
    console = console or Console(stderr=True)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        DownloadColumn(binary_units=True) if unit == "B" else MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


def _http(token: str | None, read_timeout: float, verify: Verify) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(CONNECT_TIMEOUT, read=read_timeout)
    return httpx.Client(headers=headers, timeout=timeout, trust_env=False, verify=verify)


def _one_url(urls: tuple[str, ...] | list[str]) -> str:
    try:
        return node_urls(list(urls))[0]
    except ClientError as exc:
        raise TransferError(exc.message) from None


def _refused(response: httpx.Response, url: str) -> TransferError:
    response.read()
    return TransferError(error_from_answer(response.status_code, response.content, url).message)


# -- backup -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupResult:
    node: str
    seq: int
    count: int
    size: int
    seconds: float

    def line(self, path: Path) -> str:
        return (
            f"saved {self.count} records of node {self.node} (as of its sequence {self.seq}) to "
            f"{path}: {self.size:,} bytes in {self.seconds:.1f}s"
        )


def backup(
    path: Path, urls: tuple[str, ...] | list[str], token: str | None, verify: Verify = True
) -> BackupResult:
    """Save the snapshot of the node at the first of `urls` to `path`, whole or not at all: it
    is written to `path.partial` and checked line by line, then moved into place."""
    url = _one_url(urls)
    partial = path.with_name(path.name + ".partial")
    started = time.monotonic()
    checker = Checker()
    size = 0
    try:
        with (
            _http(token, READ_TIMEOUT, verify) as http,
            http.stream("GET", url + "/v1/snapshot") as response,
            open(partial, "wb") as out,
            progress("records") as bar,
        ):
            if response.status_code != 200:
                raise _refused(response, url)
            task = bar.add_task("backup", total=None)
            for lines in whole_lines(response.iter_bytes(CHUNK)):
                for line in lines:
                    checker.line(line)
                    out.write(line)
                    size += len(line)
                if checker.header is not None:
                    bar.update(task, total=checker.header.count, completed=checker.count)
            summary = checker.finish()
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except httpx.TransportError as exc:
        _remove(partial)
        raise TransferError(f"backup from {url} failed: {describe(exc)}") from None
    except SnapshotError as exc:
        _remove(partial)
        raise TransferError(f"{url} sent no whole snapshot: {exc}") from None
    except OSError as exc:
        _remove(partial)
        raise TransferError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(partial)
        raise
    header = summary.header
    return BackupResult(header.node, header.seq, summary.count, size, time.monotonic() - started)


def whole_lines(chunks: Iterator[bytes]) -> Iterator[list[bytes]]:
    """Whole lines (with their newline) as chunks bring them; what is left at the end (a line
    without its newline) comes last, for the checker to refuse."""
    rest = b""
    for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield [part + b"\n" for part in parts]
    if rest:
        yield [rest]


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# -- restore ----------------------------------------------------------------------------------


def restore(
    path: Path, urls: tuple[str, ...] | list[str], token: str | None, verify: Verify = True
) -> dict[str, int]:
    """Send the snapshot in `path` to the node at the first of `urls`; answers its
    {"applied": N, "skipped": M}."""
    url = _one_url(urls)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the upload
    except OSError as exc:
        raise TransferError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle, progress("B") as bar:
        total = os.fstat(handle.fileno()).st_size
        task = bar.add_task("upload", total=total)
        try:
            with _http(token, APPLY_TIMEOUT, verify) as http:
                response = http.post(
                    url + "/v1/snapshot",
                    content=_upload(handle, lambda n: _sent(bar, task, n, total)),
                    headers={"Content-Type": "application/x-ndjson", "Content-Length": str(total)},
                )
        except httpx.TransportError as exc:
            raise TransferError(f"restore to {url} failed: {describe(exc)}") from None
        except OSError as exc:
            raise TransferError(f"cannot read {path}: {exc.strerror or exc}") from None
    if response.status_code != 200:
        raise _refused(response, url)
    answer = response.json()
    if not isinstance(answer, dict):
        raise TransferError(f"{url} did not answer like a shareddb node")
    return {"applied": int(answer["applied"]), "skipped": int(answer["skipped"])}


def _sent(bar: Progress, task: Any, sent: int, total: int) -> None:
    bar.update(task, completed=sent)
    if sent >= total:
        bar.update(task, description="merging")


def _upload(handle: IO[bytes], report: Callable[[int], None]) -> Iterator[bytes]:
    sent = 0
    while chunk := handle.read(CHUNK):
        yield chunk
        sent += len(chunk)
        report(sent)
    report(sent)


# -- import from Redis ------------------------------------------------------------------------


@dataclass(slots=True)
class ImportResult:
    imported: int = 0
    other_types: Counter[str] = field(default_factory=Counter)
    bad_keys: int = 0
    bad_values: int = 0
    too_large: int = 0
    url: str = ""  # the node that took the writes

    def line(self, source: str) -> str:
        skipped = []
        if self.other_types:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.other_types.items()))
            skipped.append(f"{sum(self.other_types.values())} of other types ({kinds})")
        if self.bad_keys:
            skipped.append(f"{self.bad_keys} whose name is not a valid key")
        if self.bad_values:
            skipped.append(f"{self.bad_values} whose value is not UTF-8 text")
        if self.too_large:
            skipped.append(f"{self.too_large} over the node's --max-value-bytes")
        line = f"imported {self.imported} keys from {redact_url(source)} into {self.url}"
        return line + (f"; skipped {', '.join(skipped)}" if skipped else "")


def import_redis(
    source: str, urls: tuple[str, ...] | list[str], token: str | None, verify: Verify = True
) -> ImportResult:
    """Write every string key of the Redis database at `source` (with its TTL, if it has one)
    into the cluster as a new write; other types are counted and left out."""
    try:
        check_redis_url(source)
    except ValueError as exc:
        raise TransferError(f"bad --from-redis {redact_url(source)!r}: {exc}") from None
    result = ImportResult()
    where = redact_url(source)
    db = redis.Redis.from_url(source, socket_timeout=30, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        with Client(list(urls), token=token, verify=verify) as client, progress("keys") as bar:
            task = bar.add_task("import", total=db.dbsize())
            batch = _Batch(client, result)
            for pairs in _string_keys(db, result):
                for key, value, ttl in pairs:
                    batch.add(key, value, ttl)
                bar.update(task, completed=result.imported + batch.pending_count + _skipped(result))
            batch.flush()
            bar.update(task, completed=result.imported + _skipped(result))
            result.url = client.url
    except redis.RedisError as exc:
        raise TransferError(f"cannot read Redis at {where}: {' '.join(str(exc).split())}") from None
    except ClientError as exc:
        raise TransferError(f"import stopped after {result.imported} keys: {exc.message}") from None
    finally:
        db.close()
    return result


def _skipped(result: ImportResult) -> int:
    return sum(result.other_types.values()) + result.bad_keys + result.bad_values + result.too_large


def _string_keys(db: redis.Redis, result: ImportResult) -> Iterator[list[tuple[str, str, int | None]]]:
    """Per SCAN page: (key, value, ttl seconds or None) of its string keys, counting the rest."""
    cursor = 0
    while True:
        cursor, names = db.scan(cursor, count=SCAN_COUNT)
        if names:
            pipe = db.pipeline(transaction=False)
            for name in names:
                pipe.type(name)
                pipe.pttl(name)
            answers = pipe.execute()
            strings: list[tuple[bytes | str, int]] = []
            for i, name in enumerate(names):
                kind, pttl = _text(answers[2 * i]), int(answers[2 * i + 1])
                if kind == "string":
                    strings.append((name, pttl))
                elif kind != "none":  # "none": gone since the SCAN
                    result.other_types[kind] += 1
            values = db.mget([name for name, _ in strings]) if strings else []
            yield list(_decoded(strings, values, result))
        if int(cursor) == 0:
            return


def _decoded(
    strings: list[tuple[bytes | str, int]], values: list[Any], result: ImportResult
) -> Iterator[tuple[str, str, int | None]]:
    for (name, pttl), raw in zip(strings, values, strict=True):
        if raw is None:
            continue  # deleted since the SCAN
        try:
            key = name if isinstance(name, str) else name.decode("utf-8")
        except UnicodeDecodeError:
            result.bad_keys += 1
            continue
        if key_error(key):
            result.bad_keys += 1
            continue
        try:
            value = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            result.bad_values += 1
            continue
        yield key, value, math.ceil(pttl / 1000) if pttl > 0 else None


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class _Batch:
    """Keys waiting to go in one transaction (each key once: SCAN may name a key twice)."""

    def __init__(self, client: Client, result: ImportResult) -> None:
        self._client = client
        self._result = result
        self._pending: dict[str, Put] = {}
        self._bytes = 0

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def add(self, key: str, value: str, ttl: int | None) -> None:
        if key in self._pending:
            self.flush()
        self._pending[key] = Put(key, value, ttl)
        self._bytes += len(key) + len(value)
        if len(self._pending) >= IMPORT_BATCH or self._bytes >= IMPORT_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        puts, self._pending, self._bytes = list(self._pending.values()), {}, 0
        if not puts:
            return
        try:
            self._client.txn(then=puts)
        except TooLarge:
            # One value (or more) is over the node's limit: the others go one at a time.
            for put in puts:
                try:
                    self._client.put(put.key, put.value, ttl=put.ttl)
                except TooLarge:
                    self._result.too_large += 1
                    continue
                self._result.imported += 1
            return
        self._result.imported += len(puts)
