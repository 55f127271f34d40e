--- tether.supervise(spec): keeps `instances` workers running under a restart
-- policy.  The machinery (restarts, backoff, intensity window, watchdogs,
-- shutdown escalation, message queues, logs) is the C core's
-- (core/tt_supervisor.h); this file validates the spec, turns core events
-- into emitter events with stable worker objects, and wires signals.
local tether = require "tether"

local M = {}
local Supervisor = setmetatable({}, { __index = tether.Emitter })
Supervisor.__index = Supervisor
M.Supervisor = Supervisor

local function bad(name, what, level)
  error(("bad option '%s' (%s)"):format(name, what), level or 4)
end

local function opt(spec, name, ty)
  local v = spec[name]
  if v ~= nil and type(v) ~= ty then
    bad(name, ("%s expected, got %s"):format(ty, type(v)))
  end
  return v
end

local function nonneg(spec, name, v)
  v = v == nil and spec[name] or v
  if v ~= nil and (math.type(v) == nil or v < 0 or v ~= v) then
    bad(name, "non-negative number expected")
  end
  return v
end

local UNITS = { [""] = 1, B = 1, K = 1024, KB = 1024, M = 1024 ^ 2, MB = 1024 ^ 2,
  G = 1024 ^ 3, GB = 1024 ^ 3 }

--- "500M", "1.5G", "64K", "1024" or a number -> bytes
local function parse_bytes(v)
  if type(v) == "number" then
    if v > 0 then return math.floor(v) end
  elseif type(v) == "string" then
    local n, unit = v:upper():match("^%s*([%d%.]+)%s*(%a*)%s*$")
    n = tonumber(n)
    if n and UNITS[unit] and n > 0 then return math.floor(n * UNITS[unit]) end
  end
  bad("max_memory", "bytes as a positive number or a string like \"500M\"", 5)
end
M.parse_bytes = parse_bytes

local function stdio_target(spec, name)
  local v = opt(spec, name, "string")
  if v == nil or v == "inherit" or v == "ignore" then return v, nil end
  if v == "pipe" then bad(name, "\"inherit\", \"ignore\" or a log file path expected") end
  return nil, v -- a log file path
end

local Worker = {}
Worker.__index = Worker

function Worker:send(msg, opts, cb)
  return self._sup:send(self.id, msg, opts, cb)
end

function Worker:kill(signal)
  return self._sup:kill(self.id, signal)
end

function Worker:restart()
  return self._sup:restart(self.id)
end

function Worker:__tostring()
  return ("tether.worker %d (pid %s)"):format(self.id, tostring(self.pid))
end

