--- make demo: a parent forks 4 Lua workers, hands them work (count the
-- primes below N, for several N), prints results and lifecycle events.
local tether = require "tether"

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local jobs = { 20000, 50000, 80000, 110000, 140000, 170000, 200000, 230000 }
local next_job, done, workers = 1, 0, {}

local function log(fmt, ...)
  io.write(("[%6d ms] "):format(tether.now() - START), fmt:format(...), "\n")
end
START = tether.now()

local function hand_out(w)
  if next_job > #jobs then
    w.child:disconnect() -- no more work: the worker exits by itself
    return
  end
  local n = jobs[next_job]
  next_job = next_job + 1
  w.busy = n
  w.child:send({ job = "count_primes", below = n })
end

for id = 1, 4 do
  local child = assert(tether.fork(dir .. "/demo_worker.lua", { id }))
  local w = { id = id, child = child }
  workers[id] = w
  child:on("spawn", function() log("worker %d spawned (pid %d)", id, child.pid) end)
  child:on("message", function(msg)
    if msg.ready then
      log("worker %d ready", id)
    else
      done = done + 1
      log("worker %d: %d primes below %d (%.1f ms of work)", id, msg.primes, msg.below, msg.ms)
    end
    hand_out(w)
  end)
  child:on("disconnect", function() log("worker %d disconnected", id) end)
  child:on("exit", function(code, sig)
    log("worker %d exited (code %s, signal %s)", id, tostring(code), tostring(sig))
  end)
  child:on("close", function() log("worker %d closed", id) end)
  child:on("error", function(err) log("worker %d error: %s", id, tostring(err)) end)
end

tether.run()
log("all %d jobs done by %d workers", done, #workers)
assert(done == #jobs, "some jobs were not done")
