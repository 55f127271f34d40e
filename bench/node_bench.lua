--- Node.js interop benchmark (issue 6, item 6): a tether Lua parent with a
-- Node child (serialization = "json") against a Node parent with a Node
-- child (child_process.fork), the same child script, the same messages,
-- the same counts, in one run; and, for reference, the other direction
-- and tether's own format:
--
--  lua_node    tether.spawn(NODE, {"bench/node_echo_child.js"},
--              {serialization = "json"}) from this script
--  node_node   bench/node_parent_bench.js node: fork("bench/node_echo_child.js")
--  node_lua    bench/node_parent_bench.js lua: fork("bench/lua_echo_child.lua",
--              [], {execPath: "lua5.4", execArgv: []}), JSON mode
--  lua_lua     tether.spawn("lua5.4", {"bench/lua_echo_child.lua"}): tether's
--              native format
--
-- The child echoes every message.  Messages are {n = i, s = S} with S
-- "hello" ("small", 20-odd bytes of JSON) or a string of NODE_BENCH_BIG
-- (65536) bytes ("big"):
--  pingpong  one message in flight: round trips/s over NODE_BENCH_PP_N
--            (10000) small and NODE_BENCH_PP_BIG_N (1000) big messages;
--  stream    NODE_BENCH_N (20000) small and NODE_BENCH_BIG_N (2000) big
--            messages sent at once, honouring backpressure (tether: wait
--            for "drain" when send returns false; Node: the callback of
--            the next send when send() returns false); the clock stops at
--            the last echo: echoed messages/s.
-- Every echo is checked (n in order, s identical).  Each case is preceded
-- by a warm-up of N / NODE_BENCH_WARM_DIV (4) messages and measured
-- NODE_BENCH_REPS (3) times; the median is reported.  Besides the rate,
-- the CPU per message (user + system, every thread) of the parent and of
-- the child (/proc/<pid>/stat, 10 ms ticks; Node parent: process.cpuUsage()).
--
-- Output: "name value unit" lines as they are measured, "CHECK name
-- PASS|FAIL detail" lines, and at the end one "RESULT name value" line per
-- metric (median), all prefixed "node_", which bench/summarize.lua turns
-- into the "Node.js interop (issue 6)" table.
--
-- Env: NODE_BENCH_PP_N, NODE_BENCH_PP_BIG_N, NODE_BENCH_N, NODE_BENCH_BIG_N,
--      NODE_BENCH_BIG, NODE_BENCH_REPS, NODE_BENCH_WARM_DIV,
--      NODE_BENCH_CASES (subset of "lua_node node_node node_lua lua_lua"),
--      NODE_BENCH_HIGH_WATER (tether's high_water, bytes; default 1 MiB),
--      NODE (node), LUA (lua5.4).
-- Exits 1 if a check failed.
local tether = require "tether"

local function env_n(name, default)
  return tonumber(os.getenv(name) or "") or default
end
local PP_N = env_n("NODE_BENCH_PP_N", 10000)
local PP_BIG_N = env_n("NODE_BENCH_PP_BIG_N", 1000)
local STREAM_N = env_n("NODE_BENCH_N", 20000)
local STREAM_BIG_N = env_n("NODE_BENCH_BIG_N", 2000)
local BIG = env_n("NODE_BENCH_BIG", 65536)
local REPS = env_n("NODE_BENCH_REPS", 3)
local WARM_DIV = env_n("NODE_BENCH_WARM_DIV", 4)
local CASES = os.getenv("NODE_BENCH_CASES") or "lua_node node_node node_lua lua_lua"
local NODE = os.getenv("NODE") or "node"
local LUA = os.getenv("LUA") or "lua5.4"
local HIGH_WATER = tonumber(os.getenv("NODE_BENCH_HIGH_WATER") or "") -- tether's send buffer (default 1 MiB)
local LIMIT_S = 120 -- per case, and for the Node parent's whole run

local DIR = debug.getinfo(1, "S").source:sub(2):match("^(.*/)") or "./"
local B = dofile(DIR .. "common.lua")
local slurp, self_pid, median, note, check = B.slurp, B.self_pid, B.median, B.note, B.check
local wait_for, sh_quote = B.wait_for, B.sh_quote
local function orphans() return B.orphans("node_[e]cho_child|lua_[e]cho_child|node_[p]arent_bench") end
local NODE_CHILD = DIR .. "node_echo_child.js"
local LUA_CHILD = DIR .. "lua_echo_child.lua"

---------------------------------------------------------------------------
-- reporting

local samples, order = {}, {}

local UNITS = { bytes = "bytes (the big message's string)", per_s = "/s", parent_cpu_us = "us of parent CPU per message",
  child_cpu_us = "us of child CPU per message" }

local function sample(name, value)
  if not samples[name] then samples[name], order[#order + 1] = {}, name end
  table.insert(samples[name], value)
  local unit = UNITS[name:match("_(parent_cpu_us)$") or name:match("_(child_cpu_us)$")
    or name:match("_(bytes)$") or "per_s"]
  if name:match("_pingpong_") and unit == "/s" then unit = "round trips/s" end
  if name:match("_stream_") and unit == "/s" then unit = "echoed msgs/s" end
  io.write(("%-44s %12.6g %s\n"):format(name, value, unit))
  io.flush()
end





local TCK = 100
do
  local p = io.popen("getconf CLK_TCK 2>/dev/null")
  TCK = p and tonumber(p:read("l") or "") or 100
  if p then p:close() end
end

--- user + system CPU of a process, every thread, in us (/proc/<pid>/stat)
local function cpu_us(pid)
  local s = slurp("/proc/" .. pid .. "/stat")
  if not s then return nil end
  local rest = s:match("^.*%) (.*)$")
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  -- rest starts at field 3 (state): utime is field 14, stime 15
  return (tonumber(f[12]) + tonumber(f[13])) * 1e6 / TCK
end


local function big_string(n)
  local alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
  return alphabet:rep(n // #alphabet + 1):sub(1, n)
end

---------------------------------------------------------------------------
-- the tether Lua parent


local child, on_message, on_drain

local function pingpong(n, s)
  local t0 = tether.hrtime()
  local ok, err = wait_for(LIMIT_S, function(done)
    local i = 1
    on_message = function(m)
      if type(m) ~= "table" or m.n ~= i or m.s ~= s then
        return done(nil, ("pingpong: echo %s for %d"):format(tostring(type(m) == "table" and m.n), i))
      end
      if i == n then return done(true) end
      i = i + 1
      child:send({ n = i, s = s })
    end
    child:send({ n = i, s = s })
  end)
  if not ok then return nil, err end
  return (tether.hrtime() - t0) / 1e9
end

local function stream(n, s)
  local t0 = tether.hrtime()
  local ok, err = wait_for(LIMIT_S, function(done)
    local expect, nxt = 1, 1
    on_message = function(m)
      if type(m) ~= "table" or m.n ~= expect or m.s ~= s then
        return done(nil, ("stream: echo %s, expected %d"):format(tostring(type(m) == "table" and m.n), expect))
      end
      if expect == n then return done(true) end
      expect = expect + 1
    end
    local function pump()
      while nxt <= n do
        local sent, e = child:send({ n = nxt, s = s })
        nxt = nxt + 1
        if sent == nil then return done(nil, tostring(e)) end
        if sent == false then -- over the high-water mark: wait for "drain"
          on_drain = pump
          return
        end
      end
    end
    pump()
  end)
  if not ok then return nil, err end
  return (tether.hrtime() - t0) / 1e9
end

--- impl: "lua_node" or "lua_lua"
local function lua_parent(impl)
  local ready, err
  if impl == "lua_node" then
    child, err = tether.spawn(NODE, { NODE_CHILD }, { serialization = "json", high_water = HIGH_WATER })
  else
    child, err = tether.spawn(LUA, { LUA_CHILD }, { high_water = HIGH_WATER })
  end
  if not child then
    check("node_" .. impl .. "_verified", false, "spawn: " .. tostring(err))
    return
  end
  local errors = 0
  child:on("error", function(e)
    errors = errors + 1
    io.stderr:write("# child error: " .. tostring(e) .. "\n")
  end)
  child:on("message", function(m) on_message(m) end)
  child:on("drain", function()
    local f = on_drain
    on_drain = nil
    if f then f() end
  end)
  ready = wait_for(LIMIT_S, function(done)
    on_message = function(m) done(type(m) == "table" and m.ready == child.pid) end
    child:once("exit", function(code, signal) done(false, code, signal) end)
  end)
  if not ready then
    check("node_" .. impl .. "_verified", false, "the child did not say ready")
    child:kill()
    return
  end
  local me = self_pid()
  local big = big_string(BIG)
  local failed
  for _, c in ipairs {
    { "pingpong", "small", pingpong, PP_N, "hello" },
    { "pingpong", "big", pingpong, PP_BIG_N, big },
    { "stream", "small", stream, STREAM_N, "hello" },
    { "stream", "big", stream, STREAM_BIG_N, big },
  } do
    local name, size, fn, n, s = table.unpack(c)
    if n > 0 then
      local ok, err = fn(math.max(1, n // WARM_DIV), s)
      if not ok then failed = name .. " " .. size .. " warm-up: " .. tostring(err) break end
      for _ = 1, REPS do
        collectgarbage()
        local p0, c0 = cpu_us(me), cpu_us(child.pid)
        local secs, e = fn(n, s)
        if not secs then failed = name .. " " .. size .. ": " .. tostring(e) break end
        local p1, c1 = cpu_us(me), cpu_us(child.pid)
        local key = ("node_%s_%s_%s"):format(impl, name, size)
        sample(key .. "_per_s", n / secs)
        sample(key .. "_parent_cpu_us", (p1 - p0) / n)
        sample(key .. "_child_cpu_us", (c1 - c0) / n)
        note("%s %s %s n=%d secs=%.3f verified", impl, name, size, n, secs)
      end
      if failed then break end
    end
  end
  local exited = wait_for(LIMIT_S, function(done)
    child:once("exit", function(code, signal) done(code == 0, code, signal) end)
    child:disconnect()
  end)
  check("node_" .. impl .. "_verified", not failed and errors == 0 and exited,
    failed or ("every echo verified, %d errors, child exited 0: %s"):format(errors, tostring(exited)))
end

---------------------------------------------------------------------------
-- the Node parent: run to completion (our loop is idle meanwhile)


--- kind: "node" or "lua", the child
local function node_parent(kind)
  local cmd = ("LUA=%s timeout -k 3 %d %s %s %s %d %d %d %d %d %d %d 2>&1"):format(sh_quote(LUA), LIMIT_S, NODE,
    sh_quote(DIR .. "node_parent_bench.js"), kind, PP_N, PP_BIG_N, STREAM_N, STREAM_BIG_N, BIG, REPS, WARM_DIV)
  note("running %s", cmd)
  local p = io.popen(cmd)
  local got = 0
  for line in p:lines() do
    local rname, rval = line:match("^RESULT (%S+) (%S+)")
    if rname and tonumber(rval) then
      sample(rname, tonumber(rval))
      got = got + 1
    else
      io.write(line:match("^#") and line or "# " .. line, "\n")
      io.flush()
    end
  end
  local ok, how, code = p:close()
  check("node_node_" .. kind .. "_verified", ok and got > 0,
    ("%d samples, exit %s %s"):format(got, tostring(how), tostring(code)))
end

---------------------------------------------------------------------------

local function has(case) return B.has(CASES, case) end


local function main()
  if not tether._json.available then
    check("node_json_available", false, tether._json.why)
    return
  end
  local aff = io.popen("taskset -pc " .. (self_pid() or "self") .. " 2>/dev/null")
  local cpus = aff and (aff:read("a"):match(":%s*(%S+)") or "?")
  if aff then aff:close() end
  local v = io.popen(NODE .. " --version 2>&1")
  local version = v:read("l") or "not found"
  v:close()
  note("node bench: node %s, pingpong %d/%d, stream %d/%d messages (small/%d B), %d reps (median), allowed cpus=%s",
    version, PP_N, PP_BIG_N, STREAM_N, STREAM_BIG_N, BIG, REPS, cpus)
  sample("node_big_bytes", BIG)
  local before = orphans()
  if before ~= "" then note("fixture processes already running before the bench: %s", before) end
  if has("lua_node") then lua_parent("lua_node") end
  if has("node_node") then node_parent("node") end
  if has("node_lua") then node_parent("lua") end
  if has("lua_lua") then lua_parent("lua_lua") end
  local after = orphans()
  check("node_no_orphans", after == before, after == "" and "no fixture process left"
    or "left running: " .. after)
end

local co = tether.go(main)
tether.run()
if coroutine.status(co) ~= "dead" then
  check("node_bench_finished", false, "the loop ended before the bench did")
end
for _, name in ipairs(order) do
  io.write(("RESULT %s %.6g\n"):format(name, median(samples[name])))
end
os.exit(B.failed == 0 and 0 or 1)
