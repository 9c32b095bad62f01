"""The Redis store's key layout, how batches are encoded for it, and its Lua scripts (each runs
atomically inside Redis); store/redis_replies.py decodes what they answer.

Layout, under a prefix (`sdb:` by default):

    meta    hash  instance, seq, live, hlc, floor, batch (token), format
    rec     hash  key -> HEAD, or HEAD NUL value for a live value (one HGET reads a record), where
                  HEAD is the version, then SOH and the expiry (ms) when the value has one
    ver     hash  key -> "+HEAD" (live) or "-HEAD" (tombstone): what a batch plans from
    seq     zset  key scored by its sequence number, and each transaction entry as NUL + its
                  sequence number, scored by it: the changes feed
    live    zset  live keys, all scored 0: key order for scans (ZRANGEBYLEX, UTF-8 byte order)
    tomb    zset  tombstoned keys scored by sequence: what a purge looks at
    digest  hash  bucket -> 16-byte XOR of its record hashes
    cp      hash  peer -> "seq instance epoch" (checkpoints; no epoch in those of earlier releases)
    node    hash  the node's own metadata (set_meta / get_meta), apart from the store's meta
    exp     zset  keys of live values that expire, scored by their expiry (ms)
    txn     zset  each transaction entry (NUL + its seq) and each key whose row it covers (the
                  feed serves the entry in the row's place), scored by the entry's sequence number
    entry   hash  seq -> a transaction entry's keys, with the sequence each took (store/entries.py)
    loose   set   seqs of entries that may cover no row any more (one of their rows was written
                  again or purged): a purge's batch drops those of them that cover none
    bkt     zset  every key (values and tombstones), scored 0, as its digest bucket in two bytes
                  then the key: one bucket is one lex range (GET /v1/digest?bucket=N)

Keys never contain NUL, so an entry's member cannot be taken for a key. Versions never contain SOH
and format 1 (before expiry and transactions) wrote no expiry, so its records read as they are.
Formats 1 and 2 (before `bkt`) get their `bkt` index built from `ver` when they open, and are then
marked format 3 (an older shareddb, which would not keep `bkt` up, then refuses the store). An
entry body that also holds the records written (as entries were first kept) reads the same: each
change starts with its seq and key.
"""

from __future__ import annotations

from typing import NamedTuple

from shareddb.store.base import bucket_of
from shareddb.store.entries import encode_entry
from shareddb.store.plan import Batch


class Keys(NamedTuple):
    """The store's Redis keys, in the order the WRITE script takes them as KEYS."""

    meta: bytes
    rec: bytes
    ver: bytes
    seq: bytes
    live: bytes
    tomb: bytes
    digest: bytes
    cp: bytes
    node: bytes
    exp: bytes
    txn: bytes
    entry: bytes
    loose: bytes
    bkt: bytes

    @classmethod
    def under(cls, prefix: str) -> Keys:
        return cls(*((prefix + name).encode("utf-8") for name in cls._fields))


TYPES = (  # of each of Keys
    "hash",
    "hash",
    "hash",
    "zset",
    "zset",
    "zset",
    "hash",
    "hash",
    "hash",
    "zset",
    "zset",
    "hash",
    "set",
    "zset",
)

# Create the store's meta unless it exists; answer the meta either way. ARGV: instance, batch
# token, format.
CREATE = """#!lua
if redis.call('HEXISTS', KEYS[1], 'instance') == 0 then
  redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'batch', ARGV[2], 'format', ARGV[3],
             'seq', '0', 'live', '0', 'hlc', '0', 'floor', '0')
end
return redis.call('HGETALL', KEYS[1])
"""

# Mark an older store with the current format once what it lacked was added (so an older
# shareddb, which could not keep up what is written from now on, refuses it). ARGV: the format
# it was, the current one. Answers the meta.
UPGRADE = """#!lua
if redis.call('HGET', KEYS[1], 'format') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'format', ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
"""

