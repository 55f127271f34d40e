--- tether.pool(spec): a queue of tasks run by supervised workers.  Queueing,
-- dispatch, retries, timeouts and recycling are the C core's
-- (core/tt_pool.h); this file validates the spec and adds run/map,
-- progress and the error routing.
local tether = require "tether"
local supervisor = require "tether.supervisor"

local M = {}
local Pool = setmetatable({}, { __index = tether.Emitter })
Pool.__index = Pool
M.Pool = Pool

local check = require "tether.check"

local POOL_OPTIONS = {
  size = "workers", concurrency = "positive", prefetch = "count", max_queue = "positive", -- (0 would read as "none may wait": leave it out for no limit)
  timeout = "ms", retries = "count", max_tasks_per_worker = "count",
}
for k, v in pairs(supervisor.WORKER_OPTIONS) do POOL_OPTIONS[k] = v end

-- The core's events, (event, worker id, ...)
local EVENTS = {
  message = function(self, id, m)
    if self._json and tether._json.is_internal(m) then return tether._internal_message(self, m, id) end
    self:emit("message", id, m)
  end,
  control = function(self, id, m, handle)
    if handle then handle:close() end -- nothing of ours carries one this way
    local err = tether._worker_error(m)
    if err then
      err.worker = id
      if err.code == "ERR_WORKER_INIT" then
        self._init_error = err.message
        -- a script that cannot load will not load next time either: the
        -- tasks fail now, with the cause, instead of after every restart
        if err.load then self._h:give_up(err.message) end
      end
      self:emit("error", err)
    end
  end,
  error = function(self, id, err)
    err.worker = id
    -- a start that failed (a missing interpreter or cwd): named in the
    -- give-up's reason, as a main chunk's error is
    if type(err.message) == "string" and not err.message:find("^writing the") then
      self._init_error = tostring(err)
    end
    self:emit("error", err)
  end,
  give_up = function(self, why)
    if self._init_error and not why:find(self._init_error, 1, true) then
      why = why .. "; the last start failed with: " .. self._init_error
    end
    self.gave_up = why
    self:emit("give_up", why)
  end,
  stopped = function(self)
    self._final_stats = self._h:stats() -- the core lets go of them next
    self.stopped = true
    self:emit("stopped")
  end,
  close = function(self)
    self.closed = true
    self:emit("close")
  end,
}

local function handler(self) return tether._dispatcher(EVENTS, self) end

function M.new(spec)
  if type(spec) ~= "table" then check.argerror("pool", 1, "table expected, got " .. type(spec), 2) end
  check.options("pool", 1, spec, POOL_OPTIONS, 2)
  local copy = {}
  for k, v in pairs(spec) do copy[k] = v end
  local size = spec.size or tether.core.parallelism()
  local concurrency = spec.concurrency or 1
  copy.instances, copy.size, copy.restart = size, nil, nil
  local o = supervisor.options(copy, "pool", 2)
  o.max_queue = spec.max_queue or 0
  o.retries = spec.retries or 1
  o.max_tasks_per_worker = spec.max_tasks_per_worker or 0
  o.concurrency = concurrency
  o.prefetch = spec.prefetch or 2
  o.timeout = spec.timeout
  local self = setmetatable({ size = size, stopped = false, _total = 0, _done = 0 }, Pool)
  local h, err = tether.core.pool(o, handler(self))
  if not h then return nil, err end
  self._h = h
  self._json = o.json
  return self
end

--- pool:submit(task, [cb]) -> true | nil, err.  cb(err, result) runs once;
-- without cb a failure goes to the "error" event.
function Pool:submit(task, cb)
  if cb ~= nil and type(cb) ~= "function" then
    check.argerror("submit", 2, "function expected, got " .. type(cb), 2)
  end
  local ok, err = self._h:submit(task, function(e, result)
    self._done = self._done + 1
    if e and e.code == "ERR_WORKER_INIT" and self.gave_up then
      e.message = e.message .. ": " .. self.gave_up
    end
    if cb then
      cb(e, result)
    elseif e then
      self:emit("error", e)
    end
    self:emit("progress", self._done, self._total)
    -- maps waiting for room in a queue others filled try again (deferred:
    -- the pool moves its queue on after this callback)
    local waiting = self._room
    if waiting and #waiting > 0 then
      self._room = {}
      tether.defer(function() for _, pump in ipairs(waiting) do pump() end end)
    end
  end)
  if not ok then
    if err.code == "ERR_WORKER_INIT" and self.gave_up then
      err.message = err.message .. ": " .. self.gave_up
    elseif err.code == "ERR_CLOSED" and self.gave_up then
      -- closed because it gave up: that is still why, after "close" too
      err = tether.error("ERR_WORKER_INIT", "worker script failed to start: " .. self.gave_up)
    end
    return nil, err
  end
  self._total = self._total + 1
  return true
