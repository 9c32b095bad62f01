-- The ceiling: GET / on the hello-world server (bench/hello.py); keys and values are unused.

function make_request(_, _)
   return wrk.format("GET", "/")
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")