# One planned batch. ARGV: expected token, new token, seq, live, hlc, floor, '1' to drop the
# transaction entries that cover no row ('' to keep them), then six sections, each a count
# followed by its items: rows (key, record, version entry, seq, expires or '', covering entry's
# seq or 0, bucket prefix), purged keys (key, bucket prefix), transaction entries (seq, body),
# digest buckets (bucket, hash),
# checkpoints (peer, value), node meta (name, value). Every check comes before the first write: a
# script that fails part-way would keep the writes it made, so nothing in the write part can fail
# on a well-formed store. An entry that may have stopped covering rows (one of its rows was
# written again or purged, or it was written covering none) goes to `loose`: dropping looks at
# those only, after the batch's own writes.
WRITE = (
    """#!lua
local types = {"""
    + ", ".join(f"'{t}'" for t in TYPES)
    + """}
for i, want in ipairs(types) do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. found .. ', not a ' .. want)
  end
end
if redis.call('HGET', KEYS[1], 'batch') ~= ARGV[1] then
  return redis.error_reply('STALE the store was changed by another writer')
end
local meta, rec, ver, seq, live, tomb, digest, cp, node, exp, txn, entry, loose, bkt = unpack(KEYS)
local function uncover(key, covering)  -- the row of `key` is now covered by `covering` (0: none)
  local old = redis.call('ZSCORE', txn, key)
  if old and tonumber(old) ~= tonumber(covering) then
    redis.call('SADD', loose, string.format('%d', tonumber(old)))
  end
end
local n = 8
local function count()  -- the count that starts the next section; n moves to its first item
  n = n + 1
  return tonumber(ARGV[n - 1])
end
for _ = 1, count() do
  local key, at, expires, covering = ARGV[n], ARGV[n + 3], ARGV[n + 4], ARGV[n + 5]
  if redis.call('HSET', rec, key, ARGV[n + 1]) == 1 then  -- a new key: its bucket's too
    redis.call('ZADD', bkt, 0, ARGV[n + 6] .. key)
  end
  redis.call('HSET', ver, key, ARGV[n + 2])
  redis.call('ZADD', seq, at, key)
  if string.byte(ARGV[n + 2], 1) == 43 then  -- '+': a value
    redis.call('ZADD', live, 0, key)
    redis.call('ZREM', tomb, key)
  else
    redis.call('ZREM', live, key)
    redis.call('ZADD', tomb, at, key)
  end
  if expires == '' then
    redis.call('ZREM', exp, key)
  else
    redis.call('ZADD', exp, expires, key)
  end
  uncover(key, covering)
  if covering == '0' then
    redis.call('ZREM', txn, key)
  else
    redis.call('ZADD', txn, covering, key)
  end
  n = n + 7
end
for _ = 1, count() do
  local key = ARGV[n]
  uncover(key, 0)
  redis.call('HDEL', rec, key)
  redis.call('HDEL', ver, key)
  for _, index in ipairs({seq, live, tomb, exp, txn}) do
    redis.call('ZREM', index, key)
  end
  redis.call('ZREM', bkt, ARGV[n + 1] .. key)
  n = n + 2
end
for _ = 1, count() do
  local marker = string.char(0) .. ARGV[n]
  redis.call('HSET', entry, ARGV[n], ARGV[n + 1])
  redis.call('ZADD', seq, ARGV[n], marker)
  redis.call('ZADD', txn, ARGV[n], marker)
  if redis.call('ZCOUNT', txn, ARGV[n], ARGV[n]) < 2 then  -- its marker alone: it covers no row
    redis.call('SADD', loose, ARGV[n])
  end
  n = n + 2
end
for _, target in ipairs({digest, cp, node}) do
  for _ = 1, count() do
    redis.call('HSET', target, ARGV[n], ARGV[n + 1])
    n = n + 2
  end
end
if ARGV[7] == '1' then
  for _, at in ipairs(redis.call('SMEMBERS', loose)) do
    if redis.call('ZCOUNT', txn, at, at) < 2 then
      local marker = string.char(0) .. at
      redis.call('HDEL', entry, at)
      redis.call('ZREM', seq, marker)
      redis.call('ZREM', txn, marker)
    end
  end
  redis.call('DEL', loose)
end
redis.call('HSET', meta, 'seq', ARGV[3], 'live', ARGV[4], 'hlc', ARGV[5], 'floor', ARGV[6],
           'batch', ARGV[2])
return 1
"""
)

# Settle a batch whose answer was lost. ARGV: the token before it, its token, a fence token. It
# must run when the write could not (Redis out of memory): it writes one short field.
FENCE = """#!lua flags=allow-oom
local current = redis.call('HGET', KEYS[1], 'batch')
if current == ARGV[2] then
  return 'committed'
end
if current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'batch', ARGV[3])
  return 'fenced'
end
return 'foreign'
"""

# Members of a zset in a score range with their scores and records, read atomically.
# KEYS: zset, rec. ARGV: min, max, offset, count. Answers key, score, record, key, ...
BY_SCORE = """#!lua flags=no-writes
local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT',
                         ARGV[3], ARGV[4])
local out = {}
for i = 1, #found, 2 do
  out[#out + 1] = found[i]
  out[#out + 1] = found[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], found[i])
end
return out
"""

