--- tether: Node-style fork(), message channels and process lifecycle for
-- Lua 5.4, on a C core driven by libuv (tether.core).
--
-- This facade owns what is policy rather than mechanism: event emitters,
-- option parsing, the keep-alive rule of tether.parent, and routing of
-- asynchronous errors (callback, else "error" event, else stderr).
local core = require "tether.core"
local json = require "tether.json"
-- Option checking (tether/check.lua) is loaded on first use: a worker
-- that never checks an option does not compile it at every spawn.
local check = setmetatable({}, { __index = function(t, k)
  local m = require "tether.check"
  setmetatable(t, { __index = m })
  return m[k]
end })
-- a tail call: the error level counts from our caller, as check's own
local function argerror(...) return check.argerror(...) end
-- for the public function that calls it: the error names that function's
-- caller (level 3)
local function check_fn(fname, n, fn)
  if type(fn) ~= "function" then argerror(fname, n, "function expected, got " .. type(fn), 3) end
end

local tether = {
  version = core.version,
  errors = core.errors,
  core = core,
}

-- frame kind of runner housekeeping (PROTOCOL.md)
tether._KIND_CONTROL = 5

-- JSON mode (Node.js peers): the codec lives in lua/tether/json.lua
if json.available then
  core.set_json(json.encode, json.decode)
  tether.null = json.null
end
tether._json = json

-- examples/node/tether.js, the request/response helper for Node.js peers:
-- installed beside the Lua modules (tether/tether.js), or in the source
-- tree.  tether.node_helper is found on first use (a worker that never asks
-- does not probe the file system at every require).
local function find_node_helper()
  local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
  for _, p in ipairs { here .. "/tether/tether.js", here .. "/../examples/node/tether.js" } do
    local f = io.open(p)
    if f then
      f:close()
      return p
    end
  end
end

---------------------------------------------------------------------------
-- errors

local function new_error(code, message)
  return core.error(code, message)
end
tether.error = new_error

local ERROR_MT = getmetatable(core.error("X"))
local function is_error(v, code)
  return type(v) == "table" and getmetatable(v) == ERROR_MT
    and (code == nil or v.code == code)
end
tether.is_error = is_error

---------------------------------------------------------------------------
-- deferred calls (like process.nextTick): run on the next loop iteration

local function defer(fn)
  core.timer(0, 0, fn)
end
tether.defer = defer

---------------------------------------------------------------------------
-- event emitter mixin

local Emitter = {}
Emitter.__index = Emitter
tether.Emitter = Emitter

local function listeners(self, event)
  local all = rawget(self, "_listeners")
  if not all then
    all = {}
    rawset(self, "_listeners", all)
  end
  local list = all[event]
  if not list then
    list = {}
    all[event] = list
  end
  return list
end

