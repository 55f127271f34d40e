local tether = require "tether"
local H = require "helper"

-- fast settings shared by most tests: no signal handlers in the test
-- process, small backoff, no jitter
local function spec(t)
  t.handle_signals = false
  t.backoff = t.backoff or { initial = 10, max = 40, jitter = 0 }
  return t
end

local function pid_gone(pid)
  return not H.alive(pid)
end

-- a worker that answers "ping" and obeys a few commands
local ECHO = H.script [[
local tether = require "tether"
local id = tonumber(os.getenv("TETHER_WORKER_ID"))
tether.parent:on("message", function(m)
  if m == "crash" then os.exit(3)
  elseif m == "exit0" then tether.exit(0)
  elseif m == "spin" then while true do end
  else tether.parent:send({ id = id, got = m, pid = tonumber(io.open("/proc/self/stat"):read("l"):match("^%d+")) }) end
end)
]]

-- until the supervisor let go of everything (pipes, log files)
local function closed(sup)
  H.run_until(function() return sup.closed end)
end

local function stop_and_wait(sup, secs)
  local stopped = false
  sup:stop(function() stopped = true end)
  H.run_until(function() return stopped end, secs or 10)
  closed(sup)
end

describe("tether.supervise", function()
  H.leak_guard(before_each, after_each)

  it("starts instances with stable ids, delivers messages both ways, stops", function()
    local sup = assert(tether.supervise(spec { script = ECHO, instances = 3 }))
    local started, got = {}, {}
    sup:on("start", function(w) started[w.id] = w.pid end)
    sup:on("message", function(w, m)
      assert.equals(w.id, m.id)
      got[w.id] = m
    end)
    for id = 1, 3 do assert.is_true(sup:send(id, "hello " .. id)) end
    H.run_until(function() return got[1] and got[2] and got[3] end)
    for id = 1, 3 do
      assert.equals("hello " .. id, got[id].got)
      assert.equals(started[id], got[id].pid)
    end
    local list = sup:workers()
    assert.equals(3, #list)
    for id, w in ipairs(list) do
      assert.equals(id, w.id)
      assert.equals(started[id], w.pid)
      assert.equals("running", w.state)
      assert.equals(0, w.restarts)
      assert.is_true(w.rss > 0)
      assert.is_true(w.uptime >= 0)
    end
    local exits = 0
    sup:on("exit", function(w, code, sig, reason)
      exits = exits + 1
      assert.equals("stop", reason)
    end)
    stop_and_wait(sup)
    assert.equals(3, exits)
    for id = 1, 3 do assert.is_true(pid_gone(started[id])) end
    for _, w in ipairs(sup:workers()) do assert.equals("down", w.state) end
    local ok, err = sup:send(1, "late")
    assert.is_nil(ok)
    assert.equals("ERR_CLOSED", err.code)
  end)

  it("gives up after exactly max_restarts restarts in the window", function()
    local sup = assert(tether.supervise(spec {
      script = H.script [[os.exit(2)]], max_restarts = 3, within = 10 }))
    local restarts, exits, give_up, stopped = 0, 0, nil, false
    sup:on("restart", function(w, reason)
      restarts = restarts + 1
      assert.equals("crash", reason)
    end)
    sup:on("exit", function(w, code, sig, reason)
      exits = exits + 1
      assert.equals(2, code)
      assert.equals("crash", reason)
    end)
    sup:on("give_up", H.expect(function(why) give_up = why end, 1, "give_up"))
    sup:on("stopped", H.expect(function() stopped = true end, 1, "stopped"))
    H.run_until(function() return stopped end)
    assert.equals(3, restarts)
    assert.equals(4, exits)
    assert.matches("more than 3 restarts", give_up)
    H.sleep(60) -- nothing starts after giving up
    assert.equals(3, restarts)
    local w = sup:workers()[1]
    assert.equals("down", w.state)
    assert.equals(3, w.restarts)
    assert.equals("crash", w.last_reason)
  end)

  it("waits a growing backoff between restarts", function()
    local sup = assert(tether.supervise(spec {
      script = H.script [[os.exit(1)]], max_restarts = 4, within = 60,
      backoff = { initial = 40, factor = 2, max = 1000, jitter = 0 } }))
    local last_exit, delays = nil, {}
    sup:on("exit", function() last_exit = tether.hrtime() end)
    sup:on("restart", function() delays[#delays + 1] = (tether.hrtime() - last_exit) / 1e6 end)
    local stopped = false
    sup:on("stopped", function() stopped = true end)
    H.run_until(function() return stopped end)
    assert.equals(4, #delays)
    -- each at least its backoff: that they grow is in the bounds (a spawn
    -- that takes longer under load may add more to one than the next)
    for i, want in ipairs { 40, 80, 160, 320 } do
      assert.is_true(delays[i] >= want - 2, ("delay %d: %.1f ms < %d"):format(i, delays[i], want))
    end
  end)

  it("resets the backoff once a worker ran min_uptime", function()
    -- each worker runs ~120 ms (more than min_uptime), then fails
    local sup = assert(tether.supervise(spec {
      script = H.script [[
        local tether = require "tether"
        tether.timer(120, function() os.exit(1) end)
      ]], max_restarts = 3, within = 60, min_uptime = 60,
      backoff = { initial = 30, factor = 10, max = 10000, jitter = 0 } }))
    local last_exit, delays, stopped = nil, {}, false
    sup:on("exit", function() last_exit = tether.hrtime() end)
    sup:on("restart", function() delays[#delays + 1] = (tether.hrtime() - last_exit) / 1e6 end)
    sup:on("stopped", function() stopped = true end)
    H.run_until(function() return stopped end)
    assert.equals(3, #delays)
    -- without the reset they would be 30, 300, 3000 ms
    for i = 1, 3 do
      assert.is_true(delays[i] >= 28 and delays[i] < 250, ("delay %d: %.1f ms"):format(i, delays[i]))
    end
  end)

  it("applies the restart policies", function()
    -- on-failure: a clean exit is final; the supervisor stops when all are down
    local sup = assert(tether.supervise(spec { script = H.script [[os.exit(0)]],
      restart = "on-failure", instances = 2 }))
    local stopped = false
    sup:on("restart", H.expect(nil, 0, "restart (on-failure, exit 0)"))
    sup:on("stopped", function() stopped = true end)
    H.run_until(function() return stopped end)
    assert.equals("exit", sup:workers()[1].last_reason)

    -- never: not even a crash
    sup = assert(tether.supervise(spec { script = H.script [[os.exit(5)]], restart = "never" }))
    stopped = false
    sup:on("restart", H.expect(nil, 0, "restart (never)"))
    sup:on("stopped", function() stopped = true end)
    H.run_until(function() return stopped end)
    assert.equals(5, sup:workers()[1].last_code)

    -- always: a clean exit is restarted too
    sup = assert(tether.supervise(spec { script = H.script [[os.exit(0)]], max_restarts = 2 }))
    local reasons = {}
    stopped = false
    sup:on("restart", function(w, r) reasons[#reasons + 1] = r end)
    sup:on("stopped", function() stopped = true end)
    H.run_until(function() return stopped end)
    assert.same({ "exit", "exit" }, reasons)
  end)

  it("restarts a worker whose RSS goes over max_memory, with reason memory", function()
    local sup = assert(tether.supervise(spec {
      script = H.script [[
        local tether = require "tether"
        tether.parent:on("message", function(m)
          if m == "grow" then
            _G.hog = string.rep("x", 64 * 1024 * 1024)
            tether.parent:send("grown")
          end
        end)
      ]], max_memory = "40M", memory_interval = 20,
      shutdown = { timeout = 500, kill_timeout = 500 } }))
    local reasons, restarted = {}, false
    sup:on("exit", function(w, code, sig, reason) reasons[#reasons + 1] = reason end)
    sup:on("restart", function(w, reason)
      assert.equals("memory", reason)
      restarted = true
    end)
    sup:send(1, "grow")
    H.run_until(function() return restarted end)
    assert.same({ "memory" }, reasons)
    assert.equals("memory", sup:workers()[1].last_reason)
    stop_and_wait(sup)
  end)

  it("kills and restarts a worker whose loop is stuck; reports its Lua heap", function()
    local sup = assert(tether.supervise(spec { script = ECHO,
      heartbeat = { interval = 30, timeout = 150 },
      shutdown = { timeout = 100, kill_timeout = 100 } }))
    local started = 0
    sup:on("start", function() started = started + 1 end)
    H.run_until(function() return started == 1 end)
    H.sleep(100) -- a few heartbeats
    local w = sup:workers()[1]
    assert.is_true(w.lua_heap > 1024 and w.lua_heap < 64 * 1024 * 1024, tostring(w.lua_heap))
    local reason
    sup:on("restart", function(_, r) reason = r end)
    local t0 = tether.hrtime()
    sup:send(1, "spin")
    H.run_until(function() return reason ~= nil end)
    assert.equals("unresponsive", reason)
    assert.is_true((tether.hrtime() - t0) / 1e6 >= 150)
    assert.equals("unresponsive", sup:workers()[1].last_reason)
    H.run_until(function() return started == 2 end)
    stop_and_wait(sup)
  end)

  it("escalates: shutdown message, then SIGTERM, then SIGKILL", function()
    local sup = assert(tether.supervise(spec {
      script = H.script [[
        local tether = require "tether"
        tether.on_signal("SIGTERM", function() tether.parent:send("sigterm") end)
        tether.parent:on("message", function(m) tether.parent:send("got " .. m) end)
      ]], shutdown = { message = "please stop", timeout = 150, kill_timeout = 150 } }))
    local seen, exit = {}, nil
    sup:on("message", function(w, m) seen[#seen + 1] = m end)
    sup:on("exit", function(w, code, sig, reason) exit = { code, sig, reason } end)
    local started = false
    sup:on("start", function() started = true end)
    H.run_until(function() return started end)
    local t0 = tether.hrtime()
    stop_and_wait(sup)
    local ms = (tether.hrtime() - t0) / 1e6
    assert.same({ "got please stop", "sigterm" }, seen)
    assert.same({ nil, "SIGKILL", "stop" }, exit)
    assert.is_true(ms >= 290, ("stopped after %.0f ms"):format(ms))
  end)

  it("ends a SIGSTOPped worker (SIGTERM comes with SIGCONT)", function()
    local sup = assert(tether.supervise(spec { script = ECHO,
      shutdown = { message = "ignored", timeout = 50, kill_timeout = 5000 } }))
    local started, exit = false, nil
    sup:on("start", function() started = true end)
    sup:on("exit", function(w, code, sig) exit = sig end)
    H.run_until(function() return started end)
    assert.is_true(sup:kill(1, "SIGSTOP"))
    H.sleep(20)
    local t0 = tether.hrtime()
    stop_and_wait(sup)
    assert.equals("SIGTERM", exit)
    assert.is_true((tether.hrtime() - t0) / 1e6 < 2000)
  end)

  it("a stop during the restart backoff wins: nothing new starts", function()
    local sup = assert(tether.supervise(spec { script = H.script [[os.exit(1)]],
      backoff = { initial = 400, max = 400, jitter = 0 } }))
    local exited = false
    sup:on("exit", function() exited = true end)
    sup:on("restart", H.expect(nil, 0, "restart after stop"))
    H.run_until(function() return exited end)
    local t0 = tether.hrtime()
    stop_and_wait(sup)
    assert.is_true((tether.hrtime() - t0) / 1e6 < 300)
    H.sleep(450)
  end)

  it("tells a SIGKILL it did not send (OOM killer) from its own", function()
    local sup = assert(tether.supervise(spec { script = ECHO }))
    local started, reason = 0, nil
    sup:on("start", function() started = started + 1 end)
    sup:on("exit", function(w, code, sig, r) reason = r end)
    H.run_until(function() return started == 1 end)
    os.execute("kill -KILL " .. sup:workers()[1].pid)
    H.run_until(function() return started == 2 end)
    assert.equals("killed", reason)
    assert.is_true(sup:kill(1, "SIGTERM"))
    H.run_until(function() return started == 3 end)
    assert.equals("signal", reason)
    stop_and_wait(sup)
  end)

  it("queues sends while a worker restarts and delivers them to the next one", function()
    local sup = assert(tether.supervise(spec { script = ECHO,
      backoff = { initial = 100, max = 100, jitter = 0 } }))
    local got, first_pid = {}, nil
    sup:on("message", function(w, m) got[#got + 1] = m end)
    sup:on("start", function(w) first_pid = first_pid or w.pid end)
    H.run_until(function() return first_pid end)
    local exited = false
    sup:on("exit", function() exited = true end)
    sup:send(1, "crash")
    H.run_until(function() return exited end)
    local acks = {}
    for i = 1, 5 do
      assert.is_true(sup:send(1, i, { timeout = 5000 }, function(err) acks[#acks + 1] = err or i end))
    end
    H.run_until(function() return #got == 5 end)
    assert.same({ 1, 2, 3, 4, 5 }, acks)
    for i, m in ipairs(got) do
      assert.equals(i, m.got)
      assert.is_not.equals(first_pid, m.pid)
    end
    stop_and_wait(sup)
  end)

  it("fails queued sends with ERR_TIMEOUT, ERR_CLOSED and ERR_QUEUE_FULL", function()
    local sup = assert(tether.supervise(spec { script = H.script [[os.exit(1)]],
      max_restarts = 1, within = 10, queue_limit = 3,
      backoff = { initial = 300, max = 300, jitter = 0 } }))
    local results = {}
    local function cb(name) return function(err) results[name] = err and err.code or "ok" end end
    assert.is_true(sup:send(1, "a", { timeout = 50 }, cb("a")))
    assert.is_true(sup:send(1, "b", cb("b")))
    assert.is_true(sup:send(1, "c", cb("c")))
    local ok, err = sup:send(1, "d", cb("d"))
    assert.is_nil(ok)
    assert.equals("ERR_QUEUE_FULL", err.code)
    local ok2, err2 = sup:send(1, function() end)
    assert.is_nil(ok2)
    assert.equals("ERR_SERIALIZE", err2.code)
    local gave_up = false
    sup:on("give_up", function() gave_up = true end)
    H.run_until(function() return gave_up and results.b end)
    assert.same({ a = "ERR_TIMEOUT", b = "ERR_CLOSED", c = "ERR_CLOSED" }, results)
    assert.has_error(function() sup:send(9, "x") end)
    H.run_until(function() return sup.stopped end)
  end)

  it("refuses a message over the workers' max_message at the sender, in both serializations", function()
    for _, ser in ipairs { "native", "json" } do
      local sup = assert(tether.supervise(spec { script = ECHO, max_message = 1000, serialization = ser }))
      local got
      sup:on("message", function(_, m) got = m end)
      local ok, err = sup:send(1, string.rep("x", 2000), function() error("called back for a refused send") end)
      assert.is_nil(ok)
      assert.equals("ERR_SERIALIZE", err.code)
      assert.matches("message of %d+ bytes exceeds max_message %(1000 bytes%)", err.message)
      assert.is_true(sup:send(1, "small")) -- the worker lives on
      H.run_until(function() return got ~= nil end)
      assert.equals("small", got.got)
      stop_and_wait(sup)
    end
  end)

  it("reload replaces every worker one at a time, never with fewer live", function()
    local sup = assert(tether.supervise(spec { script = ECHO, instances = 2,
      shutdown = { message = "exit0", timeout = 1000 } }))
    local live, min_live, old = {}, math.huge, {}
    local count, restart_pid = 0, {}
    sup:on("restart", function(w, reason, pid) restart_pid[w.id] = pid end)
    sup:on("start", function(w)
      live[w.pid] = true
      count = count + 1
      if restart_pid[w.id] then assert.equals(restart_pid[w.id], w.pid) end
    end)
    sup:on("exit", function(w, code, sig, reason)
      local n = 0
      for _ in pairs(live) do n = n + 1 end
      -- the old one is still counted here: n - 1 remain after it
      min_live = math.min(min_live, n - 1)
      assert.equals("reload", reason)
      -- w.pid is already the new worker's; find which pid went
      for pid in pairs(live) do
        if pid_gone(pid) then live[pid] = nil end
      end
    end)
    H.run_until(function() return count == 2 end)
    for _, w in ipairs(sup:workers()) do old[w.id] = w.pid end
    local done, rerr = false, nil
    assert.is_true(sup:reload(function(e) rerr, done = e, true end))
    local ok, err = sup:reload()
    assert.is_nil(ok)
    assert.equals("EBUSY", err.code)
    H.run_until(function() return done end)
    assert.is_nil(rerr)
    assert.is_true(min_live >= 2, "live workers fell to " .. min_live)
    sup:off("exit")
    for _, w in ipairs(sup:workers()) do
      assert.is_not.equals(old[w.id], w.pid)
      assert.equals("running", w.state)
      assert.equals(1, w.restarts)
    end
    stop_and_wait(sup)
  end)

  it("a reload whose new worker cannot start keeps the old one", function()
    local flag = H.tmpfile("reload-broken")
    os.remove(flag)
    local sup = assert(tether.supervise(spec { script = H.script(([[
      local f = io.open(%q)
      if f then error("broken on reload") end
      require("tether").parent:keep_alive(true)
    ]]):format(flag)), max_restarts = 5 }))
    local started, errors = false, {}
    sup:on("start", function() started = true end)
    sup:on("error", function(e) errors[#errors + 1] = e.code end)
    H.run_until(function() return started end)
    local pid = sup:workers()[1].pid
    io.open(flag, "w"):close()
    local done, rerr = false, nil
    sup:reload(function(e) rerr, done = e, true end)
    H.run_until(function() return done end)
    os.remove(flag)
    assert.equals("ERR_WORKER_INIT", rerr.code)
    assert.same({ "ERR_WORKER_INIT" }, errors)
    assert.equals(pid, sup:workers()[1].pid)
    assert.equals("running", sup:workers()[1].state)
    stop_and_wait(sup)
  end)

  it("appends worker output to log files, one prefixed line at a time", function()
    local out, errf = H.tmpfile("sup-out.log"), H.tmpfile("sup-err.log")
    os.remove(out)
    os.remove(errf)
    local sup = assert(tether.supervise(spec { instances = 2, restart = "never",
      script = H.script [[
        local id = os.getenv("TETHER_WORKER_ID")
        io.stdout:write("hello from ", id, "\nsecond line ", id, "\n")
        io.stdout:write("no newline ", id)
        io.stderr:write("oops ", id, "\n")
      ]], stdout = out, stderr = errf }))
    local stopped = false
    sup:on("stopped", function() stopped = true end)
    H.run_until(function() return stopped end)
    closed(sup)
    local function lines(path)
      local t = {}
      for l in io.lines(path) do t[#t + 1] = l end
      table.sort(t)
      return t
    end
    assert.same({ "[1] hello from 1", "[1] no newline 1", "[1] second line 1",
      "[2] hello from 2", "[2] no newline 2", "[2] second line 2" }, lines(out))
    assert.same({ "[1] oops 1", "[2] oops 2" }, lines(errf))
    os.remove(out)
    os.remove(errf)
  end)

  it("log_rotate: rotates the log by size, whole lines per file, keeping `keep` old files", function()
    local out = H.tmpfile("rotated.log")
    for _, p in ipairs { out, out .. ".1", out .. ".2", out .. ".3" } do os.remove(p) end
    local sup = assert(tether.supervise(spec { restart = "never", script = H.script [[
      for i = 0, 399 do io.stdout:write(("line %04d\n"):format(i)) end
    ]], stdout = out, log_rotate = { size = "1K", keep = 2 } }))
    local stopped = false
    sup:on("stopped", function() stopped = true end)
    H.run_until(function() return stopped end)
    closed(sup)
    local all, n = {}, 0
    for _, p in ipairs { out .. ".2", out .. ".1", out } do
      local f = assert(io.open(p))
      local data = f:read("a")
      f:close()
      assert.is_true(#data > 0 and #data <= 1024, p .. ": " .. #data .. " bytes")
      assert.equals("\n", data:sub(-1))
      for line in data:gmatch("([^\n]*)\n") do
        local i = assert(tonumber(line:match("^%[1%] line (%d%d%d%d)$")), line)
        n = n + 1
        all[n] = i
      end
    end
    assert.is_nil(io.open(out .. ".3")) -- keep = 2
    for k = 2, n do assert.equals(all[k - 1] + 1, all[k]) end -- no line lost or split
    assert.equals(399, all[n])
    assert.is_true(n > 100)
    for _, p in ipairs { out, out .. ".1", out .. ".2" } do os.remove(p) end
  end)

  it("reopen_logs moves output to a fresh file (logrotate)", function()
    local out = H.tmpfile("rot.log")
    os.remove(out)
    os.remove(out .. ".1")
    local sup = assert(tether.supervise(spec { script = H.script [[
      local tether = require "tether"
      tether.parent:on("message", function(m) print(m) tether.parent:send("printed") end)
    ]], stdout = out }))
    local printed = 0
    sup:on("message", function() printed = printed + 1 end)
    sup:send(1, "before")
    H.run_until(function() return printed == 1 end)
    H.sleep(30)
    assert(os.rename(out, out .. ".1"))
    assert.is_true(sup:reopen_logs())
    sup:send(1, "after")
    H.run_until(function() return printed == 2 end)
    stop_and_wait(sup)
    local function slurp(path)
      local f = assert(io.open(path))
      local data = f:read("a")
      f:close()
      return data
    end
    assert.equals("[1] before\n", slurp(out .. ".1"))
    assert.equals("[1] after\n", slurp(out))
    os.remove(out)
    os.remove(out .. ".1")
  end)

  it("reports a worker that fails to start as ERR_WORKER_INIT and restarts it", function()
    local sup = assert(tether.supervise(spec { script = H.script [[error("no config")]],
      max_restarts = 1 }))
    local errors, stopped = {}, false
    sup:on("error", function(e, w)
      assert.equals(1, w.id)
      errors[#errors + 1] = e
    end)
    sup:on("stopped", function() stopped = true end)
    H.run_until(function() return stopped end)
    assert.equals(2, #errors)
    assert.equals("ERR_WORKER_INIT", errors[1].code)
    assert.matches("no config", errors[1].message)
  end)

  it("supervises any program (cmd); a missing one ends in give_up, not a spin", function()
    local sup = assert(tether.supervise(spec { cmd = "sh", args = { "-c", "exit 4" },
      max_restarts = 2 }))
    local codes, stopped = {}, false
    sup:on("exit", function(w, code) codes[#codes + 1] = code end)
    sup:on("stopped", function() stopped = true end)
    H.run_until(function() return stopped end)
    assert.same({ 4, 4, 4 }, codes)

    sup = assert(tether.supervise(spec { cmd = "/nonexistent/program", max_restarts = 2 }))
    local errs, gave = {}, nil
    stopped = false
    sup:on("error", function(e) errs[#errs + 1] = e.code end)
    sup:on("give_up", function(why) gave = why end)
    sup:on("stopped", function() stopped = true end)
    H.run_until(function() return stopped end)
    assert.same({ "ENOENT", "ENOENT", "ENOENT" }, errs)
    assert.matches("spawn", gave)
    assert.equals("spawn", sup:workers()[1].last_reason)
  end)

  it("broadcasts to every worker", function()
    local sup = assert(tether.supervise(spec { script = ECHO, instances = 3 }))
    local got = {}
    sup:on("message", function(w, m) got[w.id] = m.got end)
    assert.equals(3, sup:broadcast("all"))
    H.run_until(function() return got[1] and got[2] and got[3] end)
    assert.same({ "all", "all", "all" }, got)
    stop_and_wait(sup)
  end)

  it("rejects bad specs with clear errors", function()
    local bad = {
      { {}, "exactly one of 'script' and 'cmd'" },
      { { script = "x", cmd = "y" }, "exactly one of 'script' and 'cmd'" },
      { { script = "x", instances = 0 }, "instances" },
      { { script = "x", restart = "sometimes" }, "restart" },
      { { script = "x", max_memory = "lots" }, "max_memory" },
      { { script = "x", heartbeat = { timeout = 5 } }, "heartbeat.interval" },
      { { script = "x", backoff = { initial = 10, max = 5 } }, "backoff" },
      { { script = "x", within = -1 }, "within" },
      { { script = "x", stdout = 5 }, "stdout" },
      { { script = "x", log_rotate = 5 }, "option 'log_rotate': table expected" },
      { { script = "x", log_rotate = { keep = 2 } }, "option 'log_rotate.size' is required" },
      { { script = "x", log_rotate = { size = "lots" } }, "option 'log_rotate.size'" },
      { { script = "x", log_rotate = { size = 0 } }, "option 'log_rotate.size'" },
      { { script = "x", log_rotate = { size = "1M", keep = -1 } }, "option 'log_rotate.keep'" },
      { { script = "x", log_rotate = { size = "1M", keep = 5000 } }, "option 'log_rotate.keep': at most 1000" },
      { { script = "x", log_rotate = { size = "1M", kept = 1 } }, "unknown option 'log_rotate.kept'" },
    }
    for _, case in ipairs(bad) do
      local ok, err = pcall(tether.supervise, case[1])
      assert.is_false(ok)
      assert.matches(case[2], tostring(err), 1, true)
    end
  end)

  it("SIGTERM to a supervisor process stops its workers and exits 0", function()
    local pidfile = H.tmpfile("sup-pids")
    local c = assert(tether.fork(H.script(([[
      local tether = require "tether"
      local sup = assert(tether.supervise { script = %q, instances = 2,
        shutdown = { timeout = 1000 } })
      local n = 0
      sup:on("start", function()
        n = n + 1
        if n == 2 then
          local f = io.open(%q, "w")
          for _, w in ipairs(sup:workers()) do f:write(w.pid, "\n") end
          f:close()
          tether.parent:send("ready")
        end
      end)
      sup:on("stopped", function() tether.parent:send("stopped") end)
    ]]):format(ECHO, pidfile))))
    local seen, code = {}, nil
    c:on("message", function(m)
      seen[#seen + 1] = m
      if m == "ready" then c:kill("SIGTERM") end
    end)
    c:on("exit", function(cd) code = cd end)
    H.run(10)
    assert.same({ "ready", "stopped" }, seen)
    assert.equals(0, code)
    for line in io.lines(pidfile) do
      assert.is_true(pid_gone(tonumber(line)), "worker " .. line .. " survived")
    end
    os.remove(pidfile)
  end)

  it("Ctrl-C (SIGINT to the terminal's process group) is a graceful stop", function()
    local out = H.tmpfile("ctrlc.out")
    os.remove(out)
    -- the supervisor leads its own process group, as a shell job would
    local c = assert(tether.spawn("setsid", { H.LUA, H.script(([[
      local tether = require "tether"
      local sup = assert(tether.supervise { script = %q, instances = 2,
        shutdown = { message = "exit0", timeout = 2000 } })
      local n = 0
      sup:on("start", function()
        n = n + 1
        if n == 2 then io.open(%q, "w"):close() end
      end)
      sup:on("exit", function(w, code, sig, reason)
        local f = io.open(%q, "a")
        f:write(w.id, " ", tostring(code), " ", tostring(sig), " ", reason, "\n")
        f:close()
      end)
      tether.run()
    ]]):format(ECHO, out .. ".ready", out, out)) }, { channel = false,
      env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }))
    local code
    c:on("exit", function(cd) code = cd end)
    H.wait_file(out .. ".ready")
    os.execute("kill -INT -" .. c.pid)
    H.run_until(function() return code ~= nil end)
    assert.equals(0, code)
    local lines = {}
    for l in io.lines(out) do lines[#lines + 1] = l end
    table.sort(lines)
    -- the workers left by the shutdown message (exit 0), not by the SIGINT
    assert.same({ "1 0 nil stop", "2 0 nil stop" }, lines)
    os.remove(out)
    os.remove(out .. ".ready")
  end)

  it("a reload finishes when the old worker dies while its successor starts", function()
    local sup = assert(tether.supervise(spec { script = ECHO }))
    local started = 0
    sup:on("start", function() started = started + 1 end)
    H.run_until(function() return started == 1 end)
    local done, rerr = false, nil
    assert.is_true(sup:reload(function(e) rerr, done = e, true end))
    sup:send(1, "crash") -- the old one, still current, dies during the overlap
    H.run_until(function() return done end)
    assert.is_nil(rerr)
    assert.equals("running", sup:workers()[1].state)
    assert.is_true(sup:reload()) -- not stuck: a new reload is accepted
    H.run_until(function() return started >= 3 end)
    stop_and_wait(sup)
  end)

  it("messages still in a replaced worker's channel go on to its successor", function()
    -- the worker stops reading; a large message waits in its channel
    local sup = assert(tether.supervise(spec { script = H.script [[
      local tether = require "tether"
      tether.parent:on("message", function(m)
        if m == "block" then
          local t = os.time() + 30
          while os.time() < t do end
        elseif type(m) == "string" and #m < 100 then
          tether.parent:send({ got = m })
        else
          tether.parent:send({ got = #m })
        end
      end)
    ]], shutdown = { timeout = 100, kill_timeout = 100 } }))
    local started, got = 0, {}
    sup:on("start", function() started = started + 1 end)
    sup:on("message", function(w, m) got[#got + 1] = m.got end)
    H.run_until(function() return started == 1 end)
    sup:send(1, "block")
    local big, hello
    sup:send(1, string.rep("x", 8 * 1024 * 1024), function(e) big = e or "ok" end)
    H.sleep(100)
    local reloaded = false
    sup:reload(function(e) reloaded = true end)
    H.run_until(function() return reloaded end)
    sup:send(1, "hello", { timeout = 2000 }, function(e) hello = e or "ok" end)
    H.run_until(function() return #got == 2 end)
    assert.equals("ok", big)
    assert.equals("ok", hello)
    assert.same({ 8 * 1024 * 1024, "hello" }, got)
    stop_and_wait(sup)
  end)

  it("restarts a worker that never gets ready within start_timeout", function()
    local sup = assert(tether.supervise(spec { script = H.script [[
      local t = os.time() + 30
      while os.time() < t do end
    ]], start_timeout = 150, max_restarts = 1, shutdown = { timeout = 50, kill_timeout = 100 } }))
    local reasons, stopped = {}, false
    sup:on("exit", function(w, code, sig, reason) reasons[#reasons + 1] = reason end)
    sup:on("stopped", function() stopped = true end)
    assert.equals("starting", sup:workers()[1].state)
    H.run_until(function() return stopped end)
    assert.same({ "unresponsive", "unresponsive" }, reasons)
  end)

  it("restart(id) replaces one worker at once, without counting it", function()
    local sup = assert(tether.supervise(spec { script = ECHO, instances = 2, max_restarts = 0 }))
    local started = 0
    sup:on("start", function() started = started + 1 end)
    H.run_until(function() return started == 2 end)
    local before = sup:workers()
    assert.is_true(sup:worker(2):restart())
    H.run_until(function() return started == 3 end)
    local after = sup:workers()
    assert.equals(before[1].pid, after[1].pid)
    assert.is_not.equals(before[2].pid, after[2].pid)
    assert.is_nil(sup.gave_up)
    stop_and_wait(sup)
  end)

  it("answers a worker's call with ERR_NO_HANDLER, also while it starts", function()
    local sup = assert(tether.supervise(spec { script = H.script [[
      local tether = require "tether"
      tether.parent:call("hello?", {}, function(err)
        tether.parent:send(err and err.code or "no error")
      end)
    ]] }))
    local got
    sup:on("message", function(w, m) got = m end)
    H.run_until(function() return got end)
    assert.equals("ERR_NO_HANDLER", got)
    stop_and_wait(sup)
  end)

  it("a grandchild holding the log pipe does not hold up the stop", function()
    local out = H.tmpfile("grandchild.log")
    local sup = assert(tether.supervise(spec { cmd = "sh",
      args = { "-c", "sleep 5 & echo $!; exec sleep 30" }, stdout = out }))
    H.sleep(200)
    local t0 = tether.hrtime()
    stop_and_wait(sup)
    assert.is_true((tether.hrtime() - t0) / 1e6 < 2000)
    local f = assert(io.open(out))
    local grandchild = f:read("a"):match("^%[1%] (%d+)\n$")
    f:close()
    assert.is_not_nil(grandchild)
    os.execute("kill " .. grandchild)
    os.remove(out)
  end)

  describe("scale", function()
    it("grows: new workers n+1.. start at once, ids stay stable", function()
      local sup = assert(tether.supervise(spec { script = ECHO, instances = 1 }))
      local started = {}
      sup:on("start", function(w) started[w.id] = (started[w.id] or 0) + 1 end)
      H.run_until(function() return started[1] end)
      local pid1 = sup:workers()[1].pid
      local done, cb_err = false, "unset"
      assert.is_true(sup:scale(3, function(err) done, cb_err = true, err end))
      assert.equals(3, sup.instances)
      H.run_until(function() return done end)
      assert.is_nil(cb_err)
      assert.same({ 1, 1, 1 }, started)
      local list = sup:workers()
      assert.equals(3, #list)
      assert.equals(pid1, list[1].pid)
      for id, w in ipairs(list) do
        assert.equals(id, w.id)
        assert.equals("running", w.state)
      end
      local got = {}
      sup:on("message", function(w, m) got[w.id] = m.id end)
      for id = 1, 3 do assert.is_true(sup:send(id, "hi")) end
      H.run_until(function() return got[1] and got[2] and got[3] end)
      assert.same({ 1, 2, 3 }, got)
      stop_and_wait(sup)
    end)

    it("shrinks: the highest ids stop gracefully, are not restarted, and leave the list", function()
      local sup = assert(tether.supervise(spec { script = ECHO, instances = 3 }))
      local starts, exits, restarts = 0, {}, 0
      sup:on("start", function() starts = starts + 1 end)
      sup:on("exit", function(w, _, _, reason) exits[w.id] = reason end)
      sup:on("restart", function() restarts = restarts + 1 end)
      H.run_until(function() return starts == 3 end)
      local pids = {}
      for id, w in ipairs(sup:workers()) do pids[id] = w.pid end
      local done, cb_err = false, "unset"
      assert.is_true(sup:scale(1, function(err) done, cb_err = true, err end))
      assert.equals(1, sup.instances)
      local ok, err = sup:send(3, "late")
      assert.is_nil(ok)
      assert.equals("ERR_CLOSED", err.code)
      H.run_until(function() return done end)
      assert.is_nil(cb_err)
      assert.same({ [2] = "scale", [3] = "scale" }, exits)
      assert.is_true(pid_gone(pids[2]))
      assert.is_true(pid_gone(pids[3]))
      H.sleep(100)
      assert.equals(0, restarts)
      local list = sup:workers()
      assert.equals(1, #list)
      assert.equals(pids[1], list[1].pid)
      assert.equals(1, sup:broadcast("all"))
      stop_and_wait(sup)
    end)

    it("fails what was queued for a removed worker with ERR_CLOSED", function()
      local sup = assert(tether.supervise(spec { script = ECHO, instances = 1 }))
      local started = false
      sup:on("start", function() started = true end)
      H.run_until(function() return started end)
      assert.is_true(sup:scale(2))
      local sent_err
      -- queued: worker 2 is not running yet
      assert.is_true(sup:send(2, "queued", function(e) sent_err = e end))
      assert.is_true(sup:scale(1))
      H.run_until(function() return sent_err ~= nil end)
      assert.equals("ERR_CLOSED", sent_err.code)
      stop_and_wait(sup)
    end)

    it("grows again while a removed worker is still stopping", function()
      -- a worker that takes its time to stop: its slot is taken back
      local sup = assert(tether.supervise(spec { instances = 2, script = H.script [[
        local tether = require "tether"
        tether.on_signal("SIGTERM", function() tether.timeout(300, function() os.exit(0) end) end)
      ]], shutdown = { timeout = 10, kill_timeout = 5000 } }))
      local starts = 0
      sup:on("start", function() starts = starts + 1 end)
      H.run_until(function() return starts == 2 end)
      local old = sup:workers()[2].pid
      local first, second = "unset", "unset"
      assert.is_true(sup:scale(1, function(err) first = err end))
      H.run_until(function() return sup:workers()[2] and sup:workers()[2].state == "stopping" end)
      assert.equals(2, #sup:workers())
      assert.is_true(sup:scale(2, function(err) second = err end))
      H.run_until(function() return first ~= "unset" and second ~= "unset" end)
      assert.is_nil(first)
      assert.is_nil(second)
      assert.equals(3, starts)
      local w2 = sup:workers()[2]
      assert.equals("running", w2.state)
      assert.is_not.equals(old, w2.pid)
      H.run_until(function() return pid_gone(old) end)
      assert.equals("running", sup:workers()[2].state)
      stop_and_wait(sup)
    end)

    it("rejects a bad count with a clear error, and scaling once stopping", function()
      local sup = assert(tether.supervise(spec { script = ECHO }))
      for _, n in ipairs { 0, -1, 1.5, "2", 100001 } do
        local ok, err = pcall(sup.scale, sup, n)
        assert.is_false(ok)
        assert.matches("bad argument #1 to 'scale' (worker count", tostring(err), 1, true)
      end
      assert.has_error(function() sup:scale(2, 5) end)
      sup:stop()
      local ok, err = sup:scale(2)
      assert.is_nil(ok)
      assert.equals("ERR_CLOSED", err.code)
      stop_and_wait(sup)
    end)
  end)

  it("ends its workers when the Lua state closes with the supervisor running", function()
    local pidfile = H.tmpfile("orphans")
    os.remove(pidfile)
    local c = assert(tether.spawn(H.LUA, { H.script(([[
      local tether = require "tether"
      local sup = assert(tether.supervise { cmd = "sleep", args = { "30" }, instances = 2,
        handle_signals = false })
      local n = 0
      sup:on("start", function(w)
        local f = io.open(%q, "a")
        f:write(w.pid, "\n")
        f:close()
        n = n + 1
        if n == 2 then tether.stop() end
      end)
      tether.run()
      -- the script ends here: the state closes with both workers running
    ]]):format(pidfile)) }, { channel = false,
      env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }))
    local code
    c:on("exit", function(cd) code = cd end)
    H.run_until(function() return code ~= nil end)
    assert.equals(0, code)
    H.sleep(100)
    local n = 0
    for line in io.lines(pidfile) do
      n = n + 1
      assert.is_true(pid_gone(tonumber(line)), "worker " .. line .. " survived")
    end
    assert.equals(2, n)
    os.remove(pidfile)
  end)
end)

describe("tether.supervise stopping a worker", function()
  it("signals the worker's whole process group, so what it started goes too", function()
    local pidfile = H.tmpfile("grandchild.pid")
    os.remove(pidfile)
    local sup = assert(tether.supervise { cmd = "sh", args = { "-c", "sleep 1000 & echo $! > " .. pidfile .. "; wait" },
      handle_signals = false, shutdown = { timeout = 100, kill_timeout = 2000 } })
    local grandchild
    H.run_until(function()
      local f = io.open(pidfile)
      if f then grandchild = tonumber(f:read("l")) f:close() end
      return grandchild ~= nil
    end, 10)
    assert.is_true(H.alive(grandchild))
    sup:stop()
    H.run(10)
    -- (the signal is on its way: give it a moment to land)
    local deadline = os.time() + 5
    while H.alive(grandchild) and os.time() <= deadline do H.sleep(20) end
    local outlived = H.alive(grandchild)
    if outlived then os.execute("kill -9 " .. grandchild) end -- (holds busted's stdout)
    assert(not outlived, "the worker's child outlived the stop")
    os.remove(pidfile)
  end)
end)