# Live keys in a lex range with their records, leaving out values expired by `now`, read
# atomically: up to `count` of them, reading on past expired ones so a page is full when more
# exist. KEYS: live, rec, exp. ARGV: min, max, count, now. Answers key, record, key, record, ...
SCAN = """#!lua flags=no-writes
local low, limit, now = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
while #out < 2 * limit do
  local want = math.max(limit - #out / 2, 32)
  local keys = redis.call('ZRANGEBYLEX', KEYS[1], low, ARGV[2], 'LIMIT', 0, want)
  for _, key in ipairs(keys) do
    local expires = redis.call('ZSCORE', KEYS[3], key)
    if not expires or tonumber(expires) > now then
      out[#out + 1] = key
      out[#out + 1] = redis.call('HGET', KEYS[2], key)
      if #out >= 2 * limit then
        return out
      end
    end
  end
  if #keys < want then
    return out
  end
  low = '(' .. keys[#keys]
end
return out
"""

# The changes feed after a sequence, read atomically with the feed's last sequence. KEYS: seq, rec,
# meta, txn, entry. ARGV: min score (exclusive), count, byte budget (-1: none), per-change
# overhead, how far the reader holds the feed (its position, or less). The feed is the `seq` zset:
# rows, less those a transaction entry covers (in `txn`), and each entry as NUL + its seq, served
# whole (one of `count`; never split by the budget): the current rows of its keys, and of the keys
# of every entry that covers one of those rows, and so on (store/plan.py), each key once; a change
# is known when the feed serves its row at or below that (entries.serve_entry says why), and
# current when it is the entry's own and its key's row still holds the sequence the entry gave it.
# Answers: 1 when the read reached the end of the feed, else 0; the last sequence; then for each
# unit: member, score, and the record (a row) or the changes (an entry: key, seq, record, '1'
# current, '0' not, 'k' known, key, ...). Units stop before the one that would pass the budget (the
# first is always sent), counted as `change_size` counts them, in bytes (with the version). Only an
# entry and the rows it covers share a score, and NUL sorts before every key: resuming after a
# score loses nothing.
FEED = """#!lua flags=no-writes
local seqs, rec, meta, txn, entry = unpack(KEYS)
local low, limit = ARGV[1], tonumber(ARGV[2])
local budget, overhead, since = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function serve(at)  -- the changes of the entry at `at`, and their size
  local out, size = {}, 0
  local worklist, seen, served = {at}, {[at] = true}, {}
  local w = 1
  while w <= #worklist do
    local this = worklist[w]
    w = w + 1
    local body = redis.call('HGET', entry, string.format('%d', this))
    for _, item in ipairs(body and cjson.decode(body) or {}) do
      local given, key = tonumber(item[1]), item[2]
      local record = not served[key] and redis.call('HGET', rec, key)
      served[key] = true
      if record then
        local held = redis.call('ZSCORE', seqs, key)
        local covering = tonumber(redis.call('ZSCORE', txn, key) or '0')
        local known = (covering ~= 0 and covering or tonumber(held)) <= since
        local current = this == at and given ~= 0 and tonumber(held) == given
        out[#out + 1] = key
        out[#out + 1] = held
        out[#out + 1] = record
        out[#out + 1] = known and 'k' or (current and '1' or '0')
        size = size + #key + #record + overhead
        if covering ~= 0 and not known and not seen[covering] then
          seen[covering] = true
          worklist[#worklist + 1] = covering
        end
      end
    end
  end
  return out, size
end
local out = {0, redis.call('HGET', meta, 'seq') or '0'}
local total, taken, ended = 0, 0, false
while taken < limit do
  local want = limit - taken
  local found = redis.call('ZRANGEBYSCORE', seqs, low, '+inf', 'WITHSCORES', 'LIMIT', 0, want)
  for i = 1, #found, 2 do
    local member = found[i]
    local body, size = nil, 0
    if string.byte(member, 1) == 0 then
      body, size = serve(tonumber(string.sub(member, 2)))
    elseif not redis.call('ZSCORE', txn, member) then
      body = redis.call('HGET', rec, member)
      size = #member + #body + overhead
    end
    if body then
      total = total + size
      if budget >= 0 and total > budget and #out > 2 then
        return out
      end
      out[#out + 1] = member
      out[#out + 1] = found[i + 1]
      out[#out + 1] = body
      taken = taken + 1
    end
  end
  if #found < 2 * want then
    ended = true
    break
  end
  low = '(' .. found[#found]
end
if ended and taken < limit then
  out[1] = 1
end
return out
"""


