"""The Redis store's key layout and its Lua scripts (each runs atomically inside Redis)."""

from __future__ import annotations

from typing import NamedTuple


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

    @classmethod
    def under(cls, prefix: str) -> Keys:
        return cls(*((prefix + name).encode("utf-8") for name in cls._fields))


TYPES = ("hash", "hash", "hash", "zset", "zset", "zset", "hash", "hash", "hash")  # of each _Keys

# Create the store's meta unless it exists; answer the meta either way.
CREATE = """#!lua
if redis.call('HEXISTS', KEYS[1], 'instance') == 0 then
  redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'batch', ARGV[2], 'format', ARGV[3],
             'seq', '0', 'live', '0', 'hlc', '0')
end
return redis.call('HGETALL', KEYS[1])
"""

# One planned batch. ARGV: expected token, new token, seq, live, hlc, then five sections, each a
# count followed by its items: live rows (key, record, version, seq), tombstones (key, version,
# seq), purged keys, digest buckets (bucket, hash), checkpoints (peer, value), node meta (name,
# value). Every check comes before the first write: a script that fails part-way would keep the
# writes it made, so nothing in the write part can fail on a well-formed store.
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
local meta, rec, ver, seq, live, tomb, digest, cp, node = unpack(KEYS)
local n = 6
local function count()  -- the count that starts the next section; n moves to its first item
  n = n + 1
  return tonumber(ARGV[n - 1])
end
for _ = 1, count() do
  local key = ARGV[n]
  redis.call('HSET', rec, key, ARGV[n + 1])
  redis.call('HSET', ver, key, '+' .. ARGV[n + 2])
  redis.call('ZADD', seq, ARGV[n + 3], key)
  redis.call('ZADD', live, 0, key)
  redis.call('ZREM', tomb, key)
  n = n + 4
end
for _ = 1, count() do
  local key = ARGV[n]
  redis.call('HSET', rec, key, ARGV[n + 1])
  redis.call('HSET', ver, key, '-' .. ARGV[n + 1])
  redis.call('ZADD', seq, ARGV[n + 2], key)
  redis.call('ZREM', live, key)
  redis.call('ZADD', tomb, ARGV[n + 2], key)
  n = n + 3
end
for _ = 1, count() do
  local key = ARGV[n]
  redis.call('HDEL', rec, key)
  redis.call('HDEL', ver, key)
  redis.call('ZREM', seq, key)
  redis.call('ZREM', live, key)
  redis.call('ZREM', tomb, key)
  n = n + 1
end
for _, target in ipairs({digest, cp, node}) do
  for _ = 1, count() do
    redis.call('HSET', target, ARGV[n], ARGV[n + 1])
    n = n + 2
  end
end
redis.call('HSET', meta, 'seq', ARGV[3], 'live', ARGV[4], 'hlc', ARGV[5], 'batch', ARGV[2])
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

# Live keys in a lex range with their records, read atomically. KEYS: live, rec.
# ARGV: min, max, count. Answers key, record, key, record, ...
SCAN = """#!lua flags=no-writes
local keys = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for i, key in ipairs(keys) do
  out[2 * i - 1] = key
  out[2 * i] = redis.call('HGET', KEYS[2], key)
end
return out
"""

# The changes feed after a sequence, read atomically with the feed's last sequence. KEYS: seq,
# rec, meta. ARGV: min score (exclusive), count, byte budget (-1: none), per-change overhead.
# Answers: 1 when the read reached the end of the feed, else 0; the last sequence; then key,
# score, record, key, ... Changes stop before the one that would pass the budget (the first is
# always sent), counted as `change_size` counts them, in bytes (with the version).
FEED = """#!lua flags=no-writes
local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0,
                         ARGV[2])
local budget, overhead = tonumber(ARGV[3]), tonumber(ARGV[4])
local ended = #found < 2 * tonumber(ARGV[2])
local out = {0, redis.call('HGET', KEYS[3], 'seq') or '0'}
local total = 0
for i = 1, #found, 2 do
  local record = redis.call('HGET', KEYS[2], found[i])
  total = total + #found[i] + #record + overhead
  if budget >= 0 and total > budget and #out > 2 then
    ended = false
    break
  end
  out[#out + 1] = found[i]
  out[#out + 1] = found[i + 1]
  out[#out + 1] = record
end
if ended then
  out[1] = 1
end
return out
"""
