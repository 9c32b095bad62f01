-- GET /v1/kv/{key} of a random key out of the whole data set of bench/scale.py (k00000000 ...).
-- Script arguments: KEYS. Each request is built when it is sent: preparing every request once,
-- as common.lua does for the 10k-key scenarios, would not fit in memory for ten million keys.

function make_request(_, _)
   return nil
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

local prepare = init
local keys = 1

function init(args)
   keys = tonumber(args[1]) or 10000
   prepare({ "0", "0", "" }) -- seeds the thread's random numbers; prepares nothing
end

function request()
   return wrk.format("GET", string.format("/v1/kv/k%08d", math.random(0, keys - 1)))
end
