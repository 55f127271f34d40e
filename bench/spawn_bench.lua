--- Spawn cost against the parent's size (issue 17, item 1).
--
-- A measuring parent holds SIZE MiB of touched memory (1 MiB strings in a
-- table), then spawns a trivial child (`true`, no channel, stdio ignored)
-- REPS times, one after another, timing each from tether.spawn() to the
-- child's exit event; its median is the spawn-to-exit time.  Every
-- (size, spawner) pair is its own measuring process, started by this
-- script, and the pairs are interleaved over ROUNDS rounds, so both ways
-- of spawning and every size are measured side by side in one run:
--   posix  posix_spawn (CLONE_VM|CLONE_VFORK) + pidfd: tether's default
--   uv     uv_spawn (fork + exec): TETHER_SPAWN=uv, what tether did before
--   raw-posix, raw-fork  the platform's own cost from plain C, the same
--          memory held (bench/spawn_raw.c: posix_spawnp, or fork + execvp),
--          timed to waitpid's return: what no spawner can go below
-- Then a table: the median per pair and its ratio to the fresh parent's
-- (size 0) with the same spawner; the target is <= 1.2x for posix.
--
-- Env: SPAWN_SIZES  MiB held, space-separated (default "0 200 2048"; a
--                   size that does not fit in MemAvailable with 1 GiB to
--                   spare is skipped with a note)
--      SPAWN_REPS   spawns per measuring process (default 41)
--      SPAWN_ROUNDS rounds (default 3); the median is over every sample
--      SPAWN_PROG   the child (default "true")
--      SPAWN_MODES  default "uv posix raw-fork raw-posix" (the raw ones
--                   only when SPAWN_RAW, default build/spawn_raw, exists)
local tether = require "tether"

local SCRIPT = debug.getinfo(1, "S").source:sub(2)
local LUA = os.getenv("LUA") or "lua5.4"
local PROG = os.getenv("SPAWN_PROG") or "true"

local function now() return tether.hrtime() / 1e6 end -- ms

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return nil end
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

---------------------------------------------------------------------------
-- measuring parent: `spawn_bench.lua measure SIZE REPS`

if arg[1] == "measure" then
  local size, reps = tonumber(arg[2]), tonumber(arg[3])
  local hold = {}
  for i = 1, size do hold[i] = string.rep(string.char(65 + i % 26), 1 << 20) end
  local samples = {}
  local function one(i)
    if i > reps then return end
    local t0 = now()
    local c = assert(tether.spawn(PROG, {}, { channel = false, stdio = "ignore" }))
    c:on("exit", function(code)
      samples[#samples + 1] = now() - t0
      if code ~= 0 then error(PROG .. " exited with " .. tostring(code)) end
    end)
    c:on("close", function() one(i + 1) end)
  end
  one(0) -- a warm-up spawn, not counted
  tether.run()
  table.remove(samples, 1)
  local f = io.open("/proc/self/status")
  local rss = f and f:read("a"):match("VmRSS:%s*(%d+)") or "?"
  if f then f:close() end
  io.write(("rss_kb=%s"):format(rss))
  for _, v in ipairs(samples) do io.write((" %.4f"):format(v)) end
  io.write("\n")
  assert(#hold == size)
  return
end

---------------------------------------------------------------------------
-- driver

local function mem_available_mib()
  local f = io.open("/proc/meminfo")
  if not f then return math.huge end
  local kb = tonumber(f:read("a"):match("MemAvailable:%s*(%d+)"))
  f:close()
  return kb and kb // 1024 or math.huge
end

local REPS = tonumber(os.getenv("SPAWN_REPS") or "") or 41
local ROUNDS = tonumber(os.getenv("SPAWN_ROUNDS") or "") or 3
local RAW = os.getenv("SPAWN_RAW") or "build/spawn_raw"
local MODES = {}
local have_raw = io.open(RAW) ~= nil
for m in (os.getenv("SPAWN_MODES") or "uv posix raw-fork raw-posix"):gmatch("%S+") do
  if not m:match("^raw%-") or have_raw then MODES[#MODES + 1] = m end
end
if not have_raw then print("# spawn bench: no " .. RAW .. ": the raw C anchors are skipped") end
local SIZES = {}
for s in (os.getenv("SPAWN_SIZES") or "0 200 2048"):gmatch("%S+") do
  local mib = assert(tonumber(s), "SPAWN_SIZES: numbers of MiB")
  if mib + 1024 > mem_available_mib() then
    print(("# spawn bench: %d MiB skipped: MemAvailable is %d MiB"):format(mib, mem_available_mib()))
  else
    SIZES[#SIZES + 1] = mib
  end
end

local samples, rss = {}, {}
local function key(size, mode) return size .. "|" .. mode end

local function measure(size, mode, done)
  local out = ""
  local cmd, args = LUA, { SCRIPT, "measure", tostring(size), tostring(REPS) }
  if mode:match("^raw%-") then
    cmd, args = RAW, { mode:sub(5), tostring(size), tostring(REPS), PROG }
  end
  local c = assert(tether.spawn(cmd, args,
    { channel = false, stdio = { stdin = "ignore", stdout = "pipe", stderr = "inherit" },
      env = { TETHER_SPAWN = mode } }))
  c.stdout:on("data", function(d) out = out .. d end)
  c:on("close", function(code)
    if code ~= 0 then error(("measuring parent size=%d mode=%s exited with %s"):format(size, mode, tostring(code))) end
    local k = key(size, mode)
    samples[k] = samples[k] or {}
    rss[k] = out:match("rss_kb=(%S+)")
    for v in out:gmatch(" ([%d.]+)") do table.insert(samples[k], tonumber(v)) end
    done()
  end)
end

local plan = {}
for _ = 1, ROUNDS do
  for _, size in ipairs(SIZES) do
    for _, mode in ipairs(MODES) do plan[#plan + 1] = { size, mode } end
  end
end
local function step(i)
  if i > #plan then return end
  measure(plan[i][1], plan[i][2], function() step(i + 1) end)
end
step(1)
tether.run()

print(("# spawn bench: spawn-to-exit of `%s` from a parent holding N MiB (touched), median of %d x %d spawns, ms"):format(PROG, ROUNDS, REPS))
print(("%-8s %-9s %10s %10s %8s %10s"):format("held_MiB", "spawn", "rss_MiB", "median_ms", "ratio", "target"))
for _, mode in ipairs(MODES) do
  local base = median(samples[key(SIZES[1] or 0, mode)] or {})
  for _, size in ipairs(SIZES) do
    local k = key(size, mode)
    local m = median(samples[k] or {})
    local r = base and m and m / base
    local target = ""
    if mode == "posix" and size > 0 then target = r and (r <= 1.2 and "<=1.2 ok" or "<=1.2 MISS") or "" end
    print(("%-8d %-9s %10.0f %10.3f %7.2fx %10s"):format(size, mode, (tonumber(rss[k]) or 0) / 1024, m or 0 / 0, r or 0 / 0, target))
  end
end
