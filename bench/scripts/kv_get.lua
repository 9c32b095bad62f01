-- GET /v1/kv/{key} of a random key among the preloaded ones.

function make_request(key, _)
   return wrk.format("GET", "/v1/kv/" .. key)
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")
