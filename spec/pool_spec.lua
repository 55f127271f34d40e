local tether = require "tether"
local H = require "helper"

-- A worker for every test: echoes, squares, raises, crashes, sleeps, and
-- appends each attempt to a file when asked (to count re-runs).
local WORKER = H.script [[
local tether = require "tether"
local pid = tonumber(io.open("/proc/self/stat"):read("l"):match("^%d+"))
tether.serve(function(t)
  if type(t) ~= "table" then return t end
  if t.log then
    local f = io.open(t.log, "a")
    f:write(pid, "\n")
    f:close()
  end
  if t.sleep then tether.sleep(t.sleep) end
  if t.crash then os.exit(9) end
  if t.raise then error(t.raise) end
  if t.grow then _G.hog = string.rep("x", t.grow) end
  return { n = t.n, square = t.n and t.n * t.n, pid = pid }
end)
]]

local function lines_of(path)
  local n = 0
  local f = io.open(path)
  if not f then return 0 end
  for _ in f:lines() do n = n + 1 end
  f:close()
  return n
end

local function new_pool(t)
  t.script = t.script or WORKER
  local p = assert(tether.pool(t))
  return p
end

local function close_and_wait(pool)
  local done = false
  pool:close(function() done = true end)
  H.run_until(function() return done and pool.closed end, 20)
end

