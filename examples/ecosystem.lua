--- examples/ecosystem.lua: the tether counterpart of a PM2 ecosystem file.
--
-- One supervisor keeps two copies of examples/web_worker.lua running, with
-- restarts, backoff, an intensity limit, a memory limit, a heartbeat, a
-- graceful shutdown and log files.  It prints lifecycle events and a status
-- table, crashes one worker on purpose (restart), does a rolling reload
-- midway, and stops itself after a while.  From the repository:
--
--   make
--   LUA_PATH="$PWD/lua/?.lua;;" LUA_CPATH="$PWD/build/?.so;;" \
--     lua5.4 examples/ecosystem.lua [seconds] [leak]
--
-- seconds: how long to run before sup:stop() (default 8).  "leak" makes
-- worker 2 grow until max_memory restarts it.  Logs go to
-- $TETHER_ECOSYSTEM_LOGS (default /tmp/tether-ecosystem/).  Ctrl-C (or
-- SIGTERM) stops the workers gracefully too: handle_signals.
local tether = require "tether"

local seconds = tonumber(arg[1]) or 8
local leak = arg[2] == "leak"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local logdir = os.getenv("TETHER_ECOSYSTEM_LOGS") or "/tmp/tether-ecosystem"
assert(os.execute(("mkdir -p '%s'"):format(logdir:gsub("'", "'\\''"))),
  "cannot create " .. logdir)

local START = tether.now()
local function log(fmt, ...)
  io.write(("[%6.2f s] "):format((tether.now() - START) / 1000), fmt:format(...), "\n")
  io.stdout:flush()
end

--------------------------------------------------------------------------
-- the "ecosystem file": one app, described as data

local sup = assert(tether.supervise {
  script = here .. "/web_worker.lua",
  args = {},                        -- the worker's `...`
  env = { APP_ENV = "demo" },       -- added to ours; TETHER_WORKER_ID=<id> is added too
  instances = 2,
  restart = "always",               -- "on-failure" | "never"
  max_restarts = 5, within = 60,    -- more than 5 restarts in any 60 s: give up
  backoff = { initial = 200, max = 5000, factor = 2, jitter = 50 }, -- ms
  min_uptime = 1000,                -- ms: a run this long resets the backoff
  max_memory = "200M",              -- RSS over it: graceful restart ("memory")
  memory_interval = 500,            -- ms between RSS checks
  heartbeat = { interval = 1000, timeout = 500 }, -- ms: no PONG -> "unresponsive"
  start_timeout = 5000,             -- ms to get from spawn to ready
  shutdown = {
    message = { type = "shutdown" }, -- sent first
    timeout = 2000,                 -- ms to exit after it, then SIGTERM
    kill_timeout = 1000,            -- ms after SIGTERM, then SIGKILL
  },
  stdout = logdir .. "/web.out.log", -- appended, each line prefixed "[id] "
  stderr = logdir .. "/web.err.log",
  handle_signals = true,            -- SIGINT/SIGTERM: sup:stop(); SIGHUP: sup:reopen_logs()
})

--------------------------------------------------------------------------
-- lifecycle events

sup:on("start", function(w) log("start    worker %d, pid %d", w.id, w.pid) end)
sup:on("exit", function(w, code, signal, reason)
  log("exit     worker %d, code %s, signal %s (%s)", w.id, tostring(code), tostring(signal), reason)
end)
sup:on("restart", function(w, reason)
  log("restart  worker %d (%s), restarts so far %d", w.id, reason, w.restarts)
end)
sup:on("give_up", function(reason) log("give_up  %s", reason) end)
sup:on("error", function(err, w) log("error    worker %s: %s", w and w.id or "-", tostring(err)) end)
sup:on("message", function(w, msg)
  if msg.type == "pong" then
    log("message  worker %d: pong #%d from pid %d (%d ticks)", w.id, msg.seq, msg.pid, msg.ticks)
  elseif msg.type == "bye" then
    log("message  worker %d: bye after %d ticks, %d requests", w.id, msg.ticks, msg.requests)
  end
end)

--------------------------------------------------------------------------
-- the status table, from sup:workers()

local function status()
  print("  id      pid  state     restarts   uptime   rss MiB  heap KiB  last exit")
  for _, i in ipairs(sup:workers()) do
    print(("  %2d  %7s  %-8s  %8d  %7s  %8s  %8s  %s"):format(i.id, tostring(i.pid or "-"),
      i.state, i.restarts, i.uptime and ("%.1f s"):format(i.uptime / 1000) or "-",
      i.rss and ("%.1f"):format(i.rss / 1048576) or "-",
      i.lua_heap and ("%.0f"):format(i.lua_heap / 1024) or "-",
      i.last_reason or "-"))
  end
end

--------------------------------------------------------------------------
-- the script: ping, crash one worker, reload, stop

local timers, seq = {}, 0
local function at(fraction, fn) timers[#timers + 1] = tether.timer(seconds * 1000 * fraction, fn) end

local function ping(id, opts)
  seq = seq + 1
  local n = seq
  -- cb(err) runs once: nil once the kernel took the message
  sup:send(id, { type = "ping", seq = n }, opts, function(err)
    if err then log("send     ping #%d to worker %d failed: %s", n, id, tostring(err)) end
  end)
end

timers[#timers + 1] = tether.every(2000, function() status() end)

at(0.1, function()
  for id = 1, sup.instances do ping(id) end
  if leak then
    log("asking worker 2 to leak 32 MiB every 100 ms (max_memory is 200M)")
    sup:send(2, { type = "leak", mb = 32, every = 100 })
  end
end)

at(0.25, function()
  log("asking worker 1 to crash")
  sup:send(1, { type = "crash" })
end)

-- while worker 1 is down, a message to it waits in its queue and goes to
-- the next incarnation
sup:on("exit", function(w, _, _, reason)
  if reason == "crash" then
    log("send     ping to worker %d while it is down (queued)", w.id)
    ping(w.id, { timeout = 5000 })
  end
end)

at(0.5, function()
  log("reload   rolling restart, one worker at a time")
  sup:reload(function(err)
    log("reload   done%s", err and (": " .. tostring(err)) or "")
    status()
  end)
end)

at(1, function()
  log("stop     %g s are up: sup:stop()", seconds)
  sup:stop()
end)

sup:on("stopped", function()
  for _, t in ipairs(timers) do t:stop() end
  log("stopped  every worker is down")
  status()
  print(("logs: %s/web.out.log and web.err.log; the last lines:"):format(logdir))
  local f = io.open(logdir .. "/web.out.log")
  if f then
    local lines = {}
    for l in f:lines() do lines[#lines + 1] = l end
    f:close()
    for i = math.max(1, #lines - 3), #lines do print("  " .. lines[i]) end
  end
end)

log("supervising %d x %s for %g s (logs in %s)", sup.instances, "web_worker.lua", seconds, logdir)
tether.run()