function Emitter:on(event, fn)
  if type(event) ~= "string" then argerror("on", 1, "string expected, got " .. type(event), 2) end
  check_fn("on", 2, fn)
  local list = listeners(self, event)
  list[#list + 1] = fn
  if self._listeners_changed then self:_listeners_changed(event) end
  return self
end

-- once-wrappers -> the function they wrap, so off(event, fn) finds them
local once_of = setmetatable({}, { __mode = "k" })

function Emitter:once(event, fn)
  if type(event) ~= "string" then argerror("once", 1, "string expected, got " .. type(event), 2) end
  check_fn("once", 2, fn)
  local wrapper
  wrapper = function(...)
    self:off(event, wrapper)
    return fn(...)
  end
  once_of[wrapper] = fn
  return self:on(event, wrapper)
end

--- off(event, fn) removes one listener fn (or the once-listener for fn);
-- off(event) removes them all.
function Emitter:off(event, fn)
  local list = listeners(self, event)
  for i = #list, 1, -1 do
    local f = list[i]
    if fn == nil or f == fn or once_of[f] == fn then
      table.remove(list, i)
      if fn then break end
    end
  end
  if self._listeners_changed then self:_listeners_changed(event) end
  return self
end

function Emitter:listener_count(event)
  local all = rawget(self, "_listeners")
  local list = all and all[event]
  return list and #list or 0
end

-- tostring that cannot raise (a value from a peer may be anything)
local function printable(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return "(" .. type(v) .. " value)"
end
tether._printable = printable

-- The core calls an object's handler as (event, ...): `events` maps each
-- event to function(self, ...).  Messages, the hot path, are looked for
-- first; an event with no entry goes to events[false] (event, ...) if
-- there is one, else is dropped.  (A native message without a handle,
-- when the object has one "message" listener, skips all this: the core
-- calls the listener itself; see sync_listener.)
local function dispatcher(events, self)
  local on_message, other = events.message, events[false]
  return function(event, a, b, c, d, e)
    if event == "message" then return on_message(self, a, b, c, d, e) end
    local f = events[event]
    if f then return f(self, a, b, c, d, e) end
    if other then return other(self, event, a, b, c, d, e) end
  end
end
tether._dispatcher = dispatcher

--- An object's "message" listeners changed: with exactly one, on a native
-- channel, the core calls it straight for each message that comes without
-- a handle (what emit would do, without the dispatcher and emit between:
-- every message takes this path).  `_listeners_changed` of the classes
-- whose core handle has set_listener.
local function sync_listener(self, event)
  local h = self._h
  if event ~= "message" or self._json or not h then return end
  local all = rawget(self, "_listeners")
  local list = all and all.message
  h:set_listener(list and #list == 1 and list[1] or nil)
end

function Emitter:emit(event, ...)
  local all = rawget(self, "_listeners")
  local list = all and all[event]
  local n = list and #list or 0
  if n == 0 then
    if event == "error" then
      local e = ...
      local tb = type(e) == "table" and type(rawget(e, "traceback")) == "string"
        and rawget(e, "traceback") or nil
      io.stderr:write("tether: unhandled 'error' event: ", printable(e),
        tb and tb ~= "" and ("\n" .. tb) or "", "\n")
    end
    return false
  end
  if n == 1 then
    list[1](...)
  else
    -- a copy, so listeners may add or remove listeners while we iterate
    local copy = table.move(list, 1, n, 1, {})
    for i = 1, n do copy[i](...) end
  end
  return true
end

local function emitter(obj, class)
  return setmetatable(obj, class)
end

local function class()
  local c = setmetatable({}, { __index = Emitter })
  c.__index = c
  return c
end

-- tether.on("uncaught", fn) and friends: module-level events
local module_events = setmetatable({}, Emitter)
local function dispatch_uncaught(err, tb)
  local list = rawget(module_events, "_listeners").uncaught
  for _, f in ipairs(table.move(list, 1, #list, 1, {})) do f(err, tb) end
end

local function update_uncaught()
  core.set_uncaught(module_events:listener_count("uncaught") > 0 and dispatch_uncaught or nil)
end

function tether.on(event, fn)
  module_events:on(event, fn)
  update_uncaught()
  return tether
end

function tether.once(event, fn)
  module_events:once(event, fn)
  update_uncaught()
  return tether
end

function tether.off(event, fn)
  module_events:off(event, fn)
  update_uncaught()
  return tether
end

---------------------------------------------------------------------------
-- loop

local EXIT = {} -- metatable of the sentinel raised by tether.exit in a callback

-- run() is the core's own: an error raised by a callback comes out of it
-- with the callback's frames, and lua5.4 adds the rest (one traceback); a
-- tether.exit() in a callback ends the process through tether._exit_now
tether.run = core.run

tether.stop = core.stop
tether.now = core.now
tether.hrtime = core.hrtime
--- tether.buffer(n | string): shared memory for a large value, sent without
-- copying its bytes (doc/zero-copy.md; binding/buffer.c)
tether.buffer = core.buffer
tether.fd = core.fd
tether.timeout = core.timeout

local function check_ms(fname, n, ms, min)
  if type(ms) ~= "number" or not (ms >= min and ms < check.MAX_MS) then
    argerror(fname, n, ("number of ms >= %d (below 1e15) expected, got %s"):format(min,
      ms == math.huge and "inf" or check.describe(ms)), 3)
  end
end

function tether.timer(ms, fn)
  check_ms("timer", 1, ms, 0)
  check_fn("timer", 2, fn)
  return core.timer(math.floor(ms), 0, fn)
end

function tether.every(ms, fn)
  check_ms("every", 1, ms, 1)
  check_fn("every", 2, fn)
  ms = math.floor(ms)
  return core.timer(ms, ms, fn)
end

function tether.on_signal(name, fn)
  if type(name) ~= "string" then argerror("on_signal", 1, "signal name expected, got " .. type(name), 2) end
  if not core.signal_number(name) then argerror("on_signal", 1, ("unknown signal '%s'"):format(name), 2) end
  check_fn("on_signal", 2, fn)
  return core.signal(name, fn)
end

---------------------------------------------------------------------------
-- coroutines: tether.go runs a function as a coroutine that may suspend in
-- tether.sleep, call and the like; only those coroutines may (a coroutine
-- of the user's own would be resumed by the wrong party).

local tasks = setmetatable({}, { __mode = "k" }) -- coroutines made by go

local function task_done(co, ok, ...)
  if ok then return end
  local err = ...
  -- tether.exit() inside a task unwinds on through the resumer
  if getmetatable(err) == EXIT then error(err, 0) end
  -- an answer or a timer for a task its owner closed (coroutine.close)
  -- while it waited: nobody is left to tell.  (A task that died of an
  -- error keeps its stack, so that error, even this one, is still told.)
  if err == "cannot resume dead coroutine" and not debug.getinfo(co, 0, "l") then return end
  local tb = debug.traceback(co, tostring(err))
  if core.running() then
    core.uncaught(err, tb) -- the uncaught handler, else run() re-raises it
  else
    error(type(err) == "string" and tb or err, 0)
  end
end

--- resume a tether coroutine with values (from a callback)
local function resume(co, ...)
  return task_done(co, coroutine.resume(co, ...))
end
tether._resume = resume

--- tether.go(fn, ...): run fn(...) as a coroutine now, until it first
-- suspends.  Returns the coroutine.
function tether.go(fn, ...)
  check_fn("go", 1, fn)
  local co = coroutine.create(fn)
  tasks[co] = true
  resume(co, ...)
  return co
end

--- The running tether coroutine, or nil.
local function current_task()
  local co, main = coroutine.running()
  if main or not tasks[co] then return nil end
  return co
end
tether.in_task = function() return current_task() ~= nil end

local function no_coroutine(what)
  return nil, new_error("ERR_NO_COROUTINE", what .. " must be called inside tether.go (or given a callback)")
end

--- tether.await(function(done) ... end): suspends the running tether
-- coroutine until `done(...)` is called, and returns what it was given.
-- Turns any callback API into a blocking call inside tether.go.
function tether.await(start)
  check_fn("await", 1, start)
  local co = current_task()
  if not co then return no_coroutine("tether.await") end
  local state, early = "starting", nil -- starting -> waiting -> done
  start(function(...)
    if state == "done" then return end -- only the first call counts
    if state == "starting" then
      state, early = "done", table.pack(...)
      return
    end
    state = "done"
    resume(co, ...)
  end)
  if state == "done" then return table.unpack(early, 1, early.n) end
  state = "waiting"
  return coroutine.yield()
end

--- tether.sleep(ms): suspends the running tether coroutine.
function tether.sleep(ms)
  check_ms("sleep", 1, ms, 0)
  if not current_task() then return no_coroutine("tether.sleep") end
  return tether.await(function(done) core.timer(math.floor(ms), 0, function() done(true) end) end)
end

---------------------------------------------------------------------------
-- option parsing

local function build_env(extra)
  local env = {}
  for k, v in pairs(extra) do env[#env + 1] = k .. "=" .. tostring(v) end
  return env
end

local STDIO_MODES = { inherit = true, pipe = true, ignore = true }

-- stdio: "inherit" | "pipe" | "ignore", or {stdin =, stdout =, stderr =}
-- each one of those or a file path (a path is only possible in the table)
local function stdio_check(v)
  if type(v) == "string" then
    if STDIO_MODES[v] then return true end
    local near = check.closest(v, STDIO_MODES)
    return false, nil, ("%s is not \"inherit\", \"pipe\" or \"ignore\"%s"):format(check.describe(v),
      near and (' (did you mean "' .. near .. '"?)')
      or " (a file path goes in the table form: stdio = {stdout = \"out.log\"})")
  end
  if type(v) ~= "table" then return false, '"inherit", "pipe", "ignore" or a table' end
  for k, x in pairs(v) do
    if k ~= "stdin" and k ~= "stdout" and k ~= "stderr" then
      local near = check.closest(k, { stdin = true, stdout = true, stderr = true })
      return false, nil, ("unknown key %s%s (stdin, stdout and stderr expected)"):format(check.describe(k),
        near and (" (did you mean '" .. near .. "'?)") or "")
    end
    if type(x) ~= "string" or x == "" then
      return false, nil, ("stdio.%s is %s: \"inherit\", \"pipe\", \"ignore\" or a file path expected")
        :format(k, check.describe(x))
    end
    if x:find("\0", 1, true) then return false, nil, "stdio." .. k .. ": " .. check.nul_complaint(x) end
    -- a near miss of a mode is a typo, not a file name
    if not STDIO_MODES[x] and not x:find("[/.]") then
      local near = check.closest(x, STDIO_MODES)
      if near then
        return false, nil, ("stdio.%s is \"%s\": did you mean \"%s\"? (a file needs a '/' or a '.', e.g. \"./%s\")")
          :format(k, x, near, x)
      end
    end
  end
  return true
end

local FD = function(v) return math.type(v) == "integer" and v >= 0 and v < 65536 end

-- the schemas of spawn's and fork's options, built at first use (with check)
local SPAWN_OPTIONS, FORK_OPTIONS
local function spawn_schemas()
  if SPAWN_OPTIONS then return end
  SPAWN_OPTIONS = {
    cwd = "path", env = check.env, stdio = stdio_check, detached = "boolean",
    serialization = check.oneof("native", "json"), max_message = "bytes", high_water = "bytes",
    flush_timeout = "ms_or_forever", close_fds = "boolean", pass_fds = check.array_of(FD, "fd numbers"),
    channel = "boolean",
  }
  FORK_OPTIONS = {}
  for k, v in pairs(SPAWN_OPTIONS) do FORK_OPTIONS[k] = v end
  FORK_OPTIONS.lua, FORK_OPTIONS.channel = "path", nil
  FORK_OPTIONS.prefork = function(v) return require("tether.zygote").check(v) end
end

-- the core's option table and the environment to add, from checked options
local function spawn_options(opts)
  local o = {}
  o.cwd, o.detached, o.max_message, o.high_water = opts.cwd, opts.detached, opts.max_message, opts.high_water
  if o.cwd == "" then o.cwd = nil end -- (as Node: an empty cwd is ours)
  o.flush_timeout, o.close_fds, o.pass_fds = opts.flush_timeout, opts.close_fds, opts.pass_fds
  o.zygote = opts.zygote -- set by fork for `prefork` (lua/tether/zygote.lua)
  if opts.serialization == "json" then
    if not json.available then error(json.why, 4) end
    o.json = true
  end
  if opts.channel ~= nil then o.channel = opts.channel end
  local stdio = opts.stdio or "inherit"
  if type(stdio) == "string" then
    o.stdin, o.stdout, o.stderr = stdio, stdio, stdio
  else
    o.stdin, o.stdout, o.stderr = stdio.stdin, stdio.stdout, stdio.stderr
  end
  local extra = {}
  for k, v in pairs(opts.env or {}) do extra[k] = v end
  -- (the core tells the child our max_message and whether it is
  -- detached: tt_handshake.h)
  return o, extra
end

local function check_args(fname, args)
  if args == nil then return {} end
  if type(args) ~= "table" then argerror(fname, 2, "table expected, got " .. type(args), 3) end
  local argv = {}
  for i, v in ipairs(args) do
    if type(v) ~= "string" and type(v) ~= "number" then
      argerror(fname, 2, ("args[%d] is a %s, string expected"):format(i, type(v)), 3)
    end
    if type(v) == "string" and v:find("\0", 1, true) then
      argerror(fname, 2, ("args[%d]: %s"):format(i, check.nul_complaint(v)), 3)
    end
    argv[i] = tostring(v)
  end
  return argv
end

---------------------------------------------------------------------------
-- streams (piped stdout/stderr)

local Stream = class()

-- a piped stdin: write(data) -> true | false (over the high-water mark:
-- wait for "drain") | nil, err; end() closes it
local Writable = class()

function Writable:write(data)
  if type(data) ~= "string" then
    argerror("write", 1, "string expected, got " .. type(data), 2)
  end
  return self._child._h:write(data)
end

Writable["end"] = function(self)
  self.writable = false
  return self._child._h:end_input()
end

---------------------------------------------------------------------------
-- child processes

local Child = class()
-- Fields looked at on every call and request, given a class default: a
-- field absent from the object and its class is looked for up the whole
-- metatable chain, each time
Child._update_ref, Child._serve_limit, Child._line = false, false, false
Child._listeners_changed = sync_listener
tether.Child = Child

--- The error a runner reported in a control frame (ERR_WORKER_INIT,
-- ERR_WORKER_UNCAUGHT), or nil for other housekeeping.  A report that does
-- not read as one (a peer that speaks the protocol wrongly) becomes an
-- ERR_IPC_PROTOCOL error: nothing a peer sends may raise here.
function tether._worker_error(msg)
  if type(msg) ~= "table" or msg.type ~= "error" then return nil end
  local code = msg.code
  if code ~= "ERR_WORKER_INIT" and code ~= "ERR_WORKER_UNCAUGHT" then
    return new_error("ERR_IPC_PROTOCOL",
      "malformed worker report (control frame): code is " .. printable(code))
  end
  local message = msg.message
  if type(message) ~= "string" then
    message = message == nil and "worker failed" or printable(message)
  end
  local err = new_error(code, message)
  if type(msg.traceback) == "string" then err.traceback = msg.traceback end
  if msg.load == true then err.load = true end
  return err
end

local function control(self, msg)
  local err = tether._worker_error(msg)
  if err then self:emit("error", err) end
end

local serve_request, MAX_REQUESTS -- below, with call and handle

local function child_output(self, a, name)
  local s = self[name]
  if a then return s:emit("data", a) end
  s.readable = false
  s:emit("end")
  s:emit("close") -- (Node's streams: "end", then "close"; the pipe is closed)
end

-- A message that came with a handle: a listener that raises does not keep
-- it (closed as the error goes on, traceback intact); one that returns owns
-- it (kept, detached, or closed by __gc when dropped).
local CLOSE_ON_ERROR = { __close = function(g, err) if err ~= nil then g.h:close() end end }
local function emit_with_handle(obj, handle, ...)
  local guard <close> = setmetatable({ h = handle }, CLOSE_ON_ERROR)
  if not obj:emit(...) then handle:close() end -- no listener: not taken
end
tether._emit_with_handle = emit_with_handle

-- A send that failed after it was accepted: its callback, else "error",
-- from the loop (never from inside the call that failed).
local function fail_later(self, cb, err)
  defer(function()
    if cb then cb(err) else self:emit("error", err) end
  end)
end

-- JSON mode's handles (below, with Child:send)
local NODE_TYPES, write_node_handle, send_now
local MAX_HANDLE_RETRANSMISSIONS = 3

-- The peer answered the handle we sent (JSON mode): ACK ends it, NACK
-- sends it again (up to 3 times); then what waited behind it goes, in
-- order, until the next handle stops the line again.
local function handle_answer(self, acked)
  local p = self._handle_out
  if not p then return end
  local err
  if not acked then
    if p.tries < MAX_HANDLE_RETRANSMISSIONS then
      p.tries = p.tries + 1
      local ok, e = write_node_handle(self, p)
      if ok ~= nil then return end
      err = e
    else
      err = new_error("ERR_HANDLE_NOT_RECEIVED",
        ("the peer refused the handle %d times (NODE_HANDLE_NACK)"):format(p.tries + 1))
    end
  end
  -- the line is made consistent first; user code (callbacks, "error")
  -- runs after, from the loop
  self._handle_out = nil
  p.handle:close()
  if p.cb or err then fail_later(self, p.cb, err) end
  local q = self._handle_queue
  self._handle_queue = nil
  for i = 1, #q do
    if self._handle_queue then -- stopped again: the rest waits behind it
      local nq = self._handle_queue
      for j = i, #q do nq[#nq + 1] = q[j] end
      return
    end
    local e = q[i]
    local ok, serr = send_now(self, e[1], e[2], e[3])
    if ok == nil then fail_later(self, e[3], serr) end
  end
end

-- The channel ended with a handle unanswered: it and what waited behind
-- it fail with ERR_IPC_CHANNEL_CLOSED.
local function fail_handle_line(self)
  local p, q = self._handle_out, self._handle_queue
  if not q then return end
  self._handle_out, self._handle_queue = nil, nil
  local err = new_error("ERR_IPC_CHANNEL_CLOSED", "the channel closed before the peer took the handle")
  local function fail(cb)
    if cb then defer(function() cb(err) end) else self:emit("error", err) end
  end
  if p then
    p.handle:close()
    fail(p.cb)
  end
  for _, e in ipairs(q) do
    if e[2] then e[2]:close() end
    fail(e[3])
  end
end

local function on_node_internal(self, m, id, deliver)
  return tether._internal_message(self, m, id, deliver, handle_answer)
end

local CHILD_EVENTS = {
  message = function(self, a, handle)
    if self._json and json.is_internal(a) then
      return on_node_internal(self, a, nil, function(msg, h) emit_with_handle(self, h, "message", msg, h) end)
    end
    if handle then return emit_with_handle(self, handle, "message", a, handle) end
    self:emit("message", a)
  end,
  exit = function(self, code, sig)
    self.exit_code, self.signal = code, sig
    if self.stdin then self.stdin.writable = false end -- (closed with the exit)
    self:emit("exit", code, sig)
  end,
  close = function(self, a, b) self:emit("close", a, b) end,
  disconnect = function(self)
    self.connected = false
    fail_handle_line(self)
    self:emit("disconnect")
  end,
  stdout = function(self, a) child_output(self, a, "stdout") end,
  stderr = function(self, a) child_output(self, a, "stderr") end,
  stdin_drain = function(self) if self.stdin then self.stdin:emit("drain") end end,
  control = function(self, a, handle)
    if handle then handle:close() end -- nothing of ours carries one this way
    control(self, a)
  end,
  drain = function(self) self:emit("drain") end,
  error = function(self, err) self:emit("error", err) end,
  [false] = function(self, event, a, b, c) self:emit(event, a, b, c) end,
}

local function child_handler(self) return dispatcher(CHILD_EVENTS, self) end

--- a native channel's requests go from the core straight to the request
-- server, as events.request would take them, without the dispatcher
local function direct_requests(self, h)
  if not self._json then
    h:set_listener(function(msg, id) return serve_request(self, msg, id) end, "request")
  end
end

-- spawn as the user asked, with arguments already checked
local function spawn(cmd, argv, opts)
  local o, extra = spawn_options(opts)
  o.env = build_env(extra)
  local self = emitter({ connected = false, killed = false }, Child)
  local h, err = core.spawn(cmd, argv, o, child_handler(self))
  if not h then
    -- as Node's spawn error: what was run, and how
    if type(err) == "table" then
      err.syscall, err.path, err.spawnargs = "spawn " .. cmd, cmd, table.move(argv, 1, #argv, 1, {})
    end
    return nil, err
  end
  self._h, self._send = h, h.send -- (_send: the hot path skips a lookup)
  self._json = o.json or false -- (always set: send looks at it first)
  direct_requests(self, h)
  self.pid = h:pid()
  self.connected = h:connected()
  if o.stdin == "pipe" then self.stdin = emitter({ _child = self, writable = true }, Writable) end
  if o.stdout == "pipe" then self.stdout = emitter({ readable = true }, Stream) end
  if o.stderr == "pipe" then self.stderr = emitter({ readable = true }, Stream) end
  defer(function() self:emit("spawn") end)
  return self
end

--- tether.spawn(cmd, [args], [opts]) -> child | nil, err
function tether.spawn(cmd, args, opts)
  if type(cmd) ~= "string" then argerror("spawn", 1, "string expected, got " .. type(cmd), 2) end
  if cmd:find("\0", 1, true) then argerror("spawn", 1, check.nul_complaint(cmd), 2) end
  local argv = check_args("spawn", args)
  spawn_schemas()
  opts = check.options("spawn", 3, opts, SPAWN_OPTIONS, 2)
  return spawn(cmd, argv, opts)
end

-- the interpreter running us: the lowest index of `arg`, as lua.c sets it
local function interpreter()
  if not arg or not arg[-1] then return "lua5.4" end
  local i = -1
  while arg[i - 1] do i = i - 1 end
  return arg[i]
end

local runner_path
local function find_runner()
  runner_path = runner_path or assert(package.searchpath("tether.runner", package.path),
    "tether.runner not found in package.path")
  return runner_path
end

--- tether.fork(script, [args], [opts]) -> child | nil, err
function tether.fork(script, args, opts)
  if type(script) ~= "string" then argerror("fork", 1, "string expected, got " .. type(script), 2) end
  if script:find("\0", 1, true) then argerror("fork", 1, check.nul_complaint(script), 2) end
  local argv = check_args("fork", args)
  spawn_schemas()
  opts = check.options("fork", 3, opts, FORK_OPTIONS, 2)
  table.insert(argv, 1, script)
  table.insert(argv, 1, find_runner())
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  local env = {}
  for k, v in pairs(opts.env or {}) do env[k] = v end
  -- the child loads the same tether as we do, unless told otherwise
  if env.LUA_PATH == nil then env.LUA_PATH_5_4 = env.LUA_PATH_5_4 or package.path end
  if env.LUA_CPATH == nil then env.LUA_CPATH_5_4 = env.LUA_CPATH_5_4 or package.cpath end
  o.env = env
  o.lua = nil
  o.channel = true
  local lua = opts.lua or interpreter()
  o.prefork = nil
  if opts.prefork then o.zygote = require("tether.zygote").asker_for(opts.prefork, lua) end
  return spawn(lua, argv, o)
end

--- A Node.js internal message ({cmd = "NODE_..."}) on a JSON channel is
-- never a user message.  NODE_HANDLE: the descriptor its line came with is
-- claimed now (take_handle); ACK and deliver(msg, handle), or NACK when
-- none came.  NODE_HANDLE_ACK/NACK answer a handle
-- we sent: answered(obj, acked).  `obj._h` is the core object; `id` the
-- worker, for supervisors and pools.
-- Node's socket lists (lib/internal/socket_list.js): a net.Socket a Node
-- server accepted and sent us carries the server's `key`; Node's
-- server.getConnections() asks how many of them are still open here
-- (NODE_SOCKET_GET_COUNT -> NODE_SOCKET_COUNT) and server.close() waits
-- until none is (NODE_SOCKET_NOTIFY_CLOSE -> NODE_SOCKET_ALL_CLOSED).  We
-- know a socket is closed when its descriptor number no longer names it
-- (the user may have handed it to luv or LuaSocket).
-- (one list per channel, as Node keeps one per child: `id` is a
-- supervisor's or pool's worker, nil for a child or the parent)
-- A descriptor passed on to other code, watched without holding a
-- duplicate (which would keep it open): {fd, inode, device} of a handle's
-- descriptor now (nil if it has none), and whether that number still names
-- the same file.  (Shared with the cluster's workers.)
local function fd_mark(handle)
  local fd = handle:fd()
  local ino, dev
  if fd then ino, dev = core.fd_identity(fd) end
  return ino and { fd, ino, dev } or nil
end
local function same_fd(e)
  local ino, dev = core.fd_identity(e[1])
  return ino == e[2] and dev == e[3]
end
tether._fd_mark, tether._same_fd = fd_mark, same_fd

local function node_sockets_open(obj, key)
  local list = obj._node_sockets and obj._node_sockets[key]
  if not list then return 0 end
  local kept = {}
  for _, e in ipairs(list) do
    if same_fd(e) then kept[#kept + 1] = e end
  end
  obj._node_sockets[key] = kept
  return #kept
end

local function gone(obj)
  return obj.connected == false or obj.closed or obj.stopped
end

local function node_socket_list(obj, m, id)
  local key = (id or 0) .. "\0" .. m.key
  local function reply(v)
    if not obj._h then return end
    if id then obj._h:send(id, v) else obj._h:send(v) end
  end
  if m.cmd == "NODE_SOCKET_GET_COUNT" then
    return reply({ cmd = "NODE_SOCKET_COUNT", key = m.key, count = node_sockets_open(obj, key) })
  end
  -- NODE_SOCKET_NOTIFY_CLOSE: answered once the last one is closed
  if node_sockets_open(obj, key) == 0 then return reply({ cmd = "NODE_SOCKET_ALL_CLOSED", key = m.key }) end
  local poll
  poll = core.timer(100, 100, function()
    if gone(obj) or node_sockets_open(obj, key) == 0 then
      poll:stop()
      if not gone(obj) then reply({ cmd = "NODE_SOCKET_ALL_CLOSED", key = m.key }) end
    end
  end)
  poll:unref()
end

local NOOP = function() end

function tether._internal_message(obj, m, id, deliver, answered)
  local h, cmd = obj._h, m.cmd
  if cmd == "NODE_HANDLE" then
    local handle = h.take_handle and h:take_handle()
    local reply = { cmd = handle and "NODE_HANDLE_ACK" or "NODE_HANDLE_NACK" }
    -- (our own answer: its loss, should the peer leave unread, is not the
    -- user's to hear of)
    if id then h:send(id, reply) else h:send(reply, NOOP) end
    if handle then
      local key = type(m.key) == "string" and m.type == "net.Socket" and (id or 0) .. "\0" .. m.key
      local mark = key and fd_mark(handle)
      if mark then -- counted first: a listener that raises still closed it
        obj._node_sockets = obj._node_sockets or {}
        local list = obj._node_sockets[key] or {}
        obj._node_sockets[key] = list
        list[#list + 1] = mark
      end
      if deliver then deliver(m.msg, handle) else handle:close() end
    end
  elseif (cmd == "NODE_HANDLE_ACK" or cmd == "NODE_HANDLE_NACK") and answered then
    answered(obj, cmd == "NODE_HANDLE_ACK")
  elseif (cmd == "NODE_SOCKET_GET_COUNT" or cmd == "NODE_SOCKET_NOTIFY_CLOSE") and type(m.key) == "string" then
    node_socket_list(obj, m, id)
  end
end

---------------------------------------------------------------------------
-- supervisors (lua/tether/supervisor.lua) and what they share with fork

tether._internal = {
  interpreter = interpreter,
  build_env = function(extra) return build_env(extra) end,
  runner_path = find_runner,
  stdio_check = stdio_check,
}

--- tether.supervise(spec) -> sup | nil, err
function tether.supervise(spec)
  return require("tether.supervisor").new(spec)
end

--- tether.pool(spec) -> pool | nil, err (with `broker`: a pool across
-- machines, lua/tether/broker.lua)
function tether.pool(spec)
  if type(spec) == "table" and spec.broker ~= nil then return require("tether.broker").submitter(spec, 2) end
  return require("tether.pool").new(spec)
end

--- tether.agent(spec) -> agent | nil, err: runs tasks of a broker's queue
-- in a local pool (lua/tether/broker.lua)
function tether.agent(spec)
  return require("tether.broker").agent(spec)
end

--- tether.zygote{preload = {...}, lua = path}: a warmed interpreter that
-- forks workers for `prefork` (lua/tether/zygote.lua).
function tether.zygote(spec)
  local z, err = require("tether.zygote").new(spec, 3)
  return z, err
end

--- tether.ready(): tells a supervising parent that this worker is ready
-- now (PM2's process.send('ready')), before its main chunk ends: for a
-- script that goes on to run another loop (luv's uv.run()) from its main
-- chunk.  The runner says it by itself once the main chunk ran; saying it
-- twice is harmless.  A no-op without a tether parent.
function tether.ready()
  local parent = tether.parent
  if parent and parent.connected and not parent.json and not tether._said_ready then
    tether._said_ready = true
    parent._h:ready()
  end
  return true
end

--- tether.cluster(spec): a supervisor whose workers serve one listening
-- socket (lua/tether/cluster.lua); tether.cluster.worker() in a worker.
tether.cluster = setmetatable({
  worker = function() return require("tether.cluster").worker() end,
}, { __call = function(_, spec) return require("tether.cluster").new(spec) end })

--- tether.serve(fn), in a pool's worker: fn(task) returns the task's
-- result (it may yield; raising fails the task with ERR_TASK_FAILED).
function tether.serve(fn)
  check_fn("serve", 1, fn)
  local parent = tether.parent
  if not parent then
    error("tether.serve: no parent channel (start this script with tether.pool or tether.fork)", 2)
  end
  -- under a pool: at most `concurrency` tasks at once; the pool sends a
  -- few more ahead (prefetch), which wait here in order
  local limit = core.handshake().concurrency
  if limit >= 1 and not parent._serve_limit then
    parent._serve_limit, parent._active = limit, parent._active or 0
    parent._line = { first = 1, last = 0 }
  end
  -- a task from a queue across machines (tether.agent) comes wrapped with
  -- its info: fn(task, {task_id =, attempt =})
  local user = fn
  local MARK = "\0tether.task"
  return parent:handle(function(task, ...)
    if type(task) == "table" and rawget(task, MARK) ~= nil then
      local value, err = core.decode(task[MARK])
      if err then error(err, 0) end
      return user(value, task.info)
    end
    return user(task, ...)
  end)
end

-- Handles in JSON mode travel as Node's: {cmd="NODE_HANDLE", type, msg}
-- with the descriptor, then every later send waits until the peer answers
-- NODE_HANDLE_ACK (NACK: sent again, up to 3 times, as Node does).
NODE_TYPES = {
  ["tcp-server"] = "net.Server", ["unix-server"] = "net.Server",
  tcp = "net.Socket", unix = "net.Socket", udp = "dgram.Socket",
}

-- p = { msg, handle (our duplicate), cb, tries }
function write_node_handle(self, p)
  local wrapped = { cmd = "NODE_HANDLE", type = NODE_TYPES[p.handle.kind], msg = p.msg }
  if wrapped.type == "dgram.Socket" then
    wrapped.dgramType = (p.handle:address() or ""):find(":", 1, true) and "udp6" or "udp4"
  end
  return self._h:send(wrapped, nil, nil, nil, p.handle)
end

function send_now(self, msg, handle, cb)
  if handle and self._json then
    -- ours until answered: the caller may close theirs at once
    local p = { msg = msg, handle = handle, cb = cb, tries = 0 }
    local ok, err = write_node_handle(self, p)
    if ok == nil then
      handle:close()
      return nil, err
    end
    self._handle_out, self._handle_queue = p, {}
    return true
  end
  return self._h:send(msg, cb, nil, nil, handle)
end

--- send(msg, [handle], [cb]): a handle (tether.listen, tether.handle, or
-- one received) travels with the message; the sender's stays open.
function Child:send(msg, a, b)
  if a == nil and b == nil and not self._json then
    -- the common case (a native channel, no handle, no callback), taken
    -- first: it is every message's path
    local ok, err = self._send(self._h, msg)
    if ok == nil and err.code == "ERR_IPC_CHANNEL_CLOSED" then
      fail_later(self, nil, err)
      return false
    end
    return ok, err
  end
  local handle, cb = nil, a
  if core.is_handle(a) then handle, cb = a, b
  elseif a == nil then cb = b end -- send(msg, nil, cb): no handle, as Node's
  if cb ~= nil then check_fn("send", (handle or a == nil) and 3 or 2, cb) end
  if self._json then
    if handle then
      if not NODE_TYPES[handle.kind] then
        return nil, new_error("ERR_SERIALIZE", "a Node peer takes sockets only, not a " .. tostring(handle.kind or "closed") .. " handle")
      end
      local fd, ferr = handle:fd()
      if not fd then return nil, ferr end
      local dup, derr = core.handle(fd)
      if not dup then return nil, derr end
      handle = dup
    end
    local q = self._handle_queue
    if q then -- a handle is waiting for its answer: in line behind it
      if not self.connected then -- as an unqueued send to a closed channel
        if handle then handle:close() end
        fail_later(self, cb, new_error("ERR_IPC_CHANNEL_CLOSED"))
        return false
      end
      q[#q + 1] = { msg, handle, cb }
      return true
    end
  end
  local ok, err = send_now(self, msg, handle, cb)
  if ok == nil and err.code == "ERR_IPC_CHANNEL_CLOSED" then
    fail_later(self, cb, err)
    return false
  end
  return ok, err
end

--- child:call(msg, [opts], [cb]): request/response.  In a tether
-- coroutine returns reply or nil, err; otherwise cb(err, reply).
local function calls_in_flight(self, delta)
  if self._update_ref then -- the parent channel: a pending call is work
    self._calls = (self._calls or 0) + delta
    self:_update_ref()
  end
end

local CALL_OPTIONS -- built at first use (with check)

--- checks call options (before anything else: a mistake is reported in a
-- coroutine or not); `level` is the caller's
local function call_options(fname, n, opts, level)
  CALL_OPTIONS = CALL_OPTIONS or { timeout = "ms", retries = "count", backoff = check.backoff }
  opts = check.options(fname, n, opts, CALL_OPTIONS, level + 1)
  if (opts.retries or 0) > 0 and (opts.timeout or 0) <= 0 then
    argerror(fname, n, "option 'retries' needs a 'timeout' (a retry follows a timeout)", level + 1)
  end
  local b = opts.backoff
  if b and ((b.factor and b.factor < 1) or (b.initial and b.max and b.initial > b.max)) then
    argerror(fname, n, "option 'backoff': needs initial <= max and factor >= 1", level + 1)
  end
  return opts
end
tether._call_options = call_options

local NO_OPTIONS = {} -- (read only)

-- what a coroutine waiting in call() needs, made once per coroutine (a
-- call costs no closure): waiters[co] = { wake, counted }, wake the
-- callback that resumes it, counted the parent channel whose call it waits
-- for, counted in flight till the answer comes (whether or not the
-- coroutine is ever resumed), or false
local waiters = setmetatable({}, { __mode = "k" })
local co_running, co_resume, co_yield = coroutine.running, coroutine.resume, coroutine.yield

local function call(self, msg, opts, cb)
  -- (type() only when it matters: a C call and a type name per call)
  if cb == nil and opts ~= nil and type(opts) == "function" then opts, cb = nil, opts end
  if opts == nil then opts = NO_OPTIONS else opts = call_options("call", 2, opts, 2) end
  if cb ~= nil and type(cb) ~= "function" then argerror("call", 3, "function expected, got " .. type(cb), 2) end
  local timeout, retries, backoff = opts.timeout, opts.retries, opts.backoff
  if cb then
    local ok, err = self._h:call(msg, timeout, retries, backoff, function(e, reply)
      calls_in_flight(self, -1)
      cb(e, reply)
    end)
    if ok == nil and err.code == "ERR_IPC_CHANNEL_CLOSED" then
      defer(function() cb(err) end)
      return false
    end
    if ok then calls_in_flight(self, 1) end
    return ok, err
  end
  local co, main = co_running()
  local w = not main and waiters[co] -- (only a task's coroutine has one)
  if not w then
    if main or not tasks[co] then return no_coroutine("call") end
    w = { false, false }
    w[1] = function(e, reply)
      local counted = w[2]
      if counted then
        w[2] = false
        calls_in_flight(counted, -1)
      end
      local ok, err = co_resume(co, e, reply)
      if not ok then task_done(co, ok, err) end
    end
    waiters[co] = w
  end
  -- the core never runs this callback from inside call(): yield is safe
  local h = self._h
  local ok, err = h.call(h, msg, timeout, retries, backoff, w[1])
  if ok == nil then return nil, err end
  if self._update_ref then -- (calls_in_flight's test, written out)
    w[2] = self
    calls_in_flight(self, 1)
  end
  local e, reply = co_yield()
  if e then return nil, e end
  return reply
end

--- child:handle(fn): answer the peer's calls with fn(request) (may yield;
-- raising gives the caller ERR_TASK_FAILED).  fn == nil stops handling.
local function handle(self, fn)
  if fn ~= nil and type(fn) ~= "function" then argerror("handle", 1, "function expected, got " .. type(fn), 2) end
  self._handler = fn
  if self._listeners_changed then self:_listeners_changed() end
  return self
end

local function answer_error(self, id, code, message, traceback, automatic)
  self._h:answer(id, { code = code, message = message, traceback = traceback }, true, automatic)
end

local function handler_error(e)
  if getmetatable(e) == EXIT then return e end -- tether.exit(): not a failure
  if type(e) == "table" and (e.code ~= nil or e.message ~= nil) then
    -- a plain table (no __tostring) says what its fields say, not its address
    local mt = getmetatable(e)
    local text
    if mt and mt.__tostring then text = tostring(e)
    elseif e.message == nil then text = tostring(e.code)
    elseif e.code == nil then text = tostring(e.message)
    else text = tostring(e.code) .. ": " .. tostring(e.message) end
    return { message = text, traceback = debug.traceback(nil, 2) }
  end
  return { message = tostring(e), traceback = debug.traceback(tostring(e), 2) }
end

local function serve_one(self, msg, id)
  local fn = self._handler
  if not fn then
    answer_error(self, id, "ERR_NO_HANDLER", "the peer has no request handler (handle(fn) was not called)",
      nil, true)
    return
  end
  local ok, result = xpcall(fn, handler_error, msg)
  if not ok then
    if getmetatable(result) == EXIT then error(result, 0) end
    answer_error(self, id, "ERR_TASK_FAILED", result.message, result.traceback)
    return
  end
  local sent, err = self._h:answer(id, result)
  if sent == nil and err.code == "ERR_SERIALIZE" then
    answer_error(self, id, "ERR_TASK_FAILED", "reply cannot be sent: " .. err.message)
  end
end

-- Requests one peer may have in progress at once (handlers waiting in
-- call, sleep or await); beyond it a request is refused with
-- ERR_QUEUE_FULL.  (A pool's worker takes `concurrency` at a time.)
MAX_REQUESTS = 10000

-- Handler coroutines are reused: one that finished a request waits in
-- `idle_servers` for the next, so a request costs no coroutine creation.
local idle_servers = {}

local function server_loop(self, msg, id)
  local me = coroutine.running()
  while true do
    serve_one(self, msg, id)
    local line = self._line -- requests held back by tether.serve's limit
    if line and line.first <= line.last then
      local item = line[line.first]
      line[line.first] = nil
      line.first = line.first + 1
      msg, id = item[1], item[2]
    else
      self._active = self._active - 1
      self, msg, id = nil, nil, nil
      idle_servers[#idle_servers + 1] = me
      self, msg, id = coroutine.yield()
    end
  end
end

function serve_request(self, msg, id)
  local limit = self._serve_limit
  if limit and self._active >= limit then
    -- a pool sent it ahead (prefetch): it waits its turn, in order
    local line = self._line
    line.last = line.last + 1
    line[line.last] = { msg, id }
    return
  end
  local active = self._active or 0
  if active >= MAX_REQUESTS then
    -- a peer that asks faster than its requests end (handlers that wait)
    -- cannot pile up handlers without bound: the rest are refused
    answer_error(self, id, "ERR_QUEUE_FULL", ("%d requests of this peer are in progress already"):format(active),
      nil, true)
    return
  end
  self._active = active + 1
  local n = #idle_servers
  local co = idle_servers[n]
  if co then
    idle_servers[n] = nil
    local ok, err = coroutine.resume(co, self, msg, id)
    if not ok then task_done(co, ok, err) end
  else
    tether.go(server_loop, self, msg, id)
  end
end

Child.call = call
Child.handle = handle
CHILD_EVENTS.request = serve_request -- (defined after the table)

function Child:_send_kind(msg, kind, id, cb)
  return self._h:send(msg, cb, kind, id)
end

function Child:disconnect()
  local ok, err = self._h:disconnect()
  if ok then self.connected = false end
  return ok, err
end

-- methods that are the core handle's own
local function delegate(class, names)
  for _, name in ipairs(names) do
    class[name] = function(self, ...) return self._h[name](self._h, ...) end
  end
end
delegate(Child, { "stats", "write", "end_input" })

--- a signal name ("SIGTERM", "TERM") or number, checked: `level` is the
-- caller's
local function check_signal(fname, n, sig, level)
  if sig == nil then return "SIGTERM" end
  if math.type(sig) == "integer" then return sig end
  if type(sig) ~= "string" then
    argerror(fname, n, "signal name or number expected, got " .. type(sig), level + 1)
  end
  if not core.signal_number(sig) then argerror(fname, n, ("unknown signal '%s'"):format(sig), level + 1) end
  return sig
end
tether._check_signal = check_signal

function Child:kill(sig)
  local ok, err = self._h:kill(check_signal("kill", 1, sig, 2))
  if ok then self.killed = true end -- (Node's child.killed: a signal was sent)
  return ok, err
end

function Child:__tostring()
  return tostring(self._h)
end

---------------------------------------------------------------------------
-- the channel to our parent, in a child

local Parent = class()
Parent._serve_limit, Parent._line = false, false -- (as Child's)

function Parent:_listeners_changed(event)
  sync_listener(self, event)
  self:_update_ref()
end

function Parent:_update_ref()
  local listening = self._keep_alive or self._serving or self._handler or self._cluster
    or (self._calls or 0) > 0
    or self:listener_count("message") > 0 or self:listener_count("disconnect") > 0
  self._h:ref(listening and true or false)
end

function Parent:keep_alive(on)
  self._keep_alive = on and true or false
  core.watch_parent(not self._keep_alive and not self._detached)
  self:_update_ref()
  return self
end

Parent.send = Child.send
Parent._send_kind = Child._send_kind
Parent.call = call
Parent.handle = handle

function Parent:disconnect()
  local ok, err = self._h:disconnect()
  if ok then
    self.connected = false
    self._local_disconnect = true
  end
  return ok, err
end

delegate(Parent, { "stats", "flush" })

local PARENT_EVENTS = {
  message = function(self, a, handle)
    if self.json and json.is_internal(a) then
      return on_node_internal(self, a, nil, function(msg, h) emit_with_handle(self, h, "message", msg, h) end)
    end
    if handle then return emit_with_handle(self, handle, "message", a, handle) end
    self:emit("message", a)
  end,
  disconnect = function(self)
    self.connected = false
    fail_handle_line(self)
    self:emit("disconnect")
    if not self._local_disconnect and not self._keep_alive and not self._detached then
      -- The parent went away: we go too.  A parent that only
      -- disconnected lets us finish our work, as in Node; the EOF may
      -- come a moment before the kernel reparents us, so look again.
      if not core.parent_alive() then tether.exit(0) end
      local checks, again = 0, nil
      again = core.timer(50, 50, function()
        checks = checks + 1
        if not core.parent_alive() then tether.exit(0) end
        if checks >= 20 then again:stop() end -- a live parent: settled
      end)
      again:unref()
    end
  end,
  request = serve_request,
  drain = function(self) self:emit("drain") end,
  error = function(self, err) self:emit("error", err) end,
  control = function(_, a, handle)
    -- a cluster's connections and stop (lua/tether/cluster.lua)
    if type(a) == "table" and a.type == "cluster" then return require("tether.cluster").control(a, handle) end
    if handle then handle:close() end
  end,
  [false] = function(self, event, a, b, c) self:emit(event, a, b, c) end,
}

local function open_parent()
  if not core.handshake().channel then return nil end
  local self = emitter({ connected = true }, Parent)
  core.parent_alive() -- who our parent is, learnt now (a Node.js parent does not say)
  local h, a_err = core.open_parent(dispatcher(PARENT_EVENTS, self))
  if not h then
    -- a channel was given but cannot be used: say so rather than run as if
    -- there were no parent (e.g. Node's "advanced" serialization: ENOTSUP)
    tether.parent_error = a_err
    io.stderr:write("tether: the parent's channel cannot be used: ", tostring(a_err),
      a_err and a_err.code == "ENOTSUP" and " (Node's \"advanced\" serialization; use \"json\")" or "", "\n")
    return nil
  end
  self._h, self._send = h, h.send
  self.json = h:json() -- started by Node.js (or by tether in JSON mode)
  self._json = self.json -- (what send looks at, as on a Child)
  direct_requests(self, h)
  -- started with detached = true: we outlive the parent (its death only
  -- ends the channel, as in Node)
  self._detached = core.handshake().detached
  core.watch_parent(not self._detached)
  return self
end

tether.parent = open_parent()

--- In a worker a zygote just forked (lua/tether/zygote_main.lua): what was
-- learnt from the zygote's environment at load time, learnt again.
function tether._after_fork()
  tether._said_ready = nil
  tether.parent = nil
  tether.parent = open_parent()
end

---------------------------------------------------------------------------
-- a channel on any connected stream socket, e.g. the `tether` command and
-- its daemon (lua/tether/daemon.lua): the parent's methods without the
-- parent's lifetime rules (its end is nobody's exit)

local Peer = class()
Peer._serve_limit, Peer._line = false, false -- (as Child's)
Peer._listeners_changed = Parent._listeners_changed
Peer._update_ref = Parent._update_ref
Peer.send, Peer._send_kind, Peer.call, Peer.handle = Child.send, Child._send_kind, call, handle
Peer.disconnect = Child.disconnect
delegate(Peer, { "stats", "flush" })
function Peer:__tostring() return tostring(self._h) end

local PEER_EVENTS = {
  message = function(self, a, handle)
    if handle then return emit_with_handle(self, handle, "message", a, handle) end
    self:emit("message", a)
  end,
  disconnect = function(self)
    self.connected = false
    self:emit("disconnect")
  end,
  request = serve_request,
  drain = function(self) self:emit("drain") end,
  error = function(self, err) self:emit("error", err) end,
  control = function(_, _, handle) if handle then handle:close() end end,
  [false] = function(self, event, a, b, c) self:emit(event, a, b, c) end,
}

--- tether._channel(handle, [max_message]): a peer on a connected socket
-- (the handle stays the caller's).  peer | nil, err
function tether._channel(h, max_message)
  local self = emitter({ connected = true, _json = false }, Peer)
  local ch, err = core.open_channel(dispatcher(PEER_EVENTS, self), h, max_message)
  if not ch then return nil, err end
  self._h, self._send = ch, ch.send
  direct_requests(self, ch)
  self:_update_ref()
  return self
end

--- tether._connect("unix:PATH", [max_message]): a peer on a new connection.
function tether._connect(address, max_message)
  local h, err = core.connect(address)
  if not h then return nil, err end
  local peer, perr = tether._channel(h, max_message)
  h:close()
  return peer, perr
end

---------------------------------------------------------------------------
-- exit: deliver what was sent, then end the process

-- Hands what every channel has queued to the kernel, waiting at most each
-- channel's flush_timeout for a peer that does not read; what is left is
-- reported, never dropped silently.
local function flush_before_exit()
  -- we are ending anyway: the parent's death must not interrupt that (a
  -- signal in the middle of the exit, e.g. of a sanitizer's leak check)
  if tether.parent then core.watch_parent(false) end
  local left = core.flush_all()
  if left > 0 then
    io.stderr:write(("tether: exiting with %d bytes of queued messages not delivered "
      .. "(a peer did not read them within the flush timeout)\n"):format(left))
  end
end

local real_exit = os.exit
function tether._exit_now(code)
  flush_before_exit()
  io.stdout:flush()
  real_exit(code == nil and 0 or code, true)
end

-- os.exit delivers what was sent first, as tether.exit does (in a parent
-- as in a child); inside a callback it unwinds the loop first
-- (checked before anything is flushed: a bad code is the caller's mistake,
-- raised at its line, and the process goes on)
local function check_exit_code(fname, code)
  if code ~= nil and type(code) ~= "boolean" and math.type(code) ~= "integer"
      and not (type(code) == "number" and math.tointeger(code)) then
    argerror(fname, 1, "integer or boolean expected, got " .. check.describe(code), 3)
  end
end

os.exit = function(code, close)
  check_exit_code("exit", code)
  if core.running() then return tether.exit(code) end
  flush_before_exit()
  return real_exit(code, close)
end

--- tether.exit([code]): like os.exit, but queued messages are delivered
-- first.  Inside a callback the loop is unwound first (the stack above the
-- callback must not resume).
function tether.exit(code)
  check_exit_code("exit", code)
  if code == true then code = 0 elseif code == false then code = 1 end
  if core.running() then
    error(setmetatable({ tether_exit = true, code = code, message = "tether.exit" }, EXIT), 0)
  end
  tether._exit_now(code)
end

---------------------------------------------------------------------------
-- handles (PROTOCOL.md "Handles")

local LISTEN_OPTIONS = { backlog = "count", reuseport = "boolean" }

--- tether.listen(address, [opts]): a listening socket to pass to workers:
-- "tcp://127.0.0.1:8080", "tcp://[::1]:0", "unix:/path".  opts.backlog
-- (511), opts.reuseport (SO_REUSEPORT).  handle | nil, err
function tether.listen(address, opts)
  if type(address) ~= "string" then argerror("listen", 1, "string expected, got " .. check.describe(address), 2) end
  if opts ~= nil then check.options("listen", 2, opts, LISTEN_OPTIONS, 2) end
  opts = opts or {}
  return core.listen(address, opts.backlog or 0, opts.reuseport or false)
end

--- tether.handle(fd): a handle on a duplicate of `fd` (the caller's stays
-- the caller's), e.g. from luv's uv.fileno(h) or LuaSocket's getfd().
function tether.handle(fd)
  -- (LuaSocket's getfd() gives a float: 9.0 is descriptor 9)
  local n = type(fd) == "number" and math.tointeger(fd)
  if not n then argerror("handle", 1, "integer (a descriptor) expected, got " .. check.describe(fd), 2) end
  return core.handle(n)
end

tether.is_handle = core.is_handle

tether._EXIT = EXIT
core.set_exit(function(code) tether._exit_now(code) end)

setmetatable(tether, { __index = function(t, k)
  if k == "node_helper" then
    local p = find_node_helper()
    if p then rawset(t, k, p) end
    return p
  end
end })

return tether
