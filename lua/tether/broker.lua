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

-- KEYS: tasks, sub:T   ARGV: task id, reply stream, body
local SUBMIT = [[
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', 86400) then
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'reply', ARGV[2], 'body', ARGV[3])
  return 1
end
return 0]]

-- KEYS: tasks, reply stream   ARGV: group, entry, task id, status, body,
-- attempt, then the consumer names of this agent (its name, and the names
-- it had before it was presumed dead).  0: no name of ours holds the entry
-- (any more): another host took it.
local COMPLETE = [[
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return 0 end
local mine = false
for i = 7, #ARGV do if p[1][2] == ARGV[i] then mine = true end end
if not mine then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'id', ARGV[3], 'status', ARGV[4], 'body', ARGV[5],
  'attempt', ARGV[6])
redis.call('PEXPIRE', KEYS[2], 3600000)
return 1]]

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

local function connect(self, address, on_up)
  local conn, err = core.redis(address, { reply_timeout = self._reply_timeout }, function(event, up, e)
    if event ~= "state" then return end
    if up then
      on_up()
    elseif e and not self._down_reported then
      self._down_reported = true
      self:emit("error", tether.error("ERR_BROKER_DOWN",
        ("the broker at %s cannot be reached (%s); retrying"):format(address, e.message)))
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
    _seq = 0, _inflight = {}, _n = 0, _last = "0-0", _reply_timeout = spec.reply_timeout,
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

function Submitter:_send(t)
  local k = self._k
  t.sent = "sending"
  self._cmd:command({ "EVAL", SUBMIT, 2, k.tasks, k.sub(t.id), t.id, self._reply, t.body }, 0, function(err)
    if self._inflight[t.id] ~= t then return end
    t.sent = not err
    if err and err.code == "ERR_BROKER" then
      -- Redis refused it (LOADING, OOM, ...): said once, tried again
      if not self._refused_reported then
        self._refused_reported = true
        self:emit("error", err)
      end
      tether.timer(500, function()
        if self._inflight[t.id] == t and t.sent == false and self._cmd:connected() then self:_send(t) end
      end)
    end
    -- lost on the way (down, timeout): sent again once reconnected
  end)
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
  local t = { id = self._id .. ":" .. self._seq, body = body, cb = cb, sent = false }
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

--- close([cb]): waits for every submitted task's callback, then closes.
function Submitter:close(cb)
  self._closing = true
  local function finish()
    self._closed = true
    -- what is queued goes first (the last deletions), and our result
    -- stream with it
    self._cmd:command({ "DEL", self._reply }, 0, function()
      self._cmd:close()
      self._read:close()
      self.closed = true
      if cb then cb() end
      self:emit("close")
    end)
  end
  if self._n == 0 then tether.defer(finish) else self._on_idle = finish end
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
    _reply_timeout = spec.reply_timeout, _running = 0, _unsettled = {}, _active = {},
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
  -- 1.4x BullMQ with 2 agents, 3.5x with 8 ahead; BENCHMARKS.md)
  local slots = (pool_spec.size or core.parallelism()) * (pool_spec.concurrency or 1)
  self._capacity = slots + math.floor(spec.prefetch or slots)
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
    self:_complete(c)
    self:_fetch()
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

function Agent:_complete(c)
  local k = self._k
  if not self._cmd:connected() then
    self._unsettled[#self._unsettled + 1] = c
    return
  end
  local argv = { "EVAL", COMPLETE, 2, k.tasks, c.reply, GROUP, c.entry, c.id, c.status, c.body, c.attempt }
  for _, name in ipairs(self._names) do argv[#argv + 1] = name end
  self._cmd:command(argv, 0,
    function(err, n)
      if err then
        if err.code == "ERR_BROKER" then
          -- refused for now (LOADING, OOM, ...): said, tried again
          self:emit("error", err)
          tether.timer(500, function() self:_complete(c) end)
          return
        end
        -- no answer: tried again once connected (the script is idempotent)
        self._unsettled[#self._unsettled + 1] = c
        return
      end
      if self._active[c.entry] == c then self._active[c.entry] = nil end
      if n == 1 then
        self._stats.completed = self._stats.completed + 1
      elseif not c.retried then
        self._stats.late = self._stats.late + 1 -- not ours any more: refused
      end
      if self._closing then self:_maybe_closed() end
    end)
end

-- Takes new tasks while the pool has room (one blocking read at a time).
function Agent:_fetch()
  if self._fetching or self._closing or not self._registered then return end
  local room = self._capacity - self._running
  if room <= 0 or not self._fetch_conn:connected() then return end
  self._fetching = true
  local host = self.host
  -- after a reconnect, first what Redis says we hold (a read whose answer
  -- was lost left entries on us that we never saw); then new ones
  local recover = self._recover
  self._recover = false
  self._fetch_conn:command({ "XREADGROUP", "GROUP", GROUP, host, "COUNT", recover and 1000 or room,
    "BLOCK", 1000, "STREAMS", self._k.tasks, recover and "0" or ">" }, 1000, function(err, reply)
    self._fetching = false
    if self._closing then return end
    if err then
      if err.code == "ERR_BROKER" then
        -- e.g. NOGROUP (the stream was deleted): made again, then read again
        self._cmd:command({ "XGROUP", "CREATE", self._k.tasks, GROUP, "0", "MKSTREAM" }, 0, nop)
        return tether.timer(200, function() self:_fetch() end)
      end
      if recover then self._recover = true end
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
  if self._running > 0 or self.closed or self._closed_pending then return end
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
