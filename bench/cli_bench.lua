--- The `tether` command against PM2 (issue 16, item 5), side by side in one
-- run.  Each system gets a private daemon: tether with TETHER_HOME (socket,
-- pid file, logs, dump) in a temp dir, PM2 (bench/pm2/, `npm ci` by `make
-- bench-deps`) with PM2_HOME in the same temp dir.  Both run one app "idle"
-- of 2 workers: a Lua script under tether, a Node script under PM2 (`pm2
-- start -i 2`: PM2's cluster mode, what -i gives), written into the temp
-- dir by this file.
--
-- 1. `ls` latency: the wall time of the whole command (spawn to exit, seen
--    from this process), CLI_LS_RUNS (30) runs of each, the commands
--    alternated (the order rotates each round), after 3 warm-up runs each:
--    `tether ls`, `tether ls --json`, `pm2 ls`, `pm2 jlist`, and as floors
--    `lua5.4 -e ''`, `lua5.4 -e 'require "tether"'`, `node -e 0`.  Median,
--    p90, min.  Target: tether ls < 20 ms.
-- 2. Daemon RSS (VmRSS of /proc/PID/status; tether: $TETHER_HOME/daemon.pid,
--    PM2's God daemon: $PM2_HOME/pm2.pid): idle (the "idle" app running),
--    then with a second app "logger" of 2 workers that each print
--    CLI_LOG_BYTES / 2 of 100-byte lines as fast as they can (64 KB writes;
--    tether: blocking writes to its stdout pipe; Node: each write waits for
--    the previous one's callback) and then idle: RSS sampled every 100 ms
--    while they write (the max, and VmHWM), then once the log files stopped
--    growing, 2 s later.  Also the time to get every line into the files,
--    the daemon's CPU time over it, and the bytes on disk.  One system at a
--    time (tether first).  Target for tether: flat (the daemon never holds
--    logs: they go from the supervisor's pipes to files through a bounded
--    buffer).
-- 3. Crash to replacement: kill -9 of a worker of "idle" (the two workers
--    in turn); each worker writes "pid hrtime" (CLOCK_MONOTONIC ns:
--    tether.hrtime(), process.hrtime.bigint()) to a stamp file at the top
--    of its main chunk; the time from this process's hrtime just before
--    kill(2) to the new worker's stamp.  CLI_CRASH_ROUNDS (20) rounds, the
--    systems alternated; the defaults of both: tether restarts a worker
--    that ran min_uptime (1 s) after backoff.initial (100 ms, jitter +-25),
--    and gives up after max_restarts (10) within 60 s, so tether's kills
--    are CLI_CRASH_GAP (6.5 s) apart; PM2's restart_delay is 0.
--
-- Output: "name value unit" lines, "# notes", "CHECK name PASS|FAIL detail",
-- markdown tables, and "RESULT cli_... value" lines at the end.  Both
-- daemons are killed (`tether kill`, `pm2 kill`) and the temp dir removed
-- at the end, on failure too.
--
-- Env: CLI_LS_RUNS (30), CLI_LOG_BYTES (1073741824: 1 GiB over the 2
--      workers), CLI_PM2_LOG_BYTES (CLI_LOG_BYTES), CLI_LOG_TIMEOUT (600 s
--      per system), CLI_CRASH_ROUNDS (20), CLI_CRASH_GAP (6.5 s),
--      CLI_CASES ("tether pm2"), CLI_PARTS ("ls rss crash"), CLI_NODE
--      (node), CLI_PM2 (bench/pm2/node_modules/.bin/pm2), CLI_KEEP=1 keeps
--      the temp dir.  Exits 1 if a check failed.
local tether = require "tether"

local function env_num(name, dflt)
  return tonumber(os.getenv(name) or "") or dflt
end
local LS_RUNS = env_num("CLI_LS_RUNS", 30)
local LOG_BYTES = env_num("CLI_LOG_BYTES", 1 << 30)
local PM2_LOG_BYTES = env_num("CLI_PM2_LOG_BYTES", LOG_BYTES)
local LOG_TIMEOUT = env_num("CLI_LOG_TIMEOUT", 600)
local CRASH_ROUNDS = env_num("CLI_CRASH_ROUNDS", 20)
local CRASH_GAP = env_num("CLI_CRASH_GAP", 6.5)
local CASES = os.getenv("CLI_CASES") or "tether pm2"
local PARTS = os.getenv("CLI_PARTS") or "ls rss crash"
local NODE = os.getenv("CLI_NODE") or "node"
local WARM = 3
local LINE = 100 -- bytes per log line, "\n" included

local DIR = debug.getinfo(1, "S").source:sub(2):match("^(.*/)") or "./"
local B = dofile(DIR .. "common.lua")
local slurp, median, note, check, wait_for = B.slurp, B.median, B.note, B.check, B.wait_for
local PM2 = os.getenv("CLI_PM2") or (DIR .. "pm2/node_modules/.bin/pm2")
local TETHER_BIN = DIR .. "../bin/tether"
local LUA = tether._internal.interpreter()
local EPOCH = os.time()
local json = require "tether.json"
local uv_ok, uv = pcall(require, "luv")

local results = {}
local function report(name, value, unit)
  results[#results + 1] = { name, value }
  io.write(("%-44s %12.6g %s\n"):format(name, value, unit))
  io.flush()
end

local function quantile(t, q)
  if #t == 0 then return nil end
  t = table.move(t, 1, #t, 1, {})
  table.sort(t)
  return t[math.max(1, math.ceil(q * #t))]
end

local function ver(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local v = p:read("l") or "?"
  p:close()
  return v
end

---------------------------------------------------------------------------
-- the temp dir and the workers

local TMP = ver("mktemp -d /tmp/tether-cli-bench.XXXXXX")
assert(TMP:match("^/tmp/tether%-cli%-bench%."), "mktemp -d failed: " .. TMP)
local T_HOME = TMP .. "/tether"
local P_HOME = TMP .. "/pm2"
-- every command runs with these added to our environment: a private
-- daemon each (TETHER_HOME explicit: the socket and pid file are there too)
local ENV = { HOME = TMP, TETHER_HOME = T_HOME, PM2_HOME = P_HOME }

local LUA_WORKER = TMP .. "/cli_worker.lua"
local NODE_WORKER = TMP .. "/cli_worker.js"

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- arg[1]: the stamp file; arg[2]: bytes of log lines to print
write_file(LUA_WORKER, [[
local tether = require "tether"
local now = tether.hrtime()
local stamp, bytes = arg[1], math.tointeger(tonumber(arg[2] or "0")) or 0
local function stamp_line(s)
  local f = io.open(stamp, "a")
  f:write(s)
  f:close()
end
stamp_line(("%d %d\n"):format(tether.core.pid(), now))
local lines = bytes // ]] .. LINE .. [[

if lines > 0 then
  io.stdout:setvbuf("full", 1 << 16)
  local line = string.rep("x", ]] .. (LINE - 1) .. [[) .. "\n"
  local per = 65536 // #line
  local chunk = line:rep(per)
  local function step()
    for _ = 1, 16 do -- about 1 MB a turn of the loop
      if lines <= 0 then break end
      local n = math.min(per, lines)
      io.stdout:write(n == per and chunk or line:rep(n))
      lines = lines - n
    end
    io.stdout:flush()
    if lines > 0 then return tether.defer(step) end
    stamp_line(("done %d %d\n"):format(tether.core.pid(), tether.hrtime()))
  end
  tether.defer(step) -- after the main chunk: the worker is ready first
end
tether.every(60000, function() end)
]])

write_file(NODE_WORKER, [[
'use strict';
const now = process.hrtime.bigint();
const fs = require('fs');
const stamp = process.argv[2];
fs.appendFileSync(stamp, `${process.pid} ${now}\n`);
let lines = Math.floor(Number(process.argv[3] || 0) / ]] .. LINE .. [[);
if (lines > 0) {
  const line = 'x'.repeat(]] .. (LINE - 1) .. [[) + '\n';
  const per = Math.floor(65536 / line.length);
  const chunk = line.repeat(per);
  // PM2 replaces process.stdout.write (lib/ProcessContainer.js): the
  // callback is its log file stream's; 'drain' never comes
  const step = () => {
    if (lines <= 0) {
      fs.appendFileSync(stamp, `done ${process.pid} ${process.hrtime.bigint()}\n`);
      return;
    }
    const n = Math.min(per, lines);
    lines -= n;
    process.stdout.write(n === per ? chunk : line.repeat(n), 'utf8', step);
  };
  setImmediate(step);
}
setInterval(() => {}, 60000);
]])

---------------------------------------------------------------------------
-- commands

--- runs a command to its end: code, ms (spawn to exit), stdout, stderr;
-- nil, err if it could not start or did not end in `secs`
local function run(cmd, args, secs)
  local out, errout = {}, {}
  local t0 = tether.hrtime()
  local child, err = tether.spawn(cmd, args, { env = ENV, channel = false,
    stdio = { stdin = "ignore", stdout = "pipe", stderr = "pipe" } })
  if not child then return nil, cmd .. ": " .. tostring(err) end
  child.stdout:on("data", function(d) out[#out + 1] = d end)
  child.stderr:on("data", function(d) errout[#errout + 1] = d end)
  local t_exit, code, sig
  local ok = wait_for(secs or 120, function(done)
    child:on("exit", function(c, s)
      t_exit, code, sig = tether.hrtime(), c, s
    end)
    child:on("close", function() done(true) end)
  end)
  if not ok then
    child:kill("SIGKILL")
    return nil, ("%s %s: did not end in %d s"):format(cmd, table.concat(args, " "), secs or 120)
  end
  if sig then code = 128 end
  return code, (t_exit - t0) / 1e6, table.concat(out), table.concat(errout)
end

local function tether_cmd(...) return run(LUA, { TETHER_BIN, ... }) end
local function pm2_cmd(...) return run(NODE, { PM2, ... }) end

--- code, ms, out, err of run(): true, out if the command succeeded, else a
-- failed CHECK
local function must(what, code, ms, out, err)
  if code == 0 then return true, out end
  local why = code == nil and tostring(ms) or (tostring(out) .. tostring(err)):gsub("%s+", " ")
  check("cli_" .. what, false, ("exit %s: %s"):format(tostring(code), why:sub(1, 500)))
  return false
end

local function daemon_pid(which)
  local s = slurp(which == "tether" and (T_HOME .. "/daemon.pid") or (P_HOME .. "/pm2.pid"))
  return s and math.tointeger(tonumber(s:match("%d+")))
end

--- VmRSS and VmHWM of a process, in KiB
local function rss_kib(pid)
  local s = pid and slurp("/proc/" .. pid .. "/status")
  if not s then return nil end
  return tonumber(s:match("VmRSS:%s*(%d+)")), tonumber(s:match("VmHWM:%s*(%d+)"))
end

--- on-CPU seconds of a process (utime + stime, all threads)
local TCK = tonumber(ver("getconf CLK_TCK")) or 100
local function cpu_s(pid)
  local s = pid and slurp("/proc/" .. pid .. "/stat")
  if not s then return nil end
  local rest = s:match("^%d+ %b() (.*)$")
  local f = {}
  for v in rest:gmatch("%S+") do f[#f + 1] = v end
  return (tonumber(f[12]) + tonumber(f[13])) / TCK
end

--- the worker pids of app `name`, by worker id / pm_id
local function workers(which, name)
  local code, _, out
  if which == "tether" then code, _, out = tether_cmd("ls", "--json")
  else code, _, out = pm2_cmd("jlist") end
  if code ~= 0 and code ~= 1 then return nil, "ls failed: " .. tostring(out or _) end
  -- pm2 jlist may print notices before the JSON
  local ok, apps = json.decode(out:match("%b[]") or out)
  if not ok then return nil, "cannot decode: " .. tostring(apps) end
  local pids = {}
  for _, a in ipairs(apps) do
    if which == "tether" and a.name == name then
      for _, w in ipairs(a.workers or {}) do
        if w.state == "running" and w.pid then pids[#pids + 1] = math.tointeger(w.pid) end
      end
    elseif which == "pm2" and a.name == name and a.pm2_env and a.pm2_env.status == "online" and (a.pid or 0) > 0 then
      pids[#pids + 1] = math.tointeger(a.pid)
    end
  end
  return pids
end

local function kill9(pid)
  if uv_ok and uv.kill then return uv.kill(pid, "sigkill") end
  return os.execute("kill -9 " .. pid)
end

--- the stamp file's lines: {pid =, ns =} and {done = true, pid =, ns =}
local function stamps(path)
  local list = {}
  local s = slurp(path) or ""
  for line in s:gmatch("[^\n]+") do
    local done, pid, ns = line:match("^(done) (%d+) (%d+)$")
    if not done then pid, ns = line:match("^(%d+) (%d+)$") end
    if pid then
      list[#list + 1] = { done = done ~= nil, pid = math.tointeger(tonumber(pid)), ns = math.tointeger(tonumber(ns)) }
    end
  end
  return list
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n
end

-- an app's stdout log files, rotated ones included (tether rotates by
-- size by default; PM2 does not without its pm2-logrotate module)
local function log_files(which, name)
  local dir = which == "tether" and (T_HOME .. "/logs") or (P_HOME .. "/logs")
  local pat = "^" .. name:gsub("%-", "%%-") .. (which == "tether" and "%.out%.log" or "%-out")
  local list = {}
  local p = io.popen("ls " .. B.sh_quote(dir) .. " 2>/dev/null")
  for f in p:lines() do
    if f:match(pat) then list[#list + 1] = dir .. "/" .. f end
  end
  p:close()
  table.sort(list)
  return list
end

--- bytes in the files, and a signature of them (name and size of each)
local function logged_bytes(which, name)
  local n, sig = 0, {}
  for _, f in ipairs(log_files(which, name)) do
    local sz = file_size(f)
    n = n + sz
    sig[#sig + 1] = f .. ":" .. sz
  end
  return n, table.concat(sig, " ")
end

local DAEMONS = {} -- system -> its daemon's pid
local SYSTEMS = {}
for _, s in ipairs { "tether", "pm2" } do
  if B.has(CASES, s) then SYSTEMS[#SYSTEMS + 1] = s end
end

local function start_app(which, name, nworkers, stamp, bytes)
  if which == "tether" then
    return must("start_" .. which .. "_" .. name, tether_cmd("start", LUA_WORKER, "-i", tostring(nworkers), "--name", name,
      "--", stamp, tostring(bytes)))
  end
  return must("start_" .. which .. "_" .. name, pm2_cmd("start", NODE_WORKER, "-i", tostring(nworkers), "--name", name,
    "--", stamp, tostring(bytes)))
end

local function delete_app(which, name)
  if which == "tether" then return must("delete_" .. which .. "_" .. name, tether_cmd("delete", name)) end
  return must("delete_" .. which .. "_" .. name, pm2_cmd("delete", name))
end

---------------------------------------------------------------------------
-- 1. ls

local LS_CASES = {
  { key = "tether_ls", label = "`tether ls`", sys = "tether", cmd = function() return tether_cmd("ls") end,
    want = "idle" },
  { key = "tether_ls_json", label = "`tether ls --json`", sys = "tether",
    cmd = function() return tether_cmd("ls", "--json") end, want = "idle" },
  { key = "pm2_ls", label = "`pm2 ls`", sys = "pm2", cmd = function() return pm2_cmd("ls") end, want = "idle" },
  { key = "pm2_jlist", label = "`pm2 jlist`", sys = "pm2", cmd = function() return pm2_cmd("jlist") end, want = "idle" },
  { key = "lua_empty", label = "floor: `lua5.4 -e ''`", cmd = function() return run(LUA, { "-e", "" }) end },
  { key = "lua_require", label = "floor: `lua5.4 -e 'require \"tether\"'`",
    cmd = function() return run(LUA, { "-e", "require 'tether'" }) end },
  { key = "node_empty", label = "floor: `node -e 0`", cmd = function() return run(NODE, { "-e", "0" }) end },
}
local ls_ms = {}

local function part_ls()
  local cases = {}
  for _, c in ipairs(LS_CASES) do
    if not c.sys or B.has(CASES, c.sys) then cases[#cases + 1] = c end
  end
  local bad = {}
  local function one(c, keep)
    local code, ms, out = c.cmd()
    if code ~= 0 or (c.want and not (out or ""):find(c.want, 1, true)) then
      bad[c.key] = (bad[c.key] or 0) + 1
      if bad[c.key] == 1 then
        note("%s: exit %s, output %q", c.key, tostring(code), tostring(code and out or ms):sub(1, 300))
      end
      return
    end
    if keep then table.insert(ls_ms[c.key], ms) end
  end
  for _, c in ipairs(cases) do
    ls_ms[c.key] = {}
    for _ = 1, WARM do one(c, false) end
  end
  for round = 1, LS_RUNS do
    for k = 0, #cases - 1 do one(cases[(round - 1 + k) % #cases + 1], true) end
  end
  for _, c in ipairs(cases) do
    local t = ls_ms[c.key]
    check("cli_ls_" .. c.key, (bad[c.key] or 0) == 0, ("%d runs, %d failed or without the app"):format(#t, bad[c.key] or 0))
    if #t > 0 then
      report(("cli_%s_median_ms"):format(c.key), median(t), ("ms, median of %d"):format(#t))
      report(("cli_%s_p90_ms"):format(c.key), quantile(t, 0.9), "ms, p90")
    end
  end
  local t = ls_ms.tether_ls
  if t and #t > 0 then
    check("cli_ls_target", median(t) < 20, ("tether ls median %.1f ms (target < 20 ms)"):format(median(t)))
    if ls_ms.pm2_ls and #ls_ms.pm2_ls > 0 then
      report("cli_pm2_ls_vs_tether_ls", median(ls_ms.pm2_ls) / median(t), "ratio of the medians (pm2 / tether)")
    end
    if ls_ms.pm2_jlist and #ls_ms.pm2_jlist > 0 and ls_ms.tether_ls_json and #ls_ms.tether_ls_json > 0 then
      report("cli_pm2_jlist_vs_tether_ls_json", median(ls_ms.pm2_jlist) / median(ls_ms.tether_ls_json),
        "ratio of the medians (pm2 jlist / tether ls --json)")
    end
  end
end

---------------------------------------------------------------------------
-- 2. daemon RSS under a flood of log lines

local rss = {} -- sys -> {idle =, max =, hwm =, after =, secs =, bytes =, cpu =, expected =}

local function part_rss(which)
  local bytes = which == "pm2" and PM2_LOG_BYTES or LOG_BYTES
  local r = { bytes_asked = bytes }
  rss[which] = r
  local pid = daemon_pid(which)
  if not pid then return check("cli_rss_" .. which, false, "no daemon pid") end
  tether.sleep(1000)
  r.idle = rss_kib(pid)
  local _, hwm0 = rss_kib(pid)
  r.hwm_before = hwm0
  local stamp = TMP .. "/logger-" .. which .. ".stamps"
  local per_worker = bytes // 2
  r.expected = (per_worker // LINE) * 2 * LINE
  local cpu0, t0 = cpu_s(pid), tether.hrtime()
  if not start_app(which, "logger", 2, stamp, per_worker) then return end
  local max, last_sig, stable, timed_out = r.idle, nil, 0, false
  local deadline = t0 + LOG_TIMEOUT * 1e9
  local t_done
  while true do
    tether.sleep(100)
    local now_rss = rss_kib(pid)
    if not now_rss then
      check("cli_rss_" .. which, false, "the daemon is gone")
      return
    end
    max = math.max(max, now_rss)
    local ndone = 0
    for _, s in ipairs(stamps(stamp)) do if s.done then ndone = ndone + 1 end end
    local _, sig = logged_bytes(which, "logger")
    if sig ~= last_sig then t_done, stable = tether.hrtime(), 0 else stable = stable + 1 end
    last_sig = sig
    -- every line written by the workers, and the files unchanged for 1 s
    if ndone >= 2 and stable >= 10 then break end
    if tether.hrtime() > deadline then
      timed_out = true
      break
    end
  end
  r.secs = ((t_done or tether.hrtime()) - t0) / 1e9
  r.cpu = cpu_s(pid) - cpu0
  r.max = max
  local _, hwm = rss_kib(pid)
  r.hwm = hwm
  r.logged = logged_bytes(which, "logger")
  r.timed_out = timed_out
  tether.sleep(2000)
  r.after = rss_kib(pid)
  tether.sleep(8000)
  r.after10 = rss_kib(pid)
  r.cpu_after = cpu_s(pid) - cpu0
  note("%s: %d B of lines asked, %d B in the log files in %.1f s%s; daemon RSS idle %d KiB, max %d KiB, VmHWM %d KiB, after %d KiB, 10 s after %d KiB, daemon CPU %.1f s (%.1f s 10 s later)",
    which, r.expected, r.logged, r.secs, timed_out and " (TIMED OUT)" or "", r.idle, r.max, r.hwm or -1, r.after or -1,
    r.after10 or -1, r.cpu, r.cpu_after)
  if which == "tether" then
    -- rotated by size (10 MiB, 5 kept): the files keep the last ones; a
    -- line the sink dropped would be an error of the app
    local _, apps = json.decode((select(3, tether_cmd("ls", "--json")) or ""):match("%b[]") or "[]")
    local errs = {}
    for _, a in ipairs(type(apps) == "table" and apps or {}) do
      if a.name == "logger" then
        for _, e in ipairs(a.errors or {}) do errs[#errs + 1] = tostring(e.text or e) end
      end
    end
    check("cli_rss_logged_tether", not timed_out and #errs == 0,
      ("%d B of lines printed, %d B kept in the rotated files, %d errors of the app%s %s"):format(r.expected, r.logged,
        #errs, timed_out and ", timed out" or "", table.concat(errs, "; ")))
  else
    check("cli_rss_logged_" .. which, not timed_out and r.logged >= r.expected,
      ("%d of %d B of lines in the log files%s"):format(r.logged, r.expected, timed_out and ", timed out" or ""))
  end
  local key = "cli_" .. which .. "_daemon"
  report(key .. "_rss_idle_kib", r.idle, "KiB VmRSS, idle (2 idle workers)")
  report(key .. "_rss_max_kib", r.max, "KiB VmRSS, max sampled while the workers wrote")
  report(key .. "_rss_hwm_kib", r.hwm or 0, "KiB VmHWM after the writing")
  report(key .. "_rss_after_kib", r.after or 0, "KiB VmRSS, 2 s after the last line was in the files")
  report(key .. "_rss_after10_kib", r.after10 or 0, "KiB VmRSS, 10 s after")
  report(key .. "_log_mb_per_s", r.expected / r.secs / 1e6, "MB/s of lines printed, start to the last in the files")
  report(key .. "_cpu_s", r.cpu, "s of daemon CPU while the workers wrote")
  if which == "tether" then
    check("cli_rss_flat_tether", (r.max - r.idle) < 8192 and ((r.after or 0) - r.idle) < 4096,
      ("idle %d KiB, max %d KiB (+%d), after %d KiB (+%d); flat: max < idle + 8 MiB, after < idle + 4 MiB")
        :format(r.idle, r.max, r.max - r.idle, r.after or 0, (r.after or 0) - r.idle))
  end
  delete_app(which, "logger")
  for _, f in ipairs(log_files(which, "logger")) do os.remove(f) end
end

---------------------------------------------------------------------------
-- 3. crash to replacement

local crash_ms = {}

local function crash_one(which, round)
  local stamp = TMP .. "/idle-" .. which .. ".stamps"
  local pids, err = workers(which, "idle")
  if not pids or #pids < 2 then
    check("cli_crash_" .. which .. "_" .. round, false, "workers: " .. tostring(err or (#pids .. " running")))
    return
  end
  table.sort(pids)
  local victim = pids[round % #pids + 1]
  local seen = {}
  for _, s in ipairs(stamps(stamp)) do seen[s.pid] = true end
  local t_kill = tether.hrtime()
  kill9(victim)
  local got
  local deadline = t_kill + 15e9
  while not got and tether.hrtime() < deadline do
    tether.sleep(5)
    for _, s in ipairs(stamps(stamp)) do
      if not seen[s.pid] and not s.done then got = s break end
    end
  end
  if not got then
    check("cli_crash_" .. which .. "_" .. round, false, "no replacement within 15 s of kill -9 " .. victim)
    return
  end
  local ms = (got.ns - t_kill) / 1e6
  table.insert(crash_ms[which], ms)
  note("%s round %d: kill -9 %d, worker %d running after %.1f ms", which, round, victim, got.pid, ms)
end

local function part_crash()
  for _, s in ipairs(SYSTEMS) do crash_ms[s] = {} end
  local last_tether_kill = 0
  for round = 1, CRASH_ROUNDS do
    for k = 0, #SYSTEMS - 1 do
      local which = SYSTEMS[(round - 1 + k) % #SYSTEMS + 1]
      if which == "tether" then
        -- max_restarts (10) within 60 s: at most 10 kills a minute
        local wait = last_tether_kill + CRASH_GAP * 1e9 - tether.hrtime()
        if wait > 0 then tether.sleep(math.ceil(wait / 1e6)) end
        last_tether_kill = tether.hrtime()
      end
      crash_one(which, round)
    end
    -- the new workers pass min_uptime (1 s, both) before their next kill
    tether.sleep(1500)
  end
  for _, s in ipairs(SYSTEMS) do
    local t = crash_ms[s]
    check("cli_crash_" .. s, #t == CRASH_ROUNDS, ("%d of %d kills replaced"):format(#t, CRASH_ROUNDS))
    if #t > 0 then
      report(("cli_%s_crash_to_running_median_ms"):format(s), median(t), ("ms, median of %d"):format(#t))
      report(("cli_%s_crash_to_running_p90_ms"):format(s), quantile(t, 0.9), "ms, p90")
    end
  end
  if crash_ms.tether and crash_ms.pm2 and #crash_ms.tether > 0 and #crash_ms.pm2 > 0 then
    report("cli_crash_pm2_vs_tether", median(crash_ms.pm2) / median(crash_ms.tether),
      "ratio of the medians (pm2 / tether)")
  end
  -- what each says of the restarts
  for _, s in ipairs(SYSTEMS) do
    local code, _, out
    if s == "tether" then code, _, out = tether_cmd("ls") else code, _, out = pm2_cmd("ls") end
    note("%s ls after the kills (exit %s):", s, tostring(code))
    for line in tostring(out):gmatch("[^\n]+") do note("  %s", line) end
  end
end

---------------------------------------------------------------------------

local function fmt(v, d)
  if v == nil then return "-" end
  return ("%." .. (d or 1) .. "f"):format(v)
end

local function mib(kib) return kib and ("%.1f"):format(kib / 1024) or "-" end

local function summary()
  print()
  if next(ls_ms) then
    print(("`ls`: wall time of the whole command, %d runs each (alternated), daemon running, app of 2 workers"):format(LS_RUNS))
    print()
    print("| command | runs | median ms | p90 ms | min ms | / tether ls |")
    print("|---|---|---|---|---|---|")
    local base = ls_ms.tether_ls and median(ls_ms.tether_ls)
    for _, c in ipairs(LS_CASES) do
      local t = ls_ms[c.key]
      if t and #t > 0 then
        print(("| %s | %d | %s | %s | %s | %s |"):format(c.label, #t, fmt(median(t)), fmt(quantile(t, 0.9)),
          fmt(math.min(table.unpack(t))), base and fmt(median(t) / base, 2) or "-"))
      end
    end
    print()
  end
  if next(rss) then
    print("Daemon RSS: idle, and while / after 2 workers print 100-byte lines (MiB)")
    print()
    print("| daemon | lines printed | idle | max while writing | VmHWM | 2 s after | 10 s after | in the files | time s | MB/s | daemon CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for _, s in ipairs(SYSTEMS) do
      local r = rss[s]
      if r and r.idle then
        print(("| %s | %.0f MiB | %s | %s | %s | %s | %s | %.0f MiB%s | %s | %s | %s |"):format(
          s == "tether" and "tether daemon" or "PM2 God daemon", r.expected / 1048576, mib(r.idle), mib(r.max),
          mib(r.hwm), mib(r.after), mib(r.after10), (r.logged or 0) / 1048576, r.timed_out and " (timed out)" or "",
          fmt(r.secs), r.secs and fmt(r.expected / r.secs / 1e6, 0) or "-", fmt(r.cpu)))
      end
    end
    print()
  end
  if next(crash_ms) then
    print("Crash to replacement: kill -9 of a worker -> its successor's first line (CLOCK_MONOTONIC), defaults")
    print()
    print("| system | kills | median ms | p90 ms | min ms | max ms | / tether |")
    print("|---|---|---|---|---|---|---|")
    local base = crash_ms.tether and median(crash_ms.tether)
    for _, s in ipairs(SYSTEMS) do
      local t = crash_ms[s]
      if t and #t > 0 then
        print(("| %s | %d | %s | %s | %s | %s | %s |"):format(s == "tether" and "tether (backoff 100 +- 25 ms)"
          or "PM2 cluster mode (restart_delay 0)", #t, fmt(median(t)), fmt(quantile(t, 0.9)),
          fmt(math.min(table.unpack(t))), fmt(math.max(table.unpack(t))), base and fmt(median(t) / base, 2) or "-"))
      end
    end
    print()
  end
end

local function cleanup()
  if B.has(CASES, "tether") then
    local code, ms, out = tether_cmd("kill")
    note("tether kill: exit %s %s", tostring(code), tostring(code and out or ms):gsub("\n", " "))
  end
  if B.has(CASES, "pm2") then
    local code, ms = pm2_cmd("kill")
    note("pm2 kill: exit %s%s", tostring(code), code and "" or " " .. tostring(ms))
  end
end

local function main()
  note("cli bench: ls x %d, log lines %d B (PM2 %d B), crash rounds %d (tether's %.1f s apart); temp dir %s",
    LS_RUNS, LOG_BYTES, PM2_LOG_BYTES, CRASH_ROUNDS, CRASH_GAP, TMP)
  note("nproc=%s load=\"%s\" %s; %s; node %s; kill(2) via %s", ver("nproc"),
    (slurp("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)"), ver("uname -srm"), ver(LUA .. " -v"),
    ver(NODE .. " --version"), uv_ok and "luv" or "kill(1)")
  if B.has(CASES, "pm2") then
    local code, _, out = pm2_cmd("--version")
    if code ~= 0 then
      check("cli_pm2_installed", false, PM2 .. " does not run (make bench-deps: npm ci in bench/pm2): " .. tostring(out))
      CASES = CASES:gsub("pm2", "")
      for i = #SYSTEMS, 1, -1 do if SYSTEMS[i] == "pm2" then table.remove(SYSTEMS, i) end end
    else
      note("pm2 %s (PM2_HOME %s)", (out:match("([%d%.]+)%s*$") or out), P_HOME)
    end
  end
  for _, s in ipairs(SYSTEMS) do
    local t0 = tether.hrtime()
    if start_app(s, "idle", 2, TMP .. "/idle-" .. s .. ".stamps", 0) then
      DAEMONS[s] = daemon_pid(s)
      note("%s: daemon %s started with the app \"idle\" (2 workers) in %.0f ms", s, tostring(daemon_pid(s)),
        (tether.hrtime() - t0) / 1e6)
    end
  end
  tether.sleep(1500)
  if B.has(PARTS, "ls") then part_ls() end
  if B.has(PARTS, "rss") then
    for _, s in ipairs(SYSTEMS) do part_rss(s) end
  end
  if B.has(PARTS, "crash") then part_crash() end
  summary()
end

local finished = false
tether.go(function()
  local ok, err = pcall(main)
  if not ok then check("cli_bench", false, "raised: " .. tostring(err)) end
  local ok2, err2 = pcall(cleanup)
  if not ok2 then check("cli_cleanup", false, tostring(err2)) end
  finished = true
  tether.stop()
end)
local interrupted = false
for _, sig in ipairs({ "SIGINT", "SIGTERM" }) do
  tether.on_signal(sig, function()
    if interrupted then return end
    interrupted = true
    note("%s: stopping both daemons", sig)
    tether.go(function()
      pcall(cleanup)
      if os.getenv("CLI_KEEP") ~= "1" then os.execute("rm -rf " .. B.sh_quote(TMP)) end
      os.exit(130)
    end)
  end)
end
tether.run()
if not finished then check("cli_bench_finished", false, "the loop ended before the bench did") end
-- nothing of either daemon left: no process has our temp dir in its
-- command line (the workers, PM2's God), the daemons' pids are gone
local left = B.orphans((TMP:gsub("^/tmp/", "/[t]mp/")))
for s, pid in pairs(DAEMONS) do
  local st = slurp("/proc/" .. pid .. "/stat")
  if st and not st:match("^%d+ %b() Z") then left = left .. (" %s daemon %d"):format(s, pid) end
end
check("cli_no_orphans", left == "", left == "" and "no process of either daemon is left" or "left running: " .. left)
if os.getenv("CLI_KEEP") ~= "1" then os.execute("rm -rf " .. B.sh_quote(TMP)) end
for _, r in ipairs(results) do
  io.write(("RESULT %s %.6g\n"):format(r[1], r[2]))
end
os.exit(B.failed == 0 and 0 or 1)
