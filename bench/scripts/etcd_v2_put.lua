-- etcd v2 keys API write: PUT /v2/keys/KEY with the form body value=VALUE.

function make_request(key, value)
   local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
   return wrk.format("PUT", "/v2/keys/" .. key, headers, "value=" .. value)
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")
