--- Pools across machines on Redis Streams (doc/distributed.md):
-- tether.pool{broker =, queue =} submits into a queue (the submitter);
-- tether.agent{broker =, queue =, script =, size =} runs a local pool fed
-- from it on each worker machine.  The Redis connections are the C core's
-- (core/tt_redis.h: pipelining, timeouts, reconnects); the agent process
-- runs no task itself (its pool's workers do), so its heartbeat is never
-- starved by a busy task.
local tether = require "tether"
local check = require "tether.check"
local core = tether.core

local M = {}

-- the worker side unwraps this (tether.serve): the task's encoded body and
-- its info, so the agent never decodes a task
M.MARK = "\0tether.task"

---------------------------------------------------------------------------
-- the scripts (each runs atomically in Redis; all keys in one hash slot)

-- KEYS: tasks, sub:T1, sub:T2, ...   ARGV: reply stream, then id and body
-- of each task (the tasks one submitter issued in one loop iteration)
local SUBMIT = [[
local a = 2
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', 86400) then
    redis.call('XADD', KEYS[1], '*', 'id', ARGV[a], 'reply', ARGV[1], 'body', ARGV[a + 1])
  end
  a = a + 2
end
return 1]]

-- KEYS: tasks, then the reply stream of each task   ARGV: group, m, the m
-- consumer names of this agent (its name, and the names it had before it
-- was presumed dead), then entry, task id, status, body, attempt of each
-- task.  For each task 1, or 0: no name of ours holds the entry (any
-- more): another host took it.
local COMPLETE = [=[
local g, m = ARGV[1], tonumber(ARGV[2])
local names = {}
for i = 3, 2 + m do names[ARGV[i]] = true end
local out, acked, touched = {}, {}, {}
local a = 3 + m
for t = 2, #KEYS do
  local e = ARGV[a]
  local p = redis.call('XPENDING', KEYS[1], g, e, e, 1)
  if #p > 0 and names[p[1][2]] then
    acked[#acked + 1] = e
    redis.call('XADD', KEYS[t], 'MAXLEN', '~', 100000, '*', 'id', ARGV[a + 1], 'status', ARGV[a + 2],
      'body', ARGV[a + 3], 'attempt', ARGV[a + 4])
    touched[KEYS[t]] = true
    out[t - 1] = 1
  else
    out[t - 1] = 0
  end
  a = a + 5
end
if #acked > 0 then
  redis.call('XACK', KEYS[1], g, unpack(acked))
  redis.call('XDEL', KEYS[1], unpack(acked))
end
for k in pairs(touched) do redis.call('PEXPIRE', k, 3600000) end
return out]=]

-- tasks per script call (Lua's unpack and Redis's argument count stay small)
local BATCH = 128

-- KEYS: reaper lock   ARGV: host, ttl ms.  1: we reap.
local LEAD = [[
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0]]

-- KEYS: tasks, dead   ARGV: group, entry, dead consumer.  Moves an entry
-- that was delivered too often to the dead-letter stream, if the dead
-- consumer still holds it; returns its fields.
local BURY = [[
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3]) == 0 then return {} end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if #e == 0 then return {} end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', unpack(e[1][2]))
local f = e[1][2]
local id, reply
for i = 1, #f, 2 do
  if f[i] == 'id' then id = f[i + 1] elseif f[i] == 'reply' then reply = f[i + 1] end
end
if reply then
  redis.call('XADD', reply, 'MAXLEN', '~', 100000, '*', 'id', id, 'status', 'dead', 'body', '')
  redis.call('PEXPIRE', reply, 3600000)
end
return f]]

