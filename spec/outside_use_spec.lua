-- Defects found when tether was used as a new user, a port of Node's own
-- child_process tests and hostile peers would use it (issue 11).  Each test
-- names the item it covers as [N]; each failed before its fix.
local tether = require "tether"
local H = require "helper"

local function lua_env()
  return { LUA_PATH = package.path, LUA_CPATH = package.cpath }
end

-- Runs `src` as a plain lua5.4 program (a parent of its own), returns the
-- child object with stdout and stderr piped and collected into out/err.
local function program(src, opts)
  opts = opts or {}
  local c = assert(tether.spawn(H.LUA, { H.script(src) }, {
    env = lua_env(), channel = false,
    stdio = { stdin = "ignore", stdout = "pipe", stderr = "pipe" },
  }))
  local out, err = {}, {}
  c.stdout:on("data", function(d) out[#out + 1] = d end)
  c.stderr:on("data", function(d) err[#err + 1] = d end)
  c.out = function() return table.concat(out) end
  c.err = function() return table.concat(err) end
  return c
end

describe("outside use (issue 11)", function()
  H.leak_guard(before_each, after_each)

  ---------------------------------------------------------------------------
  -- [1] a clean send-then-exit is never a protocol error

  for _, pinned in ipairs { false, true } do
    it("[1] 50 children that send and exit while the parent disconnects: no protocol error"
        .. (pinned and " (pinned to one core)" or ""), function()
      local script = H.script([[require("tether").parent:send("bye")]])
      local kids, got, errors = {}, 0, {}
      for i = 1, 50 do
        local c
        if pinned then
          -- taskset runs the interpreter on CPU 0 only; fork() is the runner
          c = assert(tether.spawn("taskset", { "-c", "0", H.LUA, tether._internal.runner_path(), script },
            { env = lua_env() }))
        else
          c = assert(tether.fork(script))
        end
        c:on("message", function(m)
          assert.equals("bye", m)
          got = got + 1
          c:disconnect()
        end)
        c:on("error", function(e) errors[#errors + 1] = tostring(e) end)
        kids[i] = c
      end
      H.run(30)
      assert.same({}, errors)
      assert.equals(50, got)
      for _, c in ipairs(kids) do assert.equals(0, c.exit_code) end
    end)
  end

  ---------------------------------------------------------------------------
  -- [2] tether.timeout() is exact, so an embedding idles

  it("[2] timeout() is -1 with nothing pending and the real delay to the next timer", function()
    assert.equals(-1, tether.timeout())
    local t = tether.timer(5000, function() end)
    local left = tether.timeout()
    assert.is_true(left > 4900 and left <= 5000, "timeout " .. left)
    tether.run("nowait")
    left = tether.timeout()
    assert.is_true(left > 4900 and left <= 5000, "timeout " .. left)
    -- an unreferenced timer counts too: an embedding must run it on time
    t:unref()
    left = tether.timeout()
    assert.is_true(left > 4900 and left <= 5000, "timeout " .. left)
    t:stop()
    tether.run("nowait") -- the close completes
    assert.equals(-1, tether.timeout())
    -- run("nowait") says whether tether has work that keeps it alive
    assert.is_false(tether.run("nowait"))
    local t2 = tether.timer(1000, function() end)
    assert.is_true(tether.run("nowait"))
    t2:stop()
    tether.run("nowait")
  end)

  for _, with_child in ipairs { false, true } do
    it("[2] the README's luv recipe idles and lets luv's timers fire on time"
        .. (with_child and " (with a child)" or ""), function()
      local c = program([[
        local tether = require "tether"
        local uv = require "luv"
        local poll, timer, prepare = uv.new_poll(tether.fd()), uv.new_timer(), uv.new_prepare()
        local function pump()
          tether.run("nowait")
          timer:stop()
          local t = tether.timeout()
          if t >= 0 then timer:start(t, 0, pump) end
        end
        poll:start("r", pump)
        prepare:start(pump)
        local child
        if ]] .. tostring(with_child) .. [[ then
          child = assert(tether.fork(]] .. ("%q"):format(H.script([[
            local t = require "tether"
            t.parent:on("message", function() t.parent:disconnect() end)]])) .. [[))
        end
        local t0 = uv.hrtime()
        local c0 = os.clock()
        local late
        local lt = uv.new_timer()
        lt:start(400, 0, function()
          late = (uv.hrtime() - t0) / 1e6 - 400
          if child then child:send("done") end
          for _, h in ipairs { poll, timer, prepare, lt } do h:stop(); h:close() end
        end)
        uv.run()
        if child then tether.run() end
        io.write(("late=%d cpu=%d\n"):format(math.floor(late), math.floor((os.clock() - c0) * 1000)))
      ]])
      c:on("exit", H.expect(function(code) assert.equals(0, code, c.err()) end))
      H.run(20)
      local late, cpu = c.out():match("late=(%-?%d+) cpu=(%d+)")
      assert.is_not_nil(late, c.out() .. c.err())
      assert.is_true(tonumber(late) < 100 * H.scale, "luv timer late by " .. late .. " ms")
      -- spinning would burn the whole 400 ms
      assert.is_true(tonumber(cpu) < 150 * H.scale, "used " .. cpu .. " ms of CPU while idle")
    end)
  end

  ---------------------------------------------------------------------------
  -- [3] deadlines count from the moment they are armed

  it("[3] sleep and call timeouts count from when they are armed, after long synchronous work", function()
    local c = assert(tether.fork(H.script([[
      local t = require "tether"
      t.parent:handle(function(x) t.sleep(10000) end)]])))
    local slept, timed
    tether.go(function()
      local busy = tether.hrtime()
      while tether.hrtime() - busy < 600e6 do end -- 600 ms without the loop
      local t0 = tether.hrtime()
      tether.sleep(500)
      slept = (tether.hrtime() - t0) / 1e6
      local n0 = tether.now()
      while tether.hrtime() - t0 < 800e6 do end
      assert.is_true(tether.now() - n0 >= 250, "now() did not move") -- (300 ms busy)
      t0 = tether.hrtime()
      local r, err = c:call("x", { timeout = 1000 })
      timed = (tether.hrtime() - t0) / 1e6
      assert.is_nil(r)
      assert.equals("ERR_TIMEOUT", err.code)
      c:kill("SIGKILL")
    end)
    H.run(20)
    assert.is_true(slept >= 490, "sleep(500) returned after " .. slept .. " ms")
    assert.is_true(timed >= 990, "timeout 1000 fired after " .. timed .. " ms")
  end)

  ---------------------------------------------------------------------------
  -- [4] Ctrl-C ends the program as it ends a Lua script

  local function ctrl_c(body)
    return program([[
      local tether = require "tether"
      ]] .. body .. [[
      io.stdout:write("ready\n")
      io.stdout:flush()
      tether.run()
      io.stdout:write("run returned\n")
    ]])
  end

  local calls_body = ([[
    local c = assert(tether.fork(%q))
    c:on("error", function(e) io.stderr:write("EVENT ", tostring(e), "\n") end)
    io.stdout:write("pid ", c.pid, "\n")
    tether.timer(100, function() io.stdout:write("go\n"); io.stdout:flush() end)
    for k = 1, 4 do
      tether.go(function()
        while true do
          local r, err = c:call({ s = string.rep("y", 5000) }, { timeout = 5000 })
          if not r then break end
        end
      end)
    end
  ]])

  for _, case in ipairs {
    { "calls to a child", function()
        return calls_body:format(H.script([[require("tether").parent:handle(function(x) return x end)]]))
      end },
    { "a pool", function()
        return ([[
          local pool = assert(tether.pool { script = %q, size = 2 })
          tether.timer(100, function()
            for _, w in ipairs(pool:workers()) do io.stdout:write("pid ", w.pid, "\n") end
            io.stdout:write("go\n")
            io.stdout:flush()
          end)
          for k = 1, 4 do
            tether.go(function()
              while true do if not pool:run({ s = string.rep("y", 5000) }) then break end end
            end)
          end
        ]]):format(H.script([[require("tether").serve(function(t) return t end)]]))
      end },
  } do
    it("[4] SIGINT during " .. case[1] .. ": ends with 'interrupted!', never a protocol error, no orphans", function()
      for round = 1, 3 do
        local p = ctrl_c(case[2]())
        local sent = false
        p.stdout:on("data", function()
          if not sent and p.out():match("go\n") then
            sent = true
            tether.timer(50 + round * 37, function() p:kill("SIGINT") end)
          end
        end)
        p:on("exit", H.expect(function(code, sig)
          assert.equals(1, code, p.err())
          assert.is_nil(sig)
        end))
        H.run(20)
        assert.matches("interrupted!", p.err())
        assert.not_matches("ERR_IPC_PROTOCOL", p.err())
        assert.not_matches("EVENT", p.err())
        assert.not_matches("run returned", p.out())
        local pids = {}
        for pid in p.out():gmatch("pid (%d+)") do pids[#pids + 1] = tonumber(pid) end
        assert.is_true(#pids >= 1)
        H.run_until(function()
          for _, pid in ipairs(pids) do if H.alive(pid) then return false end end
          return true
        end, 5)
      end
    end)
  end

  it("[4] Ctrl-C to the process group: a forked worker dies of SIGINT, it is not its fault", function()
    -- the parent handles SIGINT and reports how its worker ended; the
    -- worker (its main chunk done, in run()) must not report an error
    local out = H.tmpfile("ctrlc4.out")
    os.remove(out)
    local c = assert(tether.spawn("setsid", { H.LUA, H.script(([[
      local tether = require "tether"
      local w = assert(tether.fork(%q))
      tether.on_signal("SIGINT", function() end)
      w:on("error", function(e) io.stderr:write("EVENT ", tostring(e), "\n") end)
      w:on("message", function() io.open(%q .. ".ready", "w"):close() end)
      w:on("exit", function(code, sig)
        local f = io.open(%q, "w")
        f:write(tostring(code), " ", tostring(sig), "\n")
        f:close()
        os.exit(0)
      end)
      tether.run()
    ]]):format(H.script([[
      local t = require "tether"
      t.parent:send("up")
      t.every(1000, function() end)]]), out, out)) }, { channel = false,
      stdio = { stderr = "pipe" }, env = lua_env() }))
    local err = {}
    c.stderr:on("data", function(d) err[#err + 1] = d end)
    local code
    c:on("exit", function(cd) code = cd end)
    H.wait_file(out .. ".ready")
    os.execute("kill -INT -" .. c.pid)
    H.run_until(function() return code ~= nil end)
    assert.equals(0, code, table.concat(err))
    assert.equals("nil SIGINT\n", assert(io.open(out)):read("a"))
    assert.not_matches("ERR_WORKER", table.concat(err))
    assert.not_matches("EVENT", table.concat(err))
    os.remove(out)
    os.remove(out .. ".ready")
  end)

  it("[4] a program that handles SIGINT itself keeps running", function()
    local p = ctrl_c([[
      local h
      h = tether.on_signal("SIGINT", function() io.stdout:write("handled\n"); h:stop() end)
    ]])
    p.stdout:on("data", function()
      if p.out() == "ready\n" then tether.timer(50, function() p:kill("SIGINT") end) end
    end)
    p:on("exit", H.expect(function(code) assert.equals(0, code) end))
    H.run(10)
    assert.equals("ready\nhandled\nrun returned\n", p.out())
  end)

  ---------------------------------------------------------------------------
  -- [5] the cause of a failed start is never lost

  it("[5] a missing or broken script reports ERR_WORKER_INIT first, even when the parent sends at once", function()
    local broken = H.script("local x = = 1")
    local firsts = {}
    for i = 1, 24 do
      local c = assert(tether.fork(i % 2 == 0 and broken or "/nonexistent/missing.lua", nil,
        { stdio = { stderr = "ignore" } }))
      local first
      c:on("error", function(e)
        first = first or e
      end)
      c:on("close", function() firsts[#firsts + 1] = { first, i % 2 == 0 } end)
      c:send({ hello = string.rep("x", 1000) })
    end
    H.run(20)
    assert.equals(24, #firsts)
    for _, f in ipairs(firsts) do
      local e, syntax = f[1], f[2]
      assert.equals("ERR_WORKER_INIT", e.code)
      assert.matches(syntax and "unexpected symbol" or "cannot open /nonexistent/missing.lua", e.message, 1, true)
    end
  end)

  ---------------------------------------------------------------------------
  -- [6] os.exit and tether.exit in a parent deliver what it sent

  for _, ending in ipairs { "os.exit(0)", "tether.exit(0)", "os.exit(0, true)" } do
    it("[6] a parent's " .. ending .. " right after sending delivers every message", function()
      local counter = H.script([[
        local t = require "tether"
        local n = 0
        t.parent:on("message", function() n = n + 1 end)
        t.parent:on("disconnect", function() io.stdout:write("got ", n, "\n") end)]])
      for _, n in ipairs { 1, H.scale > 1 and 20000 or 100000 } do
        local p = program(([[
          local tether = require "tether"
          local c = assert(tether.fork(%q, nil, { stdio = "inherit", flush_timeout = 120000 }))
          for i = 1, %d do c:send(i) end
          ]]):format(counter, n) .. ending)
        p:on("exit", H.expect(function(code) assert.equals(0, code, p.err()) end))
        H.run(20 * H.scale)
        H.run_until(function() return p.out():match("got %d+") end, 10 * H.scale)
        assert.equals("got " .. n .. "\n", p.out())
      end
    end)
  end

  it("[6] an exit is held at most flush_timeout by a child that never reads, and says so", function()
    local p = program(([[
      local tether = require "tether"
      local c = assert(tether.fork(%q, nil, { flush_timeout = 300, stdio = "ignore" }))
      local big = string.rep("x", 1 << 20)
      for i = 1, 20 do c:send(big) end
      tether.timer(100, function() os.exit(0) end)
      tether.run()
    ]]):format(H.script([[
      -- busy, never reading; killed a second after its parent is gone
      local s = os.clock()
      while os.clock() - s < 10 do end]])))
    local t0 = tether.hrtime()
    p:on("exit", H.expect(function(code) assert.equals(0, code) end))
    H.run(20)
    local took = (tether.hrtime() - t0) / 1e6
    assert.is_true(took < 3000 * H.scale, "exit took " .. took .. " ms")
    assert.matches("not delivered", p.err())
  end)

  it("[6] a script that just ends with messages a child never read says so too", function()
    -- no os.exit, no tether.run: the end of the script (the Lua state's
    -- close) flushes, and tells what it could not deliver
    local p = program(([[
      local tether = require "tether"
      local c = assert(tether.fork(%q, nil, { flush_timeout = 300, stdio = "ignore" }))
      local big = string.rep("x", 1 << 20)
      for i = 1, 20 do c:send(big) end
    ]]):format(H.script([[
      local s = os.clock()
      while os.clock() - s < 10 do end]])))
    p:on("exit", H.expect(function(code) assert.equals(0, code) end))
    H.run(20)
    assert.matches("bytes of queued messages not delivered", p.err(), 1, true)
  end)

  ---------------------------------------------------------------------------
  -- [7] a peer that never reads cannot hold disconnect() for ever

  it("[7] disconnect() with a backlog to a child that stopped reading ends after flush_timeout", function()
    local c = assert(tether.fork(H.script([[
      local t = require "tether"
      t.parent:keep_alive(true)
      t.parent:on("message", function() end)
      t.every(1000, function() end)]]), nil, { flush_timeout = 300 }))
    local big = string.rep("x", 1 << 20)
    local cb_errors, lost = 0, nil
    c:on("spawn", function()
      c:kill("SIGSTOP")
      for i = 1, 10 do c:send(big) end
      c:send(big, function(err) if err then cb_errors = cb_errors + 1 end end)
      assert.is_true(c:disconnect())
    end)
    c:on("error", function(e) lost = e end)
    c:on("disconnect", H.expect(function()
      c:kill("SIGCONT")
      c:kill("SIGKILL")
    end))
    local t0 = tether.hrtime()
    H.run(20)
    local took = (tether.hrtime() - t0) / 1e6
    assert.is_true(took < 5000 * H.scale, "took " .. took)
    assert.equals(1, cb_errors)
    assert.equals("ERR_IPC_CHANNEL_CLOSED", lost.code)
    assert.matches("flush timeout", lost.message)
  end)

  ---------------------------------------------------------------------------
  -- [9] bursts do not starve replies

  it("[9] 100,000 concurrent calls with a 2 s timeout all succeed, the first reply early", function()
    local c = assert(tether.fork(H.script([[
      require("tether").parent:handle(function(x) return x end)]])))
    local N = 100000
    local ok, bad, first, issued = 0, 0, nil, nil
    c:on("spawn", function()
      for i = 1, N do
        c:call(i, { timeout = 2000 * H.scale }, function(err, r)
          first = first or tether.hrtime()
          if err then bad = bad + 1 else ok = ok + 1; assert.equals(i, r) end
          if ok + bad == N then c:disconnect() end
        end)
      end
      issued = tether.hrtime()
    end)
    H.run(60 * H.scale)
    assert.equals(0, bad)
    assert.equals(N, ok)
    -- the first reply comes within ms of the burst being handed to the loop
    assert.is_true((first - issued) / 1e6 < 100 * H.scale,
      ("first reply %.1f ms after the burst"):format((first - issued) / 1e6))
  end)

  ---------------------------------------------------------------------------
  -- [10] error values reach "uncaught" unchanged

  it("[10] a number raised in a callback reaches uncaught as that number", function()
    local seen = {}
    local h = function(e, tb)
      seen[#seen + 1] = e
      assert.is_string(tb)
    end
    tether.on("uncaught", h)
    tether.timer(1, function() error(42, 0) end)
    tether.timer(2, function() error(1.5, 0) end)
    local obj = {}
    tether.timer(3, function() error(obj) end)
    H.run()
    tether.off("uncaught", h)
    assert.equals(42, seen[1])
    assert.equals("integer", math.type(seen[1]))
    assert.equals(1.5, seen[2])
    assert.equals(obj, seen[3])
  end)

  ---------------------------------------------------------------------------
  -- [14] spawn with env under garbage churn (the ASan job runs this with
  -- TETHER_GC=aggressive)

  it("[14] 300 spawns with env under garbage churn", function()
    local n = 0
    for i = 1, 300 do
      local junk = {}
      for k = 1, 50 do junk[k] = { tostring(k) .. i } end
      local c = assert(tether.spawn("sh", { "-c", 'test "$A$B" = "x' .. i .. 'y" || exit 7' },
        { env = { A = "x" .. i, B = "y", C = string.rep("c", 100) }, channel = false }))
      c:on("exit", function(code)
        assert.equals(0, code)
        n = n + 1
      end)
      if i % 20 == 0 then collectgarbage() end
      if i % 50 == 0 then H.run(20) end
    end
    H.run(20)
    assert.equals(300, n)
  end)

  ---------------------------------------------------------------------------
  -- [21] every error raised in one iteration comes out of run()

  it("[21] five handlers raising in one batch: five errors out of run(), no message lost or doubled", function()
    local c = assert(tether.fork(H.script([[
      local t = require "tether"
      for i = 1, 5000 do t.parent:send(i) end]])))
    local seen, errs = {}, {}
    c:on("message", function(m)
      assert.is_nil(seen[m])
      seen[m] = true
      if m % 1000 == 0 then error("bad " .. m, 0) end
    end)
    local guard = tether.timer(20000 * H.scale, function() error("still running", 0) end)
    guard:unref()
    for _ = 1, 20 do
      local ok, e = pcall(tether.run)
      if ok then break end
      errs[#errs + 1] = e:match("^[^\n]*")
    end
    guard:stop()
    assert.same({ "bad 1000", "bad 2000", "bad 3000", "bad 4000", "bad 5000" }, errs)
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.equals(5000, n)
  end)

  ---------------------------------------------------------------------------
  -- [22] replies that came while the process was stopped are not timeouts

  it("[22] replies that arrived while the parent was stopped past their deadline are delivered", function()
    local p = program(([[
      local tether = require "tether"
      local c = assert(tether.fork(%q))
      local ok, bad = 0, 0
      c:on("spawn", function()
        for i = 1, 50 do
          c:call(i, { timeout = 1000 }, function(err)
            if err then bad = bad + 1 else ok = ok + 1 end
            if ok + bad == 50 then io.stdout:write(("ok=%%d bad=%%d\n"):format(ok, bad)); c:disconnect() end
          end)
        end
        io.stdout:write("sent\n")
        io.stdout:flush()
      end)
      tether.run()
    ]]):format(H.script([[
      local t = require "tether"
      -- the answers come 300 ms later: while the parent is stopped
      t.parent:handle(function(x) t.sleep(300) return x end)]])))
    p.stdout:on("data", function(d)
      if d:match("sent") then
        tether.timer(100, function()
          p:kill("SIGSTOP")
          tether.timer(1500, function() p:kill("SIGCONT") end)
        end)
      end
    end)
    p:on("exit", H.expect(function(code) assert.equals(0, code, p.err()) end))
    H.run(20)
    assert.equals("sent\nok=50 bad=0\n", p.out())
  end)

  ---------------------------------------------------------------------------
  -- [24] stdin, stdout and stderr are never a channel

  for fd = 0, 2 do
    it("[24] TETHER_CHANNEL_FD=" .. fd .. " is refused", function()
      local q = assert(tether.spawn(H.LUA, { "-e", [[
        local tether = require "tether"
        io.stdout:write(tostring(tether.parent), " ", tostring(tether.parent_error and tether.parent_error.code), "\n")]] },
        { env = { LUA_PATH = package.path, LUA_CPATH = package.cpath, TETHER_CHANNEL_FD = fd },
          channel = false, stdio = { stdin = "pipe", stdout = "pipe", stderr = "pipe" } }))
      local out, err = {}, {}
      q.stdout:on("data", function(d) out[#out + 1] = d end)
      q.stderr:on("data", function(d) err[#err + 1] = d end)
      q:end_input()
      q:on("exit", H.expect(function(code) assert.equals(0, code) end))
      H.run()
      assert.equals("nil EBADF\n", table.concat(out))
      assert.matches("cannot be used", table.concat(err))
    end)
  end

  ---------------------------------------------------------------------------
  -- hostile peers: raw frames written on the channel by a program that is
  -- not tether

  local function u32(n)
    return string.char(n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >> 24) & 255)
  end
  local function frame(kind, id, payload)
    return u32(#payload) .. string.char(1, kind, 0, 0) .. u32(id) .. payload
  end
  -- a peer that writes `bytes` (`times` times) on fd 3, then lingers
  local function raw_peer(bytes, opts, times, linger)
    local path = H.tmpfile("raw" .. tostring(math.random(1 << 30)))
    local f = assert(io.open(path, "wb"))
    f:write(bytes)
    f:close()
    local cmd = ("for i in $(seq 1 %d); do cat %s; done >&3; sleep %s"):format(times or 1, path, linger or "1")
    return assert(tether.spawn("sh", { "-c", cmd }, opts)), path
  end

  ---------------------------------------------------------------------------
  -- [8] a worker's crash reaches its own stderr, with the traceback

  it("[8] an uncaught error in a worker is written to the worker's stderr and log, with its traceback", function()
    local script = H.script([[
      local tether = require "tether"
      local function deep() local t = nil; return t.x end
      tether.timer(10, function() deep() end)]])
    local c = assert(tether.fork(script, nil, { stdio = { stderr = "pipe" } }))
    local err_text, reported = {}, nil
    c.stderr:on("data", function(d) err_text[#err_text + 1] = d end)
    c:on("error", function(e) reported = e end)
    c:on("exit", H.expect(function(code) assert.equals(1, code) end))
    H.run()
    local text = table.concat(err_text)
    assert.matches("ERR_WORKER_UNCAUGHT", text, 1, true)
    assert.matches("attempt to index a nil value", text, 1, true)
    assert.matches("stack traceback", text, 1, true)
    assert.matches("in upvalue 'deep'", text, 1, true)
    assert.equals("ERR_WORKER_UNCAUGHT", reported.code)
    assert.matches("stack traceback", reported.traceback, 1, true)
    -- under a supervisor, into its stderr log
    local log = H.tmpfile("err8.log")
    os.remove(log)
    local sup = assert(tether.supervise { script = script, stderr = log, restart = "never" })
    sup:on("error", function() end)
    H.run(10)
    local f = assert(io.open(log))
    local logged = f:read("a")
    f:close()
    assert.matches("[1] ", logged, 1, true)
    assert.matches("ERR_WORKER_UNCAUGHT", logged, 1, true)
    assert.matches("stack traceback", logged, 1, true)
  end)

  it("[8] an unhandled \"error\" event is printed with its traceback", function()
    local p = program(([[
      local tether = require "tether"
      local c = assert(tether.fork(%q, nil, { stdio = { stderr = "ignore" } }))
      tether.run()
    ]]):format(H.script([[
      local tether = require "tether"
      local function deep() error("deep trouble") end
      tether.timer(10, function() deep() end)]])))
    p:on("exit", H.expect(function(code) assert.equals(0, code) end))
    H.run()
    assert.matches("unhandled 'error' event: ERR_WORKER_UNCAUGHT", p.err(), 1, true)
    assert.matches("deep trouble", p.err(), 1, true)
    assert.matches("stack traceback", p.err(), 1, true)
  end)

  ---------------------------------------------------------------------------
  -- [11] a detached child outlives its parent

  for _, detached in ipairs { true, false } do
    it("[11] a forked child " .. (detached and "with" or "without") .. " detached = true "
        .. (detached and "outlives" or "dies with") .. " its parent", function()
      local mark = H.tmpfile("alive11-" .. tostring(detached))
      os.remove(mark)
      local p = program(([[
        local tether = require "tether"
        local c = assert(tether.fork(%q, { %q }, { detached = %s, stdio = "ignore" }))
        c:on("message", function() os.exit(0) end)
        tether.run()
      ]]):format(H.script([[
        local tether = require "tether"
        local mark = ...
        tether.parent:send("up")
        tether.timer(600, function()
          local f = io.open(mark, "w") f:write("alive") f:close()
        end)]]), mark, tostring(detached)))
      p:on("exit", H.expect(function(code) assert.equals(0, code) end))
      H.run()
      H.sleep(1200 * H.scale)
      local f = io.open(mark)
      if detached then
        assert.is_not_nil(f, "the detached child did not outlive its parent")
        f:close()
      else
        assert.is_nil(f, "the child outlived its parent")
      end
      os.remove(mark)
    end)
  end

  ---------------------------------------------------------------------------
  -- [12] a decode budget: memory per received byte is bounded

  local function varint(n)
    local out = {}
    repeat
      local b = n & 127
      n = n >> 7
      out[#out + 1] = string.char(n > 0 and (b | 128) or b)
    until n == 0
    return table.concat(out)
  end

  for _, json in ipairs { false, true } do
    it("[12] a 4 MB frame of empty tables is refused by the decode budget (" .. (json and "json" or "native") .. ")", function()
      -- 1.4 million empty tables would be ~150 MB of Lua memory; the budget
      -- is max(8 x max_message, 64 MiB)
      local n = (4 << 20) // 3
      local big = json and ("[" .. string.rep("{},", n - 1) .. "{}]\n")
        or frame(1, 0, "\6" .. varint(n) .. "\0" .. string.rep("\6\0\0", n))
      local c = raw_peer(big, { serialization = json and "json" or nil, max_message = 8 << 20 })
      c:on("message", H.expect(nil, 0))
      c:on("error", H.expect(function(e)
        assert.equals("ERR_IPC_PROTOCOL", e.code)
        assert.matches("decode budget", e.message, 1, true)
      end))
      c:on("disconnect", function() c:kill("SIGKILL") end)
      H.run(20)
    end)
  end

  it("[12] a legitimate message of 1,000,000 small tables still decodes", function()
    local c = assert(tether.fork(H.fixture("echo.lua")))
    local big = {}
    for i = 1, 1000000 do big[i] = { i } end
    c:on("message", function(m)
      if m.ready then c:send(big) return end
      assert.equals(1000000, #m)
      assert.equals(777, m[777][1])
      c:disconnect()
    end)
    H.run(30 * H.scale)
  end)

  ---------------------------------------------------------------------------
  -- [13] a pool whose script cannot load fails fast, with the cause

  for _, case in ipairs { { "syntax error", "local x = = 1", "unexpected symbol" },
                          { "missing script", nil, "cannot open" } } do
    for _, size in ipairs { 1, 2 } do
      it("[13] a pool of " .. size .. " with a " .. case[1] .. " fails its tasks at once with the Lua error", function()
        local script = case[2] and H.script(case[2]) or "/nonexistent/worker.lua"
        local pool = assert(tether.pool { script = script, size = size, stderr = "ignore" })
        pool:on("error", function() end)
        local took, got
        tether.go(function()
          local t0 = tether.hrtime()
          local r, err = pool:run({ 1 })
          took = (tether.hrtime() - t0) / 1e6
          assert.is_nil(r)
          got = err
        end)
        H.run(20)
        assert.equals("ERR_WORKER_INIT", got.code)
        assert.matches(case[3], got.message, 1, true)
        assert.is_true(took < 1000 * H.scale, "took " .. took .. " ms")
      end)
    end
  end

  ---------------------------------------------------------------------------
  -- [15] automatic answers cannot grow our memory

  for _, case in ipairs {
    { "pings", function(i) return frame(6, i, "") end },
    { "requests without a handler", function(i) return frame(2, i, "\64") end },
  } do
    it("[15] a peer flooding " .. case[1] .. " and never reading: the backlog stays bounded", function()
      local parts = {}
      for i = 1, 100000 do parts[i] = case[2](i) end
      local c = raw_peer(table.concat(parts), nil, 20, "0.5")
      local max_queued, dropped = 0, 0
      local sampler = tether.every(5, function()
        local q = c:stats().queued_bytes
        if q > max_queued then max_queued = q end
      end)
      c:on("disconnect", function()
        dropped = c:stats().auto_dropped
        sampler:stop()
      end)
      c:on("error", function() end)
      H.run(60)
      assert.is_true(dropped > 0, "nothing was dropped")
      assert.is_true(max_queued <= (1 << 20) + 4096, "queued " .. max_queued)
    end)
  end

  ---------------------------------------------------------------------------
  -- [16] nothing a peer sends raises out of run()

  it("[16] malformed runner reports and requests without an id are errors, never raises", function()
    local core = tether.core
    local cases = {
      { frame(5, 0, core.encode({ type = "error", code = {} })), "ERR_IPC_PROTOCOL", "code is" },
      { frame(5, 0, core.encode({ type = "error", code = true })), "ERR_IPC_PROTOCOL", "code is" },
      { frame(5, 0, core.encode({ type = "error", code = "ERR_WORKER_INIT", message = { 1 } })),
        "ERR_WORKER_INIT", "table" },
      { frame(2, 0, core.encode("no id")), "ERR_IPC_PROTOCOL", "without an id" },
      { frame(3, 0, core.encode("no id")), "ERR_IPC_PROTOCOL", "without an id" },
    }
    for _, case in ipairs(cases) do
      local c = raw_peer(case[1])
      c:on("error", H.expect(function(e)
        assert.equals(case[2], e.code)
        assert.matches(case[3], e.message, 1, true)
      end))
      c:handle(function() return 1 end)
      c:on("disconnect", function() c:kill("SIGKILL") end)
    end
    H.run(10 * H.scale) -- (each peer ends a second after its frame)
  end)

  it("[16] a worker whose main chunk raises an odd error object: ERR_WORKER_INIT with a printable message", function()
    local script = H.script([[error({ message = { 1 } })]])
    local c = assert(tether.fork(script, nil, { stdio = { stderr = "ignore" } }))
    c:on("error", H.expect(function(e)
      assert.equals("ERR_WORKER_INIT", e.code)
      assert.is_string(e.message)
    end))
    local sup = assert(tether.supervise { script = script, restart = "never", stderr = "ignore" })
    sup:on("error", H.expect(function(e)
      assert.equals("ERR_WORKER_INIT", e.code)
      assert.is_string(e.message)
    end))
    local pool = assert(tether.pool { script = script, size = 1, stderr = "ignore", max_restarts = 1 })
    pool:on("error", function(e) assert.is_string(e.message) end)
    tether.go(function()
      local r, err = pool:run(1)
      assert.is_nil(r)
      assert.equals("ERR_WORKER_INIT", err.code)
    end)
    H.run(30)
  end)

  ---------------------------------------------------------------------------
  -- [17] a pool worker's undecodable answer fails its task at once

  it("[17] an answer that does not decode fails the task with ERR_IPC_PROTOCOL and replaces the worker", function()
    local pool = assert(tether.pool { cmd = "sh", size = 1, timeout = 5000 * H.scale,
      args = { "-c", [[sleep 0.3; printf '\001\000\000\000\001\003\000\000\001\000\000\000\010' >&3; sleep 5]] } })
    local pool_errors, restarts = {}, 0
    pool:on("error", function(e) pool_errors[#pool_errors + 1] = e.code end)
    local took, got
    tether.go(function()
      local t0 = tether.hrtime()
      local r, err = pool:run(1)
      took = (tether.hrtime() - t0) / 1e6
      got = err
      tether.timer(200, function()
        restarts = pool:workers()[1].restarts
        pool:terminate()
      end)
    end)
    H.run(20)
    assert.equals("ERR_IPC_PROTOCOL", got.code)
    assert.is_true(took < 2000 * H.scale)
    assert.same({ "ERR_IPC_PROTOCOL" }, pool_errors)
    assert.is_true(restarts >= 1, "the worker was not replaced")
  end)

  ---------------------------------------------------------------------------
  -- [18] JSON mode: user messages shaped like envelopes, sizes as written

  local has_node = os.execute("command -v node >/dev/null 2>&1")
  it("[18] a Node user's own message shaped like an old envelope reaches 'message'", function()
    if not has_node then pending("node is not installed") return end
    local js = H.tmpfile("user18.js")
    local f = assert(io.open(js, "w"))
    f:write([[
      process.send({ tether_reply: 1, result: 'mine' });
      process.send({ tether_task: 2, task: 'mine too' });
      process.send({ tether_fault: 3, error: 'also mine' });
      process.send({ cmd: 'TETHER_REPLYX', id: 1, result: 'still mine' });
      process.disconnect();
    ]])
    f:close()
    local c = assert(tether.spawn("node", { js }, { serialization = "json" }))
    local got = {}
    c:on("message", function(m) got[#got + 1] = m end)
    H.run(20)
    assert.same({ { tether_reply = 1, result = "mine" }, { tether_task = 2, task = "mine too" },
      { tether_fault = 3, error = "also mine" }, { cmd = "TETHER_REPLYX", id = 1, result = "still mine" } }, got)
  end)

  it("[18] a JSON call over max_message once enveloped is refused at the sender; the channel lives", function()
    local c = assert(tether.spawn(H.LUA, { tether._internal.runner_path(), H.script([[
      require("tether").parent:handle(function(x) return #x end)]]) },
      { serialization = "json", max_message = 1000, env = lua_env() }))
    tether.go(function()
      local r, err = c:call(string.rep("x", 995), { timeout = 5000 })
      assert.is_nil(r)
      assert.equals("ERR_SERIALIZE", err.code)
      assert.matches("JSON line", err.message, 1, true)
      local ok, serr = c:send(string.rep("y", 999)) -- 1001 with its quotes
      assert.is_nil(ok)
      assert.equals("ERR_SERIALIZE", serr.code)
      assert.is_true(c.connected)
      assert.equals(900, c:call(string.rep("z", 900), { timeout = 5000 }))
      c:disconnect()
    end)
    c:on("error", H.expect(nil, 0))
    H.run(20)
  end)

  ---------------------------------------------------------------------------
  -- [19] stdin has backpressure

  it("[19] child.stdin:write reports backpressure and drains", function()
    -- the child reads nothing until we saw backpressure (a fixed sleep was
    -- too short for a parent under valgrind: cat drained as we wrote)
    local go = H.tmpfile("stdin19.go")
    os.remove(go)
    local c = assert(tether.spawn("sh", { "-c",
      ("while [ ! -e %s ]; do sleep 0.02; done; exec cat > /dev/null"):format(go) },
      { stdio = { stdin = "pipe" }, channel = false }))
    local chunk = string.rep("x", 65536)
    local written, first_false, drains = 0, nil, 0
    local TOTAL = 800 -- 50 MiB
    local function pump()
      while written < TOTAL do
        written = written + 1
        if not c.stdin:write(chunk) then
          if not first_false then
            first_false = written
            assert(io.open(go, "w")):close() -- now it may read
          end
          return
        end
      end
      if not first_false then assert(io.open(go, "w")):close() end -- (never stuck)
      c.stdin["end"](c.stdin)
    end
    c.stdin:on("drain", function()
      drains = drains + 1
      pump()
    end)
    pump()
    H.run(30 * H.scale)
    assert.equals(TOTAL, written)
    assert.is_true(first_false ~= nil and first_false <= 32, "no backpressure before " .. tostring(first_false))
    assert.is_true(drains > 0)
    assert.equals(0, c.exit_code)
  end)

  ---------------------------------------------------------------------------
  -- [20] logs never block the loop

  it("[20] a FIFO log without a reader blocks neither supervise() nor the loop", function()
    local fifo = H.tmpfile("log20.fifo")
    os.remove(fifo)
    assert(os.execute("mkfifo " .. fifo))
    local t0 = tether.hrtime()
    local sup = assert(tether.supervise { stdout = fifo, instances = 2, script = H.script([[
      local t = require "tether"
      t.parent:on("message", function() end)
      t.every(2, function() for i = 1, 20 do io.stdout:write(string.rep("l", 300), "\n") end io.stdout:flush() end)]]) })
    assert.is_true((tether.hrtime() - t0) / 1e6 < 1000, "supervise() blocked")
    local dropping, gap, last = nil, 0, tether.hrtime()
    sup:on("error", function(e) dropping = dropping or e end)
    local tick = tether.every(10, function()
      local now = tether.hrtime()
      gap = math.max(gap, (now - last) / 1e6)
      last = now
    end)
    tether.timer(1500, function()
      tick:stop()
      sup:stop()
    end)
    H.run(20)
    os.remove(fifo)
    assert.is_true(gap < 300 * H.scale, "the loop stalled " .. gap .. " ms")
    assert.is_not_nil(dropping)
    assert.matches("not being read", dropping.message, 1, true)
  end)

  ---------------------------------------------------------------------------
  -- [23] the parent's files do not leak into what it starts

  it("[23] files the parent opened are closed in the child; close_fds = false and pass_fds pass them", function()
    local path = H.tmpfile("open23.txt")
    local f = assert(io.open(path, "w"))
    local fd = H.fd_of(path)
    assert.is_not_nil(fd)
    local function fds_of_child(opts)
      opts.channel = false
      opts.stdio = { stdout = "pipe" }
      local c = assert(tether.spawn("sh", { "-c", "ls -l /proc/$$/fd" }, opts))
      local out = {}
      c.stdout:on("data", function(d) out[#out + 1] = d end)
      H.run()
      return table.concat(out)
    end
    assert.not_matches("open23", fds_of_child({}))
    assert.matches("open23", fds_of_child({ close_fds = false }))
    local passed = fds_of_child({ pass_fds = { fd } })
    assert.matches(" " .. fd .. " %-> " .. path:gsub("%p", "%%%0"), passed)
    f:close()
  end)

  ---------------------------------------------------------------------------
  -- [25] sup:restart in the "restart" handler cannot loop

  it("[25] restarting a worker from its own \"restart\" handler is refused, no loop", function()
    local sup = assert(tether.supervise { script = H.script([[
      local t = require "tether"
      t.parent:on("message", function() end)]]) })
    local refused, restarts = nil, 0
    sup:on("restart", function(w)
      restarts = restarts + 1
      local ok, err = sup:restart(w.id)
      refused = refused or (not ok and err.code)
    end)
    sup:once("start", function() assert.is_true(sup:restart(1)) end)
    tether.timer(1500, function() sup:stop() end)
    H.run(20)
    assert.equals("EBUSY", refused)
    assert.equals(1, restarts)
  end)
end)
