"""Records, versions and the last-writer-wins rule. Pure: every store and the replication code use it.

A version is `"%016x-%s~%s" % (hlc, node_id, incarnation)`: fixed-width hex of the 64-bit HLC
timestamp, a dash, the id of the node that took the write, and the incarnation of that node's store
(see `incarnation_of`). The timestamp part has a fixed width (see `make_version`), so comparing two
versions as plain strings orders them by timestamp, then node id: the greater one wins, on every
node, whatever order records arrive in.

The incarnation makes a version name one write for ever (invariant 7): a node that lost its store
and starts again under its old id has a new incarnation, so whatever its clock says it cannot mint a
version its earlier life minted (docs/design.md, "Identity").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

_T = TypeVar("_T")

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def value_class(cls: type[_T]) -> type[_T]:
        """A frozen dataclass with slots, to the type checker; see below."""

else:

    def value_class(cls: type[_T]) -> type[_T]:
        """A dataclass with slots whose instances are never changed once made, made for the
        classes built once per record (`Record`, the feed's `Change`). The type checker holds
        them frozen (`dataclass_transform`, `mypy --strict` refuses any assignment), but at run
        time they are built without `frozen=True`'s guard: it sets each field through
        `object.__setattr__`, and made a `Record` cost 1.3 µs against 0.2 µs, on every record a
        follower decodes, every change the feed serves and every cached GET. Equal ones hash
        alike, as frozen ones do."""
        make: Callable[[type[Any]], type[Any]] = dataclass(slots=True, unsafe_hash=True)
        return make(cls)


MAX_KEY_BYTES = 1024
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The incarnation a version carries: the first hex digits of the store's random instance id.
INCARNATION_CHARS = 12
_INCARNATION_PATTERN = re.compile(r"[0-9a-f]{12}")  # INCARNATION_CHARS hex digits
_VERSION_PATTERN = re.compile(r"[0-9a-f]{16}-[A-Za-z0-9_.-]{1,64}(~[0-9a-f]{12})?")
_HLC_WIDTH = 16


@value_class
class Record:
    """One key's state: a value, or a tombstone (`value is None`) left by a delete."""

    key: str
    value: str | None
    version: str
    # When the value expires: wall-clock milliseconds by the clock of the node that wrote it, or
    # None for never. Part of the write its version names (docs/design.md, "Expiry").
    expires: int | None = None

    @property
    def deleted(self) -> bool:
        return self.value is None

    def live_at(self, now: int) -> bool:
        """Whether the record holds a value at wall-clock millisecond `now` (not deleted, not
        expired)."""
        return self.value is not None and (self.expires is None or self.expires > now)

    @property
    def named_only(self) -> bool:
        """Only the key of a transaction's write that the reader holds already (`named`)."""
        return not self.version


def named(key: str) -> Record:
    """A key of a transaction in a pull answer without its row: the puller holds that row
    already, and only names the key in its own entry of the transaction (store/entries.py)."""
    return Record(key, None, "")


def incarnation_of(instance_id: str) -> str:
    """The incarnation of a node whose store has `instance_id` (random, made with the store).

    A store that is wiped and made again gets a new instance id, hence a new incarnation: the
    same node id with another incarnation is another life of that node, with versions of its own.
    """
    return instance_id[:INCARNATION_CHARS]


def is_incarnation(text: object) -> bool:
    """Whether `text` is an incarnation as `incarnation_of` makes them."""
    return isinstance(text, str) and _INCARNATION_PATTERN.fullmatch(text) is not None


def make_origin(node_id: str, incarnation: str) -> str:
    """What follows the timestamp in the versions a node mints: its id and its incarnation."""
    return f"{node_id}~{incarnation}" if incarnation else node_id


def make_version(hlc: int, origin: str) -> str:
    return f"{hlc:016x}-{origin}"


def version_hlc(version: str) -> int:
    """The HLC timestamp a version carries."""
    return int(version[:_HLC_WIDTH], 16)


def record_hlcs(records: Iterable[Record]) -> list[int]:
    """The HLC timestamps of `records`' versions, leaving out keys only named (no version)."""
    return [version_hlc(r.version) for r in records if r.version]


def version_origin(version: str) -> str:
    """Who minted the version: node id and incarnation (see `make_origin`)."""
    return version[_HLC_WIDTH + 1 :]


def version_node(version: str) -> str:
    """The id of the node that minted the version."""
    return version[_HLC_WIDTH + 1 :].partition("~")[0]


def is_version(text: str) -> bool:
    return _VERSION_PATTERN.fullmatch(text) is not None


def supersedes(new: str, current: str | None) -> bool:
    """The LWW rule: a record replaces the stored one only with a strictly greater version.

    Equal versions name the same write, so applying a record twice changes nothing (idempotent), and
    the result does not depend on the order records arrive in (commutative).
    """
    return current is None or new > current


def key_error(key: str) -> str | None:
    """Why `key` is not a valid key, or None when it is."""
    if not key:
        return "key must not be empty"
    if "\x00" in key:
        return "key must not contain NUL"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "key must be valid UTF-8"
    if size > MAX_KEY_BYTES:
        return f"key is {size} bytes, the limit is {MAX_KEY_BYTES}"
    return None


def value_error(value: str, max_bytes: int) -> str | None:
    """Why `value` cannot be stored, or None when it can. Size is counted in UTF-8 bytes."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "value must be valid UTF-8"
    if size > max_bytes:
        return f"value is {size} bytes, the limit is {max_bytes}"
    return None


def node_id_error(node_id: str) -> str | None:
    if NODE_ID_PATTERN.fullmatch(node_id) is None:
        return "node id must be 1-64 characters of A-Z, a-z, 0-9, '_', '.' and '-'"
    return None
