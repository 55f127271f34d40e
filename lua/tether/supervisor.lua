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

local check = require "tether.check"

local UNITS = { [""] = 1, B = 1, K = 1024, KB = 1024, M = 1024 ^ 2, MB = 1024 ^ 2,
  G = 1024 ^ 3, GB = 1024 ^ 3 }

--- "500M", "1.5G", "64K", "1024" or a number -> bytes, or nil
local function parse_bytes(v)
  if type(v) == "number" then
    if v > 0 and v == v and v < math.huge then return math.floor(v) end
  elseif type(v) == "string" then
    local n, unit = v:upper():match("^%s*([%d%.]+)%s*(%a*)%s*$")
    n = tonumber(n)
    if n and UNITS[unit] and n > 0 then return math.floor(n * UNITS[unit]) end
  end
  return nil
end
M.parse_bytes = parse_bytes

local function memory_check(v)
  return parse_bytes(v) ~= nil, 'bytes as a positive number or a string like "500M"'
end

local function log_target(v)
  if type(v) ~= "string" or v == "" or v == "pipe" then
    return false, '"inherit", "ignore" or a log file path'
  end
  if v:find("\0", 1, true) then return false, nil, check.nul_complaint(v) end
  if v ~= "inherit" and v ~= "ignore" and not v:find("[/.]") then
    local near = check.closest(v, { inherit = true, ignore = true })
    if near then
      return false, nil, ('"%s": did you mean "%s"? (a log file needs a \'/\' or a \'.\', e.g. "./%s")')
        :format(v, near, v)
    end
  end
  return true
end

local LOG_KEEP, MAX_LOG_KEEP = 5, 1000 -- (core/tt_limits.h TT_LOGSINK_MAX_KEEP)

local function arg_item(v)
  return (type(v) == "string" and not v:find("\0", 1, true)) or type(v) == "number"
end

-- What supervisors and pools share: the worker and how it is kept.
M.WORKER_OPTIONS = {
  script = "path", cmd = "path", args = check.array_of(arg_item, "strings (without NUL bytes)"), lua = "path",
  env = check.env, cwd = "path", detached = "boolean", stdout = log_target, stderr = log_target,
  max_message = "bytes", serialization = check.oneof("native", "json"), wait_ready = "boolean",
  start_timeout = "ms", heartbeat = check.nested { interval = "ms", timeout = "ms" },
  shutdown = check.nested { message = "any", timeout = "ms", kill_timeout = "ms" },
  backoff = check.backoff, max_restarts = "count", within = "seconds", min_uptime = "ms",
  max_memory = memory_check, memory_interval = "ms",
  log_rotate = check.nested { size = memory_check, keep = "count" },
  prefork = function(v) return require("tether.zygote").check(v) end,
}
local SUPERVISE_OPTIONS = {
  instances = "workers", restart = check.oneof("always", "on-failure", "never"),
  queue_limit = "count", handle_signals = "boolean",
}
for k, v in pairs(M.WORKER_OPTIONS) do SUPERVISE_OPTIONS[k] = v end
M.SUPERVISE_OPTIONS = SUPERVISE_OPTIONS