end

--- pool:run(task) -> result | nil, err, inside tether.go.
function Pool:run(task)
  if not tether.in_task() then
    return nil, tether.error("ERR_NO_COROUTINE", "pool:run must be called inside tether.go (or use submit)")
  end
  local e, result = tether.await(function(done)
    local ok, err = self:submit(task, done)
    if not ok then done(err) end
  end)
  if e then return nil, e end
  return result
end

local MAP_OPTIONS = { collect = "boolean" }

--- pool:map(tasks, [opts]) inside tether.go: runs every task, results in
-- the tasks' order.  Fails fast by default: the first error is returned
-- (nil, err with err.index) and later results are dropped.  With
-- opts.collect, waits for all and returns results, errors (errors[i] for
-- each task that failed; nil when none did).  A full queue makes map wait
-- for room rather than fail.
function Pool:map(tasks, opts)
  if type(tasks) ~= "table" then check.argerror("map", 1, "table expected, got " .. type(tasks), 2) end
  opts = check.options("map", 2, opts, MAP_OPTIONS, 2)
  if not tether.in_task() then
    return nil, tether.error("ERR_NO_COROUTINE", "pool:map must be called inside tether.go")
  end
  local collect = opts.collect
  local n = #tasks
  local results, errors = {}, nil
  if n == 0 then return results end
  return tether.await(function(done)
    local next_i, pending, finished = 1, 0, false
    local pump
    local function on_result(i, e, r)
      pending = pending - 1
      if finished then return end
      if e then
        if not collect then
          finished = true
          e.index = i
          return done(nil, e)
        end
        errors = errors or {}
        errors[i] = e
      else
        results[i] = r
      end
      if next_i > n and pending == 0 then
        finished = true
        return done(results, errors)
      end
      pump()
    end
    pump = function()
      while next_i <= n and not finished do
        local i = next_i
        local ok, err = self:submit(tasks[i], function(e, r) on_result(i, e, r) end)
        if not ok then
          if err.code == "ERR_QUEUE_FULL" then
            -- wait for room: its own next result pumps again, or, with
            -- none in flight, the next task of anyone's that ends
            if pending == 0 then
              self._room = self._room or {}
              self._room[#self._room + 1] = pump
            end
            return
          end
          finished = true
          err.index = i
          return done(nil, err)
        end
        next_i, pending = next_i + 1, pending + 1
      end
    end
    pump()
  end)
end

--- pool:stats() -> {queued, running, done, failed, retried, workers, ...}
function Pool:stats()
  local s = self._h:stats()
  if not s then
    s = {}
    for k, v in pairs(self._final_stats or {}) do s[k] = v end
  end
  return s
end

--- pool:workers() -> per worker {id, pid, state, restarts, uptime, rss}
function Pool:workers()
  local list = {}
  for id = 1, self.size do
    local info = self._h:info(id) or { state = "down" }
    info.id = id
    list[id] = info
  end
  return list
end

--- pool:close([cb]): no new tasks; the queued ones finish, then the
-- workers stop; cb() once they have.
function Pool:close(cb)
  if cb ~= nil and type(cb) ~= "function" then check.argerror("close", 1, "function expected, got " .. type(cb), 2) end
  if cb then
    if self.stopped then tether.defer(cb) else self:once("stopped", cb) end
  end
  self._h:close()
  return true
end

--- pool:terminate(): fails queued and running tasks with ERR_CLOSED and
-- stops the workers now.
function Pool:terminate()
  self._h:terminate()
  return true
end

function Pool:__tostring()
  return tostring(self._h)
end

return M
