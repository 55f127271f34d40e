--- A long batch with a progress bar: the primes below 7,000,000 counted in
-- 400 slices by a pool of one worker per CPU.  The bar is drawn from the
-- pool's "progress" event (one line redrawn with "\r"); when stdout is not
-- a terminal, a plain line is printed every 10% instead.
--
--   lua5.4 examples/progress.lua [tasks] [size]
local tether = require "tether"

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local TASKS = math.tointeger(tonumber(arg[1])) or 400
local SIZE = math.tointeger(tonumber(arg[2]))   -- nil: one worker per CPU
local SLICE = 17500                               -- numbers per task
local KNOWN = { [40] = 56543, [400] = 476648 }    -- primes below TASKS * SLICE
local tty = os.execute("test -t 1") == true

local pool = assert(tether.pool {
  script = dir .. "/progress_worker.lua",
  size = SIZE,                 -- (retries = 1: a task whose worker dies runs once more)
  timeout = 10000,             -- ms per task: a stuck task fails, its worker is replaced
  max_tasks_per_worker = 100,  -- recycle workers now and then (shows in stats().recycled)
})
pool:on("error", function(err) io.stderr:write("\npool error: ", tostring(err), "\n") end)

-- Ctrl-C: fail what is left with ERR_CLOSED and stop the workers now
local sigint = tether.on_signal("SIGINT", function() pool:terminate() end)

local function clock(s)
  if s ~= s or s == math.huge then return "--" end
  if s >= 60 then return ("%dm%02ds"):format(s // 60, math.floor(s % 60)) end
  return ("%.1fs"):format(s)
end

-- The bar.  `done`/`total` count from the batch's start.
local WIDTH, started, last_draw, next_tenth, ended = 30, nil, -1, 1, false
local function draw(done, total)
  if ended then return end
  ended = done == total
  local now = tether.now()
  local elapsed = (now - started) / 1000
  local rate = elapsed > 0 and done / elapsed or 0
  local eta = rate > 0 and (total - done) / rate or math.huge
  local pct = total > 0 and done * 100 // total or 100
  if tty then
    if done < total and now - last_draw < 50 then return end -- at most 20 redraws/s
    last_draw = now
    local fill = total > 0 and done * WIDTH // total or WIDTH
    io.write(("\r[%s%s] %3d%%  %d/%d  %.1f tasks/s  ETA %s\27[K"):format(
      ("#"):rep(fill), ("."):rep(WIDTH - fill), pct, done, total, rate, clock(eta)))
    if done == total then io.write("\n") end
    io.stdout:flush()
  else
    while next_tenth <= 10 and pct >= next_tenth * 10 do
      print(("progress %3d%%  %d/%d  %.1f tasks/s  ETA %s"):format(
        next_tenth * 10, done, total, rate, clock(eta)))
      next_tenth = next_tenth + 1
    end
  end
end

tether.go(function()
  -- run: one task, waiting for its result (and for a worker to be ready)
  local first = assert(pool:run { lo = 0, hi = 100 })
  assert(first.primes == 25, "wrong answer from a worker")
  local before = 1 -- tasks finished before the batch: the run above

  local tasks = {}
  for i = 1, TASKS do tasks[i] = { lo = (i - 1) * SLICE, hi = i * SLICE } end
  math.randomseed(42) -- in no particular order: later slices cost more
  for i = TASKS, 2, -1 do
    local j = math.random(i)
    tasks[i], tasks[j] = tasks[j], tasks[i]
  end
  print(("%d tasks on %d workers"):format(TASKS, pool.size))

  -- progress(done, total) counts every task of the pool since it started
  local function on_progress(done, total) draw(done - before, total - before) end
  pool:on("progress", on_progress)
  started = tether.now()
  draw(0, TASKS)
  local results, err = pool:map(tasks) -- fails fast: nil, err with err.index
  local wall = (tether.now() - started) / 1000
  -- map returns from the last task's callback, before that task's
  -- "progress" event: draw the end of the bar here
  pool:off("progress", on_progress)

  if not results then
    print(("\ntask %d failed: %s"):format(err.index, tostring(err)))
    pool:terminate() -- the other tasks are not wanted any more
  else
    draw(TASKS, TASKS)
    local primes, cpu = 0, 0
    for _, r in ipairs(results) do primes, cpu = primes + r.primes, cpu + r.ms / 1000 end
    print(("primes below %d: %d%s"):format(TASKS * SLICE, primes,
      KNOWN[TASKS] and (primes == KNOWN[TASKS] and " (right)" or " (WRONG)") or ""))
    print(("%.2f s of CPU in the workers in %.2f s: %.1fx, %.1f tasks/s"):format(
      cpu, wall, cpu / wall, TASKS / wall))
  end
  local s = pool:stats()
  print(("stats: submitted %d, done %d, failed %d, retried %d, timeouts %d, crashes %d, recycled %d, late %d, workers %d"):format(
    s.submitted, s.done, s.failed, s.retried, s.timeouts, s.crashes, s.recycled, s.late, s.workers))

  -- close: no new tasks, the queued ones finish, then the workers stop
  pool:close(function()
    sigint:stop()
    print("pool closed: every worker stopped")
    if not results then tether.exit(1) end
  end)
end)

tether.run()