describe("tether.pool", function()
  H.leak_guard(before_each, after_each)

  it("runs tasks with submit, run and map; reports progress and stats", function()
    local pool = new_pool { size = 2 }
    local got, progress = nil, {}
    pool:on("progress", function(done, total) progress[#progress + 1] = { done, total } end)
    assert.is_true(pool:submit({ n = 3 }, H.expect(function(err, r)
      assert.is_nil(err)
      got = r
    end, 1, "submit cb")))
    local results
    tether.go(function()
      assert.equals(16, pool:run({ n = 4 }).square)
      results = assert(pool:map({ { n = 1 }, { n = 2 }, { n = 3 }, { n = 4 }, { n = 5 } }))
    end)
    H.run_until(function() return results and pool:stats().workers == 2 end)
    assert.equals(9, got.square)
    for i = 1, 5 do assert.equals(i * i, results[i].square) end
    assert.same({ 7, 7 }, progress[#progress])
    local s = pool:stats()
    assert.equals(7, s.done)
    assert.equals(0, s.failed)
    assert.equals(0, s.queued)
    assert.equals(0, s.running)
    assert.equals(2, s.workers)
    close_and_wait(pool)
  end)

  it("sends each task to the least-loaded worker, up to `concurrency` each", function()
    local pool = new_pool { size = 2, concurrency = 3 }
    local pids, done = {}, 0
    local t0 = tether.hrtime()
    for i = 1, 6 do
      pool:submit({ n = i, sleep = 200 }, function(err, r)
        assert.is_nil(err)
        pids[r.pid] = (pids[r.pid] or 0) + 1
        done = done + 1
      end)
    end
    H.run_until(function() return done == 6 end)
    -- six 200 ms tasks on 2 x 3 slots: one round, not six
    local ms = (tether.hrtime() - t0) / 1e6
    assert.is_true(ms < 1000, ("took %.0f ms"):format(ms))
    local counts = {}
    for _, n in pairs(pids) do counts[#counts + 1] = n end
    assert.same({ 3, 3 }, counts)
    close_and_wait(pool)
  end)

  it("a task that raises fails with ERR_TASK_FAILED and is not re-run", function()
    local log = H.tmpfile("raise.log")
    os.remove(log)
    local pool = new_pool { size = 1, retries = 3 }
    local err
    pool:submit({ raise = "bad input", log = log }, function(e) err = e end)
    H.run_until(function() return err end)
    assert.equals("ERR_TASK_FAILED", err.code)
    assert.matches("bad input", err.message)
    assert.matches("stack traceback", err.traceback)
    assert.equals(1, lines_of(log))
    assert.equals(0, pool:stats().retried)
    close_and_wait(pool)
    os.remove(log)
  end)

  it("re-runs a task whose worker crashes exactly `retries` times, then ERR_WORKER_CRASH", function()
    local log = H.tmpfile("crash.log")
    os.remove(log)
    local pool = new_pool { size = 2, retries = 2 }
    local err, ok_result
    pool:submit({ crash = true, log = log }, H.expect(function(e) err = e end, 1, "crash cb"))
    pool:submit({ n = 7 }, function(e, r) ok_result = r end)
    H.run_until(function() return err and ok_result end)
    assert.equals("ERR_WORKER_CRASH", err.code)
    assert.equals(3, lines_of(log))
    assert.equals(49, ok_result.square)
    local s = pool:stats()
    assert.equals(2, s.retried)
    assert.equals(3, s.crashes)
    H.run_until(function() return pool:stats().workers == 2 end) -- replaced
    close_and_wait(pool)
    os.remove(log)
  end)

  it("times a task out, replaces its worker and ignores the late answer", function()
    local pool = new_pool { size = 1, timeout = 150 }
    local err, after
    local t0 = tether.hrtime()
    pool:submit({ sleep = 3000 }, function(e) err = e end)
    pool:submit({ n = 5 }, function(e, r) after = r end)
    local first_pid
    H.run_until(function()
      first_pid = first_pid or pool:workers()[1].pid
      return err and after
    end)
    assert.equals("ERR_TIMEOUT", err.code)
    local ms = (tether.hrtime() - t0) / 1e6
    assert.is_true(ms >= 150 and ms < 2500, ("%.0f ms"):format(ms))
    assert.equals(25, after.square)
    assert.is_not.equals(first_pid, after.pid)
    local s = pool:stats()
    assert.equals(1, s.timeouts)
    assert.equals(0, s.retried)
    close_and_wait(pool)
  end)

  it("sends tasks ahead (prefetch) without running more than `concurrency` or timing them out early", function()
    local log = H.tmpfile("prefetch.log")
    os.remove(log)
    -- 1 worker, 1 at a time, 2 sent ahead: 3 tasks of 200 ms each, 300 ms
    -- timeout each; a clock started at dispatch would fail the last two
    local pool = new_pool { size = 1, concurrency = 1, prefetch = 2, timeout = 300 }
    local errs, done = {}, 0
    local t0 = tether.hrtime()
    for i = 1, 3 do
      pool:submit({ n = i, sleep = 200, log = log }, function(e)
        errs[i] = e and e.code or false
        done = done + 1
      end)
    end
    H.run_until(function() return pool:stats().running == 3 end)
    H.run_until(function() return done == 3 end)
    assert.same({ false, false, false }, errs)
    -- one after the other: ~600 ms, not ~200 ms
    assert.is_true((tether.hrtime() - t0) / 1e6 >= 590)
    assert.equals(0, pool:stats().timeouts)
    close_and_wait(pool)
    os.remove(log)
  end)

  it("starts no clock for a task sent ahead to a worker stopped for a timeout", function()
    -- the worker ignores SIGTERM, so it takes a while to go: the task sent
    -- ahead to it never began there, and must run on the replacement, not
    -- time out on the dying worker
    local slow = H.script [[
      local tether = require "tether"
      tether.on_signal("SIGTERM", function() end)
      tether.serve(function(t) tether.sleep(t.sleep) return t.n end)
    ]]
    local pool = new_pool { script = slow, size = 1, concurrency = 1, prefetch = 1, timeout = 300,
      shutdown = { timeout = 100, kill_timeout = 800 } }
    local got = {}
    H.run_until(function() return pool:workers()[1].state == "running" end)
    for i = 1, 2 do
      pool:submit({ n = i, sleep = i == 1 and 5000 or 10 }, function(e, r) got[i] = e and e.code or r end)
    end
    H.run_until(function() return got[1] and got[2] end, 20)
    assert.equals("ERR_TIMEOUT", got[1])
    assert.equals(2, got[2])
    assert.equals(1, pool:stats().timeouts)
    close_and_wait(pool)
  end)

  it("map waits for room in a queue that other tasks filled", function()
    local pool = new_pool { size = 2, max_queue = 4 }
    local function tasks(n, from)
      local t = {}
      for i = 1, n do t[i] = { n = from + i, sleep = 10 } end
      return t
    end
    local got = {}
    for k = 1, 2 do
      tether.go(function()
        local rs, err = pool:map(tasks(10, k * 100))
        assert.is_nil(err)
        got[k] = rs
      end)
    end
    -- and a queue full of submit()'s tasks before a map begins
    local fill = 0
    while pool:submit({ sleep = 20 }, function() fill = fill + 1 end) do end
    tether.go(function()
      local rs, err = pool:map(tasks(3, 300))
      assert.is_nil(err)
      got[3] = rs
    end)
    H.run_until(function() return got[1] and got[2] and got[3] end, 20)
    for k, n in pairs { 10, 10, 3 } do
      assert.equals(n, #got[k])
      for i, r in ipairs(got[k]) do assert.equals((k * 100 + i) ^ 2, r.square) end
    end
    close_and_wait(pool)
  end)

  it("tells a worker's own exit in the middle of a task as it was, not as a SIGTERM of ours", function()
    -- its channel ends a moment before its exit: that is no reason to
    -- signal it (the message said "killed by SIGTERM (unresponsive)")
    local pool = new_pool { retries = 0, size = 1, backoff = { initial = 5, max = 5 } }
    for _ = 1, 5 do
      local err
      pool:submit({ crash = true }, function(e) err = e end)
      H.run_until(function() return err end)
      assert.equals("ERR_WORKER_CRASH", err.code)
      assert.matches("exited with code 9 (crash", err.message, 1, true)
    end
    close_and_wait(pool)
  end)

  it("refuses tasks over max_queue with ERR_QUEUE_FULL", function()
    local pool = new_pool { size = 1, max_queue = 2, prefetch = 0 }
    local done = 0
    local function cb(e) assert.is_nil(e); done = done + 1 end
    tether.go(function()
      assert.is_true(pool:submit({ sleep = 100 }, cb)) -- runs
      H.sleep(1)
    end)
    H.run_until(function() return pool:stats().running == 1 end)
    assert.is_true(pool:submit({ n = 1 }, cb))
    assert.is_true(pool:submit({ n = 2 }, cb))
    local ok, err = pool:submit({ n = 3 }, cb)
    assert.is_nil(ok)
    assert.equals("ERR_QUEUE_FULL", err.code)
    local bad, serr = pool:submit(function() end, cb)
    assert.is_nil(bad)
    assert.equals("ERR_SERIALIZE", serr.code)
    H.run_until(function() return done == 3 end)
    close_and_wait(pool)
  end)

  it("refuses a task over the workers' max_message at the sender, in both serializations", function()
    for _, ser in ipairs { "native", "json" } do
      local pool = new_pool { size = 1, max_message = 1000, serialization = ser }
      local function never() error("called back for a refused task") end
      local ok, err = pool:submit(string.rep("x", 2000), never)
      assert.is_nil(ok)
      assert.equals("ERR_SERIALIZE", err.code)
      assert.matches("task of %d+ bytes exceeds max_message %(1000 bytes%)", err.message)
      -- the pool lives on: a task that fits runs
      local got
      assert.is_true(pool:submit({ n = 3 }, function(e, r) got = e or r end))
      H.run_until(function() return got ~= nil end)
      assert.equals(9, got.square)
      assert.equals(0, pool:stats().failed)
      close_and_wait(pool)
    end
  end)

  it("recycles workers after max_tasks_per_worker under a backlog, never at zero", function()
    local pool = new_pool { size = 2, max_tasks_per_worker = 3 }
    local pids, done, min_workers = {}, 0, math.huge
    for i = 1, 30 do
      pool:submit({ n = i }, function(e, r)
        assert.is_nil(e)
        assert.equals(i * i, r.square)
        pids[r.pid] = (pids[r.pid] or 0) + 1
        done = done + 1
      end)
    end
    local tick = tether.every(1, function()
      -- between the first and the last result: workers able to take work
      -- (ready, not retiring) plus retiring ones finishing theirs
      if done > 0 and done < 30 then
        min_workers = math.min(min_workers, pool:stats().workers)
      end
    end)
    H.run_until(function() return done == 30 end)
    tick:stop()
    local n = 0
    for _, count in pairs(pids) do
      n = n + 1
      assert.is_true(count <= 3, "a worker ran " .. count .. " tasks")
    end
    assert.is_true(n >= 10, "only " .. n .. " workers")
    assert.is_true(pool:stats().recycled >= 8)
    assert.is_true(min_workers >= 1)
    close_and_wait(pool)
  end)

  it("recycles a worker whose RSS goes over max_memory, after its task", function()
    local pool = new_pool { size = 1, max_memory = "40M", memory_interval = 20 }
    local first, second
    pool:submit({ n = 1, grow = 64 * 1024 * 1024 }, function(e, r) first = r end)
    H.run_until(function() return first end)
    H.run_until(function() return pool:stats().recycled == 1 end)
    pool:submit({ n = 2 }, function(e, r) second = r end)
    H.run_until(function() return second end)
    assert.is_not.equals(first.pid, second.pid)
    close_and_wait(pool)
  end)

  it("close finishes queued tasks; terminate fails them with ERR_CLOSED", function()
    local pool = new_pool { size = 1 }
    local results = {}
    for i = 1, 5 do pool:submit({ n = i, sleep = 10 }, function(e, r) results[i] = e or r.square end) end
    local stopped = false
    pool:close(function() stopped = true end)
    local ok, err = pool:submit({ n = 6 }, function() end)
    assert.is_nil(ok)
    assert.equals("ERR_CLOSED", err.code)
    H.run_until(function() return stopped and pool.closed end)
    assert.same({ 1, 4, 9, 16, 25 }, results)

    pool = new_pool { size = 1, prefetch = 0 }
    local errs = {}
    for i = 1, 4 do pool:submit({ n = i, sleep = 5000 }, function(e) errs[i] = e and e.code end) end
    H.run_until(function() return pool:stats().running == 1 end)
    local t0 = tether.hrtime()
    pool:terminate()
    assert.same({ "ERR_CLOSED", "ERR_CLOSED", "ERR_CLOSED", "ERR_CLOSED" }, errs)
    H.run_until(function() return pool.closed end)
    assert.is_true((tether.hrtime() - t0) / 1e6 < 2000)
  end)

  it("fails queued tasks with a clear error when workers cannot start", function()
    local pool = new_pool { script = H.script [[error("missing config")]], size = 2,
      max_restarts = 3, within = 10, backoff = { initial = 5, max = 10, jitter = 0 } }
    local errs, gave_up = {}, nil
    pool:on("give_up", function(why) gave_up = why end)
    pool:on("error", function() end) -- the ERR_WORKER_INIT reports
    for i = 1, 3 do pool:submit({ n = i }, function(e) errs[i] = e end) end
    H.run_until(function() return errs[1] and errs[2] and errs[3] and pool.closed end)
    assert.matches("more than 3 restarts", gave_up)
    for i = 1, 3 do
      assert.equals("ERR_WORKER_INIT", errs[i].code)
      assert.matches("more than 3 restarts", errs[i].message)
    end
    -- after "close" too, submit says why the pool is gone
    local ok, err = pool:submit({ n = 4 }, function() error("never called") end)
    assert.is_nil(ok)
    assert.equals("ERR_WORKER_INIT", err.code)
    assert.matches("more than 3 restarts", err.message)
  end)

  it("counts a script that forgot tether.serve as a failed start, and says so", function()
    for _, src in ipairs { 'local tether = require "tether"',
                           'local tether = require "tether"; tether.parent:keep_alive(true)' } do
      local pool = new_pool { script = H.script(src), size = 1, max_restarts = 2,
        backoff = { initial = 5, max = 10, jitter = 0 } }
      local errs = {}
      pool:on("error", function() end)
      for i = 1, 2 do pool:submit({ n = i }, function(e) errs[i] = e end) end
      H.run_until(function() return errs[1] and errs[2] and pool.closed end)
      for i = 1, 2 do
        assert.equals("ERR_WORKER_INIT", errs[i].code)
        assert.matches("did not call tether.serve", errs[i].message, 1, true)
      end
    end
  end)

  it("names a missing interpreter or cwd in the start errors and the tasks' failure", function()
    for _, o in ipairs { { lua = "/nonexistent/lua", says = "cannot run '/nonexistent/lua'" },
                         { cwd = "/nonexistent", says = "cwd '/nonexistent'" } } do
      local pool = new_pool { size = 1, max_restarts = 1, lua = o.lua, cwd = o.cwd,
        backoff = { initial = 5, max = 10, jitter = 0 } }
      local seen, err = nil, nil
      pool:on("error", function(e) seen = seen or e end)
      pool:submit({ n = 1 }, function(e) err = e end)
      H.run_until(function() return err and pool.closed end)
      assert.equals("ENOENT", seen.code)
      assert.matches(o.says, seen.message, 1, true)
      assert.equals("ERR_WORKER_INIT", err.code)
      assert.matches("the last start failed with: ENOENT: " .. o.says, err.message, 1, true)
    end
  end)

  it("map fails fast, or collects errors when asked", function()
    local pool = new_pool { size = 2 }
    local r1, e1, r2, e2
    tether.go(function()
      r1, e1 = pool:map({ { n = 1 }, { raise = "no" }, { n = 3 } })
      r2, e2 = pool:map({ { n = 1 }, { raise = "no" }, { n = 3 } }, { collect = true })
    end)
    H.run_until(function() return r2 end)
    assert.is_nil(r1)
    assert.equals("ERR_TASK_FAILED", e1.code)
    assert.equals(2, e1.index)
    assert.equals(1, r2[1].square)
    assert.is_nil(r2[2])
    assert.equals(9, r2[3].square)
    assert.equals("ERR_TASK_FAILED", e2[2].code)
    close_and_wait(pool)
  end)

  it("run and map need a coroutine", function()
    local pool = new_pool { size = 1 }
    local ok, err = pool:run({ n = 1 })
    assert.is_nil(ok)
    assert.equals("ERR_NO_COROUTINE", err.code)
    ok, err = pool:map({})
    assert.is_nil(ok)
    assert.equals("ERR_NO_COROUTINE", err.code)
    close_and_wait(pool)
  end)

  it("rejects bad specs", function()
    for _, case in ipairs {
      { { script = "x", size = 0 }, "size" },
      { { script = "x", concurrency = 0 }, "concurrency" },
      { { script = "x", retries = -1 }, "retries" },
      { { script = "x", timeout = "soon" }, "timeout" },
      { { size = 1 }, "exactly one of 'script' and 'cmd'" },
    } do
      local ok, err = pcall(tether.pool, case[1])
      assert.is_false(ok)
      assert.matches(case[2], tostring(err), 1, true)
    end
  end)

  it("soak: 1,000 tasks while workers are SIGKILLed at random; each callback once, every result right", function()
    local pool = new_pool { size = 4, retries = 50, concurrency = 2 }
    -- (fewer under valgrind, where every worker start takes a second)
    local N, calls, wrong, done = H.slow and 300 or 1000, {}, 0, 0
    for i = 1, N do
      assert.is_true(pool:submit({ n = i, sleep = H.slow and 5 or i % 3 }, function(e, r)
        calls[i] = (calls[i] or 0) + 1
        done = done + 1
        if e or r.square ~= i * i then
          wrong = wrong + 1
          io.stderr:write("task ", i, ": ", tostring(e or r.square), "\n")
        end
      end))
    end
    local rng, kills = 12345, 0
    -- a failure here must not leave 4 workers keeping later tests' loops busy
    finally(function() if not pool.stopped then pool:terminate() end end)
    local killer = tether.every(H.slow and 200 or 15, function()
      rng = (rng * 1103515245 + 12345) % 2147483648
      local w = pool:workers()[rng % 4 + 1]
      if w.pid and w.state == "running" then
        os.execute("kill -KILL " .. w.pid .. " 2>/dev/null")
        kills = kills + 1
      end
    end)
    H.run_until(function() return done >= N end, 120)
    killer:stop()
    for i = 1, N do assert.equals(1, calls[i], "task " .. i) end
    assert.equals(0, wrong)
    local s = pool:stats()
    io.stderr:write(("\n  pool soak: %d tasks, %d SIGKILLs, %d re-runs\n"):format(N, kills, s.retried))
    assert.is_true(kills >= (H.slow and 1 or 5), "only " .. kills .. " kills")
    assert.is_true(s.retried > 0)
    assert.equals(N, s.done)
    close_and_wait(pool)
  end)
end)
