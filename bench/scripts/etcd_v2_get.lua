-- etcd v2 keys API read: GET /v2/keys/KEY of a random preloaded key. Sent to a follower, without
-- ?quorum=true, etcd answers it from the follower's own state (a local read).

function make_request(key, _)
   return wrk.format("GET", "/v2/keys/" .. key)
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")
