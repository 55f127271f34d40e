--- Prefork (issue 17 item 2): time from asking for a worker to the worker
-- ready, forked from a zygote (prefork) against exec'd (lua5.4 + require),
-- side by side in one run, alternating; and a 32-worker supervisor from
-- its start to every worker running.
--   LUA_PATH=... LUA_CPATH=... lua5.4 bench/prefork_bench.lua
-- PREFORK_N (default 60) spawns per mode, PREFORK_POOL_ROUNDS (5).
local tether = require "tether"
local DIR = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local B = dofile(DIR .. "common.lua")

local N = tonumber(os.getenv("PREFORK_N") or "") or 60
local ROUNDS = tonumber(os.getenv("PREFORK_POOL_ROUNDS") or "") or 5

local tmp = os.tmpname()
local f = assert(io.open(tmp, "w"))
f:write([[local tether = require "tether" tether.parent:send("ready")]])
f:close()
local worker = os.tmpname()
f = assert(io.open(worker, "w"))
f:write([[local tether = require "tether" tether.parent:on("message", function() end)]])
f:close()

if not tether.core.can_prefork() then
  B.note("prefork needs pidfds (Linux >= 5.3, not valgrind): nothing to measure")
  os.exit(0)
end
local z = assert(tether.zygote {})
local z32 = assert(tether.zygote { spares = 32 })

local function one(prefork)
  local t0 = tether.hrtime()
  local c = assert(tether.fork(tmp, {}, { prefork = prefork }))
  tether.await(function(done) c:once("message", function() done() end) end)
  local ms = (tether.hrtime() - t0) / 1e6
  c:disconnect()
  tether.await(function(done)
    if c.exit_code or c.signal then return done() end
    c:once("exit", function() done() end)
  end)
  return ms
end

local function supervisor_ready(prefork)
  local t0 = tether.hrtime()
  local sup = assert(tether.supervise { script = worker, instances = 32, prefork = prefork,
    handle_signals = false })
  tether.await(function(done)
    local function check()
      for _, w in ipairs(sup:workers()) do if w.state ~= "running" then return end end
      sup:off("start", check)
      done()
    end
    sup:on("start", check)
  end)
  local ms = (tether.hrtime() - t0) / 1e6
  tether.await(function(done) sup:stop(function() done() end) end)
  return ms
end

tether.go(function()
  tether.sleep(300) -- the zygote loads meanwhile
  local exec, fork = {}, {}
  for i = 1, N do
    if i % 2 == 0 then exec[#exec + 1] = one(false) fork[#fork + 1] = one(z)
    else fork[#fork + 1] = one(z) exec[#exec + 1] = one(false) end
  end
  -- the same, with the zygote left alone 20 ms before each request (its
  -- newest spare has warmed by then)
  local idle = {}
  for _ = 1, N // 2 do
    tether.sleep(20)
    idle[#idle + 1] = one(z)
  end
  local me, mf, mi = B.median(exec), B.median(fork), B.median(idle)
  local sexec, sfork, sfork32 = {}, {}, {}
  for _ = 1, ROUNDS do
    sexec[#sexec + 1] = supervisor_ready(false)
    sfork[#sfork + 1] = supervisor_ready(z)
    tether.sleep(300) -- (its spares are made again, and warm)
    sfork32[#sfork32 + 1] = supervisor_ready(z32)
  end
  local se, sf, sf32 = B.median(sexec), B.median(sfork), B.median(sfork32)
  print("| what | exec'd (lua5.4 + require) | prefork (zygote) | exec / prefork |")
  print("|---|---|---|---|")
  print(("| fork() to the worker's first message, median of %d | %.2f ms | %.2f ms | %.1fx |"):format(N, me, mf, me / mf))
  print(("| the same, the zygote idle 20 ms before each, median of %d | | %.2f ms | %.1fx |"):format(#idle, mi, me / mi))
  print(("| 32-worker supervisor: start to all running, median of %d | %.1f ms | %.1f ms | %.1fx |"):format(ROUNDS, se, sf, se / sf))
  print(("| the same, a zygote with 32 spares | | %.1f ms | %.1fx |"):format(sf32, se / sf32))
  B.check("prefork-ready-1ms", mf <= 1.0, ("%.2f ms median (target <= 1 ms)"):format(mf))
  B.check("prefork-4x", me / mf >= 4, ("%.1fx faster than exec (target >= 4x)"):format(me / mf))
  B.check("prefork-pool32-50ms", math.min(sf, sf32) < 50, ("%.1f ms (target < 50 ms)"):format(math.min(sf, sf32)))
  os.remove(tmp)
  os.remove(worker)
end)
tether.run()
os.exit(B.failed == 0 and 0 or 1)
