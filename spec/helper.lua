--- Shared test helpers: call counters, a bounded loop runner, fd and zombie
-- checks.  Every spec file does `local H = require "helper"`.
local tether = require "tether"

local H = {}

-- TETHER_GC=aggressive: collect continuously, so a missing anchor or a
-- use-after-free in the binding shows up (the runner does the same).
if os.getenv("TETHER_GC") == "aggressive" then collectgarbage("incremental", 0, 100) end
-- TETHER_SLOW: the specs run under valgrind; timeouts are stretched.
H.slow = os.getenv("TETHER_SLOW") ~= nil
-- How much slower than a plain build this run is (sanitizers, continuous
-- collection, valgrind): for bounds on wall-clock time in tests.
H.scale = (H.slow and 10 or 1)
  * ((os.getenv("LD_PRELOAD") or ""):match("asan") and 3 or 1)
  * (os.getenv("TETHER_GC") == "aggressive" and 3 or 1)

H.LUA = os.getenv("TETHER_LUA") or "lua5.4"
H.dir = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".")
H.fixtures = H.dir .. "/fixtures"

function H.fixture(name) return H.fixtures .. "/" .. name end

--- expect(fn, n): wraps fn; H.verify() fails unless it ran exactly n times.
local expectations = {}
function H.expect(fn, n, name)
  local e = { n = n or 1, calls = 0, name = name or debug.traceback("expect", 2) }
  expectations[#expectations + 1] = e
  return function(...)
    e.calls = e.calls + 1
    if fn then return fn(...) end
  end
end

function H.verify()
  local list = expectations
  expectations = {}
  for _, e in ipairs(list) do
    if e.calls ~= e.n then
      error(("expected %d call(s), got %d: %s"):format(e.n, e.calls, e.name), 2)
    end
  end
end

--- run the loop until it has no work, failing after `secs` seconds.
function H.run(secs)
  secs = (secs or 10) * (H.slow and 10 or 1)
  local timed_out = false
  local guard = tether.timer(math.floor((secs or 10) * 1000), function()
    timed_out = true
    tether.stop()
  end)
  guard:unref()
  tether.run()
  guard:stop()
  tether.run("nowait") -- let the guard's close complete
  assert(not timed_out, "loop still busy after " .. (secs or 10) .. " s")
end

--- run until pred() is true (checked after every loop iteration).
function H.run_until(pred, secs)
  local deadline = tether.hrtime() + math.floor((secs or 10) * 1e9)
  local tick = tether.every(5, function() end)
  while not pred() do
    if tether.hrtime() > deadline then
      tick:stop()
      error("condition not met within " .. (secs or 10) .. " s", 2)
    end
    tether.run("once")
  end
  tick:stop()
  tether.run("nowait")
end

--- runs the loop until the file `path` exists (a child's "I am ready")
function H.wait_file(path, secs)
  H.run_until(function()
    local f = io.open(path)
    if f then f:close() end
    return f ~= nil
  end, secs)
end

function H.sleep(ms)
  local done = false
  tether.timer(ms, function() done = true end)
  H.run_until(function() return done end, ms / 1000 + 5)
end

local lfs = require "lfs"

--- the set of open fds of this process, as {fd = target}
function H.fds()
  local out = {}
  for name in lfs.dir("/proc/self/fd") do
    local fd = tonumber(name)
    if fd then
      local a = lfs.symlinkattributes("/proc/self/fd/" .. name)
      out[fd] = a and a.target or "?"
    end
  end
  return out
end

--- the descriptor of ours that is open on `path`, or nil
function H.fd_of(path)
  for fd, target in pairs(H.fds()) do
    if target == path then return fd end
  end
  return nil
end

--- our pid (from /proc/self, which we open ourselves)
function H.pid()
  local t = lfs.symlinkattributes("/proc/self")
  return tonumber(t and t.target)
end

--- fds opened since `before`; the directory handle of the listing itself
-- is gone by then
function H.new_fds(before)
  local now = H.fds()
  local extra = {}
  for fd, target in pairs(now) do
    -- /dev/null: libuv's per-loop reserve fd (for EMFILE on accept), opened
    -- once by the first stream handle of the process
    if before[fd] == nil and not target:match("^/proc/%d+/fd$") and target ~= "/dev/null" then
      extra[#extra + 1] = fd .. " -> " .. target
    end
  end
  table.sort(extra)
  return extra
end

local function stat_of(p)
  local f = io.open("/proc/" .. p .. "/stat")
  if not f then return nil end
  local s = f:read("l")
  f:close()
  if not s then return nil end
  local state, ppid = s:match("^%d+ %b() (%S) (%d+)")
  return state, tonumber(ppid)
end

--- pids of our children that are zombies (read from /proc: no subprocess,
-- so it works under an LD_PRELOADed sanitizer too)
function H.zombies()
  local me, z = H.pid(), {}
  for name in lfs.dir("/proc") do
    local p = tonumber(name)
    if p then
      local state, ppid = stat_of(p)
      if state == "Z" and ppid == me then z[#z + 1] = p end
    end
  end
  return z
end

--- whether process p exists and is not a zombie
function H.alive(p)
  local state = stat_of(p)
  return state ~= nil and state ~= "Z"
end

--- write a temporary Lua script and return its path
local tmpdir
function H.script(src)
  if not tmpdir then
    -- no subprocess (mktemp would run under the sanitizer preload too)
    tmpdir = os.tmpname()
    os.remove(tmpdir)
    tmpdir = tmpdir .. ".tether-spec"
    assert(lfs.mkdir(tmpdir))
  end
  H._n = (H._n or 0) + 1
  local path = ("%s/s%d.lua"):format(tmpdir, H._n)
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return path
end

function H.tmpfile(name)
  H.script("") -- ensures tmpdir
  return tmpdir .. "/" .. name
end

--- a `lua` for tether.fork that runs lua5.4 under a shell limit, e.g.
-- H.limited_lua("ulimit -n 200") (exit 3 when the shell refuses it)
function H.limited_lua(limit)
  H._n = (H._n or 0) + 1
  local path = H.tmpfile(("lua-limited-%d.sh"):format(H._n))
  local f = assert(io.open(path, "w"))
  f:write("#!/bin/sh\n", limit, " || exit 3\nexec lua5.4 \"$@\"\n")
  f:close()
  os.execute("chmod +x " .. path)
  return path
end

--- a leak check around each test: no new fds, no zombies.  Pass busted's
-- before_each and after_each (they live in the spec's environment).
function H.leak_guard(before_each, after_each)
  local before
  before_each(function() before = H.fds() end)
  after_each(function()
    H.verify()
    local extra = H.new_fds(before)
    assert(#extra == 0, "fds leaked: " .. table.concat(extra, ", "))
    local z = H.zombies()
    assert(#z == 0, "zombie children: " .. table.concat(z, ", "))
  end)
end

return H
