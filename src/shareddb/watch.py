"""Watchers of a node's changes feed: which change each one gets, and when. No HTTP here.

The feed the watchers read is the store's own changes feed, the one replication serves
(replication/feed.py): there is no second record of changes to keep in step. One `WatchHub` per
node reads each new page of the feed once and hands each change to the live watchers whose key or
prefix it matches, through an index, so a commit costs one feed read whatever the number of
watchers, and a watcher that nothing matches costs nothing. A watcher that is behind (replaying
from `since`, or too slow to keep up) reads the feed itself from its own position, then rejoins
the hub. Design and the reasons for it: docs/design.md, "Watch".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

import orjson

from shareddb.store.base import Change, FeedPage, Store, StoreUnavailable
from shareddb.times import iso_time

log = logging.getLogger("shareddb.watch")

HUB_PAGE = 1000  # changes per hub read
HUB_PAGE_BYTES = 4 * 1024 * 1024
CATCHUP_PAGE = 256  # changes per read of a watcher that is behind: what one such watcher holds
CATCHUP_PAGE_BYTES = 256 * 1024
# What a live watcher may have waiting for its socket before it falls back to reading the feed
# itself. The bytes of an event are shared by every watcher it goes to; this counts them per
# watcher all the same.
MAX_PENDING_EVENTS = 1000
MAX_PENDING_BYTES = 1024 * 1024
HUB_IDLE_WAIT = 5.0  # seconds between checks whether a hub with no live watcher can stop
RETRY_DELAY = 0.5  # after a read the store refused
PING = b": ping\n\n"


def encode_event(change: Change) -> bytes:
    """One Server-Sent Event: `id`, `event` (put or delete) and the JSON `data` line."""
    record = change.record
    data = orjson.dumps(
        {
            "key": record.key,
            "value": record.value,
            "version": record.version,
            "seq": change.seq,
            "expires": iso_time(record.expires),
        }
    )
    kind = b"delete" if record.value is None else b"put"
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (change.seq, kind, data)


def sendable(change: Change, now: int) -> bool:
    """Whether a change goes to watchers. Not one whose key was written again later in the same
    transaction (the later state comes later in the feed); not a value that has expired by this
    node's clock: the reaper's tombstone comes later in the feed too, as the key's one `delete`."""
    record = change.record
    return change.current and (record.value is None or record.live_at(now))


class Gone(Exception):
    """The feed no longer holds every change after the watcher's position (tombstones at or
    below it were purged): the watcher cannot go on exactly."""


