--- One named app of the `tether` command: a supervisor (or a cluster) run
-- from a spec, and what its life looked like so far.  The daemon
-- (lua/tether/daemon.lua) and `tether run` (lua/tether/foreground.lua)
-- both keep their apps in these.
--
-- A reload starts a whole new generation beside the old one and stops the
-- old one only once every new worker is running, so a reload applies a
-- changed spec (script, env, args, ...) with no moment without workers,
-- and a reload into a broken app leaves the old generation serving.  A
-- cluster reloads in place, worker by worker (its listening sockets stay
-- its own), with the spec it was started with.
local tether = require "tether"

local M = {}
local App = {}
App.__index = App

-- what the tether command adds to a supervisor spec; the rest is the
-- supervisor's (or the cluster's) to check
local OWN = { name = true }

-- How long `start` and `reload` wait for every worker to run before they
-- answer "still starting" (a worker that needs longer is not a failure).
M.START_WAIT = 10000

function M.new(name, opts)
  return setmetatable({
    name = name,
    status = "stopped", -- "launching", "online", "errored", "stopping", "stopped"
    restarts_before = 0, -- restarts of earlier generations
    reloads = 0,
    stops = 0, -- app:stop() calls, so that a reload knows it was stopped meanwhile
    errors = {}, -- the last few worker errors (ERR_WORKER_INIT, ...), newest last
    on_change = opts and opts.on_change, -- fn(app, what)
  }, App)
end

local function note_error(self, text)
  local e = self.errors
  e[#e + 1] = { time = os.time(), text = text }
  if #e > 5 then table.remove(e, 1) end
end

-- A program that is not a tether worker (`cmd`) does not watch its parent
-- as the runner does: the kernel ends it when we die, however we die
-- (PR_SET_PDEATHSIG, set by util-linux's setpriv before it execs the
-- program), so a daemon killed with -9 leaves no worker that `resurrect`
-- would run a second copy of.
local SETPRIV = "/usr/bin/setpriv"
local function dies_with_us(s)
  if s.cmd == nil or s.detached or not tether.core.stat(SETPRIV) then return end
  local args = { "--pdeathsig", "TERM", "--", s.cmd }
  for _, a in ipairs(s.args or {}) do args[#args + 1] = a end
  s.cmd, s.args = SETPRIV, args
end

--- M.check(spec): the spec's mistakes (an unknown option, a bad value),
-- found before anything is stopped for it: true | nil, err.  Makes
-- nothing (no zygote, no worker).
-- the supervisor's (or cluster's) spec: ours without what the command
-- adds; signals are the command's, for every app at once
local function supervisor_spec(spec)
  local s = {}
  for k, v in pairs(spec) do if not OWN[k] then s[k] = v end end
  s.handle_signals = false
  return s
end

-- a bad option's error without its position (a line of tether's)
local function unplaced(err) return (tostring(err):gsub("^[^:]*:%d+: ", "")) end

function M.check(spec)
  local s = supervisor_spec(spec)
  local ok, err = pcall(function()
    local check = require "tether.check"
    local supervisor = require "tether.supervisor"
    local fname, schema, sup_spec = "supervise", supervisor.SUPERVISE_OPTIONS, s
    if s.listen ~= nil then
      local cluster = require "tether.cluster"
      fname, schema, sup_spec = "cluster", cluster.SCHEMA, {}
      for k, v in pairs(s) do if cluster.OPTIONS[k] == nil then sup_spec[k] = v end end
    end
    check.options(fname, 1, s, schema, 1)
    sup_spec.prefork = nil -- (its value is checked above; its zygote is made at the start)
    supervisor.options(sup_spec, fname, 1)
  end)
  if not ok then return nil, unplaced(err) end
  return true
end

local function spawn(self, spec)
  local s = supervisor_spec(spec)
  dies_with_us(s)
  local ok, sup, err = pcall(function()
    if s.listen ~= nil then return tether.cluster(s) end
    return tether.supervise(s)
  end)
  if not ok then return nil, unplaced(sup) end -- a bad option
  if not sup then return nil, tostring(err) end
  return sup
end

-- every worker of `sup` is running
local function all_running(sup)
  for _, w in ipairs(sup:workers()) do
    if w.state ~= "running" then return false end
  end
  return true
end

-- cb(err) once every worker of `sup` runs (nil), it gave up (the reason),
-- a worker could not load its script (ERR_WORKER_INIT: the Lua error; the
-- supervisor goes on restarting it), or START_WAIT passed (nil, still
-- starting)
local function when_running(sup, cb)
  local done, timer, fns = false, nil, {}
  local function finish(err, late)
    if done then return end
    done = true
    if timer then timer:stop() end
    sup:off("start", fns.start)
    sup:off("give_up", fns.give_up)
    sup:off("stopped", fns.stopped)
    sup:off("error", fns.error)
    cb(err, late)
  end
  fns.start = function() if all_running(sup) then finish(nil) end end
  fns.give_up = function(why) finish(tostring(why)) end
  fns.stopped = function() finish(sup.gave_up and tostring(sup.gave_up) or "stopped") end
  fns.error = function(err, w)
    if type(err) == "table" and err.code == "ERR_WORKER_INIT" then
      finish((w and ("worker " .. tostring(w.id) .. ": ") or "") .. tostring(err))
    end
  end
  sup:on("start", fns.start)
  sup:on("give_up", fns.give_up)
  sup:on("stopped", fns.stopped)
  sup:on("error", fns.error)
  timer = tether.timer(M.START_WAIT, function()
    -- still starting (a slow start is no failure), unless every worker
    -- has already died before it ran: a script that exits or crashes at
    -- once is told as such, not as "started"
    local running, restarts, last = 0, 0, nil
    for _, w in ipairs(sup:workers()) do
      if w.state == "running" then running = running + 1 end
      restarts = restarts + (w.restarts or 0)
      if w.last_code ~= nil or w.last_signal ~= nil then last = w end
    end
    if running == 0 and restarts > 0 then
      return finish(("no worker is running after %d s: they exited %d times before they were ready%s")
        :format(M.START_WAIT // 1000, restarts, last and (" (the last one: %s)"):format(last.last_signal
          and ("signal " .. tostring(last.last_signal)) or ("exit code " .. tostring(last.last_code))) or ""))
    end
    finish(nil, true)
  end)
  if all_running(sup) then tether.defer(function() finish(nil) end) end
