-- Seed API write: GET /nodes/update?name=KEY&value=VALUE (values are [A-Za-z0-9], no escaping).

function make_request(key, value)
   return wrk.format("GET", "/nodes/update?name=" .. key .. "&value=" .. value)
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")
