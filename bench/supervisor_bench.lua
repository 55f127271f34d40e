--- Supervisor benchmark (issue 4, item 12).
--
--  idle      SUP_INSTANCES (500) idle workers (bench/sup_idle_worker.lua):
--            time until every one sent its first "start", the parent's RSS
--            growth per worker, the parent's CPU while idle for
--            SUP_IDLE_SECS (5), the workers' own memory, the time to stop.
--  memwatch  the same with max_memory set, so the parent reads every
--            worker's /proc/<pid>/statm once a second (memory_interval
--            1000 ms): the cost of the RSS watchdog while idle.
--  storm     8 workers that exit(1) at once (bench/sup_crash_worker.lua),
--            backoff 0 and a restart limit out of reach, for SUP_STORM_SECS
--            (3): restarts per second, exit -> restart latency, parent CPU.
--  giveup    max_restarts = 5 within 10 s, 1 and 8 workers: exactly 5
--            restarts, exactly one "give_up", then "stopped" and every
--            worker down (CHECK ... PASS/FAIL).
--
-- Output: "name value unit" lines as they are measured, "CHECK name
-- PASS|FAIL detail" lines, and at the end one "RESULT name value" line
-- per metric (the unit is the name's suffix), which bench/summarize.lua
-- turns into a table of medians over runs.
--
-- Env: SUP_INSTANCES, SUP_IDLE_SECS, SUP_STORM_SECS, SUP_CASES (subset of
-- "idle memwatch storm giveup").  Exits 1 if a check failed.
local tether = require "tether"

local N = tonumber(os.getenv("SUP_INSTANCES") or "") or 500
local IDLE_SECS = tonumber(os.getenv("SUP_IDLE_SECS") or "") or 5
local STORM_SECS = tonumber(os.getenv("SUP_STORM_SECS") or "") or 3
local STORM_N = tonumber(os.getenv("SUP_STORM_INSTANCES") or "") or 8
local CASES = os.getenv("SUP_CASES") or "idle memwatch storm giveup"
local START_LIMIT_S = 60 -- give up waiting for the workers after this

local DIR = debug.getinfo(1, "S").source:sub(2):match("^(.*/)") or "./"
local B = dofile(DIR .. "common.lua")
local slurp, self_pid, median, note, check = B.slurp, B.self_pid, B.median, B.note, B.check
local wait_for, sh_quote = B.wait_for, B.sh_quote
local function orphans() return B.orphans("sup_[i]dle_worker|sup_[c]rash_worker") end
local IDLE_WORKER = DIR .. "sup_idle_worker.lua"
local CRASH_WORKER = DIR .. "sup_crash_worker.lua"

---------------------------------------------------------------------------
-- /proc readers


local function getconf(name, default)
  local p = io.popen("getconf " .. name .. " 2>/dev/null")
  local v = p and tonumber(p:read("l") or "")
  if p then p:close() end
  return v or default
end

local PAGE = getconf("PAGESIZE", 4096)
local TCK = getconf("CLK_TCK", 100)

local lfs_ok, lfs = pcall(require, "lfs")

--- RSS of this process in bytes (/proc/self/statm, field 2)
local function self_rss()
  local _, resident = slurp("/proc/self/statm"):match("^(%d+)%s+(%d+)")
  return tonumber(resident) * PAGE
end

--- utime + stime of this process in clock ticks (/proc/self/stat 14, 15)
local function self_ticks()
  local rest = slurp("/proc/self/stat"):match("^.*%)%s+(.*)$")
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  -- rest starts at field 3 (state): utime is field 14, stime 15
  return tonumber(f[12]) + tonumber(f[13])
end

--- on-CPU time of every thread of this process in ns (schedstat): the
-- same thing as self_ticks at nanosecond rather than 10 ms resolution
local function self_cpu_ns()
  if not lfs_ok then
    local s = slurp("/proc/self/schedstat")
    return s and tonumber(s:match("^(%d+)"))
  end
  local total = 0
  for tid in lfs.dir("/proc/self/task") do
    if tid:match("^%d+$") then
      local s = slurp("/proc/self/task/" .. tid .. "/schedstat")
      total = total + (s and tonumber(s:match("^(%d+)")) or 0)
    end
  end
  return total
end

local function open_fds()
  if not lfs_ok then return nil end
  local n = 0
  for e in lfs.dir("/proc/self/fd") do
    if e ~= "." and e ~= ".." then n = n + 1 end
  end
  return n - 1 -- the directory being read
end

local function nofile_limit()
  local s = slurp("/proc/self/limits") or ""
  local soft = s:match("Max open files%s+(%S+)")
  return tonumber(soft) or math.huge
end

--- Pss and private (Private_Clean + Private_Dirty) bytes of a process
local function pss_private(pid)
  local s = slurp("/proc/" .. pid .. "/smaps_rollup")
  if not s then return nil end
  local pss = tonumber(s:match("\nPss:%s+(%d+) kB"))
  local pc = tonumber(s:match("\nPrivate_Clean:%s+(%d+) kB"))
  local pd = tonumber(s:match("\nPrivate_Dirty:%s+(%d+) kB"))
  if not (pss and pc and pd) then return nil end
  return pss * 1024, (pc + pd) * 1024
end

---------------------------------------------------------------------------
-- reporting

local results = {}

local function report(name, value, unit)
  results[#results + 1] = { name, value }
  io.write(("%-36s %12.6g %s\n"):format(name, value, unit))
  io.flush()
end




local function ms_since(t0) return (tether.hrtime() - t0) / 1e6 end


local BASE = {
  handle_signals = false, restart = "always",
  backoff = { initial = 0, max = 0, jitter = 0 }, min_uptime = 0,
}

local function spec(t)
  local s = {}
  for k, v in pairs(BASE) do s[k] = v end
  for k, v in pairs(t) do s[k] = v end
  return s
end

local function stop(sup)
  local t0 = tether.hrtime()
  local ok, err = wait_for(30, function(done) sup:stop(function() done(true) end) end)
  if not ok then check("stop_" .. tostring(sup), false, tostring(err)) end
  return ms_since(t0)
end

---------------------------------------------------------------------------
-- (a) idle workers

local function idle_case(tag, extra)
  local pre = tag == "idle" and "sup_idle" or "sup_" .. tag
  collectgarbage()
  collectgarbage()
  local rss0, fds0, cpu0 = self_rss(), open_fds(), self_cpu_ns()
  local started, n_started, restarts, errors = {}, 0, 0, 0
  local t0 = tether.hrtime()
  local o = spec { script = IDLE_WORKER, instances = N, max_restarts = 1000, within = 60 }
  for k, v in pairs(extra or {}) do o[k] = v end
  local sup = assert(tether.supervise(o))
  sup:on("restart", function() restarts = restarts + 1 end)
  sup:on("error", function(e)
    errors = errors + 1
    if errors <= 5 then io.stderr:write("# worker error: " .. tostring(e) .. "\n") end
  end)
  local t_first
  local ok, err = wait_for(START_LIMIT_S, function(done)
    sup:on("start", function(w)
      t_first = t_first or ms_since(t0)
      if not started[w.id] then
        started[w.id] = true
        n_started = n_started + 1
        if n_started == N then done(true) end
      end
    end)
  end)
  local t_all = ms_since(t0)
  local start_cpu_ms = (self_cpu_ns() - cpu0) / 1e6
  check(pre .. "_all_started", ok and restarts == 0 and errors == 0,
    ("%d/%d running, %d restarts, %d errors%s"):format(n_started, N, restarts, errors,
      ok and "" or ", " .. tostring(err)))
  if not ok then
    stop(sup)
    return
  end
  if tag == "idle" then
    report(pre .. "_start_all_ms", t_all, "ms (until all " .. N .. " were running)")
    report(pre .. "_start_first_ms", t_first, "ms (first one running)")
    report(pre .. "_start_per_s", N / (t_all / 1e3), "workers/s")
    report(pre .. "_start_parent_cpu_ms", start_cpu_ms, "ms of parent CPU to start them")
  end

  -- let the last starts settle, then the parent's memory and fds
  tether.sleep(200)
  collectgarbage()
  collectgarbage()
  local rss1, fds1 = self_rss(), open_fds()
  if tag == "idle" then
    report(pre .. "_parent_rss_growth_mib", (rss1 - rss0) / 2 ^ 20, "MiB (parent RSS, " .. N .. " workers)")
    report(pre .. "_rss_per_worker_kib", (rss1 - rss0) / N / 1024, "KiB/worker (parent RSS growth)")
    if fds0 then report(pre .. "_fds_per_worker", (fds1 - fds0) / N, "fds/worker (in the parent)") end
  end

  -- idle: what the parent burns with N workers doing nothing
  local wall0, ticks0, ns0 = tether.hrtime(), self_ticks(), self_cpu_ns()
  tether.sleep(IDLE_SECS * 1000)
  local wall = (tether.hrtime() - wall0) / 1e9
  local ticks, ns = self_ticks() - ticks0, self_cpu_ns() - ns0
  report(pre .. "_cpu_pct", ticks / TCK / wall * 100,
    ("%% of one core (/proc/self/stat, %d ticks in %.1f s)"):format(ticks, wall))
  if ns then report(pre .. "_cpu_ns_pct", ns / 1e9 / wall * 100, "% of one core (schedstat, ns resolution)") end

  -- the workers' own memory
  if tag == "idle" then
    local rss_sum, counted, pss_sum, priv_sum, smaps = 0, 0, 0, 0, 0
    for _, w in ipairs(sup:workers()) do
      if w.state == "running" and w.rss then
        rss_sum = rss_sum + w.rss
        counted = counted + 1
        local pss, priv = pss_private(w.pid)
        if pss then
          pss_sum, priv_sum, smaps = pss_sum + pss, priv_sum + priv, smaps + 1
        end
      end
    end
    check(pre .. "_workers_listed", counted == N, ("%d/%d running with an rss"):format(counted, N))
    report(pre .. "_children_rss_total_mib", rss_sum / 2 ^ 20, "MiB (sum of sup:workers() rss)")
    report(pre .. "_child_rss_kib", rss_sum / math.max(counted, 1) / 1024, "KiB (one worker's RSS, mean)")
    if smaps > 0 then
      report(pre .. "_children_pss_total_mib", pss_sum / 2 ^ 20, "MiB (sum of Pss: what they really cost)")
      report(pre .. "_child_private_kib", priv_sum / smaps / 1024, "KiB (one worker's private memory, mean)")
    end
  end

  local stop_ms = stop(sup)
  if tag == "idle" then report(pre .. "_stop_all_ms", stop_ms, "ms (sup:stop until stopped)") end
  check(pre .. "_no_restarts", restarts == 0, ("%d restarts while idle"):format(restarts))
end

---------------------------------------------------------------------------
-- (b) crash storm

local function storm_case()
  local restarts, exits, give_ups, starts = 0, 0, 0, 0
  local reasons, lat, exit_at = {}, {}, {}
  local sup = assert(tether.supervise(spec { script = CRASH_WORKER, instances = STORM_N,
    max_restarts = 100000, within = 60 }))
  sup:on("exit", function(w, _, _, reason)
    exits = exits + 1
    reasons[reason] = (reasons[reason] or 0) + 1
    exit_at[w.id] = tether.hrtime()
  end)
  sup:on("restart", function(w)
    restarts = restarts + 1
    if exit_at[w.id] then lat[#lat + 1] = (tether.hrtime() - exit_at[w.id]) / 1e6 end
  end)
  sup:on("start", function() starts = starts + 1 end)
  sup:on("give_up", function() give_ups = give_ups + 1 end)
  sup:on("error", function() end)
  tether.sleep(300) -- warm-up: every slot is cycling
  local r0, x0, wall0, ns0, ticks0 = restarts, exits, tether.hrtime(), self_cpu_ns(), self_ticks()
  tether.sleep(STORM_SECS * 1000)
  local wall = (tether.hrtime() - wall0) / 1e9
  local r, x = restarts - r0, exits - x0
  local ns, ticks = self_cpu_ns() - ns0, self_ticks() - ticks0
  stop(sup)
  report("sup_storm_restarts_per_s", r / wall, ("restarts/s (%d workers, backoff 0, %d in %.1f s)"):format(STORM_N, r, wall))
  report("sup_storm_exits_per_s", x / wall, "exits/s")
  report("sup_storm_restart_latency_ms", median(lat) or 0, "ms (exit seen -> replacement spawned, median)")
  report("sup_storm_parent_cpu_pct", (ns and ns / 1e9 or ticks / TCK) / wall * 100, "% of one core (the supervisor itself)")
  local other, seen = 0, {}
  for k, v in pairs(reasons) do
    seen[#seen + 1] = k .. "=" .. v
    if k ~= "crash" and k ~= "stop" then other = other + v end
  end
  table.sort(seen)
  check("sup_storm_sane", give_ups == 0 and starts == 0 and other == 0 and r > 0,
    ("%d restarts, %d exits (%s), %d starts, %d give_up"):format(restarts, exits,
      table.concat(seen, " "), starts, give_ups))
end

---------------------------------------------------------------------------
-- (b') restart intensity: give up after exactly max_restarts

local function giveup_case(instances)
  local name = ("sup_give_up_%d_worker%s"):format(instances, instances > 1 and "s" or "")
  local restarts, give_ups, why, crashes = 0, 0, nil, 0
  local after_stop = 0
  local stopped = false
  local t0 = tether.hrtime()
  local sup = assert(tether.supervise(spec { script = CRASH_WORKER, instances = instances,
    max_restarts = 5, within = 10 }))
  sup:on("restart", function()
    restarts = restarts + 1
    if stopped then after_stop = after_stop + 1 end
  end)
  sup:on("exit", function(_, _, _, reason)
    if reason == "crash" and give_ups == 0 then crashes = crashes + 1 end
  end)
  sup:on("give_up", function(reason)
    give_ups = give_ups + 1
    why = reason
  end)
  sup:on("error", function() end)
  local ok = wait_for(15, function(done) sup:on("stopped", function() stopped = true; done(true) end) end)
  local ms = ms_since(t0)
  tether.sleep(300) -- anything late would show up here
  local down = 0
  for _, w in ipairs(sup:workers()) do if w.state == "down" then down = down + 1 end end
  if not ok then stop(sup) end
  check(name, ok and restarts == 5 and give_ups == 1 and after_stop == 0 and down == instances,
    ("%d restarts (5 expected), %d give_up (1 expected), %d crashes before it, %d/%d down, stopped=%s, %.0f ms; %s")
      :format(restarts, give_ups, crashes, down, instances, tostring(ok), ms, tostring(why)))
end

---------------------------------------------------------------------------

local function has(case) return B.has(CASES, case) end


local function main()
  note("supervisor bench: %d idle workers, %g s idle, %d-worker storm for %g s; nproc=%s, pinned=%s",
    N, IDLE_SECS, STORM_N, STORM_SECS, getconf("_NPROCESSORS_ONLN", "?"), os.getenv("BENCH_PINNED") or "?")
  local limit = nofile_limit()
  if (has("idle") or has("memwatch")) and limit < N + 64 then
    check("sup_fd_limit", false, ("ulimit -n is %s, %d workers need about %d"):format(limit, N, N + 64))
    return
  end
  local before = orphans()
  if before ~= "" then note("fixture processes already running before the bench: %s", before) end
  if has("idle") then idle_case("idle") end
  if has("memwatch") then idle_case("memwatch", { max_memory = "1G", memory_interval = 1000 }) end
  if has("storm") then storm_case() end
  if has("giveup") then
    giveup_case(1)
    giveup_case(STORM_N)
  end
  local after = orphans()
  check("sup_no_orphans", after == before, after == "" and "no fixture process left"
    or "left running: " .. after)
end

local co = tether.go(main)
tether.run()
if coroutine.status(co) ~= "dead" then
  check("sup_bench_finished", false, "the loop ended before the bench did")
end
for _, r in ipairs(results) do
  io.write(("RESULT %s %.6g\n"):format(r[1], r[2]))
end
os.exit(B.failed == 0 and 0 or 1)
