--- The `tether` command's daemon: keeps the apps that `tether start`
-- started, and answers the command over a Unix socket in tether's own
-- frame protocol (PROTOCOL.md): each command is one `call` of a table
-- {cmd = ..., ...} answered with {ok = true, ...} or {error = "..."}.
--
-- What PM2 taught (doc: README "The tether command"):
-- - logs never pass through here: workers' output goes from the
--   supervisor's pipes to files with a bounded buffer (tt_logsink.h), and
--   `tether logs` reads the files itself;
-- - the daemon runs with a minimal environment (the command starts it
--   under `env -i`), and every app gets the environment of the command that
--   started it, with its config re-read on every restart and reload;
-- - a config file runs in a process of its own (config_child.lua), so a
--   broken one cannot hang or kill the daemon;
-- - `save` never replaces a dump that names apps by one that names none.
local tether = require "tether"
local core = tether.core
local home = require "tether.home"
local config = require "tether.config"
local app_mod = require "tether.app"
local dump = require "tether.dump"

local M = {}

local CONFIG_TIMEOUT = 10000
local DEFAULT_ROTATE = { size = 10 * 1024 * 1024, keep = 5 }

-- environment variables that describe the caller's own place among
-- processes, not the app's: never handed on
local function inheritable(k)
  if k == "TETHER_HOME" then return true end
  return not (k:match("^TETHER_") or k:match("^NODE_CHANNEL_") or k == "NOTIFY_SOCKET"
    or k:match("^WATCHDOG_") or k:match("^LISTEN_") or k == "NODE_UNIQUE_ID")
end

local function clean_env(env)
  local out = {}
  for k, v in pairs(env or {}) do
    if type(k) == "string" and type(v) == "string" and inheritable(k) then out[k] = v end
  end
  return out
end

--- sd_notify(3), when systemd (or another manager) asked for it.
function M.notify(state)
  if core.sd_notify then return core.sd_notify(state) end
  return false
end

local function log(fmt, ...)
  io.stdout:write(os.date("!%Y-%m-%dT%H:%M:%SZ "), fmt:format(...), "\n")
  io.stdout:flush()
end

local Daemon = {}
Daemon.__index = Daemon

function M.new(paths)
  return setmetatable({ paths = paths, apps = {}, order = {}, peers = {} }, Daemon)
end

---------------------------------------------------------------------------
-- specs

-- The config's specs, run in a child with the app's environment
-- (config.eval). cb(specs) or cb(nil, err)
local function eval_config(path, env, cwd, cb)
  return config.eval(path, env, cwd, CONFIG_TIMEOUT, cb)
end

-- The spec an app runs: what its source says, with the command's options.
-- cb(spec) or cb(nil, err)
function Daemon:_spec(app, cb)
  local src = app.source
  local function complete(spec)
    for k, v in pairs(src.overrides or {}) do spec[k] = v end
    local env = {}
    for k, v in pairs(app.env or {}) do env[k] = v end
    for k, v in pairs(spec.env or {}) do env[k] = v end
    spec.env = env
    spec.cwd = spec.cwd or app.cwd
    spec.name = app.name
    local logs = self.paths.logs .. "/" .. app.name
    if spec.stdout == nil then spec.stdout = logs .. ".out.log" end
    if spec.stderr == nil then spec.stderr = logs .. ".err.log" end
    if spec.log_rotate == nil and require("tether.supervisor").SUPERVISE_OPTIONS.log_rotate then
      spec.log_rotate = DEFAULT_ROTATE
    elseif spec.log_rotate == false then
      spec.log_rotate = nil
    end
  end
  -- from a callback: an error here would end the daemon, so it is an answer
  local function finish(spec)
    local ok, err = pcall(complete, spec)
    if not ok then return cb(nil, tostring(err)) end
    cb(spec)
  end
  if src.kind == "script" then
    local spec = {}
    for k, v in pairs(src.spec) do spec[k] = v end
    return finish(spec)
  end
  eval_config(src.path, app.env, app.cwd, function(specs, err)
    if not specs then return cb(nil, err) end
    for _, s in ipairs(specs) do
      if s.name == (src.only or app.name) then return finish(s) end
    end
    cb(nil, ("%s no longer has an app named %q"):format(src.path, app.name))
  end)
end

---------------------------------------------------------------------------
-- apps

function Daemon:_app(name)
  return self.apps[name]
end

