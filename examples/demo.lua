--- make demo: a supervised pool of 4 Lua workers counts the primes below N
-- for 24 values of N.  Midway one worker is killed with SIGKILL: its task
-- runs again on another worker, the pool replaces the worker, and every
-- job still gets exactly one answer.
local tether = require "tether"

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local START = tether.now()
local function log(fmt, ...)
  io.write(("[%6d ms] "):format(tether.now() - START), fmt:format(...), "\n")
end

local pool = assert(tether.pool {
  script = dir .. "/demo_worker.lua",
  size = 4,
  retries = 2,       -- a task whose worker dies runs again, twice at most
  timeout = 10000,   -- ms per task
  handle_signals = false,
})
pool:on("error", function(err) log("pool error: %s", tostring(err)) end)
pool:on("progress", function(done, total)
  if done % 6 == 0 then log("progress %d/%d", done, total) end
end)

local jobs = {}
for i = 1, 24 do jobs[i] = { below = 20000 + i * 15000 } end

-- a worker dies mid-batch
tether.timer(150, function()
  local w = pool:workers()[2]
  if w.pid then
    log("killing worker %d (pid %d) with SIGKILL", w.id, w.pid)
    os.execute("kill -KILL " .. w.pid)
  end
end)

tether.go(function()
  local results = assert(pool:map(jobs))
  for i, r in ipairs(results) do
    log("job %2d: %6d primes below %7d (worker %d, %.1f ms)", i, r.primes, r.below, r.worker, r.ms)
  end
  local s = pool:stats()
  log("done %d, failed %d, re-run after a crash %d, workers %d", s.done, s.failed, s.retried, s.workers)
  assert(s.done == #jobs and s.failed == 0, "some jobs failed")
  pool:close(function() log("pool closed: every worker stopped") end)
end)

tether.run()
