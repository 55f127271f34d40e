--- Pools across machines (issue 15): tether.pool{broker =}/tether.agent
-- against BullMQ (npm bullmq + ioredis, bench/broker_bullmq.js) and Celery
-- (Debian's python3-celery + python3-redis, bench/broker_celery.py), side
-- by side in one run, all three on ONE redis-server this script starts
-- (`--port 0 --unixsocket $TMP/r.sock --save ''`, every client over the
-- Unix socket) and stops at the end, on failure and on SIGINT/SIGTERM too
-- (and when this process dies: it holds the stdin of a shell that kills
-- redis-server at EOF).
--
-- An "agent" is one process on the worker side, in its own process group:
--   tether  tether.agent{size = W} (this script in mode "agent", forked with
--           detached = true): the agent process and W worker processes
--           (this script in mode "worker": tether.serve), heartbeat 1000 ms
--           and ttl 3000 ms (the defaults)
--   BullMQ  one Node process with one Worker of concurrency W and an
--           in-process processor (BullMQ's fastest; a sandboxed processor
--           adds a process hop per job)
--   Celery  `celery worker -P prefork -c W` (a main process and W pool
--           processes), Celery's defaults (prefetch multiplier 4)
-- W = BROKER_WORKERS (2) per agent: every side has 2 workers with 1 agent,
-- 4 with 2.  The submitter is one process per system, speaking the same
-- commands: this script in mode "client" (tether.pool{broker =, queue =};
-- forked, commands over its channel), a Node one (Queue + QueueEvents) and
-- a Python one (apply_async + AsyncResult.then, the redis result backend's
-- pub/sub), commands on their stdin.  This process only orchestrates.
--
-- 1. Throughput, submit to result: a closed loop with BROKER_WINDOW (256;
--    BROKER_WINDOW_BIG, 64, for 64 KiB) tasks in flight, a new one
--    submitted as each result arrives at the submitter; results counted
--    during BROKER_SECS (2) after BROKER_WARM (0.5) s; then what is in
--    flight is drained and every task is checked: one result each, the
--    right value (a task is a string of SIZE bytes, its result the length).
--    Payloads BROKER_SIZES ("100 65536"), with 1 then 2 agents
--    (BROKER_AGENTS "1 2"); the systems take turns within each round.
--    CPU per task (us: submitter, agents' whole process groups,
--    redis-server) from /proc over each run.
--    Then the same with deeper pipelines (part "deep"): tether's agents
--    with prefetch BROKER_DEEP (8: an agent holds size x concurrency +
--    prefetch tasks), BullMQ's Workers with concurrency BROKER_DEEP (its
--    only knob for the jobs a worker holds).
-- 2. Latency: an open loop (task i due at t0 + i / rate; latency = result
--    arrival - due time), BROKER_LAT_SECS (2.5) after BROKER_WARM, 100 B,
--    2 agents: every system at half of tether's max (R_t) when it can
--    sustain it (its max >= 1.1 R_t), BullMQ and Celery at half of their
--    own max, with tether at those rates too.
-- 3. Recovery: 2 agents on a fresh queue; the first alone gets
--    BROKER_RECOVERY_N (100) tasks of BROKER_RECOVERY_MS (5000) ms and holds
--    them all, then the second starts, then the first's whole process group
--    is killed (kill -9 -- -PGID).  Reported: time from the kill until all
--    of its tasks completed elsewhere, and that minus the task time.
--    tether at its defaults (heartbeat 1000, ttl 3000), agents of size 2,
--    concurrency 50.  BullMQ: Worker concurrency 100, BROKER_BULLMQ_LOCK
--    ("3000,1000": lockDuration, stalledInterval, the same timings as
--    tether's ttl and beat) by default; "default" for BullMQ's own (30000,
--    30000: 30-65 s, so not in the default run).  Celery is not measured
--    (with its defaults, early acknowledgement, the tasks a killed worker
--    held are lost; with acks_late they come back after the Redis
--    transport's visibility_timeout, 1 h).
-- 4. Redis memory: INFO memory used_memory and DBSIZE after a warm-up of
--    1000 tasks, then after BROKER_MEM_N (100000; 1000000 for the long run)
--    more, 100 B, 2 agents: tether, and BullMQ with removeOnComplete (on the
--    queues parts 1 and 2 used, when they ran: BullMQ's event stream is
--    then at its cap already).
--
-- Output: "name value unit" lines as measured, "# notes", "CHECK name
-- PASS|FAIL detail", markdown tables, and "RESULT broker_... value" lines
-- at the end.  Exits 1 if a check failed (a lost, doubled or wrong result,
-- a submitter that crashed, a process left behind, ...).
--
-- Env: BROKER_CASES ("tether bullmq celery"), BROKER_PARTS ("tp lat mem
--      deep recovery"), BROKER_SECS, BROKER_WARM, BROKER_WINDOW,
--      BROKER_WINDOW_BIG, BROKER_SIZES, BROKER_AGENTS, BROKER_WORKERS,
--      BROKER_REPS (1: rounds of part 1, median), BROKER_LAT_SECS,
--      BROKER_RECOVERY_N, BROKER_RECOVERY_MS, BROKER_BULLMQ_LOCK,
--      BROKER_MEM_N, BROKER_MEM_WINDOW (256), BROKER_LIMIT_S (60: a run's
--      slack), BROKER_NODE (node), BROKER_PYTHON (/usr/bin/python3: the
--      Debian Celery), BROKER_REDIS (redis-server), BROKER_DEEP (8),
--      BROKER_TETHER_PREFETCH (the agents' prefetch in every part but
--      "deep"; "" for tether's default).
-- Runs in about 110 s with the defaults on 2 cores (1M tasks in part 4:
-- about 4 more minutes; BullMQ's default recovery: about a minute more).
local tether = require "tether"

local MODE = ...
local SELF_PATH = debug.getinfo(1, "S").source:sub(2)

---------------------------------------------------------------------------
-- mode "worker": a tether.agent's worker (tether.serve)

if MODE == "worker" then
  local pid = tether.core.pid()
  tether.serve(function(task, info)
    if type(task) == "table" then
      tether.sleep(task.ms)
      return { n = task.n, pid = pid, attempt = info and info.attempt }
    end
    return #task
  end)
  return
end

---------------------------------------------------------------------------
-- mode "agent": broker queue size concurrency (forked, detached)

if MODE == "agent" then
  local _, broker, queue, size, conc, prefetch = ...
  local a, err = tether.agent { broker = broker, queue = queue, script = SELF_PATH, args = { "worker" },
    size = tonumber(size), concurrency = tonumber(conc), prefetch = tonumber(prefetch or "") }
  if not a then
    io.stderr:write(("# tether agent: %s\n"):format(tostring(err)))
    os.exit(2)
  end
  local errors = 0
  a:on("error", function(e)
    errors = errors + 1
    if errors <= 5 then io.stderr:write(("# tether agent %s error: %s\n"):format(queue, tostring(e))) end
  end)
  tether.parent:on("message", function(m)
    if m == "stats" then
      local s = a:stats()
      s.errors = errors
      tether.parent:send(s)
    elseif m == "close" then
      a:close(function() tether.exit(0) end)
    end
  end)
  -- the bench went away: so do we (detached, we would outlive it)
  tether.parent:on("disconnect", function() tether.exit(1) end)
  tether.parent:send({ ready = tether.core.pid() })
  return
end

---------------------------------------------------------------------------
-- mode "client": the tether submitter (forked); commands as messages

local function pct(sorted, p)
  if #sorted == 0 then return 0 / 0 end
  return sorted[math.min(#sorted, math.max(1, math.ceil(p * #sorted)))]
end

if MODE == "client" then
  local _, sock = ...
  local addr = "unix:" .. sock
  local LIMIT_S = tonumber(os.getenv("BROKER_LIMIT_S") or "") or 60
  local pools, pool_errors = {}, 0
  local function pool_of(q)
    if not pools[q] then
      local p = assert(tether.pool { broker = addr, queue = q })
      p:on("error", function(e)
        pool_errors = pool_errors + 1
        if pool_errors <= 5 then io.stderr:write(("# tether pool %s error: %s\n"):format(q, tostring(e))) end
      end)
      pools[q] = p
    end
    return pools[q]
  end
  local function wait(secs, start)
    return tether.await(function(done)
      local over = false
      local guard = tether.timer(math.floor(secs * 1000), function()
        over = true
        done(nil, "timeout")
      end)
      start(function(...)
        if over then return end
        over = true
        guard:stop()
        done(...)
      end)
    end)
  end

  -- closed loop, `window` in flight
  local function tp(m)
    local pool = pool_of(m.q)
    local late0 = pool:stats().late or 0
    local payload, size = ("x"):rep(m.size), m.size
    local c = { sent = 0, done = 0, measured = 0, errors = 0, dup = 0 }
    local t0 = tether.hrtime()
    local t_start, t_end = t0 + math.floor(m.warm * 1e9), t0 + math.floor((m.warm + m.secs) * 1e9)
    local ok, why = wait(m.warm + m.secs + LIMIT_S, function(finish)
      local function submit()
        c.sent = c.sent + 1
        local called = false
        local sent, err = pool:submit(payload, function(e, r)
          local t = tether.hrtime()
          if called then c.dup = c.dup + 1 return end
          called = true
          c.done = c.done + 1
          if e or r ~= size then
            c.errors = c.errors + 1
            c.first_error = c.first_error or tostring(e or r)
          end
          if t >= t_start and t < t_end then c.measured = c.measured + 1 end
          if t < t_end then submit() elseif c.done >= c.sent then finish(true) end
        end)
        if not sent then
          c.errors, c.done = c.errors + 1, c.done + 1
          c.first_error = c.first_error or tostring(err)
        end
      end
      for _ = 1, m.window do submit() end
    end)
    c.dup = c.dup + (pool:stats().late or 0) - late0
    c.rate = c.measured / m.secs
    c.lost = c.sent - c.done
    c.why = not ok and why or nil
    return c
  end

  -- open loop at m.rate
  local function lat(m)
    local pool = pool_of(m.q)
    local payload, size = ("x"):rep(m.size), m.size
    local total = math.max(1, math.floor(m.rate * (m.warm + m.secs) + 0.5))
    local tick = 1e9 / m.rate
    local t0 = tether.hrtime() + 2000000
    local t_start = t0 + math.floor(m.warm * 1e9)
    local lats, c, last = {}, { sent = 0, done = 0, errors = 0 }, t0
    local timer
    local ok, why = wait(m.warm + m.secs + LIMIT_S, function(finish)
      timer = tether.every(1, function()
        local now = tether.hrtime()
        if now < t0 then return end
        local want = math.min(total, (now - t0) // tick + 1)
        while c.sent < want do
          local sched = t0 + math.floor(c.sent * tick)
          c.sent = c.sent + 1
          local sent = pool:submit(payload, function(e, r)
            local t = tether.hrtime()
            c.done = c.done + 1
            last = t
            if e or r ~= size then c.errors = c.errors + 1 end
            if sched >= t_start then lats[#lats + 1] = (t - sched) / 1e6 end
            if c.sent >= total and c.done >= c.sent then finish(true) end
          end)
          if not sent then c.errors, c.done = c.errors + 1, c.done + 1 end
        end
        if c.sent >= total then timer:stop() end
      end)
    end)
    timer:stop()
    table.sort(lats)
    return { p50 = pct(lats, 0.5), p90 = pct(lats, 0.9), p99 = pct(lats, 0.99), max = lats[#lats] or 0 / 0,
      n = #lats, sent = c.sent, done = c.done, errors = c.errors, span = (last - t_start) / 1e9,
      why = not ok and why or nil }
  end

  local admin, admin_up
  local function rcmd(argv)
    if not admin then
      admin = tether.core.redis(addr, {}, function(ev, up) if ev == "state" then admin_up = up end end)
    end
    wait(10, function(done)
      local t
      t = tether.every(5, function() if admin_up then t:stop() done(true) end end)
    end)
    return wait(10, function(done)
      local ok, err = admin:command(argv, 0, function(e, r) done(r, e) end)
      if not ok then done(nil, err) end
    end)
  end

  -- exactly k tasks of 100 B, `window` in flight
  local function run_k(q, k, window)
    local pool = pool_of(q)
    local payload = ("x"):rep(100)
    local sent, done, errors = 0, 0, 0
    local t0 = tether.hrtime()
    local ok = wait(LIMIT_S * 10, function(finish)
      local function submit()
        sent = sent + 1
        local s = pool:submit(payload, function(e, r)
          done = done + 1
          if e or r ~= 100 then errors = errors + 1 end
          if sent < k then submit() elseif done >= k then finish(true) end
        end)
        if not s then errors, done = errors + 1, done + 1 end
      end
      for _ = 1, math.min(window, k) do submit() end
    end)
    return ok, errors, (tether.hrtime() - t0) / 1e9
  end

  local function info()
    local s = "\n" .. tostring(rcmd({ "INFO", "memory" }))
    local function f(k) return tonumber(s:match("\n" .. k .. ":(%d+)")) end
    return { used = f("used_memory"), dataset = f("used_memory_dataset"), clients = f("mem_clients_normal"),
      keys = rcmd({ "DBSIZE" }) }
  end

  -- (1 s of quiet before each reading, as the BullMQ client does)
  local function mem(m)
    local ok1, e1 = run_k(m.q, m.warm_n, m.window)
    tether.sleep(1000)
    local b = info()
    local ok2, e2, secs = run_k(m.q, m.n, m.window)
    tether.sleep(1000)
    local a = info()
    return { before = b.used, after = a.used, dataset_before = b.dataset, dataset_after = a.dataset,
      clients_before = b.clients, clients_after = a.clients, keys_before = b.keys, keys_after = a.keys,
      n = m.n, rate = m.n / secs, errors = e1 + e2, why = not (ok1 and ok2) and "timeout" or nil }
  end

  local held = {}
  local function hold(m)
    local h = { times = {}, attempts = {}, got = {}, dup = 0, errors = 0 }
    held[m.q] = h
    local pool = pool_of(m.q)
    h.late0 = pool:stats().late or 0
    for i = 1, m.n do
      pool:submit({ ms = m.ms, n = i }, function(e, r)
        local t = tether.hrtime()
        if h.got[i] then h.dup = h.dup + 1 return end
        h.got[i] = true
        if e or type(r) ~= "table" or r.n ~= i then h.errors = h.errors + 1 end
        h.times[#h.times + 1] = t
        h.attempts[#h.attempts + 1] = type(r) == "table" and r.attempt or 0
        if h.waiter then h.waiter() end
      end)
    end
    return { submitted = m.n }
  end

  local function await_held(m)
    local h = held[m.q]
    if not h then return { error = "nothing held on " .. m.q } end
    local ok = wait(m.limit, function(done)
      h.waiter = function() if #h.times >= m.n then done(true) end end
      h.waiter()
    end)
    h.waiter = nil
    local first, last = nil, nil
    for _, t in ipairs(h.times) do
      if not first or t < first then first = t end
      if not last or t > last then last = t end
    end
    local again = 0
    for _, a in ipairs(h.attempts) do if (a or 0) >= 2 then again = again + 1 end end
    held[m.q] = nil
    return { done = #h.times, first_ns = first, last_ns = last, again = again, errors = h.errors,
      dup = h.dup + (pool_of(m.q):stats().late or 0) - h.late0, why = not ok and "timeout" or nil }
  end

  local COMMANDS = { tp = tp, lat = lat, mem = mem, hold = hold, await = await_held }
  tether.parent:on("message", function(m)
    tether.go(function()
      if m.cmd == "quit" then
        local left = 0
        for _ in pairs(pools) do left = left + 1 end
        for _, p in pairs(pools) do p:close(function() left = left - 1 end) end
        wait(10, function(done)
          local t
          t = tether.every(10, function() if left == 0 then t:stop() done(true) end end)
        end)
        if admin then admin:close() end
        tether.parent:send({ quit = true, errors = pool_errors })
        return tether.exit(0)
      end
      local fn = COMMANDS[m.cmd]
      local ok, r = pcall(fn or error, fn and m or ("unknown command " .. tostring(m.cmd)))
      if not ok then r = { error = tostring(r) } end
      tether.parent:send(r)
    end)
  end)
  tether.parent:send({ ready = tether.core.pid(), pid = tether.core.pid() })
  return
end

---------------------------------------------------------------------------
-- the bench itself (no mode)

local function env_num(name, dflt) return tonumber(os.getenv(name) or "") or dflt end
local CASES = os.getenv("BROKER_CASES") or "tether bullmq celery"
local PARTS = os.getenv("BROKER_PARTS") or "tp lat mem deep recovery"
local SECS = env_num("BROKER_SECS", 2)
local WARM = env_num("BROKER_WARM", 0.5)
local WINDOW = env_num("BROKER_WINDOW", 256)
local WINDOW_BIG = env_num("BROKER_WINDOW_BIG", 64)
local SIZES = os.getenv("BROKER_SIZES") or "100 65536"
local AGENTS = os.getenv("BROKER_AGENTS") or "1 2"
local WORKERS = env_num("BROKER_WORKERS", 2)
local REPS = env_num("BROKER_REPS", 1)
local LAT_SECS = env_num("BROKER_LAT_SECS", 2.5)
local REC_N = env_num("BROKER_RECOVERY_N", 100)
local REC_MS = env_num("BROKER_RECOVERY_MS", 5000)
local BULLMQ_LOCK = os.getenv("BROKER_BULLMQ_LOCK") or "3000,1000"
local MEM_N = env_num("BROKER_MEM_N", 100000)
local MEM_WINDOW = env_num("BROKER_MEM_WINDOW", 256)
local LIMIT_S = env_num("BROKER_LIMIT_S", 60)
local NODE = os.getenv("BROKER_NODE") or "node"
local PYTHON = os.getenv("BROKER_PYTHON") or "/usr/bin/python3"
local REDIS = os.getenv("BROKER_REDIS") or "redis-server"
-- the agents' `prefetch` (tasks fetched beyond size x concurrency): "" for
-- tether's default
local TETHER_PREFETCH = os.getenv("BROKER_TETHER_PREFETCH") or ""
-- part "deep": 2 agents, 100 B, deeper pipelines on both sides: tether's
-- agents with prefetch BROKER_DEEP (8), BullMQ's Workers with concurrency
-- BROKER_DEEP (their only knob for jobs in flight per worker)
local DEEP = env_num("BROKER_DEEP", 8)
local START_S = 20 -- a process to say it is ready

local DIR = SELF_PATH:match("^(.*/)") or "./"
local B = dofile(DIR .. "common.lua")
local slurp, median, note, check, wait_for = B.slurp, B.median, B.note, B.check, B.wait_for
local EPOCH = tether.hrtime()
local SELF = tonumber(B.self_pid())

local results = {}
local function report(name, value, unit)
  results[#results + 1] = { name, value }
  io.write(("%-44s %12.6g %s\n"):format(name, value, unit))
  io.flush()
end

local function has(list, x) return B.has(list, x) end
local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local s = p:read("a")
  p:close()
  return (s:gsub("%s+$", ""))
end

---------------------------------------------------------------------------
-- processes: every one we start is in `groups` (its own process group,
-- killed whole) or `pids`; none may be left at the end

local TMP = sh("mktemp -d /tmp/tether-broker-bench.XXXXXX")
assert(TMP:match("^/tmp/tether%-broker%-bench%."), "mktemp -d failed: " .. TMP)
local SOCK = TMP .. "/r.sock"
local ADDR = "unix:" .. SOCK
local groups, pids = {}, {}
local live = {} -- child objects, killed at cleanup

local function track(c, group)
  live[c] = true
  c:on("exit", function() live[c] = nil end)
  if group then groups[c.pid] = true else pids[c.pid] = true end
end


--- waits for the next item of self.inbox (or the exit): item | nil, err
local function next_item(self, secs)
  return wait_for(secs, function(done)
    local function try()
      if #self.inbox > 0 then
        self.waiter = nil
        return done(table.remove(self.inbox, 1))
      end
      if self.exited then
        self.waiter = nil
        return done(nil, ("%s exited (code %s, signal %s)"):format(self.name, tostring(self.exited[1]),
          tostring(self.exited[2])))
      end
    end
    self.waiter = try
    try()
  end)
end

local function watch_exit(self, c)
  c:on("exit", function(code, sig)
    self.exited = { code, sig }
    if self.waiter then self.waiter() end
  end)
end

--- a child speaking lines: "READY ...", then "OK ..."/"ERR ..." per command
local function line_child(name, cmd, args, detached, stderr)
  local c, err = tether.spawn(cmd, args, { detached = detached, channel = false,
    stdio = { stdin = "pipe", stdout = "pipe", stderr = stderr or "inherit" } })
  if not c then return nil, name .. ": " .. tostring(err) end
  track(c, detached)
  local self = { name = name, child = c, pid = c.pid, inbox = {} }
  B.on_lines(c.stdout, function(line)
    if line:match("^READY") or line:match("^OK") or line:match("^ERR") then
      self.inbox[#self.inbox + 1] = line
      if self.waiter then self.waiter() end
    elseif line:match("^#") then
      io.write(line, "\n")
    end
  end)
  watch_exit(self, c)
  function self.cmd(line, secs)
    if self.exited then return nil, name .. " has exited" end
    c.stdin:write(line .. "\n")
    local l, e = next_item(self, secs)
    if not l then return nil, e end
    if l:match("^ERR") then return nil, l end
    return l
  end
  local ready, rerr = next_item(self, START_S)
  if not ready or not ready:match("^READY") then
    pcall(c.kill, c, "SIGKILL")
    return nil, ("%s: no READY line (%s)"):format(name, tostring(rerr or ready))
  end
  self.banner = ready
  return self
end

--- a forked tether child (modes "agent", "client"): messages, the first
-- one {ready = pid}
local function tether_child(name, args, detached)
  local c, err = tether.fork(SELF_PATH, args, { detached = detached })
  if not c then return nil, name .. ": " .. tostring(err) end
  track(c, detached)
  local self = { name = name, child = c, pid = c.pid, inbox = {} }
  c:on("message", function(m)
    self.inbox[#self.inbox + 1] = m
    if self.waiter then self.waiter() end
  end)
  watch_exit(self, c)
  function self.call(msg, secs)
    if self.exited then return nil, name .. " has exited" end
    c:send(msg)
    return next_item(self, secs)
  end
  function self.close()
    if self.exited then return true end
    c:send("close")
    return wait_for(20, function(done)
      local t
      t = tether.every(20, function() if self.exited then t:stop() done(true) end end)
    end)
  end
  local m, e = next_item(self, START_S)
  if type(m) ~= "table" or not m.ready then
    pcall(c.kill, c, "SIGKILL")
    return nil, ("%s: not ready (%s)"):format(name, tostring(e))
  end
  return self
end

--- "k=v k=v" -> {k = v} (numbers where they are)
local function kv(line)
  local t = {}
  for k, v in (line or ""):gmatch("([%w_]+)=(%S+)") do t[k] = tonumber(v) or v end
  return t
end

--- kill -SIG -- -PGID (procps' kill: dash's builtin takes no "--")
local function kill_group(pgid, sig)
  return os.execute(("env kill -%s -- -%d 2>/dev/null"):format(sig or "KILL", math.tointeger(pgid)))
end

local CLK_TCK = tonumber(sh("getconf CLK_TCK")) or 100

--- CPU seconds (user + system) of a process
local function cpu_of(pid)
  local s = slurp("/proc/" .. math.tointeger(pid) .. "/stat")
  if not s then return 0 end
  local rest = s:match("^%d+ %b() (.*)$")
  if not rest then return 0 end
  local f = {}
  for x in rest:gmatch("%S+") do f[#f + 1] = x end
  -- f[1] is field 3 (state): utime (14) and stime (15) are f[12], f[13]
  return ((tonumber(f[12]) or 0) + (tonumber(f[13]) or 0)) / CLK_TCK
end

local lfs_ok, lfs = pcall(require, "lfs")
local function proc_list()
  local list = {}
  if lfs_ok then
    for name in lfs.dir("/proc") do if name:match("^%d+$") then list[#list + 1] = tonumber(name) end end
  else
    for name in sh("ls /proc"):gmatch("%d+") do list[#list + 1] = tonumber(name) end
  end
  return list
end

--- pid -> {pgrp =, state =} of every process
local function proc_table()
  local t = {}
  for _, pid in ipairs(proc_list()) do
    local s = slurp("/proc/" .. pid .. "/stat")
    local state, pgrp
    if s then state, pgrp = s:match("^%d+ %b() (%S) %d+ (%d+)") end
    if state then t[pid] = { state = state, pgrp = tonumber(pgrp) } end
  end
  return t
end

--- CPU seconds of every process in these groups (a list of pgids)
local function groups_cpu(list)
  local want = {}
  for _, g in ipairs(list) do want[g] = true end
  local total = 0
  for pid, p in pairs(proc_table()) do
    if want[p.pgrp] then total = total + cpu_of(pid) end
  end
  return total
end

---------------------------------------------------------------------------
-- Redis: under a shell that kills it once our end of its stdin closes (at
-- the end, or when this process dies however it dies)

local redis_keeper, redis_pid

local function start_redis()
  local args = { "-c", 'redis-server "$@" </dev/null & echo "READY $!"; read x; kill -9 $! 2>/dev/null; wait',
    "sh", "--port", "0", "--unixsocket", SOCK, "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
    "--dir", TMP, "--logfile", "redis.log", "--databases", "1" }
  if REDIS ~= "redis-server" then args[2] = args[2]:gsub("^redis%-server", REDIS) end
  local k, err = line_child("redis-server", "sh", args, false)
  if not k then return nil, err end
  redis_keeper = k
  redis_pid = tonumber(k.banner:match("READY (%d+)"))
  pids[redis_pid] = true
  local up = wait_for(10, function(done)
    local t
    t = tether.every(20, function()
      if os.execute("test -S '" .. SOCK .. "'") then t:stop() done(true) end
      if k.exited then t:stop() done(nil) end
    end)
  end)
  if not up then return nil, "redis-server did not open " .. SOCK .. ": " .. (slurp(TMP .. "/redis.log") or "") end
  return true
end

local function stop_redis()
  if redis_keeper and not redis_keeper.exited then
    pcall(redis_keeper.child.stdin["end"], redis_keeper.child.stdin)
  end
end

---------------------------------------------------------------------------
-- the systems: a submitter ("client") and agents each, behind one
-- interface: client.run(cmd) -> result table | nil, err

local LABEL = { tether = "tether", bullmq = "BullMQ", celery = "Celery" }
local QUEUE = { tether = "tq", bullmq = "bq", celery = "cq" }
local ORDER = { "tether", "bullmq", "celery" }
local enabled = {}
local clients, agents = {}, { tether = {}, bullmq = {}, celery = {} }
local crashes = { tether = 0, bullmq = 0, celery = 0 }

local function start_client(sys)
  local c, err
  if sys == "tether" then
    c, err = tether_child("tether client", { "client", SOCK }, false)
  elseif sys == "bullmq" then
    c, err = line_child("bullmq client", NODE, { DIR .. "broker_bullmq.js", "client", SOCK }, false)
  else
    c, err = line_child("celery client", PYTHON, { DIR .. "broker_celery.py", "client", SOCK }, false)
  end
  if c then clients[sys] = c end
  return c, err
end

--- a command to a system's submitter: its result table, or nil, err.  A
-- submitter that died is counted and started again for the next command.
local function run(sys, cmd, secs)
  local c = clients[sys]
  if not c or c.exited then
    local e
    c, e = start_client(sys)
    if not c then return nil, e end
  end
  local r, err
  if sys == "tether" then
    r, err = c.call(cmd, secs)
    if r and r.error then r, err = nil, r.error end
  else
    local line = ("%s %s"):format(cmd.cmd, cmd.q)
    for _, k in ipairs(cmd) do line = line .. " " .. tostring(cmd[k]) end
    local l
    l, err = c.cmd(line, secs)
    r = l and kv(l)
  end
  if not r and c.exited then
    crashes[sys] = crashes[sys] + 1
    err = ("the %s submitter died (code %s, signal %s) during '%s'"):format(LABEL[sys], tostring(c.exited[1]),
      tostring(c.exited[2]), cmd.cmd)
  end
  return r, err
end

local function start_agent(sys, queue, conc, lock, prefetch)
  if sys == "tether" then
    return tether_child("tether agent", { "agent", ADDR, queue, WORKERS, conc or 1, prefetch or TETHER_PREFETCH }, true)
  elseif sys == "bullmq" then
    local lk, st = (lock or "default"):match("^([^,]+),?(.*)$")
    if st == "" then st = lk end
    return line_child("bullmq worker", NODE, { DIR .. "broker_bullmq.js", "worker", SOCK, queue, conc or WORKERS, lk, st },
      true)
  end
  local log = ("%s/celery-worker-%d.log"):format(TMP, #agents.celery + 1)
  return line_child("celery worker", PYTHON, { DIR .. "broker_celery.py", "worker", SOCK, queue, WORKERS }, true, log)
end

local function agent_groups(sys)
  local list = {}
  for _, a in ipairs(agents[sys]) do list[#list + 1] = a.pid end
  return list
end

local function cpu_snapshot(sys, groups_of)
  local c = clients[sys]
  local list = agent_groups(sys)
  if groups_of then
    list = {}
    for _, a in ipairs(groups_of) do list[#list + 1] = a.pid end
  end
  return { sub = c and not c.exited and cpu_of(c.pid) or 0, agents = groups_cpu(list),
    redis = redis_pid and cpu_of(redis_pid) or 0, t = tether.hrtime() }
end

local function ensure_agents(n)
  for _, sys in ipairs(ORDER) do
    if enabled[sys] then
      local list = agents[sys]
      while #list < n do
        local a, err = start_agent(sys, QUEUE[sys])
        if not a then
          check("broker_start_" .. sys, false, err)
          enabled[sys] = false
          break
        end
        list[#list + 1] = a
      end
    end
  end
end

local function max_agents()
  local na = 0
  for x in AGENTS:gmatch("%d+") do na = math.max(na, tonumber(x)) end
  return na
end

---------------------------------------------------------------------------
-- 1. throughput

local tp_runs = {} -- [agents][size][sys] = list of results

local function run_tp(sys, size, window, warm, secs, queue, groups_of)
  warm, secs = warm or WARM, secs or SECS
  local c0 = cpu_snapshot(sys, groups_of)
  local r, err = run(sys, { cmd = "tp", q = queue or QUEUE[sys], size = size, warm = warm, secs = secs, window = window,
    "size", "warm", "secs", "window" }, warm + secs + LIMIT_S + 10)
  if not r then return nil, err end
  local c1 = cpu_snapshot(sys, groups_of)
  local n = math.max(1, r.done or 0)
  r.cpu_sub = (c1.sub - c0.sub) / n * 1e6
  r.cpu_agents = (c1.agents - c0.agents) / n * 1e6
  r.cpu_redis = (c1.redis - c0.redis) / n * 1e6
  return r
end

local warmed = {}
local function part_tp()
  for na in AGENTS:gmatch("%d+") do
    na = tonumber(na)
    ensure_agents(na)
    -- each submitter's first burst (Node's JIT, connections, Lua script
    -- caches) is not measured: a 1 s burst of 100 B tasks first
    for _, sys in ipairs(ORDER) do
      if enabled[sys] and not warmed[sys] then
        warmed[sys] = true
        local r, err = run_tp(sys, 100, WINDOW, 0, 1)
        if not r then check("broker_warm_" .. sys, false, tostring(err)) end
      end
    end
    tp_runs[na] = tp_runs[na] or {}
    for size in SIZES:gmatch("%d+") do
      size = tonumber(size)
      local window = size > 4096 and WINDOW_BIG or WINDOW
      tp_runs[na][size] = tp_runs[na][size] or {}
      for rep = 1, REPS do
        local list = {}
        for _, sys in ipairs(ORDER) do if enabled[sys] then list[#list + 1] = sys end end
        for k = 0, #list - 1 do
          local sys = list[(rep - 1 + k) % #list + 1]
          local r, err = run_tp(sys, size, window)
          local name = ("broker_tp_%s_%da_%d"):format(sys, na, size)
          if not r then
            check(name, false, tostring(err))
          else
            local runs = tp_runs[na][size]
            runs[sys] = runs[sys] or {}
            table.insert(runs[sys], r)
            note("%s %d agent(s) x %d workers, %d B, window %d, run %d: %.0f tasks/s (%d in %gs; %d sent, %d done); " ..
              "CPU us/task: submitter %.0f, agents %.0f, redis %.0f", LABEL[sys], na, WORKERS, size, window, rep,
              r.rate, r.measured or 0, SECS, r.sent or 0, r.done or 0, r.cpu_sub, r.cpu_agents, r.cpu_redis)
            local ok = (r.errors or 1) == 0 and (r.dup or 1) == 0 and (r.lost or 1) == 0 and not r.why
            if not ok or rep == REPS then
              check(name, ok, ("%d errors, %d doubled, %d lost of %d%s%s"):format(r.errors or -1, r.dup or -1,
                r.lost or -1, r.sent or 0, r.why and (", " .. r.why) or "",
                r.first_error and (", first error: " .. tostring(r.first_error)) or ""))
            end
          end
        end
      end
    end
  end
end

local function median_rate(sys, na, size)
  local runs = tp_runs[na] and tp_runs[na][size] and tp_runs[na][size][sys]
  if not runs then return nil end
  local rates = {}
  for _, r in ipairs(runs) do rates[#rates + 1] = r.rate end
  return median(rates)
end

---------------------------------------------------------------------------
-- 2. latency

local lat_rows = {}

local function run_lat(sys, rate, why)
  local r, err = run(sys, { cmd = "lat", q = QUEUE[sys], size = 100, rate = ("%.1f"):format(rate), warm = WARM,
    secs = LAT_SECS, "size", "rate", "warm", "secs" }, WARM + LAT_SECS + LIMIT_S + 10)
  local name = ("broker_lat_%s_%d"):format(sys, math.floor(rate + 0.5))
  if not r then
    check(name, false, tostring(err))
    return
  end
  r.rate, r.sys, r.label = rate, sys, why
  lat_rows[#lat_rows + 1] = r
  note("%s at %.0f tasks/s (%s): p50 %.2f ms, p90 %.2f, p99 %.2f, max %.2f (%d tasks measured, %d sent)",
    LABEL[sys], rate, why, r.p50, r.p90, r.p99, r.max, r.n or 0, r.sent or 0)
  check(name, (r.errors or 1) == 0 and r.done == r.sent and not r.why,
    ("%d errors, %d of %d done%s"):format(r.errors or -1, r.done or 0, r.sent or 0, r.why and (", " .. r.why) or ""))
end

local function part_lat()
  local na = max_agents()
  ensure_agents(na)
  local mt = enabled.tether and median_rate("tether", na, 100)
  if mt then
    local rt = mt / 2
    run_lat("tether", rt, "half of tether's max")
    for _, sys in ipairs({ "bullmq", "celery" }) do
      local m = enabled[sys] and median_rate(sys, na, 100)
      if m and m >= 1.1 * rt then
        run_lat(sys, rt, "half of tether's max")
      elseif m then
        note("%s cannot sustain %.0f tasks/s (its max %.0f): not run at half of tether's max", LABEL[sys], rt, m)
        lat_rows[#lat_rows + 1] = { sys = sys, rate = rt, label = "half of tether's max", unsustainable = m }
      end
    end
  end
  for _, sys in ipairs({ "bullmq", "celery" }) do
    local m = enabled[sys] and median_rate(sys, na, 100)
    if m then
      run_lat(sys, m / 2, "half of " .. LABEL[sys] .. "'s max")
      if mt then run_lat("tether", m / 2, "half of " .. LABEL[sys] .. "'s max") end
    end
  end
end

---------------------------------------------------------------------------
-- 4. memory

local mem_rows = {}

local function part_mem()
  ensure_agents(max_agents())
  for _, sys in ipairs({ "tether", "bullmq" }) do
    if enabled[sys] then
      local r, err = run(sys, { cmd = "mem", q = QUEUE[sys], n = MEM_N, window = MEM_WINDOW, warm_n = 1000,
        "n", "window", "warm_n" }, LIMIT_S * 10 + 10)
      local name = "broker_mem_" .. sys
      if not r then
        check(name, false, tostring(err))
      else
        r.sys = sys
        mem_rows[#mem_rows + 1] = r
        local d = r.after - r.before
        report(name .. "_delta_bytes", d, ("bytes of used_memory after %d tasks (%d -> %d; keys %s -> %s)")
          :format(MEM_N, r.before, r.after, tostring(r.keys_before), tostring(r.keys_after)))
        report(name .. "_dataset_delta_bytes", (r.dataset_after or 0) - (r.dataset_before or 0),
          ("bytes of used_memory_dataset (%s -> %s); client buffers %s -> %s"):format(tostring(r.dataset_before),
            tostring(r.dataset_after), tostring(r.clients_before), tostring(r.clients_after)))
        if sys == "tether" then
          check(name, (r.errors or 1) == 0 and not r.why and math.abs(d) < 1024 * 1024,
            ("%d errors; used_memory %+d bytes over %d tasks (flat: under 1 MiB)"):format(r.errors or -1, d, MEM_N))
        else
          check(name, (r.errors or 1) == 0, ("%d errors; used_memory %+d bytes over %d jobs"):format(r.errors or -1, d, MEM_N))
        end
      end
    end
  end
end

---------------------------------------------------------------------------
-- 1b. deeper pipelines (tether's prefetch, BullMQ's concurrency)

local deep_rows = {}

local function part_deep()
  for _, sys in ipairs({ "tether", "bullmq" }) do
    if enabled[sys] then
      local q = QUEUE[sys] .. "_deep"
      local list = {}
      for _ = 1, max_agents() do
        local a, err
        if sys == "tether" then a, err = start_agent("tether", q, 1, nil, tostring(DEEP))
        else a, err = start_agent("bullmq", q, DEEP, "default") end
        if not a then
          check("broker_deep_" .. sys, false, tostring(err))
          break
        end
        list[#list + 1] = a
      end
      if #list == max_agents() then
        local r, err = run_tp(sys, 100, WINDOW, WARM, SECS, q, list)
        if not r then
          check("broker_deep_" .. sys, false, tostring(err))
        else
          r.sys = sys
          deep_rows[#deep_rows + 1] = r
          note("%s %d agents, %s, 100 B: %.0f tasks/s; CPU us/task: submitter %.0f, agents %.0f, redis %.0f", LABEL[sys],
            #list, sys == "tether" and ("prefetch " .. DEEP) or ("concurrency " .. DEEP), r.rate, r.cpu_sub, r.cpu_agents,
            r.cpu_redis)
          report(("broker_deep_%s_per_s"):format(sys), r.rate, sys == "tether" and ("tasks/s, agents with prefetch " .. DEEP)
            or ("jobs/s, Workers with concurrency " .. DEEP))
          check("broker_deep_" .. sys, (r.errors or 1) == 0 and (r.dup or 1) == 0 and (r.lost or 1) == 0 and not r.why,
            ("%d errors, %d doubled, %d lost of %d"):format(r.errors or -1, r.dup or -1, r.lost or -1, r.sent or 0))
        end
      end
      for _, a in ipairs(list) do
        if sys == "tether" then a.close() else a.child:kill("SIGTERM") end
      end
    end
  end
end

---------------------------------------------------------------------------
-- 3. recovery

local rec_rows = {}

--- waits until pred() (checked every 20 ms), at most secs
local function until_true(secs, pred)
  return wait_for(secs, function(done)
    local t
    t = tether.every(20, function() if pred() then t:stop() done(true) end end)
  end)
end

local function rec_report(sys, row, ok, detail)
  rec_rows[#rec_rows + 1] = row
  if row.all_s then
    report(("broker_recovery_%s_s"):format(sys), row.all_s,
      ("s from kill -9 until all %d of its tasks completed elsewhere (%s)"):format(REC_N, row.settings))
    report(("broker_recovery_%s_minus_task_s"):format(sys), row.all_s - REC_MS / 1000, "s, the same minus the task time")
  end
  check("broker_recovery_" .. sys, ok, detail)
end

local function tether_recovery()
  local q = "trq"
  local conc = math.ceil(REC_N / 2)
  local a, err = start_agent("tether", q, conc)
  if not a then return check("broker_recovery_tether", false, err) end
  local h, herr = run("tether", { cmd = "hold", q = q, n = REC_N, ms = REC_MS }, 20)
  if not h then
    a.close()
    return check("broker_recovery_tether", false, tostring(herr))
  end
  -- the first agent holds them all
  local held = 0
  local deadline = tether.hrtime() + 20e9
  while tether.hrtime() < deadline do
    local s = a.call("stats", 10)
    held = s and s.running or 0
    if held >= REC_N then break end
    tether.sleep(20)
  end
  local b, berr = start_agent("tether", q, conc)
  if not b or held < REC_N then
    a.close()
    if b then b.close() end
    return check("broker_recovery_tether", false, b and ("the first agent holds only " .. held) or berr)
  end
  -- the second one answers, and has written its heartbeat key (at once
  -- when connected): give it 300 ms
  b.call("stats", 10)
  tether.sleep(300)
  kill_group(a.pid, "KILL")
  local t_kill = tether.hrtime()
  local r, aerr = run("tether", { cmd = "await", q = q, n = REC_N, limit = REC_MS / 1000 + LIMIT_S },
    REC_MS / 1000 + LIMIT_S + 10)
  local sb = b.call("stats", 10) or {}
  b.close()
  until_true(5, function() return a.exited ~= nil end)
  if not r then return check("broker_recovery_tether", false, tostring(aerr)) end
  local row = { sys = "tether", settings = "heartbeat 1000 ms, ttl 3000 ms (defaults)", held = held, done = r.done,
    all_s = (r.done == REC_N and r.last_ns) and (r.last_ns - t_kill) / 1e9 or nil,
    first_s = r.first_ns and (r.first_ns - t_kill) / 1e9 or nil, dup = r.dup }
  -- all completed after the kill, each on a second attempt
  local before = 0
  if r.first_ns and r.first_ns < t_kill then before = 1 end
  rec_report("tether", row, r.done == REC_N and r.dup == 0 and r.errors == 0 and r.again == REC_N and before == 0,
    ("%d of %d done, %d on a second attempt, %d doubled, %d errors; the survivor redelivered %s")
      :format(r.done or 0, REC_N, r.again or 0, r.dup or -1, r.errors or -1, tostring(sb.redelivered)))
end

local function bullmq_recovery()
  local q = "brq"
  local defaults = BULLMQ_LOCK == "default"
  local a, err = start_agent("bullmq", q, REC_N, BULLMQ_LOCK)
  if not a then return check("broker_recovery_bullmq", false, err) end
  local h, herr = run("bullmq", { cmd = "hold", q = q, n = REC_N, ms = REC_MS, "n", "ms" }, LIMIT_S + 10)
  local b, berr = start_agent("bullmq", q, REC_N, BULLMQ_LOCK)
  if not h or not b or (h.active or 0) < REC_N then
    return check("broker_recovery_bullmq", false, tostring(herr or berr or ("active " .. tostring(h.active))))
  end
  tether.sleep(100)
  kill_group(a.pid, "KILL")
  local t_kill = tether.hrtime()
  local limit = REC_MS / 1000 + (defaults and 120 or LIMIT_S)
  local r, aerr = run("bullmq", { cmd = "await", q = q, n = REC_N, limit = limit, "n", "limit" }, limit + 10)
  b.child:kill("SIGTERM")
  if not r then return check("broker_recovery_bullmq", false, tostring(aerr)) end
  local lk, st = BULLMQ_LOCK:match("^([^,]+),?(.*)$")
  local first, last = tonumber(r.first_ns), tonumber(r.last_ns)
  -- completed by the killed worker: none may be
  local on_a = 0
  for pid, n in tostring(r.pids):gmatch("(%d+):(%d+)") do if tonumber(pid) == a.pid then on_a = on_a + tonumber(n) end end
  local row = { sys = "bullmq", held = h.active, done = r.done,
    settings = defaults and "lockDuration 30000 ms, stalledInterval 30000 ms (defaults)"
      or ("lockDuration %s ms, stalledInterval %s ms (tether's timings; defaults 30000, 30000)"):format(lk, st ~= "" and st or lk),
    all_s = (r.done == REC_N and last) and (last - t_kill) / 1e9 or nil,
    first_s = first and (first - t_kill) / 1e9 or nil, dup = r.dup }
  rec_report("bullmq", row, r.done == REC_N and (r.dup or 1) == 0 and on_a == 0 and (r.failed or 1) == 0,
    ("%d of %d done, %d doubled, %d failed, %d on the killed worker, %s stalled events"):format(r.done or 0, REC_N,
      r.dup or -1, r.failed or -1, on_a, tostring(r.stalled_events)))
end

---------------------------------------------------------------------------
-- tables

local function fmt(v, d)
  if v == nil or v ~= v then return "-" end
  if d then return ("%." .. d .. "f"):format(v) end
  if math.abs(v) >= 100 then return ("%.0f"):format(v) end
  if math.abs(v) >= 10 then return ("%.1f"):format(v) end
  return ("%.2f"):format(v)
end

local function human_size(n)
  if n >= 1024 and n % 1024 == 0 then return (n // 1024) .. " KiB" end
  return n .. " B"
end

--- the median of the ratios tether / other round by round (the runs of a
-- round are seconds apart: less drift of the machine's load)
local function paired(na, size, other)
  local t = tp_runs[na] and tp_runs[na][size] and tp_runs[na][size].tether
  local o = tp_runs[na] and tp_runs[na][size] and tp_runs[na][size][other]
  if not t or not o then return nil end
  local q = {}
  for i = 1, math.min(#t, #o) do
    if o[i].rate > 0 then q[#q + 1] = t[i].rate / o[i].rate end
  end
  return median(q)
end

--- "median (min - max)" of the runs, or the one run
local function rate_cell(sys, na, size)
  local runs = tp_runs[na] and tp_runs[na][size] and tp_runs[na][size][sys]
  if not runs then return "-" end
  local m = median_rate(sys, na, size)
  if #runs == 1 then return fmt(m, 0) end
  local lo, hi = math.huge, 0
  for _, r in ipairs(runs) do lo, hi = math.min(lo, r.rate), math.max(hi, r.rate) end
  return ("%.0f (%.0f - %.0f)"):format(m, lo, hi)
end

local function summary()
  local any = next(tp_runs) ~= nil
  if any then
    print()
    print(("Throughput, submit to result: closed loop, %d (64 KiB: %d) in flight, %g s measured after %g s; " ..
      "%d workers per agent; tasks/s%s"):format(WINDOW, WINDOW_BIG, SECS, WARM, WORKERS,
      REPS > 1 and (" (median of %d)"):format(REPS) or ""))
    print()
    print("| agents x workers | payload | tether | BullMQ | Celery | tether / BullMQ | tether / Celery |")
    print("|---|---|---|---|---|---|---|")
    for na in AGENTS:gmatch("%d+") do
      na = tonumber(na)
      for size in SIZES:gmatch("%d+") do
        size = tonumber(size)
        local t, b, c = median_rate("tether", na, size), median_rate("bullmq", na, size), median_rate("celery", na, size)
        local rb, rc = t and b and t / b, t and c and t / c
        local pb, pc = paired(na, size, "bullmq"), paired(na, size, "celery")
        for _, sys in ipairs(ORDER) do
          local m = median_rate(sys, na, size)
          if m then report(("broker_tp_%s_%da_%d_per_s"):format(sys, na, size), m, "tasks/s") end
        end
        if rb then report(("broker_tp_%da_%d_tether_vs_bullmq"):format(na, size), rb, "ratio of tasks/s") end
        if rc then report(("broker_tp_%da_%d_tether_vs_celery"):format(na, size), rc, "ratio of tasks/s") end
        local function ratio(r, p)
          if not r then return "-" end
          if REPS > 1 and p then return ("%.2f (by round %.2f)"):format(r, p) end
          return ("%.2f"):format(r)
        end
        print(("| %d x %d | %s | %s | %s | %s | %s | %s |"):format(na, WORKERS, human_size(size), rate_cell("tether", na, size),
          rate_cell("bullmq", na, size), rate_cell("celery", na, size), ratio(rb, pb), ratio(rc, pc)))
      end
    end
    print()
    print("CPU per task, us (each whole run: warm-up, measured part, drain): submitter / agents (whole process groups) / redis-server")
    print()
    print("| agents | payload | tether | BullMQ | Celery |")
    print("|---|---|---|---|---|")
    for na in AGENTS:gmatch("%d+") do
      na = tonumber(na)
      for size in SIZES:gmatch("%d+") do
        size = tonumber(size)
        local cells = {}
        for _, sys in ipairs(ORDER) do
          local runs = tp_runs[na] and tp_runs[na][size] and tp_runs[na][size][sys]
          if runs then
            local s, a, r = {}, {}, {}
            for _, x in ipairs(runs) do s[#s + 1], a[#a + 1], r[#r + 1] = x.cpu_sub, x.cpu_agents, x.cpu_redis end
            cells[#cells + 1] = ("%.0f / %.0f / %.0f"):format(median(s), median(a), median(r))
          else
            cells[#cells + 1] = "-"
          end
        end
        print(("| %d | %s | %s |"):format(na, human_size(size), table.concat(cells, " | ")))
      end
    end
  end
  if #deep_rows > 0 then
    local by = {}
    for _, r in ipairs(deep_rows) do by[r.sys] = r end
    local t, b = by.tether and by.tether.rate, by.bullmq and by.bullmq.rate
    print()
    print(("Deeper pipelines, %d agents x %d workers, 100 B, the same closed loop: tether agents with prefetch %d, " ..
      "BullMQ Workers with concurrency %d (instead of %d)"):format(max_agents(), WORKERS, DEEP, DEEP, WORKERS))
    print()
    print("| tether | BullMQ | tether / BullMQ | CPU us/task tether | CPU us/task BullMQ |")
    print("|---|---|---|---|---|")
    local function cpu(r) return r and ("%.0f / %.0f / %.0f"):format(r.cpu_sub, r.cpu_agents, r.cpu_redis) or "-" end
    print(("| %s | %s | %s | %s | %s |"):format(fmt(t, 0), fmt(b, 0), t and b and ("%.2f"):format(t / b) or "-",
      cpu(by.tether), cpu(by.bullmq)))
    if t and b then report("broker_deep_tether_vs_bullmq", t / b, "ratio of tasks/s") end
  end
  if #lat_rows > 0 then
    print()
    print(("Latency, submit to result: open loop (from each task's due time), 100 B, %d agents, %g s measured after %g s")
      :format(max_agents(), LAT_SECS, WARM))
    print()
    print("| system | rate, tasks/s | which | p50 ms | p90 ms | p99 ms | max ms | tasks measured |")
    print("|---|---|---|---|---|---|---|---|")
    for _, r in ipairs(lat_rows) do
      if r.unsustainable then
        print(("| %s | %.0f | %s | not run: above its max (%.0f tasks/s) | | | | |"):format(LABEL[r.sys], r.rate, r.label,
          r.unsustainable))
      else
        print(("| %s | %.0f | %s | %s | %s | %s | %s | %d |"):format(LABEL[r.sys], r.rate, r.label, fmt(r.p50), fmt(r.p90),
          fmt(r.p99), fmt(r.max), r.n or 0))
        local key = ("broker_lat_%s_%d"):format(r.sys, math.floor(r.rate + 0.5))
        report(key .. "_p50_ms", r.p50, ("ms p50 at %.0f tasks/s (%s)"):format(r.rate, r.label))
        report(key .. "_p99_ms", r.p99, ("ms p99 at %.0f tasks/s (%s)"):format(r.rate, r.label))
      end
    end
  end
  if #rec_rows > 0 then
    print()
    print(("Recovery: kill -9 of an agent's process group holding %d tasks of %g s, a second agent up")
      :format(REC_N, REC_MS / 1000))
    print()
    print("| system | settings | held by the killed agent | completed elsewhere | all done after the kill, s | minus the task time, s | first done after the kill, s | doubled |")
    print("|---|---|---|---|---|---|---|---|")
    for _, r in ipairs(rec_rows) do
      print(("| %s | %s | %s | %s | %s | %s | %s | %s |"):format(LABEL[r.sys], r.settings, tostring(r.held),
        tostring(r.done), fmt(r.all_s), r.all_s and fmt(r.all_s - REC_MS / 1000) or "-", fmt(r.first_s), tostring(r.dup)))
    end
  end
  if #mem_rows > 0 then
    print()
    print(("Redis used_memory (INFO memory) after a 1000-task warm-up, then after N more (100 B), %d agents, all results read")
      :format(max_agents()))
    print()
    print("| system | N | used_memory before | after | delta | bytes per task | used_memory_dataset delta | client buffers before / after | keys before / after | tasks/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _, r in ipairs(mem_rows) do
      local d = r.after - r.before
      print(("| %s | %d | %d | %d | %+d | %.3f | %+d | %s / %s | %s / %s | %s |"):format(
        r.sys == "tether" and "tether" or "BullMQ (removeOnComplete: true)", r.n, r.before, r.after, d, d / r.n,
        (r.dataset_after or 0) - (r.dataset_before or 0), tostring(r.clients_before), tostring(r.clients_after),
        tostring(r.keys_before), tostring(r.keys_after), fmt(r.rate, 0)))
    end
  end
  print()
end

---------------------------------------------------------------------------

local function cleanup()
  for _, c in pairs(clients) do
    if not c.exited and c.child.stdin then pcall(c.child.stdin["end"], c.child.stdin) end
  end
  for g in pairs(groups) do kill_group(g, "KILL") end
  for c in pairs(live) do
    if c ~= (redis_keeper and redis_keeper.child) then pcall(c.kill, c, "SIGKILL") end
  end
  stop_redis()
end

local function main()
  for _, sys in ipairs(ORDER) do enabled[sys] = has(CASES, sys) end
  note("broker bench: %s; parts %s; %d workers per agent, agents %s, sizes %s, window %d/%d, %gs after %gs warm-up, reps %d",
    CASES, PARTS, WORKERS, AGENTS, SIZES, WINDOW, WINDOW_BIG, SECS, WARM, REPS)
  note("nproc=%s load=\"%s\" %s; redis %s", sh("nproc"), (slurp("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)"),
    sh("uname -srm"), sh(REDIS .. " --version"):match("v=(%S+)") or "?")
  local ok, err = start_redis()
  if not ok then return check("broker_redis", false, err) end
  note("redis-server pid %d on %s", redis_pid, SOCK)
  if enabled.bullmq and not io.open(DIR .. "broker_bullmq/node_modules/bullmq/package.json") then
    note("BullMQ skipped: bench/broker_bullmq/node_modules is missing (make bench-deps runs npm ci there)")
    enabled.bullmq = false
  end
  if enabled.celery and sh(PYTHON .. " -c 'import celery, redis' && echo yes") ~= "yes" then
    note("Celery skipped: %s cannot import celery and redis (apt-get install python3-celery python3-redis)", PYTHON)
    enabled.celery = false
  end
  for _, sys in ipairs(ORDER) do
    if enabled[sys] then
      local c, e = start_client(sys)
      if not c then
        check("broker_start_" .. sys, false, e)
        enabled[sys] = false
      elseif c.banner then
        note("%s", c.banner)
      end
    end
  end
  if has(PARTS, "tp") then part_tp() end
  if has(PARTS, "lat") then part_lat() end
  if has(PARTS, "mem") then part_mem() end
  if has(PARTS, "deep") then part_deep() end
  -- the agents of parts 1, 2 and 4: stats, then closed
  for i, a in ipairs(agents.tether) do
    local s = a.call("stats", 10)
    if s then
      check("broker_tether_agent_" .. i, (s.late or 0) == 0 and (s.redelivered or 0) == 0 and (s.errors or 0) == 0
        and s.executed == s.completed,
        ("executed %s, completed %s, redelivered %s, late %s, errors %s"):format(tostring(s.executed),
          tostring(s.completed), tostring(s.redelivered), tostring(s.late), tostring(s.errors)))
    end
    a.close()
  end
  for _, w in ipairs(agents.bullmq) do w.child:kill("SIGTERM") end
  for _, w in ipairs(agents.celery) do kill_group(w.pid, "TERM") end
  if has(PARTS, "recovery") then
    if enabled.tether then tether_recovery() end
    if enabled.bullmq then bullmq_recovery() end
  end
  for _, sys in ipairs(ORDER) do
    local c = clients[sys]
    if c and not c.exited then
      if sys == "tether" then
        local r, e = c.call({ cmd = "quit" }, 20)
        if not r then
          until_true(2, function() return c.exited ~= nil end)
          if c.exited then crashes.tether = crashes.tether + 1 end
        end
        check("broker_tether_client", r and r.quit and r.errors == 0,
          r and ("%d pool errors"):format(r.errors or -1) or ("no answer to quit: %s"):format(tostring(e)))
      else
        c.cmd("quit", 10)
      end
    end
    if enabled[sys] or crashes[sys] > 0 then
      check("broker_" .. sys .. "_submitter_alive", crashes[sys] == 0,
        ("the submitter died %d time(s) (started again each time)"):format(crashes[sys]))
    end
  end
  summary()
end

local finished = false
tether.go(function()
  local ok, err = xpcall(main, debug.traceback)
  if not ok then check("broker_bench", false, "raised: " .. tostring(err)) end
  local ok2, err2 = pcall(cleanup)
  if not ok2 then check("broker_cleanup", false, tostring(err2)) end
  if redis_keeper then
    wait_for(10, function(done)
      local t
      t = tether.every(20, function() if redis_keeper.exited then t:stop() done(true) end end)
    end)
  end
  finished = true
  tether.stop()
end)
local interrupted = false
for _, sig in ipairs({ "SIGINT", "SIGTERM" }) do
  tether.on_signal(sig, function()
    if interrupted then return end
    interrupted = true
    note("%s: stopping everything", sig)
    pcall(cleanup)
    os.execute("sleep 0.2; rm -rf '" .. TMP .. "'")
    os.exit(130)
  end)
end
tether.run()
if not finished then check("broker_bench_finished", false, "the loop ended before the bench did") end

-- none of ours is left: no process in a group we made, none of the pids
local function left_over()
  local left = {}
  for pid, p in pairs(proc_table()) do
    if p.state ~= "Z" and (groups[p.pgrp] or pids[pid]) and pid ~= SELF then left[#left + 1] = pid end
  end
  table.sort(left)
  return left
end
local left
for i = 1, 50 do
  left = left_over()
  if #left == 0 then break end
  if i == 20 then pcall(cleanup) end
  os.execute("sleep 0.1")
end
local n_started = 0
for _ in pairs(groups) do n_started = n_started + 1 end
for _ in pairs(pids) do n_started = n_started + 1 end
check("broker_no_orphans", #left == 0, #left == 0
  and ("nothing left of the %d processes and process groups we started"):format(n_started)
  or "left running: " .. table.concat(left, " "))
os.execute("rm -rf '" .. TMP .. "'")
note("broker bench: %.0f s in all, load=\"%s\"", (tether.hrtime() - EPOCH) / 1e9,
  (slurp("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)"))
for _, r in ipairs(results) do
  io.write(("RESULT %s %.6g\n"):format(r[1], r[2]))
end
os.exit(B.failed == 0 and 0 or 1)
