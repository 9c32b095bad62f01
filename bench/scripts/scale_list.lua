-- GET /v1/kv?prefix=k&limit=100&after=K: a listing page of 100 keys that starts at a random key of
-- the whole data set of bench/scale.py. Script arguments: KEYS (built per request, as in
-- scale_get.lua).

function make_request(_, _)
   return nil
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

local prepare = init
local keys = 1

function init(args)
   keys = tonumber(args[1]) or 10000
   prepare({ "0", "0", "" })
end

function request()
   local first = math.random(0, math.max(keys - 101, 0))
   return wrk.format("GET", string.format("/v1/kv?prefix=k&limit=100&after=k%08d", first))
end