class Watcher:
    """One watch: a key or a prefix, and how far the changes it matches have been delivered.

    `position`: every matching change at or below it has been sent to the client (the
    `Last-Event-ID` a reconnecting client would send, or further). While live, the hub pushes
    matching changes above `floor` into `pending`; `stream` writes them out."""

    def __init__(self, hub: WatchHub, prefix: str, exact: bool, position: int) -> None:
        self.hub = hub
        self.prefix = prefix
        self.exact = exact
        self.position = position
        self.floor = position
        self.live = False
        self.closed = False
        self.pending: collections.deque[tuple[int, bytes]] = collections.deque()
        self.pending_bytes = 0
        self.wake = asyncio.Event()
        self.fell_behind = 0  # times it was too slow and went back to reading the feed itself
        # Drops the client's connection: for a shutdown that finds it stuck writing to a client
        # that does not read.
        self.abort: Callable[[], None] | None = None

    def matches(self, key: str) -> bool:
        return key == self.prefix if self.exact else key.startswith(self.prefix)

    def push(self, seq: int, event: bytes) -> bool:
        """The hub hands over one event; False when that was more than the watcher may hold."""
        self.pending.append((seq, event))
        self.pending_bytes += len(event)
        if not self.wake.is_set():
            self.wake.set()
        return len(self.pending) <= MAX_PENDING_EVENTS and self.pending_bytes <= MAX_PENDING_BYTES

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def stream(self, ping_interval: float) -> AsyncGenerator[bytes, None]:
        """What to write to the client, in order: events (several at once when they queued up)
        and pings, at least every `ping_interval` seconds. The caller writes each chunk before
        asking for the next, which is what moves `position` past it. Ends when the watcher is
        closed; raises `Gone` when the feed cannot answer from its position any more."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + ping_interval
        try:
            while not self.closed:
                if loop.time() >= next_ping:
                    yield PING
                    next_ping = loop.time() + ping_interval
                elif not self.live:
                    page = await self._read_behind()
                    if page is None:
                        continue
                    now = self.hub.now()
                    chunk = b"".join(
                        encode_event(c)
                        for c in page.changes
                        if c.seq > self.position and self.matches(c.record.key) and sendable(c, now)
                    )
                    if chunk:
                        yield chunk
                    self.position = max(self.position, page.until)
                elif self.pending:
                    chunk, last = self._take_pending()
                    yield chunk
                    self.position = max(self.position, last)
                else:
                    # Live with nothing waiting: every match up to the hub's position is sent.
                    self.position = max(self.position, self.hub.position)
                    self.wake.clear()
                    remaining = next_ping - loop.time()
                    if remaining > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(remaining):
                                await self.wake.wait()
        finally:
            self.hub.forget(self)

    async def _read_behind(self) -> FeedPage | None:
        """One page of the feed after `position`, read by this watcher itself; None once it has
        caught up with the hub and joined it."""
        hub = self.hub
        store = hub.store
        if store.feed_floor > self.position:
            raise Gone(
                f"changes after seq {self.position} were compacted away while this watch was "
                f"behind; list again and watch from the listing's seq"
            )
        if self.position >= hub.position:
            hub.join(self)
            return None
        try:
            page = await store.changes_since(self.position, CATCHUP_PAGE, CATCHUP_PAGE_BYTES)
        except StoreUnavailable as exc:
            log.warning("watch: cannot read the changes feed: %s", exc)
            await asyncio.sleep(RETRY_DELAY)
            return None
        return page

    def _take_pending(self) -> tuple[bytes, int]:
        """Everything waiting, as one chunk, and the seq of its last event."""
        events = self.pending
        last = events[-1][0]
        chunk = b"".join(event for _, event in events)
        events.clear()
        self.pending_bytes = 0
        return chunk, last


class WatchHub:
    """The node's watchers, and the one reader of the feed that serves the live ones."""

    def __init__(self, store: Store, *, now: Callable[[], int]) -> None:
        self.store = store
        self.now = now  # wall-clock milliseconds: the node's clock, which expires values
        self.position = 0  # the hub has handed out every change up to here
        self._keys: dict[str, set[Watcher]] = {}
        self._prefixes: dict[str, set[Watcher]] = {}
        self._lengths: collections.Counter[int] = collections.Counter()  # prefix length -> count
        self._live = 0
        self._watchers: set[Watcher] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._none_left = asyncio.Event()  # set while no watcher is open
        self._none_left.set()
        self.fell_behind = 0  # times a live watcher was too slow and went back to the feed

    @property
    def watchers(self) -> int:
        """Open watches."""
        return len(self._watchers)

    @property
    def behind(self) -> int:
        """Open watches reading the feed themselves (replaying, or too slow for the hub)."""
        return len(self._watchers) - self._live

    def watch(self, prefix: str, *, exact: bool, since: int) -> Watcher:
        """A new watcher of `prefix` (or of the one key `prefix` when `exact`), to be sent the
        matching changes after `since`. It reads the feed itself until it has caught up."""
        if self._closed:
            raise StoreUnavailable("the node is shutting down")
        watcher = Watcher(self, prefix, exact, since)
        self._watchers.add(watcher)
        self._none_left.clear()
        return watcher

    def join(self, watcher: Watcher) -> None:
        """A watcher that has read the feed up to the hub's position goes live: from here on the
        hub hands it the matching changes above its position."""
        if watcher.closed or watcher.live:
            return
        watcher.live = True
        watcher.floor = watcher.position
        if self._live == 0 and (self._task is None or self._task.done()):
            # The hub was idle, so its position may be old: start where this watcher is.
            self.position = max(self.position, watcher.position)
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._live += 1
        if watcher.exact:
            self._keys.setdefault(watcher.prefix, set()).add(watcher)
        else:
            self._prefixes.setdefault(watcher.prefix, set()).add(watcher)
            self._lengths[len(watcher.prefix)] += 1

    def _leave(self, watcher: Watcher) -> None:
        """The watcher stops being live (it is closed, or must read the feed itself)."""
        if not watcher.live:
            return
        watcher.live = False
        watcher.pending.clear()
        watcher.pending_bytes = 0
        self._live -= 1
        table = self._keys if watcher.exact else self._prefixes
        group = table[watcher.prefix]
        group.discard(watcher)
        if not group:
            del table[watcher.prefix]
        if not watcher.exact:
            length = len(watcher.prefix)
            self._lengths[length] -= 1
            if not self._lengths[length]:
                del self._lengths[length]

    def forget(self, watcher: Watcher) -> None:
        self._leave(watcher)
        self._watchers.discard(watcher)
        if not self._watchers:
            self._none_left.set()

    async def close(self, grace: float) -> None:
        """End every watch and refuse new ones: the node is stopping. Streams end cleanly; one
        still stuck writing to a client that does not read after `grace` seconds is dropped."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for watcher in list(self._watchers):
            self._leave(watcher)
            watcher.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._none_left.wait()
        for watcher in list(self._watchers):
            if watcher.abort is not None:
                watcher.abort()

    def _matching(self, key: str) -> list[Watcher]:
        found: list[Watcher] = []
        if group := self._keys.get(key):
            found.extend(group)
        prefixes = self._prefixes
        for length in self._lengths:
            if length <= len(key) and (group := prefixes.get(key[:length])):
                found.extend(group)
        return found

    def dispatch(self, page: FeedPage) -> None:
        """Hand one page to the live watchers it matches. Synchronous: a watcher never sees the
        hub halfway through a page."""
        slow: list[Watcher] = []
        now = self.now()
        for change in page.changes:
            if not sendable(change, now):
                continue
            targets = self._matching(change.record.key)
            if not targets:
                continue
            event = encode_event(change)
            seq = change.seq
            for watcher in targets:
                if seq > watcher.floor and watcher.live and not watcher.push(seq, event):
                    slow.append(watcher)
                    self._leave(watcher)  # before the next change: it gets nothing more here
        self.position = max(self.position, page.until)
        for watcher in slow:
            # Too slow to keep up: it drops what waited and reads the (compacted) feed itself
            # from what it has sent, so it holds no more than one page, and writers never wait.
            watcher.fell_behind += 1
            self.fell_behind += 1
            watcher.wake.set()

    async def _run(self) -> None:
        """Read each new page of the feed once and fan it out, while any watcher is live."""
        store = self.store
        while self._live and not self._closed:
            try:
                if store.feed_floor > self.position:
                    self._fail_live()
                    continue
                page = await store.changes_since(self.position, HUB_PAGE, HUB_PAGE_BYTES)
                self.dispatch(page)
                if len(page.changes) < HUB_PAGE and page.until >= store.last_seq:
                    await store.wait_for_changes(self.position, HUB_IDLE_WAIT)
            except StoreUnavailable as exc:
                if self._closed:
                    return
                log.warning("watch: cannot read the changes feed: %s", exc)
                await asyncio.sleep(RETRY_DELAY)
            except Exception:  # a bug: the live watchers must not wait for a hub that is gone
                log.exception("watch: the hub failed; its watchers read the feed themselves")
                self._fail_live()
                return

    def _fail_live(self) -> None:
        """The hub cannot go on (it fell behind a purge, so it may have missed changes; or it
        failed): its live watchers go back to reading the feed themselves, where each finds out
        whether it is gone, and rejoin a new hub task."""
        for watcher in [w for group in self._keys.values() for w in group] + [
            w for group in self._prefixes.values() for w in group
        ]:
            self._leave(watcher)
            watcher.wake.set()
