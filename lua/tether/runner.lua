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

local function report(code, message, traceback)
  if parent and parent.connected then
    local ok = parent:_send_kind({ type = "error", code = code, message = message,
      traceback = traceback }, tether._KIND_CONTROL)
    if ok ~= nil then
      parent:flush(5000)
      return
    end
  end
  io.stderr:write(("%s: %s\n%s\n"):format(code, tostring(message), traceback or ""))
end

local function fail(code, message, traceback)
  report(code, message, traceback)
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
if not chunk then fail("ERR_WORKER_INIT", lerr, "") end

local function handler(e)
  if getmetatable(e) == tether._EXIT then return e end
  local msg = tostring(e)
  if type(e) == "table" and e.message then msg = e.code and (e.code .. ": " .. e.message) or e.message end
  return { message = msg, traceback = debug.traceback(msg, 2) }
end

local ok, e = xpcall(chunk, handler, table.unpack(args, 1, n - 1))
if not ok then
  if getmetatable(e) == tether._EXIT then tether._exit_now(e.code) end
  fail("ERR_WORKER_INIT", e.message, e.traceback)
end

-- the main chunk ran: a supervising parent now counts us as running
if parent and parent.connected and not parent.json then parent._h:ready() end

local ok2, e2 = pcall(tether.run)
if not ok2 then
  local msg, tb = tostring(e2), type(e2) == "table" and e2.traceback or nil
  local nl = msg:find("\nstack traceback:", 1, true)
  if nl then msg, tb = msg:sub(1, nl - 1), msg:sub(nl + 1) end
  fail("ERR_WORKER_UNCAUGHT", msg, tb)
end
tether._exit_now(0)