-- Runs a script by its SHA1 (EVALSHA: Redis neither receives nor hashes
-- the body again), learnt once per process with SCRIPT LOAD; until then,
-- and when Redis lost its script cache (restarted: NOSCRIPT), by EVAL.
-- argv: {false, false, numkeys, keys..., args...}
local shas, loading = {}, {}
local function eval(conn, script, argv, cb)
  local sha = shas[script]
  if sha then
    argv[1], argv[2] = "EVALSHA", sha
  else
    argv[1], argv[2] = "EVAL", script
    if not loading[script] then
      loading[script] = true
      conn:command({ "SCRIPT", "LOAD", script }, 0, function(err, h)
        loading[script] = nil
        if not err and type(h) == "string" then shas[script] = h end
      end)
    end
  end
  return conn:command(argv, 0, function(err, reply)
    if err and argv[1] == "EVALSHA" and err.code == "ERR_BROKER" and tostring(err.message):match("NOSCRIPT") then
      shas[script] = nil
      return eval(conn, script, argv, cb)
    end
    cb(err, reply)
  end)
end

local function keys(queue)
  local p = "{tether:" .. queue .. "}"
  return {
    prefix = p, tasks = p .. ":tasks", reaper = p .. ":reaper", dead = p .. ":dead",
    host = function(h) return p .. ":host:" .. h end,
    sub = function(t) return p .. ":sub:" .. t end,
    reply = function(s) return p .. ":reply:" .. s end,
  }
end

local GROUP = "agents"

local function random_id()
  local t = {}
  for i = 1, 4 do t[i] = ("%04x"):format(math.random(0, 0xffff)) end
  return table.concat(t)
end

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("l") or "host"
  if f then f:close() end
  return h
end

-- fields {"k1", "v1", ...} -> {k1 = v1}
local function fields(list)
  local t = {}
  for i = 1, #(list or {}), 2 do t[list[i]] = list[i + 1] end
  return t
end

-- A user's callback, run so that an error in it cannot stop our reading:
-- it is raised again from the loop (tether.run or the "uncaught" handler)
local function call_user(fn, ...)
  local ok, err = xpcall(fn, debug.traceback, ...)
  if not ok then tether.defer(function() error(err, 0) end) end
end

-- an address fit for a message: its password left out
local function shown(address)
  return (address:gsub("^(redis://[^@/]*:)[^@/]*@", "%1***@"):gsub("password=[^&]*", "password=***"))
end

local function connect(self, address, on_up)
  local conn, err = core.redis(address, { reply_timeout = self._reply_timeout }, function(event, up, e)
    if event ~= "state" then return end
    if up then
      on_up()
    elseif e and not self._down_reported then
      self._down_reported = true
      if e.code == "ERR_BROKER" then
        -- it answered, and said no: AUTH refused, or still loading
        self:emit("error", tether.error("ERR_BROKER",
          ("the broker at %s refused the connection (a wrong password, or Redis still loading: %s); retrying")
            :format(shown(address), e.message)))
      else
        self:emit("error", tether.error("ERR_BROKER_DOWN",
          ("the broker at %s cannot be reached (%s); retrying"):format(shown(address), e.message)))
      end
    end
  end)
  return conn, err
end

local BROKER_OPTIONS = { broker = "string", queue = "string", reply_timeout = "ms" }

---------------------------------------------------------------------------
-- the submitter: tether.pool{broker =, queue =}

local Submitter = setmetatable({}, { __index = tether.Emitter })
Submitter.__index = Submitter
M.Submitter = Submitter

local SUBMIT_OPTIONS = {}
for k, v in pairs(BROKER_OPTIONS) do SUBMIT_OPTIONS[k] = v end

function M.submitter(spec, level)
  check.options("pool", 1, spec, SUBMIT_OPTIONS, level)
  if type(spec.queue) ~= "string" or spec.queue == "" then
    check.argerror("pool", 1, "option 'queue' (a name) is required with 'broker'", level)
  end
  local self = setmetatable({ queue = spec.queue, _k = keys(spec.queue), _id = hostname() .. ":" .. random_id(),
    _seq = 0, _inflight = {}, _n = 0, _outbox = {}, _last = "0-0", _reply_timeout = spec.reply_timeout,
    _stats = { submitted = 0, done = 0, failed = 0, late = 0, redelivered = 0 } }, Submitter)
  self._reply = self._k.reply(self._id)
  local err
  self._cmd, err = connect(self, spec.broker, function() self:_resubmit() end)
  if not self._cmd then return nil, err end
  self._read, err = connect(self, spec.broker, function() self:_read_results() end)
  if not self._read then
    self._cmd:close()
    return nil, err
  end
  return self
