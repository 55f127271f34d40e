--- Helpers shared by bench/supervisor_bench.lua, pool_bench.lua,
-- node_bench.lua, cluster_bench.lua and broker_bench.lua: loaded with dofile(DIR .. "common.lua").  Output lines
-- follow the benches' format: "# note", "CHECK name PASS|FAIL detail".
local tether = require "tether"

local B = { failed = 0 }

function B.slurp(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function B.self_pid()
  local s = B.slurp("/proc/self/stat")
  return s and s:match("^(%d+)")
end

--- median of a list (left as it is); nil for an empty one
function B.median(t)
  if #t == 0 then return nil end
  t = table.move(t, 1, #t, 1, {})
  table.sort(t)
  local n = #t
  return n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
end

function B.note(fmt, ...)
  io.write("# " .. fmt:format(...) .. "\n")
  io.flush()
end

--- a CHECK line; B.failed counts the failures (the exit code)
function B.check(name, ok, detail)
  if not ok then B.failed = B.failed + 1 end
  io.write(("CHECK %s %s %s\n"):format(name, ok and "PASS" or "FAIL", detail or ""))
  io.flush()
end

--- inside tether.go: start(done) and wait for done(...), at most `secs`;
-- nil, "timeout" after that (a late done is ignored)
function B.wait_for(secs, start)
  return tether.await(function(done)
    local finished = false
    local guard = tether.timer(secs * 1000, function()
      finished = true
      done(nil, "timeout")
    end)
    start(function(...)
      if finished then return end
      finished = true
      guard:stop()
      done(...)
    end)
  end)
end

--- the lines of a piped stream (child.stdout), each to fn(line)
function B.on_lines(stream, fn)
  local buf = ""
  stream:on("data", function(d)
    buf = buf .. d
    while true do
      local i = buf:find("\n", 1, true)
      if not i then break end
      local line = buf:sub(1, i - 1)
      buf = buf:sub(i + 1)
      fn(line)
    end
  end)
end

function B.sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- whether `case` is one of the space-separated `cases`
function B.has(cases, case) return (" " .. cases .. " "):find(" " .. case .. " ", 1, true) ~= nil end

--- pids of processes whose command line matches the pgrep pattern (write
-- it with a bracket, e.g. "sup_[i]dle", so it does not match pgrep's shell)
function B.orphans(pattern)
  local p = io.popen("pgrep -f '" .. pattern .. "' 2>/dev/null")
  local pids = p:read("a"):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  p:close()
  return pids
end

return B
