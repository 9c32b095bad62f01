-- Shared by every scenario script (each loads it with dofile): the data set and the result line.
--
-- Script arguments (after `--` on wrk's command line): KEYS VALUE_BYTES KEY_PREFIX [OPS].
-- A scenario script defines make_request(key, value) and then loads this file. Every request is
-- built once per thread in init(), so request() only picks one at random: the Lua cost of a request
-- is the same in every scenario, the hello-world ceiling included, and the ratios compare servers.
-- make_request may return nil: a script that puts OPS keys in one request (kv_txn.lua) returns a
-- request for every OPS-th key only, so KEYS / OPS requests are prepared.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

local ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

local function random_text(n)
   local chars = {}
   for i = 1, n do
      local j = math.random(#ALPHABET)
      chars[i] = ALPHABET:sub(j, j)
   end
   return table.concat(chars)
end

local prepared = {}

-- Per-thread tallies, read from the main state in done() with thread:get.
non2xx = 0
statuses = {}
sample = ""

function init(args)
   local keys = tonumber(args[1]) or 10000
   local value_bytes = tonumber(args[2]) or 100
   local prefix = args[3] or "key-"
   ops_per_request = tonumber(args[4]) or 1
   -- Seeded per thread, or both threads would walk the same key sequence in step.
   math.randomseed(os.time() * 100 + (id or 0))
   for i = 0, keys - 1 do
      local built = make_request(prefix .. i, random_text(value_bytes))
      if built ~= nil then
         prepared[#prepared + 1] = built
      end
   end
end

function request()
   return prepared[math.random(#prepared)]
end

-- The i-th prepared request, cycling: for a script whose request() builds each request itself.
function prepared_at(i)
   return prepared[(i - 1) % #prepared + 1]
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      local code = tostring(status)
      statuses[code] = (statuses[code] or 0) + 1
      if sample == "" then
         sample = string.sub(body or "", 1, 300)
      end
   end
end

local function json_string(s)
   local escaped = s:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
   end)
   return '"' .. escaped .. '"'
end

-- One line, `BENCH_RESULT {json}`, that bench/wrk.py parses; latencies in microseconds.
function done(summary, latency, _)
   local bad, codes, first = 0, {}, ""
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
      for code, count in pairs(thread:get("statuses") or {}) do
         codes[code] = (codes[code] or 0) + count
      end
      if first == "" then
         first = thread:get("sample") or ""
      end
   end
   local parts = {}
   for code, count in pairs(codes) do
      table.insert(parts, string.format('"%s":%d', code, count))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"rps":%.1f,'
         .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"non2xx":%d,"statuses":{%s},'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"sample":%s}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      bad, table.concat(parts, ","),
      e.connect, e.read, e.write, e.timeout, json_string(first)
   ))
end