end

local function watch(self, sup)
  sup:on("error", function(err, w)
    note_error(self, (w and ("worker " .. w.id .. ": ") or "") .. tostring(err))
  end)
  sup:on("give_up", function(why)
    if self.sup ~= sup then return end
    self.status = "errored"
    note_error(self, "gave up: " .. tostring(why))
    if self.on_change then self.on_change(self, "give_up") end
  end)
  sup:on("start", function()
    if self.sup == sup and self.status == "launching" and all_running(sup) then
      self.status = "online"
      if self.on_change then self.on_change(self, "online") end
    end
  end)
  sup:on("stopped", function()
    if self.sup ~= sup then return end -- an old generation
    if self.status ~= "errored" then self.status = "stopped" end
    if self.on_change then self.on_change(self, "stopped") end
  end)
end

--- app:start(spec, cb): cb(err) once every worker runs, or with the
-- reason it could not start.  Returns true or nil, err (a spec the
-- supervisor refuses).
function App:start(spec, cb)
  if self.sup and not self.sup.stopped then return nil, "already running" end
  local sup, err = spawn(self, spec)
  if not sup then
    self.status = "errored"
    note_error(self, err)
    return nil, err
  end
  self:_retire(self.sup)
  self.spec, self.sup, self.status, self.started = spec, sup, "launching", os.time()
  self.errors = {}
  watch(self, sup)
  when_running(sup, function(werr, late)
    if cb then cb(werr, late) end
  end)
  return true
end

-- counts what an old generation did before it goes
function App:_retire(sup)
  if not sup then return end
  local total = 0
  for _, w in ipairs(sup:workers()) do total = total + (w.restarts or 0) end
  self.restarts_before = self.restarts_before + total
end

--- app:reload(spec, cb): a new generation, then the old one stopped;
-- cb(err).  A cluster reloads in place.
function App:reload(spec, cb)
  local old = self.sup
  if not old or old.stopped then return self:start(spec, cb) end
  if self.reloading then return nil, "a reload is already under way" end
  if old.listen ~= nil or self.spec.listen ~= nil then
    self.reloading = true
    local ok, err = old:reload(function(rerr)
      self.reloading = false
      self.reloads = self.reloads + 1
      cb(rerr and tostring(rerr))
    end)
    if not ok then self.reloading = false end
    return ok, err
  end
  local sup, err = spawn(self, spec)
  if not sup then
    note_error(self, "reload: " .. err)
    return nil, err
  end
  self.reloading, self.pending = true, sup
  local stops = self.stops
  when_running(sup, function(werr)
    self.reloading, self.pending = false, nil
    if not werr and self.stops ~= stops then
      -- the app was stopped meanwhile: the new generation does not replace it
      werr = "the app was stopped"
    end
    if werr then
      -- the new generation cannot run: the old one goes on serving
      note_error(self, "reload failed, the previous workers stay: " .. werr)
      sup:stop()
      return cb("the new workers did not start (" .. werr .. "); the previous ones go on running")
    end
    self:_retire(old)
    self.spec, self.sup, self.status = spec, sup, "online"
    self.reloads = self.reloads + 1
    watch(self, sup)
    old:stop()
    cb(nil)
  end)
  return true
end

--- app:stop(cb): cb() once every worker is down.
function App:stop(cb)
  -- a new generation still starting (a reload under way) stops too: it
  -- would take the place of the stopped one
  self.stops = self.stops + 1
  if self.pending then self.pending:stop() end
  local sup = self.sup
  if not sup or sup.stopped then
    if self.status ~= "errored" then self.status = "stopped" end
    return tether.defer(cb)
  end
  self.status = "stopping"
  sup:stop(function()
    self.status = "stopped"
    cb()
  end)
end

function App:scale(n, cb)
  local sup = self.sup
  if not sup or sup.stopped then return nil, "not running" end
  if not sup.scale then return nil, "this supervisor cannot scale" end
  local ok, err = sup:scale(n, function(serr) cb(serr and tostring(serr)) end)
  if ok and self.spec then self.spec.instances = n end
  return ok, err
end

--- What `tether ls` shows of it.
function App:row()
  local workers, restarts, rss, running = {}, self.restarts_before, 0, 0
  if self.sup then
    for _, w in ipairs(self.sup:workers()) do
      workers[#workers + 1] = { id = w.id, pid = w.pid, state = w.state, restarts = w.restarts,
        uptime = w.uptime, rss = w.rss }
      restarts = restarts + (w.restarts or 0)
      rss = rss + (w.rss or 0)
      if w.state == "running" then running = running + 1 end
    end
  end
  local spec = self.spec or {}
  return {
    name = self.name, status = self.status, instances = #workers, running = running,
    restarts = restarts, reloads = self.reloads, rss = rss, workers = workers,
    script = spec.script or spec.cmd, errors = self.errors,
    started = self.started,
  }
end

M.App = App
return M