function Daemon:_add(name)
  local app = app_mod.new(name, { on_change = function(a, what)
    log("%s: %s", a.name, what)
  end })
  self.apps[name] = app
  self.order[#self.order + 1] = name
  return app
end

function Daemon:_remove(name, app)
  if app and self.apps[name] ~= app then return end
  self.apps[name] = nil
  for i, n in ipairs(self.order) do
    if n == name then table.remove(self.order, i) break end
  end
end

-- the apps a command names: one, or "all"
function Daemon:_targets(target)
  if target == "all" then
    local list = {}
    for _, n in ipairs(self.order) do list[#list + 1] = self.apps[n] end
    return list
  end
  local app = self.apps[target]
  if not app then return nil, ("no app named %q (tether ls lists them)"):format(tostring(target)) end
  return { app }
end

-- One operation at a time on an app: a stop or a delete that comes while a
-- start, restart or reload is under way (its config still running, its new
-- workers not up yet) waits for it, instead of leaving what that one starts
-- running unseen.  fn(app, finish) runs once the earlier ones finished;
-- done(err) after it.
function Daemon:_serial(app, fn, done)
  local q = app.ops or {}
  app.ops = q
  local function run()
    local finished = false
    local function finish(err)
      if finished then return end
      finished = true
      table.remove(q, 1)
      if q[1] then tether.defer(q[1]) end
      done(err)
    end
    if self.apps[app.name] ~= app then return finish("deleted meanwhile") end
    local ok, err = pcall(fn, app, finish)
    if not ok then finish(tostring(err)) end
  end
  q[#q + 1] = run
  if #q == 1 then run() end
end

-- runs fn(app, done) for each app, then cb(errors) with what failed
local function each(apps, fn, cb)
  local left, errors = #apps, {}
  if left == 0 then return cb(errors) end
  for _, app in ipairs(apps) do
    fn(app, function(err)
      if err then errors[#errors + 1] = app.name .. ": " .. tostring(err) end
      left = left - 1
      if left == 0 then cb(errors) end
    end)
  end
end

local function result(errors, extra)
  local r = extra or {}
  if #errors > 0 then r.error = table.concat(errors, "\n") else r.ok = true end
  return r
end

-- starts (or starts again) one app from its source; done(err)
function Daemon:_launch(app, done)
  self:_spec(app, function(spec, err)
    if not spec then
      app.status = "errored"
      return done(err)
    end
    local ok, serr = app:start(spec, function(werr, late)
      if werr then return done(werr) end
      if late then log("%s: still starting after %d s", app.name, app_mod.START_WAIT // 1000) end
      done(nil)
    end)
    if not ok then done(serr) end
  end)
end

---------------------------------------------------------------------------
-- commands: each fn(self, req, reply)

local COMMANDS = {}

function COMMANDS.ping(self, _, reply)
  reply({ ok = true, pid = core.getpid(), home = self.paths.home })
end

-- req: kind ("script" | "config"), path, name, args, instances,
-- max_memory, env, cwd
function COMMANDS.start(self, req, reply)
  local env, cwd = clean_env(req.env), req.cwd
  local overrides = { instances = req.instances, max_memory = req.max_memory }
  local function start_many(sources)
    local apps = {}
    for _, s in ipairs(sources) do
      local app = self.apps[s.name]
      if app and app.sup and not app.sup.stopped then
        return reply({ error = ("%s is already running (tether restart %s, or reload)"):format(s.name, s.name) })
      end
    end
    local source = {}
    for _, s in ipairs(sources) do
      local app = self.apps[s.name] or self:_add(s.name)
      if not app.source then app.source, app.env, app.cwd = s.source, env, cwd end
      apps[#apps + 1] = app
      source[app] = s.source
    end
    each(apps, function(app, done)
      self:_serial(app, function(_, finish)
        if app.sup and not app.sup.stopped then return finish("already running") end
        app.source, app.env, app.cwd = source[app], env, cwd
        self:_launch(app, finish)
      end, done)
    end, function(errors)
      local rows = {}
      for _, app in ipairs(apps) do rows[#rows + 1] = app:row() end
      reply(result(errors, { apps = rows }))
    end)
  end
  if req.kind == "script" then
    local name = req.name or require("tether.config").default_name({ script = req.path })
    if not home.valid_name(name) then return reply({ error = ("bad app name %q"):format(tostring(name)) }) end
    local spec = { script = req.path, args = req.args }
    return start_many { { name = name, source = { kind = "script", spec = spec, overrides = overrides } } }
  end
  eval_config(req.path, env, cwd, function(specs, err)
    if not specs then return reply({ error = err }) end
    local sources = {}
    for _, s in ipairs(specs) do
      if req.name == nil or s.name == req.name then
        sources[#sources + 1] = { name = s.name, source = { kind = "config", path = req.path, overrides = overrides } }
      end
    end
    if #sources == 0 then return reply({ error = ("%s has no app named %q"):format(req.path, req.name) }) end
    start_many(sources)
  end)
end

function COMMANDS.ls(self, _, reply)
  local rows = {}
  for _, n in ipairs(self.order) do rows[#rows + 1] = self.apps[n]:row() end
  reply({ ok = true, apps = rows })
end

-- where the logs of each app (or of `name`) are; the command reads them
function COMMANDS.logs(self, req, reply)
  local list = {}
  for _, n in ipairs(self.order) do
    if req.name == nil or req.name == n then
      local app = self.apps[n]
      local spec = app.spec or {}
      local base = self.paths.logs .. "/" .. n
      list[#list + 1] = { name = n,
        out = type(spec.stdout) == "string" and spec.stdout or base .. ".out.log",
        err = type(spec.stderr) == "string" and spec.stderr or base .. ".err.log" }
    end
  end
  if req.name and #list == 0 then return reply({ error = ("no app named %q"):format(req.name) }) end
  reply({ ok = true, apps = list })
end

local function with_new_env(app, req)
  if req.update_env and req.env then app.env = clean_env(req.env) end
end

function COMMANDS.restart(self, req, reply)
  local apps, err = self:_targets(req.target)
  if not apps then return reply({ error = err }) end
  each(apps, function(app, done) self:_serial(app, function(_, finish)
    with_new_env(app, req)
    -- the spec first: a config that no longer runs leaves the app as it is
    self:_spec(app, function(spec, serr)
      if not spec then return finish(serr) end
      -- and the spec checked: a bad option too leaves the app running
      local good, cerr = app_mod.check(spec)
      if not good then return finish(cerr .. " (the app runs on as it was)") end
      app:stop(function()
        local ok, e = app:start(spec, function(werr) finish(werr) end)
        if not ok then finish(e) end
      end)
    end)
  end, done) end, function(errors) reply(result(errors)) end)
end

function COMMANDS.reload(self, req, reply)
  local apps, err = self:_targets(req.target)
  if not apps then return reply({ error = err }) end
  each(apps, function(app, done) self:_serial(app, function(_, finish)
    with_new_env(app, req)
    self:_spec(app, function(spec, serr)
      if not spec then return finish(serr) end
      local ok, e = app:reload(spec, finish)
      if not ok then finish(e) end
    end)
  end, done) end, function(errors) reply(result(errors)) end)
end

function COMMANDS.stop(self, req, reply)
  local apps, err = self:_targets(req.target)
  if not apps then return reply({ error = err }) end
  each(apps, function(app, done)
    self:_serial(app, function(_, finish) app:stop(function() finish() end) end, done)
  end, function(errors) reply(result(errors)) end)
end

COMMANDS["delete"] = function(self, req, reply)
  local apps, err = self:_targets(req.target)
  if not apps then return reply({ error = err }) end
  each(apps, function(app, done)
    self:_serial(app, function(_, finish)
      app:stop(function()
        self:_remove(app.name, app)
        finish()
      end)
    end, done)
  end, function(errors) reply(result(errors)) end)
end

function COMMANDS.scale(self, req, reply)
  local app = self.apps[req.name]
  if not app then return reply({ error = ("no app named %q"):format(tostring(req.name)) }) end
  local n = req.n
  if math.type(n) ~= "integer" or n < 1 then return reply({ error = "the number of workers must be a whole number >= 1" }) end
  self:_serial(app, function(_, finish)
    local ok, err = app:scale(n, finish)
    if not ok then return finish(tostring(err)) end
    app.source.overrides = app.source.overrides or {}
    app.source.overrides.instances = n
  end, function(serr)
    reply(serr and { error = serr } or { ok = true, app = app:row() })
  end)
end

function COMMANDS.save(self, req, reply)
  local entries = {}
  for _, n in ipairs(self.order) do
    local app = self.apps[n]
    entries[#entries + 1] = { name = n, source = app.source, env = app.env, cwd = app.cwd,
      stopped = app.status == "stopped" or nil }
  end
  local ok, err = dump.save(self.paths.dump, entries, req.force)
  if not ok then return reply({ error = err }) end
  reply({ ok = true, path = self.paths.dump, apps = #entries })
end

function COMMANDS.resurrect(self, _, reply)
  self:resurrect(function(err, n) reply(err and { error = err } or { ok = true, apps = n }) end)
end

function COMMANDS.kill(self, _, reply)
  self:shutdown(function()
    reply({ ok = true })
    self:exit()
  end)
end

---------------------------------------------------------------------------

--- Starts the apps of the dump that are not running; cb(err, started)
function Daemon:resurrect(cb)
  local entries, from, err = dump.load(self.paths.dump)
  if not entries then return cb(err) end
  local apps = {}
  for _, e in ipairs(entries) do
    if home.valid_name(e.name) and type(e.source) == "table" then
      local app = self.apps[e.name]
      if not (app and app.sup and not app.sup.stopped) then
        app = app or self:_add(e.name)
        app.source, app.env, app.cwd = e.source, e.env or {}, e.cwd
        if not e.stopped then apps[#apps + 1] = app end
      end
    end
  end
  log("resurrect: %d apps from %s", #apps, from)
  each(apps, function(app, done)
    self:_serial(app, function(_, finish)
      if app.sup and not app.sup.stopped then return finish() end
      self:_launch(app, finish)
    end, done)
  end, function(errors)
    cb(#errors > 0 and table.concat(errors, "\n") or nil, #apps)
  end)
end

function Daemon:_serve(peer)
  peer:handle(function(req)
    if type(req) ~= "table" or type(req.cmd) ~= "string" then return { error = "bad request" } end
    local fn = COMMANDS[req.cmd]
    if not fn then return { error = ("unknown command %q"):format(req.cmd) } end
    -- answered from callbacks: the handler waits in its coroutine
    local r = tether.await(function(done) fn(self, req, done) end)
    return r
  end)
end

--- Listens; ready() once commands are taken.  true | nil, err
function Daemon:listen()
  local p = self.paths
  local lock, err = core.lock_file(p.lock)
  if not lock then
    if err.code == "EAGAIN" then return nil, "another tether daemon runs for " .. p.run, "running" end
    return nil, err
  end
  self.lock = lock
  core.write_file(p.pid, core.getpid() .. "\n", 420)
  os.remove(p.socket) -- a stale one: we hold the lock, nobody else listens
  local l, lerr = tether.listen("unix:" .. p.socket)
  if not l then return nil, lerr end
  self.listener = l
  self.acceptor = assert(core.acceptor(l, function(conn, aerr)
    if not conn then return log("accept: %s", tostring(aerr)) end
    local peer, perr = tether._channel(conn)
    conn:close()
    if not peer then return log("connection: %s", tostring(perr)) end
    self.peers[peer] = true
    peer:on("disconnect", function() self.peers[peer] = nil end)
    self:_serve(peer)
  end))
  return true
end

--- Stops every app; cb() once all are down.
function Daemon:shutdown(cb)
  if self.closing then
    table.insert(self.closing, cb)
    return
  end
  self.closing = { cb }
  local apps = {}
  for _, n in ipairs(self.order) do apps[#apps + 1] = self.apps[n] end
  log("stopping %d apps", #apps)
  each(apps, function(app, done)
    self:_serial(app, function(_, finish) app:stop(function() finish() end) end, done)
  end, function()
    for _, f in ipairs(self.closing) do f() end
  end)
end

function Daemon:exit()
  if self.acceptor then self.acceptor:stop() end
  if self.listener then self.listener:close() end
  os.remove(self.paths.socket)
  os.remove(self.paths.pid)
  log("daemon exits")
  -- the last answers are flushed by tether.exit
  tether.timer(20, function() tether.exit(0) end)
end

--- `tether daemon [--resurrect]`: runs until `tether kill` or SIGTERM.
function M.main(opts)
  local paths, err = home.prepare()
  if not paths then
    io.stderr:write("tether daemon: ", tostring(err), "\n")
    return 1
  end
  local d = M.new(paths)
  local ok, lerr, why = d:listen()
  if not ok then
    io.stderr:write("tether daemon: ", tostring(lerr), "\n")
    return why == "running" and 0 or 1
  end
  log("daemon %d listens on %s", core.getpid(), paths.socket)
  local function stop_all()
    M.notify("STOPPING=1")
    d:shutdown(function() d:exit() end)
  end
  tether.on_signal("SIGTERM", stop_all)
  tether.on_signal("SIGINT", stop_all)
  tether.on_signal("SIGHUP", function()
    for _, n in ipairs(d.order) do
      local sup = d.apps[n].sup
      if sup and not sup.stopped then sup:reopen_logs() end
    end
  end)
  local function ready() M.notify("READY=1") end
  if opts.resurrect then
    d:resurrect(function(rerr)
      if rerr then log("resurrect: %s", rerr) end
      ready()
    end)
  else
    ready()
  end
  tether.run()
  return 0
end

return M
