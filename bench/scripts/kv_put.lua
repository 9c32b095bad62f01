-- v1 write: PUT /v1/kv/{key} with the value as a text body.

function make_request(key, value)
   local headers = { ["Content-Type"] = "text/plain; charset=utf-8" }
   return wrk.format("PUT", "/v1/kv/" .. key, headers, value)
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")