--- The core's option table for workers (shared with tether.pool).
function M.options(spec, what)
  local internal = tether._internal
  local o = {}
  local script = opt(spec, "script", "string")
  local cmd = opt(spec, "cmd", "string")
  local args = opt(spec, "args", "table") or {}
  if (script == nil) == (cmd == nil) then
    error(("bad argument #1 to '%s' (exactly one of 'script' and 'cmd' expected)"):format(what), 4)
  end
  local env = {}
  for k, v in pairs(opt(spec, "env", "table") or {}) do env[k] = v end
  local argv = {}
  if script then
    o.file = opt(spec, "lua", "string") or internal.interpreter()
    argv[1], argv[2] = internal.runner_path(), script
    if env.LUA_PATH == nil then env.LUA_PATH_5_4 = env.LUA_PATH_5_4 or package.path end
    if env.LUA_CPATH == nil then env.LUA_CPATH_5_4 = env.LUA_CPATH_5_4 or package.cpath end
    o.wait_ready = true
  else
    o.file = cmd
    o.wait_ready = opt(spec, "wait_ready", "boolean") or false
  end
  for i, v in ipairs(args) do
    if type(v) ~= "string" and type(v) ~= "number" then
      bad("args", ("args[%d] is a %s, string expected"):format(i, type(v)))
    end
    argv[#argv + 1] = tostring(v)
  end
  o.args = argv
  local max_message = nonneg(spec, "max_message")
  if max_message then env.TETHER_MAX_MESSAGE = env.TETHER_MAX_MESSAGE or max_message end
  o.max_message = max_message
  o.env = internal.build_env(env)
  o.cwd = opt(spec, "cwd", "string")
  o.detached = opt(spec, "detached", "boolean")
  o.stdout_mode, o.stdout_log = stdio_target(spec, "stdout")
  o.stderr_mode, o.stderr_log = stdio_target(spec, "stderr")

  local instances = spec.instances or 1
  if math.type(instances) ~= "integer" or instances < 1 then
    bad("instances", "integer >= 1 expected")
  end
  o.instances = instances
  local restart = opt(spec, "restart", "string") or "always"
  if restart ~= "always" and restart ~= "on-failure" and restart ~= "never" then
    bad("restart", "\"always\", \"on-failure\" or \"never\" expected")
  end
  o.restart = restart
  local max_restarts = spec.max_restarts
  if max_restarts ~= nil and (math.type(max_restarts) ~= "integer" or max_restarts < 0) then
    bad("max_restarts", "integer >= 0 expected")
  end
  o.max_restarts = max_restarts
  local within = nonneg(spec, "within")
  o.within_ms = within and within * 1000
  local backoff = opt(spec, "backoff", "table")
  if backoff then
    for _, k in ipairs { "initial", "max", "factor", "jitter" } do
      if backoff[k] ~= nil and type(backoff[k]) ~= "number" then
        bad("backoff." .. k, "number expected")
      end
    end
    o.backoff = backoff
  end
  o.min_uptime = nonneg(spec, "min_uptime")
  if spec.max_memory ~= nil then o.max_memory = parse_bytes(spec.max_memory) end
  o.memory_interval = nonneg(spec, "memory_interval")
  if o.memory_interval == 0 then bad("memory_interval", "must be above 0") end
  local hb = opt(spec, "heartbeat", "table")
  if hb then
    local interval = nonneg(spec, "heartbeat.interval", hb.interval)
    if not interval or interval <= 0 then bad("heartbeat.interval", "number > 0 expected") end
    o.heartbeat_interval = interval
    o.heartbeat_timeout = nonneg(spec, "heartbeat.timeout", hb.timeout) or interval * 2
  end
  o.start_timeout = nonneg(spec, "start_timeout")
  local shutdown = opt(spec, "shutdown", "table")
  if shutdown then
    if shutdown.message ~= nil then
      o.has_shutdown_message = true
      o.shutdown_message = shutdown.message
    end
    o.shutdown_timeout = nonneg(spec, "shutdown.timeout", shutdown.timeout)
    o.kill_timeout = nonneg(spec, "shutdown.kill_timeout", shutdown.kill_timeout)
  end
  o.queue_limit = nonneg(spec, "queue_limit")
  local ser = opt(spec, "serialization", "string") or "native"
  if ser == "json" then
    -- Node.js workers (cmd = "node"): no ready frame and no heartbeat in
    -- Node's format; a worker is running once spawned
    if not tether._json.available then error(tether._json.why, 4) end
    if hb then bad("heartbeat", "needs serialization = \"native\" (a tether peer answers pings)") end
    o.json, o.wait_ready = true, false
  elseif ser ~= "native" then
    bad("serialization", "\"native\" or \"json\" expected")
  end
  return o
end

function M.new(spec)
  if type(spec) ~= "table" then
    error("bad argument #1 to 'supervise' (table expected, got " .. type(spec) .. ")", 3)
  end
  local o = M.options(spec, "supervise")
  local instances = o.instances
  local handle_signals = spec.handle_signals
  if handle_signals ~= nil and type(handle_signals) ~= "boolean" then
    bad("handle_signals", "boolean expected")
  end

  local self = setmetatable({ instances = instances, stopped = false,
    _workers = {}, _reload_cbs = {}, _signals = {} }, Supervisor)
  for id = 1, instances do
    self._workers[id] = setmetatable({ id = id, restarts = 0, _sup = self }, Worker)
  end
  local h, err = tether.core.supervise(o, M.handler(self))
  if not h then return nil, err end
  self._h = h
  self._json = o.json
  if handle_signals ~= false then
    local function graceful() self:stop() end
    self._signals = {
      tether.on_signal("SIGINT", graceful),
      tether.on_signal("SIGTERM", graceful),
      tether.on_signal("SIGHUP", function()
        local ok, err = self:reopen_logs()
        if not ok then self:emit("error", err) end
      end),
    }
  end
  return self
end

function M.handler(self)
  return function(event, id, a, b, c, d)
    local w = self._workers[id]
    if event == "message" then
      if self._json and tether._json.is_internal(a) then
        if a.cmd == "NODE_HANDLE" then self._h:send(id, { cmd = "NODE_HANDLE_NACK" }, 0) end
        return
      end
      self:emit("message", w, a)
    elseif event == "start" then
      w.pid = a
      self:emit("start", w)
    elseif event == "exit" then
      -- d: the pid that exited (during a reload, not the slot's current one)
      w.exit_code, w.signal, w.reason = a, b, c
      self:emit("exit", w, a, b, c, d)
    elseif event == "restart" then
      -- b: the new process's pid; w.pid changes when it is running ("start")
      w.restarts = w.restarts + 1
      self:emit("restart", w, a, b)
    elseif event == "give_up" then
      self.gave_up = id
      self:emit("give_up", id) -- the reason
    elseif event == "control" then
      local err = tether._worker_error(a)
      if err then
        err.worker = id
        self:emit("error", err, w)
      end
    elseif event == "request" then
      self._h:answer(c, b, { code = "ERR_NO_HANDLER",
        message = "the supervisor has no request handler" }, true, true)
    elseif event == "error" then
      a.worker = id
      self:emit("error", a, w)
    elseif event == "reload" then
      -- id is the error (or nil) here
      local cb = table.remove(self._reload_cbs, 1)
      if cb then cb(id) elseif id then self:emit("error", id) end
    elseif event == "stopped" then
      self._final = self:workers() -- the core lets go of its state next
      self.stopped = true
      for _, s in ipairs(self._signals) do s:stop() end
      self._signals = {}
      self:emit("stopped")
    elseif event == "close" then
      -- every handle, pipe and log file of the supervisor is closed
      self.closed = true
      self:emit("close")
    end
  end
end

local function worker_id(self, id)
  if type(id) == "table" and id._sup == self then return id.id end
  if math.type(id) ~= "integer" or id < 1 or id > self.instances then
    error(("bad worker id %s (1..%d expected)"):format(tostring(id), self.instances), 3)
  end
  return id
end

--- sup:send(id, msg, [opts], [cb]) -> true | nil, err.  Queued while the
-- worker is not running and delivered to its next incarnation; cb(err)
-- once: nil when the kernel took it, ERR_TIMEOUT after opts.timeout,
-- ERR_CLOSED if the worker will not run again.  Without cb, failures go to
-- the "error" event.
function Supervisor:send(id, msg, opts, cb)
  id = worker_id(self, id)
  if type(opts) == "function" and cb == nil then opts, cb = nil, opts end
  if opts ~= nil and type(opts) ~= "table" then error("bad argument #3 to 'send' (table expected)", 2) end
  if cb ~= nil and type(cb) ~= "function" then error("bad argument #4 to 'send' (function expected)", 2) end
  local timeout = opts and opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("bad option 'timeout' (non-negative number expected)", 2)
  end
  local w = self._workers[id]
  return self._h:send(id, msg, timeout, function(err)
    if cb then
      cb(err)
    elseif err then
      err.worker = id
      self:emit("error", err, w)
    end
  end)
end

--- sup:broadcast(msg, [cb]) -> count queued | nil, err; cb(err, w) per
-- worker.
function Supervisor:broadcast(msg, cb)
  local n = 0
  for id = 1, self.instances do
    local ok, err = self:send(id, msg, nil, cb and function(e) cb(e, self._workers[id]) end)
    if not ok then
      if err.code == "ERR_SERIALIZE" or n == 0 and id == self.instances then return nil, err end
    else
      n = n + 1
    end
  end
  return n
end

--- sup:workers() -> { {id, pid, state, restarts, uptime, rss, lua_heap, ...} }
function Supervisor:workers()
  if self._final then
    local copy = {}
    for id, info in ipairs(self._final) do
      copy[id] = {}
      for k, v in pairs(info) do copy[id][k] = v end
      copy[id].state, copy[id].pid, copy[id].uptime = "down", nil, nil
      copy[id].rss, copy[id].lua_heap = nil, nil
    end
    return copy
  end
  local list = {}
  for id = 1, self.instances do
    local info = self._h:info(id)
    local w = self._workers[id]
    if not info then
      info = { state = "down", restarts = w.restarts, last_reason = w.reason,
        last_code = w.exit_code, last_signal = w.signal }
    end
    info.id = id
    list[id] = info
  end
  return list
end

function Supervisor:worker(id)
  return self._workers[worker_id(self, id)]
end

--- sup:reload([cb]): rolling restart; cb(err) when done.
function Supervisor:reload(cb)
  if cb ~= nil and type(cb) ~= "function" then error("bad argument #1 to 'reload' (function expected)", 2) end
  -- queued first: the core may finish (or fail) the reload at once
  local cbs = self._reload_cbs
  cbs[#cbs + 1] = cb or false
  local ok, err = self._h:reload()
  if not ok then
    table.remove(cbs)
    return nil, err
  end
  return true
end

--- sup:stop([cb]): graceful shutdown of every worker; cb() once stopped.
function Supervisor:stop(cb)
  if cb ~= nil and type(cb) ~= "function" then error("bad argument #1 to 'stop' (function expected)", 2) end
  if cb then
    if self.stopped then tether.defer(cb) else self:once("stopped", cb) end
  end
  self._h:stop()
  return true
end

function Supervisor:restart(id)
  return self._h:restart(worker_id(self, id))
end

function Supervisor:kill(id, signal)
  return self._h:kill(worker_id(self, id), signal)
end

function Supervisor:reopen_logs()
  return self._h:reopen_logs()
end

function Supervisor:__tostring()
  return tostring(self._h)
end

return M
