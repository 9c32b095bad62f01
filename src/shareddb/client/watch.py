"""What a watch remembers between connections, shared by the sync and the asyncio iterator.

A watch streams from one node and remembers the last seq it delivered (a watch "from now" starts
at the node's seq when it connects, read from a one-key listing), so a dropped stream resumes on the
same node with `Last-Event-ID` and misses nothing. Seqs belong to one node: when the watch
must move to another node (the first cannot be reached), or the node answers 410 (it cannot
replay from there), it lists the prefix on the node it will watch and delivers what differs from
what it has delivered so far, as events marked `relisted`:

- a put for every listed key whose version is newer than the last one delivered for it (every
  listed key the watch has never delivered, too: it cannot know it was unchanged);
- a delete (version None) for every key last delivered as live that the listing does not show.

It then watches that node from the listing's seq. Versions never go back: an event whose version
is not newer than what was delivered for its key is dropped, so a node that is behind the one the
watch left never makes a key look older.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from httpx_sse import ServerSentEvent

from shareddb.client.calls import Nodes, iso_time, not_shareddb
from shareddb.client.errors import Gone, InvalidAnswer, Unavailable, error_from_answer
from shareddb.client.model import Entry, Event, Page

RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 2.0


class WatchState:
    """Position, delivered versions and reconnect pacing of one watch (no I/O)."""

    def __init__(
        self, prefix: str, key: str | None, since: int | None, *, relist: bool, give_up_after: float
    ) -> None:
        self.prefix = prefix
        self.relist = relist
        self.give_up_after = give_up_after
        self.failing_since: float | None = None
        self.key = key
        self.seq = since
        self.resuming = False  # the next request resumes a stream: Last-Event-ID, not `since`
        self.must_relist = False
        self.delivered: dict[str, str] = {}  # key -> last version delivered (put or delete)
        self.live: set[str] = set()  # keys last delivered as a put
        self.failures = 0

    # -- requests ---------------------------------------------------------------------------------

    def params(self) -> dict[str, str]:
        params = {"key": self.key} if self.key is not None else {"prefix": self.prefix}
        if self.seq is not None and not self.resuming:
            params["since"] = str(self.seq)
        return params

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": str(self.seq)} if self.seq is not None and self.resuming else {}

    def list_prefix(self) -> str:
        return self.key if self.key is not None else self.prefix

    def first_page(self, page: int) -> int:
        """How many keys the first page of a relisting asks for: the watched key, when there is
        one, comes first among the keys it prefixes."""
        return 1 if self.key is not None else page

    def matches(self, key: str) -> bool:
        return key == self.key if self.key is not None else key.startswith(self.prefix)

    # -- what happened ----------------------------------------------------------------------------

    def connected(self) -> None:
        self.failures = 0
        self.failing_since = None

    def failed(self, url: str, nodes: Nodes, *, streaming: bool, why: str, now: float) -> str:
        """After a failure on `url`: the node to connect to next. A stream that broke resumes on
        the same node; a node that could not be reached (or did not answer) is left for the next
        one, unless the watch may not relist. Unavailable once nothing worked for a while."""
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since > self.give_up_after:
            raise Unavailable(0, f"watch: no node could be reached for {self.give_up_after:g}s: {why}")
        if streaming or not self.relist:
            self.dropped()
            return url
        following = nodes.after(url)
        if following == url:
            self.dropped()
        else:
            self.start_over()
        return following

    def start_at(self, seq: int) -> None:
        """A watch from now starts at the node's position when it connects, so that a stream
        that breaks before its first event resumes from there, missing nothing."""
        self.seq = seq
        self.resuming = False

    def dropped(self) -> None:
        """The stream ended or broke: resume on the same node from the last seq delivered."""
        self.resuming = True

    def start_over(self) -> None:
        """The next connection cannot resume from our seq (another node, whose seqs are not this
        one's, or a 410 from this one): list first."""
        self.must_relist = True
        self.resuming = False

    def delay(self) -> float:
        """Seconds to wait before the next attempt after a failure (none for the first retry)."""
        self.failures += 1
        if self.failures == 1:
            return 0.0
        return min(RECONNECT_FIRST_DELAY * 2.0 ** (self.failures - 2), RECONNECT_MAX_DELAY)

    def event(self, sse: ServerSentEvent, url: str) -> Event | None:
        """The event an SSE message stands for, or None when it is nothing new."""
        if sse.event not in ("put", "delete"):
            return None
        try:
            data: Any = json.loads(sse.data)
            key, version, seq = data["key"], data["version"], data["seq"]
            value = data.get("value")
        except (ValueError, KeyError, TypeError):
            raise not_shareddb(url) from None
        if not (isinstance(key, str) and isinstance(version, str) and isinstance(seq, int)):
            raise not_shareddb(url)
        self.seq = seq
        if not self._newer(key, version):
            return None
        live = sse.event == "put"
        self._remember(key, version, live)
        value = value if live and isinstance(value, str) else None
        expires = iso_time(data.get("expires"), url)
        return Event("put" if live else "delete", key, value, version, seq, expires)

    def relisted(self, entries: list[Entry], seq: int) -> list[Event]:
        """The events that bring the caller from what it was delivered to `entries`; the watch
        then goes on from `seq`."""
        events: list[Event] = []
        listed = set()
        for entry in entries:
            if not self.matches(entry.key):
                continue
            listed.add(entry.key)
            if self._newer(entry.key, entry.version):
                self._remember(entry.key, entry.version, True)
                events.append(
                    Event("put", entry.key, entry.value, entry.version, seq, entry.expires, True)
                )
        for key in sorted(self.live - listed):
            self.live.discard(key)
            del self.delivered[key]  # its delete's version is unknown: any later write is news
            events.append(Event("delete", key, None, None, seq, None, True))
        self.seq = seq
        self.must_relist = False
        self.resuming = False
        return events

    def _newer(self, key: str, version: str) -> bool:
        known = self.delivered.get(key)
        return known is None or version > known

    def _remember(self, key: str, version: str, live: bool) -> None:
        self.delivered[key] = version
        if live:
            self.live.add(key)
        else:
            self.live.discard(key)


def stream_check(response: httpx.Response, url: str) -> None:
    """A 200 that is not an event stream is not a shareddb node."""
    if response.headers.get("Content-Type", "").partition(";")[0].strip() != "text/event-stream":
        raise not_shareddb(url)


def refused(state: WatchState, response: httpx.Response, url: str, *, fresh: bool) -> None:
    """A node refused the watch: on 410 list again (unless the watch may not, or just did),
    else raise what the answer stands for."""
    error = error_from_answer(response.status_code, response.content, url)
    if isinstance(error, Gone) and state.relist and not fresh:
        state.start_over()
        return
    raise error


def listing_seq(page: Page, url: str) -> int:
    if page.seq is None:
        raise InvalidAnswer(0, f"{url} answers listings without a seq: it cannot watch", url)
    return page.seq
