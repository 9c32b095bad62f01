-- Transaction: POST /v1/txn putting OPS keys (the 4th script argument) with their values.
-- Consecutive keys go in one transaction, so KEYS / OPS different transactions are prepared, each
-- key in exactly one of them. Keys and values need no JSON escaping (letters, digits and '-').

local ops = {}

function make_request(key, value)
   ops[#ops + 1] = '{"op":"put","key":"' .. key .. '","value":"' .. value .. '"}'
   if #ops < ops_per_request then
      return nil
   end
   local body = '{"then":[' .. table.concat(ops, ",") .. "]}"
   ops = {}
   return wrk.format("POST", "/v1/txn", { ["Content-Type"] = "application/json" }, body)
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")