--- The core's option table for workers (shared with tether.pool), from a
-- spec already checked against its schema.  Errors are raised at `level`,
-- counted from M.options (1: its caller).
function M.options(spec, what, level)
  local function bad(msg) check.argerror(what, 1, msg, level + 2) end
  local internal = tether._internal
  local o = {}
  local script, cmd = spec.script, spec.cmd
  if (script == nil) == (cmd == nil) then bad("exactly one of 'script' and 'cmd' expected") end
  local env = {}
  for k, v in pairs(spec.env or {}) do env[k] = v end
  local argv = {}
  if script then
    o.file = spec.lua or internal.interpreter()
    argv[1], argv[2] = internal.runner_path(), script
    if spec.prefork then o.zygote = require("tether.zygote").asker_for(spec.prefork, o.file) end
    if env.LUA_PATH == nil then env.LUA_PATH_5_4 = env.LUA_PATH_5_4 or package.path end
    if env.LUA_CPATH == nil then env.LUA_CPATH_5_4 = env.LUA_CPATH_5_4 or package.cpath end
    o.wait_ready = true
  else
    if spec.lua then bad("option 'lua' is for a 'script', not a 'cmd'") end
    o.file = cmd
    o.wait_ready = spec.wait_ready or false
  end
  for _, v in ipairs(spec.args or {}) do argv[#argv + 1] = tostring(v) end
  o.args = argv
  o.max_message = spec.max_message -- told to the workers by the core
  o.env = internal.build_env(env)
  o.cwd = spec.cwd
  o.detached = spec.detached
  for _, k in ipairs { "stdout", "stderr" } do
    local v = spec[k]
    if v == nil or v == "inherit" or v == "ignore" then o[k .. "_mode"] = v else o[k .. "_log"] = v end
  end
  o.instances = spec.instances or 1
  o.restart = spec.restart or "always"
  o.max_restarts = spec.max_restarts
  o.within_ms = spec.within and spec.within * 1000
  local b = spec.backoff
  if b and ((b.factor and b.factor < 1) or ((b.initial or 100) > (b.max or 10000))) then
    bad("option 'backoff': needs initial <= max and factor >= 1")
  end
  o.backoff = b
  o.min_uptime = spec.min_uptime
  if spec.max_memory ~= nil then o.max_memory = parse_bytes(spec.max_memory) end
  o.memory_interval = spec.memory_interval
  if o.memory_interval == 0 then bad("option 'memory_interval': must be above 0") end
  local hb = spec.heartbeat
  if hb then
    if not hb.interval or hb.interval <= 0 then bad("option 'heartbeat.interval': ms > 0 expected") end
    o.heartbeat_interval = hb.interval
    o.heartbeat_timeout = hb.timeout or hb.interval * 2
  end
  o.start_timeout = spec.start_timeout
  local shutdown = spec.shutdown
  if shutdown then
    if shutdown.message ~= nil then
      o.has_shutdown_message = true
      o.shutdown_message = shutdown.message
    end
    o.shutdown_timeout = shutdown.timeout
    o.kill_timeout = shutdown.kill_timeout
  end
  o.queue_limit = spec.queue_limit
  local rotate = spec.log_rotate
  if rotate then
    -- the stdout/stderr log files: past `size` bytes, out.log becomes
    -- out.log.1 (and so on, `keep` of them; keep = 0 truncates)
    if rotate.size == nil then bad('option \'log_rotate.size\' is required (bytes, e.g. "10M")') end
    local keep = rotate.keep or LOG_KEEP
    if keep > MAX_LOG_KEEP then bad(("option 'log_rotate.keep': at most %d files"):format(MAX_LOG_KEEP)) end
    o.log_max_size, o.log_keep = parse_bytes(rotate.size), keep
  end
  if spec.serialization == "json" then
    -- Node.js workers (cmd = "node"): no ready frame and no heartbeat in
    -- Node's format; a worker is running once spawned
    if not tether._json.available then error(tether._json.why, level + 1) end
    if hb then bad("option 'heartbeat' needs serialization = \"native\" (a tether peer answers pings)") end
    o.json, o.wait_ready = true, false
  end
  return o
end

local Worker = {}
Worker.__index = Worker

function Worker:send(msg, ...)
  return self._sup:send(self.id, msg, ...)
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

--- The supervisor behind tether.supervise and, with `ext`, tether.cluster:
-- ext.fname and ext.schema (the caller's name and options), ext.level
-- (where argument errors point, as for check.options), ext.prepare(o)
-- (adds core options), ext.class (a Supervisor subclass) and ext.events
-- (the core's events, EVENTS by default).
function M.new(spec, ext)
  ext = ext or {}
  local fname, level = ext.fname or "supervise", ext.level or 2
  if type(spec) ~= "table" then check.argerror(fname, 1, "table expected, got " .. type(spec), level) end
  check.options(fname, 1, spec, ext.schema or SUPERVISE_OPTIONS, level)
  local o = M.options(spec, fname, level)
  local instances = o.instances
  local handle_signals = spec.handle_signals

  local self = setmetatable({ instances = instances, stopped = false,
    _workers = {}, _reload_cbs = {}, _scale_cbs = {}, _signals = {} }, ext.class or Supervisor)
  for id = 1, instances do
    self._workers[id] = setmetatable({ id = id, restarts = 0, _sup = self }, Worker)
  end
  if ext.prepare then
    local ok, err = ext.prepare(self, o)
    if not ok then return nil, err end
  end
  local h, err = tether.core.supervise(o, tether._dispatcher(ext.events or M.EVENTS, self))
  if not h then return nil, err end
  self._h = h
  self._json = o.json
  if handle_signals ~= false then
    -- the first SIGINT/SIGTERM stops gracefully, a second one kills the
    -- workers still running at once (as systemd and PM2 users expect)
    local function graceful()
      if self._stopping then self._h:hurry() else self:stop() end
    end
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

-- The core's events, (event, id, ...) with id the worker's slot
local EVENTS = {
  message = function(self, id, a, handle)
    if self._json and tether._json.is_internal(a) then
      return tether._internal_message(self, a, id, function(msg, h)
        tether._emit_with_handle(self, h, "message", self._workers[id], msg, h)
      end)
    end
    if handle then return tether._emit_with_handle(self, handle, "message", self._workers[id], a, handle) end
    self:emit("message", self._workers[id], a)
  end,
  start = function(self, id, pid)
    local w = self._workers[id]
    w.pid = pid
    self:emit("start", w)
  end,
  exit = function(self, id, code, sig, reason, pid)
    -- pid: the one that exited (during a reload, not the slot's current one)
    local w = self._workers[id]
    w.exit_code, w.signal, w.reason = code, sig, reason
    self:emit("exit", w, code, sig, reason, pid)
  end,
  restart = function(self, id, reason, pid)
    -- pid: the new process's; w.pid changes when it is running ("start")
    local w = self._workers[id]
    w.restarts = w.restarts + 1
    self:emit("restart", w, reason, pid)
  end,
  give_up = function(self, why)
    self.gave_up = why
    self:emit("give_up", why)
  end,
  control = function(self, id, a, handle)
    if handle then handle:close() end -- nothing of ours carries one this way
    local err = tether._worker_error(a)
    if err then
      err.worker = id
      self:emit("error", err, self._workers[id])
    end
  end,
  request = function(self, _, _, frame_id, serial)
    self._h:answer(serial, frame_id, { code = "ERR_NO_HANDLER",
      message = "the supervisor has no request handler" }, true, true)
  end,
  error = function(self, id, err)
    err.worker = id
    self:emit("error", err, self._workers[id])
  end,
  reload = function(self, err)
    local cb = table.remove(self._reload_cbs, 1)
    if cb then cb(err) elseif err then self:emit("error", err) end
  end,
  scale = function(self, err) -- once per sup:scale() call, in order
    local cb = table.remove(self._scale_cbs, 1)
    if cb then cb(err) elseif err then self:emit("error", err) end
  end,
  stopped = function(self)
    self._final = self:workers() -- the core lets go of its state next
    self.stopped = true
    for _, s in ipairs(self._signals) do s:stop() end
    self._signals = {}
    self:emit("stopped")
  end,
  close = function(self)
    -- every handle, pipe and log file of the supervisor is closed
    self.closed = true
    self:emit("close")
  end,
}

M.EVENTS = EVENTS

-- ids up to the largest size the supervisor had: a worker removed by
-- scale() is not a caller's mistake (its operations fail as for a worker
-- that stopped)
local function worker_id(self, id, fname)
  if type(id) == "table" and id._sup == self then return id.id end
  local max = math.max(self.instances, #self._workers)
  if math.type(id) ~= "integer" or id < 1 or id > max then
    check.argerror(fname or "send", 1, ("worker id 1..%d expected, got %s"):format(max,
      check.describe(id)), 3)
  end
  return id
end

--- sup:send(id, msg, [handle], [opts], [cb]) -> true | nil, err.  Queued
-- while the worker is not running and delivered to its next incarnation;
-- cb(err) once: nil when the kernel took it, ERR_TIMEOUT after
-- opts.timeout, ERR_CLOSED if the worker will not run again.  Without cb,
-- failures go to the "error" event.  A handle (tether.listen, ...) travels
-- with the message; the sender's stays open.
local SEND_OPTIONS = { timeout = "ms" }

function Supervisor:send(id, msg, opts, cb, ...)
  id = worker_id(self, id)
  if id > self.instances then -- removed by sup:scale()
    return nil, tether.error("ERR_CLOSED", ("worker %d was removed by scale"):format(id))
  end
  local handle
  if tether.is_handle(opts) then handle, opts, cb = opts, cb, ... end
  if type(opts) == "function" and cb == nil then opts, cb = nil, opts end
  opts = check.options("send", 3, opts, SEND_OPTIONS, 2)
  if cb ~= nil and type(cb) ~= "function" then check.argerror("send", 4, "function expected, got " .. type(cb), 2) end
  local timeout = opts.timeout
  local w = self._workers[id]
  return self._h:send(id, msg, timeout, function(err)
    if cb then
      cb(err)
    elseif err then
      err.worker = id
      self:emit("error", err, w)
    end
  end, nil, nil, handle)
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
  -- removed workers still stopping are listed (state "stopping") until down
  for id = 1, math.max(self.instances, self._h:instances()) do
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
  return self._workers[worker_id(self, id, "worker")]
end

--- sup:reload([cb]): rolling restart; cb(err) when done.
function Supervisor:reload(cb)
  if cb ~= nil and type(cb) ~= "function" then check.argerror("reload", 1, "function expected, got " .. type(cb), 2) end
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

local MAX_INSTANCES = check.MAX_WORKERS

--- sup:scale(n, [cb]) -> true | nil, err: n workers from now on.  Growing
-- adds workers n+1.. (ids after the last), started at once; shrinking
-- stops the highest ids gracefully (the shutdown option's escalation,
-- exit reason "scale"), never restarts them, and what was queued for them
-- fails with ERR_CLOSED.  sup.instances is n at once; sup:workers() lists
-- removed workers as "stopping" until they are down.  cb(err) once the
-- size is reached (new workers running, removed ones down): err is
-- ERR_WORKER_INIT when a new worker failed to start (it is restarted as
-- usual), ERR_CLOSED when the supervisor stopped first.  ERR_CLOSED once
-- stopping.
function Supervisor:scale(n, cb)
  if math.type(n) ~= "integer" or n < 1 or n > MAX_INSTANCES then
    check.argerror("scale", 1, ("worker count (an integer 1..%d) expected, got %s"):format(MAX_INSTANCES,
      check.describe(n)), 2)
  end
  if cb ~= nil and type(cb) ~= "function" then check.argerror("scale", 2, "function expected, got " .. type(cb), 2) end
  if self._stopping or self.stopped then
    return nil, tether.error("ERR_CLOSED", "the supervisor is stopping")
  end
  local slots
  if self._scale_slots then -- a cluster: what the new slots need
    local err
    slots, err = self:_scale_slots(n)
    if not slots then return nil, err end
  end
  for id = #self._workers + 1, n do
    self._workers[id] = setmetatable({ id = id, restarts = 0, _sup = self }, Worker)
  end
  local cbs = self._scale_cbs
  cbs[#cbs + 1] = cb or false
  local ok, err = self._h:scale(n, slots)
  if not ok then
    table.remove(cbs)
    return nil, err
  end
  self.instances = n
  return true
end

--- sup:stop([cb]): graceful shutdown of every worker; cb() once stopped.
function Supervisor:stop(cb)
  if cb ~= nil and type(cb) ~= "function" then check.argerror("stop", 1, "function expected, got " .. type(cb), 2) end
  if cb then
    if self.stopped then tether.defer(cb) else self:once("stopped", cb) end
  end
  self._stopping = true
  self._h:stop()
  return true
end

function Supervisor:restart(id)
  return self._h:restart(worker_id(self, id, "restart"))
end

function Supervisor:kill(id, signal)
  return self._h:kill(worker_id(self, id, "kill"), tether._check_signal("kill", 2, signal, 2))
end

function Supervisor:reopen_logs()
  return self._h:reopen_logs()
end

function Supervisor:__tostring()
  return tostring(self._h)
end

return M