end

-- Sends what was submitted in this loop iteration: one script call per
-- BATCH tasks (pipelined with the rest of the iteration's commands)
function Submitter:_send(t)
  t.sent = "sending"
  self._outbox[#self._outbox + 1] = t
  if self._flush_due then return end
  self._flush_due = true
  tether.defer(function()
    self._flush_due = false
    local out = self._outbox
    self._outbox = {}
    for i = 1, #out, BATCH do self:_send_batch(table.move(out, i, math.min(i + BATCH - 1, #out), 1, {})) end
  end)
end

function Submitter:_send_batch(batch)
  local k = self._k
  local argv = { false, false, #batch + 1, k.tasks }
  for _, t in ipairs(batch) do argv[#argv + 1] = k.sub(t.id) end
  argv[#argv + 1] = self._reply
  for _, t in ipairs(batch) do
    argv[#argv + 1] = t.id
    argv[#argv + 1] = t.body
  end
  local ok = eval(self._cmd, SUBMIT, argv, function(err)
    local again = {}
    for _, t in ipairs(batch) do
      if self._inflight[t.id] == t and t.sent == "sending" then
        t.sent = not err
        again[#again + 1] = t
      end
    end
    if err and err.code == "ERR_BROKER" then
      -- Redis refused it (LOADING, OOM, ...): said once, tried again
      if not self._refused_reported then
        self._refused_reported = true
        self:emit("error", err)
      end
      tether.timer(500, function()
        for _, t in ipairs(again) do
          if self._inflight[t.id] == t and t.sent == false and self._cmd:connected() then self:_send(t) end
        end
      end)
    end
    -- lost on the way (down, timeout): sent again once reconnected
  end)
  if not ok then
    for _, t in ipairs(batch) do if t.sent == "sending" then t.sent = false end end
  end
end

-- after a reconnect: every task without a result goes again (the marker
-- makes a second copy of one that did arrive a no-op; a Redis that lost
-- its data gets them all again)
function Submitter:_resubmit()
  self._down_reported = false
  for _, t in pairs(self._inflight) do
    if t.sent ~= "sending" then self:_send(t) end
  end
end

--- pool:submit(task, cb) -> true | nil, err
function Submitter:submit(task, cb)
  if type(cb) ~= "function" then check.argerror("submit", 2, "function expected, got " .. type(cb), 2) end
  if self._closing then return nil, tether.error("ERR_CLOSED", "the pool is closing") end
  local body, err = core.encode(task)
  if not body then return nil, err end
  self._seq = self._seq + 1
  local t = { id = self._id .. ":" .. self._seq, seq = self._seq, body = body, cb = cb, sent = false }
  self._inflight[t.id] = t
  self._n = self._n + 1
  self._stats.submitted = self._stats.submitted + 1
  if self._cmd:connected() then self:_send(t) end
  return true
end

-- run and map as a local pool's (they only use submit)
do
  local Pool = require("tether.pool").Pool
  Submitter.run, Submitter.map = Pool.run, Pool.map
end

function Submitter:_result(f)
  local t = self._inflight[f.id]
  if not t then
    self._stats.late = self._stats.late + 1 -- a second result for a task: dropped
    return
  end
  self._inflight[f.id] = nil
  self._n = self._n - 1
  -- it ran before, on a host that died or stalled
  if (tonumber(f.attempt) or 1) > 1 then self._stats.redelivered = self._stats.redelivered + 1 end
  local err, value
  if f.status == "ok" then
    local v, derr = core.decode(f.body or "")
    if derr then err = derr else value = v end
  elseif f.status == "dead" then
    err = tether.error("ERR_WORKER_CRASH", "the task was delivered too many times without completing (dead-lettered)")
  else
    local e = core.decode(f.body or "")
    err = tether.error(type(e) == "table" and type(e.code) == "string" and e.code or "ERR_TASK_FAILED",
      type(e) == "table" and type(e.message) == "string" and e.message or "the task failed")
  end
  if err then self._stats.failed = self._stats.failed + 1 else self._stats.done = self._stats.done + 1 end
  call_user(t.cb, err, value)
  if self._n == 0 and self._on_idle then
    local fn = self._on_idle
    self._on_idle = nil
    fn()
  end
end

-- one read of our result stream (blocking up to 1 s), then the next
function Submitter:_read_results()
  self._down_reported = false
  if self._reading or self._closed then return end
  self._reading = true
  self._read:command({ "XREAD", "COUNT", 256, "BLOCK", 1000, "STREAMS", self._reply, self._last }, 1000, function(err, reply)
    self._reading = false
    if self._closed then return end
    if err then
      if err.code == "ERR_BROKER" then
        if not self._read_err_reported then
          self._read_err_reported = true
          self:emit("error", err)
        end
        return tether.timer(500, function() self:_read_results() end)
      end
      return -- down: _read_results runs again once reconnected
    end
    self._read_err_reported = false
    local entries = reply and reply[1] and reply[1][2] or {}
    if #entries > 0 then
      local del = { "XDEL", self._reply }
      local subs = { "DEL" }
      for _, e in ipairs(entries) do
        self._last = e[1]
        del[#del + 1] = e[1]
        subs[#subs + 1] = self._k.sub(fields(e[2]).id or "")
      end
      -- read: gone from Redis (memory stays flat), with their markers; on
      -- this connection, which just answered, ahead of the next read
      local nop = function() end
      self._read:command(del, 0, nop)
      self._read:command(subs, 0, nop)
    end
    self:_read_results()
    for _, e in ipairs(entries) do self:_result(fields(e[2])) end
  end)
end

function Submitter:stats()
  local s = {}
  for k, v in pairs(self._stats) do s[k] = v end
  s.pending = self._n
  return s
end

-- the connections closed, our result stream deleted first when Redis can
-- be reached (what is queued goes first: the last deletions); cb()
function Submitter:_finish(cb)
  if self._finishing then
    if cb then self:once("close", cb) end
    return
  end
  self._finishing = true
  local function done()
    self._cmd:close()
    self._read:close()
    self.closed = true
    if cb then cb() end
    self:emit("close")
  end
  if not self._cmd:connected() or
      not self._cmd:command({ "DEL", self._reply }, 0, done) then
    tether.defer(done)
  end
end

--- close([cb]): waits for every submitted task's callback, then closes.
-- (Tasks wait in the queue for an agent, however long that takes:
-- terminate() stops waiting.)
function Submitter:close(cb)
  self._closing = true
  local function finish() self:_finish(cb) end
  if self._n == 0 then tether.defer(finish) else self._on_idle = finish end
  return true
end

--- terminate(): stops waiting for results: every task without one fails
-- now with ERR_CLOSED (one already in the queue may still run on an agent;
-- its result is not read), then the pool closes.
function Submitter:terminate()
  if self.closed or self._finishing then return true end
  self._closing = true
  local pending = {}
  for _, t in pairs(self._inflight) do pending[#pending + 1] = t end
  table.sort(pending, function(a, b) return a.seq < b.seq end)
  local idle = self._on_idle -- a close() that waited: its cb runs too
  self._inflight, self._n, self._outbox, self._on_idle = {}, 0, {}, nil
  for _, t in ipairs(pending) do
    self._stats.failed = self._stats.failed + 1
    call_user(t.cb, tether.error("ERR_CLOSED", "the pool was terminated before the task's result came"))
  end
  if idle then idle() else self:_finish() end
  return true
end

---------------------------------------------------------------------------
-- the agent: tether.agent{broker =, queue =, script =, size =, ...}

local Agent = setmetatable({}, { __index = tether.Emitter })
Agent.__index = Agent
M.Agent = Agent

local AGENT_OPTIONS = { heartbeat = "ms", ttl = "ms", max_deliver = "positive", prefetch = "count" }
for k, v in pairs(BROKER_OPTIONS) do AGENT_OPTIONS[k] = v end

function M.agent(spec)
  if type(spec) ~= "table" then check.argerror("agent", 1, "table expected, got " .. type(spec), 3) end
  if type(spec.broker) ~= "string" then check.argerror("agent", 1, "option 'broker' is required", 3) end
  if type(spec.queue) ~= "string" or spec.queue == "" then check.argerror("agent", 1, "option 'queue' is required", 3) end
  local pool_spec, mine = {}, {}
  for k, v in pairs(spec) do
    if AGENT_OPTIONS[k] == nil then pool_spec[k] = v else mine[k] = v end
  end
  check.options("agent", 1, mine, AGENT_OPTIONS, 3)
  local floor = math.floor -- whole numbers for Redis ("3000", not "3000.0")
  local self = setmetatable({ queue = spec.queue, _k = keys(spec.queue),
    _beat = floor(spec.heartbeat or 1000), _ttl = floor(spec.ttl or 3000), _max_deliver = floor(spec.max_deliver or 5),
    _reply_timeout = spec.reply_timeout, _running = 0, _unsettled = {}, _active = {}, _done = {},
    _reserved = 0, _completing = 0,
    _stats = { executed = 0, completed = 0, redelivered = 0, late = 0, dead = 0 } }, Agent)
  if self._beat < 1 then check.argerror("agent", 1, "option 'heartbeat' must be 1 ms or more", 3) end
  if self._ttl <= self._beat then check.argerror("agent", 1, "option 'ttl' must be above 'heartbeat'", 3) end
  self.host = hostname() .. ":" .. core.pid() .. ":" .. random_id()
  self._names = { self.host } -- this one first, then those we had (see _run)
  local pool, perr = tether.pool(pool_spec)
  if not pool then return nil, perr end
  self._pool = pool
  pool:on("error", function(e) self:emit("error", e) end)
  -- tasks held at once: the pool's slots, plus as many again fetched ahead
  -- (a pipeline one task deep made every task wait a round trip: measured
  -- 1.4x BullMQ with 2 agents, 3.5x with 8 ahead; BENCHMARKS.md), more
  -- while tasks are short (_pace)
  local slots = (pool_spec.size or core.parallelism()) * (pool_spec.concurrency or 1)
  self._slots = slots
  self._capacity = slots + math.floor(spec.prefetch or slots)
  -- by default, while tasks are short, as many ahead as this agent
  -- completes in AHEAD_MS (at most MAX_AHEAD): a few slots' worth covers a
  -- round trip to Redis only when tasks take longer than one
  self._adaptive = spec.prefetch == nil
  self._base = self._capacity
  self._win_start, self._win_n, self._last_done = core.now(), 0, 0
  local err
  self._cmd, err = connect(self, spec.broker, function() self:_up() end)
  if not self._cmd then pool:terminate() return nil, err end
  self._fetch_conn, err = connect(self, spec.broker, function()
    self._recover = true -- what was fetched before may not have reached us
    self:_fetch()
  end)
  if not self._fetch_conn then
    self._cmd:close()
    pool:terminate()
    return nil, err
  end
  self._timer = tether.every(self._beat, function() self:_tick() end)
  return self
end

local nop = function() end

-- connected (again): the group exists, we are alive, unsettled results go
function Agent:_up()
  self._down_reported = false
  local k = self._k
  self._cmd:command({ "XGROUP", "CREATE", k.tasks, GROUP, "0", "MKSTREAM" }, 0, nop) -- BUSYGROUP: fine
  self:_heartbeat()
  -- a read on this connection whose answer was lost may have left
  -- entries on us: the next read on the other asks Redis what we hold
  self._recover = true
  local unsettled = self._unsettled
  self._unsettled = {}
  for _, c in ipairs(unsettled) do
    c.retried = true -- a refusal may mean the first try got through
    self:_complete(c)
  end
  self:_fetch()
end

function Agent:_heartbeat()
  if self._beating then return end
  local k = self._k
  local first = not self._registered
  local host = self.host
  local argv = { "SET", k.host(host), "1", "PX", self._ttl }
  if not first then argv[#argv + 1] = "XX" end
  self._beating = true
  self._cmd:command(argv, 0, function(err, ok)
    self._beating = false
    if err or host ~= self.host then return end
    if ok then
      self._registered = true
      if first then self:_fetch() end
      return
    end
    -- our key expired (we were stopped or cut off past the TTL): our tasks
    -- may have gone to others, and their completions here will be refused;
    -- from now on we are a new consumer
    self.host = hostname() .. ":" .. core.pid() .. ":" .. random_id()
    table.insert(self._names, 1, self.host)
    self._names[9] = nil -- older ones hold nothing: reaped a beat after their key went
    self._registered = false
    self:emit("error", tether.error("ERR_BROKER", "this agent was presumed dead (heartbeat expired); it goes on as " .. self.host))
    self:_heartbeat()
  end)
end

function Agent:_tick()
  if not self._cmd:connected() then return end
  self:_heartbeat() -- closing too: the running tasks are still ours
  if not self._closing then self:_reap() end
end

-- Runs one task (fields from its stream entry) in the local pool.  The
-- entry is held in _active from its start until its completion is settled
-- (acknowledged or refused), so it never runs twice here.  It completes
-- under any name this agent had: presumed dead and renamed, our own
-- reaper may claim our old name's entries while they run here, and a
-- completion fenced by one name only would leave them on a live host that
-- never runs them again (found: a task waited for ever after a restart).
function Agent:_run(entry_id, f, attempt)
  if self._active[entry_id] then return end -- running (or completing) here already
  local c = { entry = entry_id, id = f.id or "", reply = f.reply or "", attempt = attempt }
  self._active[entry_id] = c
  self._running = self._running + 1
  self._stats.executed = self._stats.executed + 1
  local wrapped = { [M.MARK] = f.body or "", info = { task_id = f.id, attempt = attempt } }
  local ok, err = self._pool:submit(wrapped, function(e, result)
    self._running = self._running - 1
    if e then
      c.status, c.body = "failed", core.encode({ code = e.code, message = e.message })
    else
      local b, eerr = core.encode(result)
      if b then c.status, c.body = "ok", b
      else c.status, c.body = "failed", core.encode({ code = eerr.code, message = eerr.message }) end
    end
    self:_complete(c) -- (the next tasks are asked for with it)
  end)
  if not ok then
    -- our pool cannot take it (it gave up, it is closed): the task fails
    -- with why, rather than wait on a host that will never run it
    self._running = self._running - 1
    c.status, c.body = "failed", core.encode({ code = err.code, message = err.message })
    self:_complete(c)
    if not self._pool_error_reported then
      self._pool_error_reported = true
      self:emit("error", err)
    end
  end
end

local AHEAD_MS, MAX_AHEAD = 10, 64

-- how many more tasks to ask for: nothing completed for a while (idle, or
-- tasks got long), no more ahead than the default again
function Agent:_room()
  if self._adaptive and self._capacity > self._base and core.now() - self._last_done > 5 * AHEAD_MS then
    self._capacity = self._base
    self._win_start, self._win_n = core.now(), 0
  end
  return self._capacity - self._running - self._reserved
end

-- n completions now: the tasks held at once follow the rate (see M.agent)
function Agent:_pace(n)
  if not self._adaptive then return end
  self._win_n = self._win_n + n
  local now = core.now()
  self._last_done = now
  local span = now - self._win_start
  if span < 50 then return end
  local ahead = math.ceil(self._win_n / span * AHEAD_MS)
  if ahead < self._slots then ahead = self._slots elseif ahead > MAX_AHEAD then ahead = MAX_AHEAD end
  self._capacity = self._slots + ahead
  self._win_start, self._win_n = now, 0
end

-- Completions are sent together: those of one loop iteration in one
-- script call (per BATCH), with a read of as many new tasks as they freed
-- slots for, in the same write.
function Agent:_complete(c)
  self._done[#self._done + 1] = c
  if self._flush_due then return end
  self._flush_due = true
  tether.defer(function()
    self._flush_due = false
    local done = self._done
    self._done = {}
    self:_pace(#done)
    if not self._cmd:connected() then
      table.move(done, 1, #done, #self._unsettled + 1, self._unsettled)
    else
      for i = 1, #done, BATCH do self:_complete_batch(table.move(done, i, math.min(i + BATCH - 1, #done), 1, {})) end
    end
    if not self:_read_more() then self:_fetch() end
    if self._closing then self:_maybe_closed() end
  end)
end

function Agent:_complete_batch(batch)
  local k = self._k
  local argv = { false, false, #batch + 1, k.tasks }
  for _, c in ipairs(batch) do argv[#argv + 1] = c.reply end
  argv[#argv + 1] = GROUP
  argv[#argv + 1] = #self._names
  table.move(self._names, 1, #self._names, #argv + 1, argv)
  for _, c in ipairs(batch) do
    argv[#argv + 1] = c.entry
    argv[#argv + 1] = c.id
    argv[#argv + 1] = c.status
    argv[#argv + 1] = c.body
    argv[#argv + 1] = c.attempt
  end
  self._completing = self._completing + 1
  eval(self._cmd, COMPLETE, argv, function(err, res)
    self._completing = self._completing - 1
    if err then
      if err.code == "ERR_BROKER" then
        -- refused for now (LOADING, OOM, ...): said, tried again
        self:emit("error", err)
        tether.timer(500, function() for _, c in ipairs(batch) do self:_complete(c) end end)
      else
        -- no answer: tried again once connected (the script is idempotent)
        table.move(batch, 1, #batch, #self._unsettled + 1, self._unsettled)
      end
      return
    end
    for i, c in ipairs(batch) do
      if self._active[c.entry] == c then self._active[c.entry] = nil end
      if type(res) == "table" and res[i] == 1 then
        self._stats.completed = self._stats.completed + 1
      elseif not c.retried then
        self._stats.late = self._stats.late + 1 -- not ours any more: refused
      end
    end
    if self._closing then self:_maybe_closed() end
  end)
end

-- As many new tasks as there is room for, asked without blocking on the
-- command connection (with the completions that made the room); true if
-- asked.  None there: the blocking read on the other connection waits.
function Agent:_read_more()
  if self._closing or not self._registered or self._recover or not self._cmd:connected() then return false end
  local room = self:_room()
  if room <= 0 then return false end
  self._reserved = self._reserved + room
  self._cmd:command({ "XREADGROUP", "GROUP", GROUP, self.host, "COUNT", room, "STREAMS", self._k.tasks, ">" }, 0,
    function(err, reply)
      self._reserved = self._reserved - room
      if self._closing then return end
      if err then
        -- what it fetched may be ours without our knowing: asked again
        if err.code ~= "ERR_BROKER" then self._recover = true end
        return self:_fetch()
      end
      local entries = reply and reply[1] and reply[1][2] or {}
      for _, e in ipairs(entries) do
        if type(e) == "table" and type(e[2]) == "table" then self:_run(e[1], fields(e[2]), 1) end
      end
      self:_fetch()
    end)
  return true
end

-- Takes new tasks while the pool has room (one blocking read at a time).
function Agent:_fetch()
  if self._fetching or self._closing or not self._registered then return end
  local recover = self._recover
  local room = self:_room()
  if (room <= 0 and not recover) or not self._fetch_conn:connected() then return end
  self._fetching = true
  local host = self.host
  -- after a reconnect, first what Redis says we hold (a read whose answer
  -- was lost left entries on us that we never saw); then new ones
  self._recover = false
  if recover then room = 0 end
  self._reserved = self._reserved + room
  self._fetch_conn:command({ "XREADGROUP", "GROUP", GROUP, host, "COUNT", recover and 1000 or room,
    "BLOCK", 1000, "STREAMS", self._k.tasks, recover and "0" or ">" }, 1000, function(err, reply)
    self._fetching = false
    self._reserved = self._reserved - room
    if self._closing then return end
    if err then
      if recover then self._recover = true end
      if err.code == "ERR_BROKER" then
        -- e.g. NOGROUP (the stream was deleted): made again, then read again
        self._cmd:command({ "XGROUP", "CREATE", self._k.tasks, GROUP, "0", "MKSTREAM" }, 0, nop)
        return tether.timer(200, function() self:_fetch() end)
      end
      return -- down: fetched again once reconnected
    end
    local entries = reply and reply[1] and reply[1][2] or {}
    for _, e in ipairs(entries) do
      if type(e) == "table" and type(e[2]) == "table" then self:_run(e[1], fields(e[2]), 1) end
    end
    self:_fetch()
  end)
end

-- The leader takes the pending tasks of hosts whose heartbeat expired.
-- One reaping at a time: a Redis that stalled must not let several passes
-- claim the same entries.
function Agent:_reap()
  if self._reaping then return end
  self._reaping = 0
  local function hold() self._reaping = self._reaping + 1 end
  local function release()
    self._reaping = self._reaping - 1
    if self._reaping == 0 then self._reaping = nil end
  end
  local k = self._k
  hold()
  self._cmd:command({ "EVAL", LEAD, 1, k.reaper, self.host, self._ttl }, 0, function(err, lead)
    if err or lead ~= 1 or self._closing then return release() end
    self._cmd:command({ "XINFO", "CONSUMERS", k.tasks, GROUP }, 0, function(e2, consumers)
      if not e2 and type(consumers) == "table" then
        for _, c in ipairs(consumers) do
          local info = fields(c)
          local name = info.name
          if name and name ~= self.host then
            hold()
            self._cmd:command({ "EXISTS", k.host(name) }, 0, function(e3, alive)
              if e3 or alive ~= 0 then return release() end
              if (info.pending or 0) == 0 then
                -- gone, owning nothing and idle long: forgotten (not sooner:
                -- DELCONSUMER drops pending entries, and a consumer that
                -- just fetched may not have its key yet)
                if (info.idle or 0) > 60000 then
                  self._cmd:command({ "XGROUP", "DELCONSUMER", k.tasks, GROUP, name }, 0, nop)
                end
                return release()
              end
              self:_claim(name, hold, release)
            end)
          end
        end
      end
      release()
    end)
  end)
end

function Agent:_claim(dead, hold, release)
  local k = self._k
  self._cmd:command({ "XPENDING", k.tasks, GROUP, "-", "+", 100, dead }, 0, function(err, list)
    if err or type(list) ~= "table" then return release() end
    for _, p in ipairs(list) do
      local entry, delivered = p[1], p[4] or 1
      hold()
      if delivered >= self._max_deliver then
        self._cmd:command({ "EVAL", BURY, 2, k.tasks, k.dead, GROUP, entry, dead }, 0, function(e, f)
          if not e and type(f) == "table" and #f > 0 then self._stats.dead = self._stats.dead + 1 end
          release()
        end)
      else
        local host = self.host
        self._cmd:command({ "XCLAIM", k.tasks, GROUP, host, 0, entry }, 0, function(e, claimed)
          if not e and type(claimed) == "table" then
            for _, c in ipairs(claimed) do
              if type(c) == "table" and type(c[2]) == "table" then
                if not self._active[c[1]] then self._stats.redelivered = self._stats.redelivered + 1 end
                self:_run(c[1], fields(c[2]), delivered + 1)
              end
            end
          end
          release()
        end)
      end
    end
    release()
  end)
end

function Agent:stats()
  local s = {}
  for k, v in pairs(self._stats) do s[k] = v end
  s.running = self._running
  s.host = self.host
  return s
end

function Agent:_maybe_closed()
  if self._running > 0 or #self._done > 0 or self._completing > 0 or self.closed or self._closed_pending then
    return
  end
  self._closed_pending = true
  self._timer:stop()
  -- gone at once: our key removed, so nobody waits out the TTL
  self._cmd:command({ "DEL", self._k.host(self.host) }, 0, function()
    self._cmd:close()
    self._fetch_conn:close()
    self._pool:close(function()
      self.closed = true
      if self._close_cb then self._close_cb() end
      self:emit("close")
    end)
  end)
end

--- agent:close([cb]): takes no new task, finishes the running ones, then
-- stops its workers.
function Agent:close(cb)
  self._closing = true
  self._close_cb = cb
  self:_maybe_closed()
  return true
end

return M
