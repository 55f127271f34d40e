--- tether child runner: `lua5.4 runner.lua script [args...]`, started by
-- tether.fork().  Loads the script with its args in `arg` and `...`, runs
-- it, then runs the loop.  A script that fails to load or raises before its
-- main chunk ends is reported to the parent as ERR_WORKER_INIT; an uncaught
-- error later as ERR_WORKER_UNCAUGHT; both exit with code 1.  Messages
-- queued before any exit (end of script, os.exit, tether.exit) are
-- delivered first.
-- a debugging knob shared with the specs: garbage collection all the time
if os.getenv("TETHER_GC") == "aggressive" then collectgarbage("incremental", 0, 100) end

local tether = require "tether"
local core = tether.core
local parent = tether.parent
-- Ctrl-C ends a worker as it ends any program, by the signal (lua.c's
-- handler would make it our "interrupted!" error: a fault reported to the
-- parent)
core.default_sigint()

-- The failure goes to the worker's own stderr (its terminal, or a
-- supervisor's log file), as an uncaught error does under lua5.4 or Node,
-- and to the parent as a control frame.
local function report(code, message, traceback, load)
  local tb = traceback ~= nil and traceback ~= "" and ("\n" .. traceback) or ""
  io.stderr:write(("tether worker %s (pid %s): %s: %s%s\n"):format(
    tostring(arg and arg[0] or "?"), tostring(core.pid()), code, message, tb))
  io.stderr:flush()
  if parent and parent.connected then
    local ok = parent:_send_kind({ type = "error", code = code, message = message,
      traceback = traceback, load = load }, tether._KIND_CONTROL)
    if ok ~= nil then parent:flush(5000) end
  end
end

local function fail(code, message, traceback, load)
  report(code, message, traceback, load)
  io.stdout:flush()
  os.exit(1, true)
end

local script = arg[1]
if not script then fail("ERR_WORKER_INIT", "no script given to the runner") end
local n = #arg
local args = table.move(arg, 2, n, 1, {})
-- as under `lua5.4 script args`: arg[0] is the script, arg[-1] the
-- interpreter
local newarg = table.move(arg, 2, n, 1, {})
newarg[0] = script
for i = -1, -20, -1 do
  if arg[i] == nil then break end
  newarg[i] = arg[i]
end
arg = newarg

local chunk, lerr = loadfile(script)
-- (load = true: it will fail the same way every time; a pool gives up)
if not chunk then fail("ERR_WORKER_INIT", tostring(lerr), "", true) end

-- Whatever was raised becomes a printable message (an error object whose
-- fields are not strings included): the parent must be able to show it.
local function message_of(e)
  if type(e) == "table" and getmetatable(e) == nil and e.message ~= nil then
    local ok, m = pcall(tostring, e.message)
    m = ok and m or "(unprintable error message)"
    if type(e.code) == "string" then return e.code .. ": " .. m end
    return m
  end
  local ok, m = pcall(tostring, e)
  return ok and type(m) == "string" and m or ("(error object is a " .. type(e) .. " value)")
end

local function handler(e)
  if getmetatable(e) == tether._EXIT then return e end
  local msg = message_of(e)
  return { message = msg, traceback = debug.traceback(msg, 2) }
end

local ok, e = xpcall(chunk, handler, table.unpack(args, 1, n - 1))
if not ok then
  if getmetatable(e) == tether._EXIT then tether._exit_now(e.code) end
  fail("ERR_WORKER_INIT", e.message, e.traceback)
end

-- A pool's worker answers its tasks with tether.serve(fn), called by its
-- main chunk: without it every task would come back ERR_NO_HANDLER.  It
-- is a start that failed (counted toward max_restarts; past them the
-- pool's tasks fail with ERR_WORKER_INIT and this reason).
if parent and core.handshake().concurrency >= 1 and parent._handler == nil then
  fail("ERR_WORKER_INIT", "the worker script did not call tether.serve(fn) in its main chunk "
    .. "(a pool's worker answers its tasks with it)")
end

-- the main chunk ran: a supervising parent now counts us as running
tether.ready()

local ok2, e2 = pcall(tether.run)
if not ok2 then
  local msg, tb = message_of(e2), type(e2) == "table" and type(e2.traceback) == "string" and e2.traceback or nil
  -- a string error from a callback is "message\n\tframe\n\tframe..."
  local nl = type(e2) == "string" and msg:find("\n\t", 1, true)
  if nl then msg, tb = msg:sub(1, nl - 1), "stack traceback:" .. msg:sub(nl) end
  fail("ERR_WORKER_UNCAUGHT", msg, tb)
end
tether._exit_now(0)
