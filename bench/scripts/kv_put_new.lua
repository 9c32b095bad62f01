-- v1 write of a key the store has never held: PUT /v1/kv/new-<tag>-<n> with the value as a text
-- body. Each request names a fresh key (a per-thread tag, then a counter), so the store grows by
-- one key per request: inserts into a growing table, not overwrites of the preloaded keys.

function make_request(key, value)
   -- Prepared like every scenario's requests, for the same Lua cost per request; the values are
   -- what `request` below reuses.
   local headers = { ["Content-Type"] = "text/plain; charset=utf-8" }
   return { key = key, value = value, headers = headers }
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

local tag = nil
local count = 0

function request()
   if tag == nil then
      tag = string.format("%x%x", os.time(), math.random(0x7fffffff))
   end
   count = count + 1
   local built = prepared_at(count)
   return wrk.format("PUT", "/v1/kv/new-" .. tag .. "-" .. count, built.headers, built.value)
end