def write_args(before: str, token: str, batch: Batch) -> list[object]:
    """The ARGV of the WRITE script: `batch`, written when the store's token is `before`."""
    tally = batch.tally
    args: list[object] = [before, token, tally.seq, tally.live, tally.clock_high]
    args += (tally.floor, "1" if batch.drop_uncovered else "", len(batch.rows))
    for key, value, version, seq, expires, txn in batch.rows:
        head = version.encode("utf-8")
        if expires is not None:
            head += b"\1%d" % expires
        prefix = bucket_prefix(bucket_of(key))
        if value is None:
            args += (key.encode("utf-8"), head, b"-" + head, seq, b"", txn, prefix)
        else:
            record = head + b"\0" + value.encode("utf-8")
            args += (
                key.encode("utf-8"),
                record,
                b"+" + head,
                seq,
                b"" if expires is None else expires,
                txn,
                prefix,
            )
    args.append(len(batch.purged))
    for key in batch.purged:
        args += (key.encode("utf-8"), bucket_prefix(bucket_of(key)))
    args.append(len(batch.entries))
    for seq, changes in batch.entries:
        args += (seq, encode_entry(changes))
    args.append(len(batch.buckets))
    for bucket, digest in batch.buckets.items():
        args += (bucket, digest.to_bytes(16, "big"))
    checkpoints = {
        cp.peer: f"{cp.seq} {cp.instance} {cp.epoch}" if cp.epoch else f"{cp.seq} {cp.instance}"
        for cp in batch.checkpoints
    }
    for section in (checkpoints, batch.meta):
        args.append(len(section))
        for name, text in section.items():
            args += (name.encode("utf-8"), text.encode("utf-8"))
    return args


def bucket_prefix(bucket: int) -> bytes:
    """What starts the members of one digest bucket in the `bkt` index: its number in two bytes,
    big-endian, so each bucket is one lex range of the index."""
    return bucket.to_bytes(2, "big")


def bucket_member(key: bytes) -> bytes:
    """The member of the `bkt` index that stands for `key` (UTF-8)."""
    return bucket_prefix(bucket_of(key.decode("utf-8"))) + key


# One page of a digest bucket: members of the `bkt` index in a lex range, with the version
# entry of each key, read atomically. KEYS: bkt, ver. ARGV: min, max, count. Answers member,
# version entry, member, ...
BUCKET = """#!lua flags=no-writes
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])) do
  out[#out + 1] = member
  out[#out + 1] = redis.call('HGET', KEYS[2], string.sub(member, 3)) or ''
end
return out
"""


# The start of a snapshot read (GET /v1/snapshot): copies of the records and of the feed index,
# made in one atomic step, so what is read from them afterwards is one point in time however long
# the read takes. KEYS: meta, rec, seq, the copy of rec, the copy of seq. ARGV: seconds the
# copies live unless deleted first. Answers the store's seq and how many records were copied.
SNAPSHOT_BEGIN = """#!lua
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('COPY', KEYS[2], KEYS[4])
redis.call('COPY', KEYS[3], KEYS[5])
redis.call('EXPIRE', KEYS[4], ARGV[1])
redis.call('EXPIRE', KEYS[5], ARGV[1])
return {redis.call('HGET', KEYS[1], 'seq') or '0', redis.call('HLEN', KEYS[4])}
"""

# The next chunk of a snapshot read, from its copies: members of the copied feed index scored
# above ARGV[1] (an exclusive bound like "(12"), in order, at most ARGV[2] of them and about
# ARGV[3] bytes (at least one record), skipping transaction entries (a member starting with
# NUL). KEYS: the copy of seq, the copy of rec. ARGV[4]: the bytes a record costs beyond its key
# and value. Answers the score of the last member looked at ('' when there was none), then key,
# record, key, record, ...
SNAPSHOT_PAGE = """#!lua flags=no-writes
local limit, budget, overhead = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {''}
local size, taken, low = 0, 0, ARGV[1]
while taken < limit do
  local found = redis.call('ZRANGE', KEYS[1], low, '+inf', 'BYSCORE', 'LIMIT', 0,
                           limit - taken, 'WITHSCORES')
  if #found == 0 then break end
  for i = 1, #found, 2 do
    local member = found[i]
    if string.byte(member, 1) ~= 0 then
      local record = redis.call('HGET', KEYS[2], member)
      if record then
        size = size + #member + #record + overhead
        if taken > 0 and size > budget then return out end
        out[#out + 1] = member
        out[#out + 1] = record
        taken = taken + 1
      end
    end
    out[1] = found[i + 1]
    low = '(' .. found[i + 1]
  end
end
return out
"""
