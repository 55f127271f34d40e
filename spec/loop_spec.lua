local tether = require "tether"
local H = require "helper"

describe("loop", function()
  H.leak_guard(before_each, after_each)

  it("has a version string", function()
    assert.matches("^%d+%.%d+%.%d+$", tether.version)
  end)

  it("runs timers in order and stops repeating ones", function()
    local order = {}
    tether.timer(30, function() order[#order + 1] = 30 end)
    tether.timer(10, function() order[#order + 1] = 10 end)
    local n = 0
    local h
    h = tether.every(5, function()
      n = n + 1
      if n == 3 then h:stop() end
    end)
    H.run()
    assert.same({ 10, 30 }, order)
    assert.equals(3, n)
    assert.is_false(h:active())
  end)

  it("run() returns nothing; run('once') and run('nowait') whether work is left", function()
    assert.equals(0, select("#", tether.run()))
    tether.timer(20, function() end)
    -- the timer's last run: its handle still closes, but no work is left
    assert.is_false(tether.run("once"))
    assert.is_false(tether.run("nowait"))
    local n = 0
    local t = tether.every(5, function() n = n + 1 end)
    assert.is_true(tether.run("once"))
    assert.equals(1, n)
    t:stop()
    assert.is_false(tether.run("nowait"))
    assert.equals(0, select("#", tether.run()))
  end)

  it("lets a stopped timer never fire, and stop twice is harmless", function()
    local t = tether.timer(10, H.expect(nil, 0))
    t:stop()
    t:stop()
    H.run()
  end)

  it("reports loop time with now()", function()
    local t0 = tether.now()
    H.sleep(30)
    assert.is_true(tether.now() - t0 >= 25)
  end)

  it("delivers signals to on_signal handlers", function()
    local h
    h = tether.on_signal("SIGUSR1", H.expect(function(name)
      assert.equals("SIGUSR1", name)
      h:stop()
    end))
    tether.timer(5, function() os.execute("kill -USR1 " .. H.pid()) end)
    H.run()
    assert.has_error(function() tether.on_signal("SIGBOGUS", function() end) end)
  end)

  it("re-raises a callback error from run() with the callback's frames, once", function()
    local function inner() error("kaboom") end
    tether.timer(1, function() inner() end)
    local ok, err = pcall(tether.run)
    assert.is_false(ok)
    assert.matches("kaboom", err)
    assert.matches("\n\t[^\n]*in upvalue 'inner'", err)
    -- the frames from run() outwards are the catcher's to add (lua5.4's
    -- handler does): not in the message, so they are not printed twice
    assert.not_matches("stack traceback", err)
    tether.run() -- the loop is usable afterwards
  end)

  it("prints one traceback under lua5.4 for an error in a callback", function()
    local c = assert(tether.spawn(H.LUA, { H.script([[
      local tether = require "tether"
      local function deep() local t = nil; return t.x end
      tether.timer(1, function() deep() end)
      tether.run()]]) }, { env = { LUA_PATH = package.path, LUA_CPATH = package.cpath },
      channel = false, stdio = { stderr = "pipe" } }))
    local err = {}
    c.stderr:on("data", function(d) err[#err + 1] = d end)
    H.run()
    err = table.concat(err)
    assert.matches("attempt to index a nil value", err, 1, true)
    assert.matches("in upvalue 'deep'", err, 1, true)
    local _, n = err:gsub("stack traceback:", "")
    assert.equals(1, n)
    local _, m = err:gsub("in upvalue 'deep'", "")
    assert.equals(1, m)
  end)

  it("re-raises an error object as it was", function()
    local obj = tether.error("ERR_TIMEOUT", "too slow")
    tether.timer(1, function() error(obj) end)
    local ok, err = pcall(tether.run)
    assert.is_false(ok)
    assert.equals(obj, err)
  end)

  it("routes callback errors to tether.on('uncaught') and goes on", function()
    local seen = {}
    local handler = function(err, tb)
      seen[#seen + 1] = { err = err, tb = tb }
    end
    tether.on("uncaught", handler)
    tether.timer(1, function() error("first") end)
    tether.timer(2, function() error("second") end)
    local after = false
    tether.timer(5, function() after = true end)
    H.run()
    tether.off("uncaught", handler)
    assert.is_true(after)
    assert.equals(2, #seen)
    assert.matches("first", seen[1].err)
    assert.matches("stack traceback", seen[1].tb)
  end)

  it("builds error objects with code, message and __tostring", function()
    local e = tether.error("ERR_CLOSED", "pool closed")
    assert.equals("ERR_CLOSED", e.code)
    assert.equals("pool closed", e.message)
    assert.equals("ERR_CLOSED: pool closed", tostring(e))
    assert.is_true(tether.is_error(e, "ERR_CLOSED"))
  end)

  it("lists every contract error code", function()
    for _, code in ipairs {
      "ERR_IPC_CHANNEL_CLOSED", "ERR_IPC_DISCONNECTED", "ERR_IPC_PROTOCOL", "ERR_SERIALIZE",
      "ERR_TIMEOUT", "ERR_WORKER_INIT", "ERR_WORKER_CRASH", "ERR_WORKER_UNCAUGHT",
      "ERR_TASK_FAILED", "ERR_QUEUE_FULL", "ERR_CLOSED", "ERR_NO_CHANNEL", "ERR_NO_COROUTINE",
    } do
      assert.equals(code, tether.errors[code])
    end
  end)

  it("refuses to run the loop from inside a callback", function()
    tether.timer(1, function()
      assert.has_error(function() tether.core.run() end, "tether.run: the loop is already running")
    end)
    H.run()
  end)

  it("emits to listeners in order; once runs once; off removes one or all", function()
    local e = setmetatable({}, tether.Emitter)
    local seen = {}
    local a = function(x) seen[#seen + 1] = "a" .. x end
    local b = function(x) seen[#seen + 1] = "b" .. x end
    e:on("ev", a)
    e:once("ev", b)
    e:emit("ev", 1)
    e:emit("ev", 2)
    assert.same({ "a1", "b1", "a2" }, seen)
    e:once("ev", b)
    e:off("ev", b) -- removes the once-listener registered for b
    e:emit("ev", 3)
    assert.same({ "a1", "b1", "a2", "a3" }, seen)
    e:on("ev", b)
    e:off("ev")
    assert.equals(0, e:listener_count("ev"))
    assert.is_false(e:emit("ev", 4))
  end)

  it("lets a listener remove itself or add others while an event is emitted", function()
    local e = setmetatable({}, tether.Emitter)
    local calls = 0
    local function self_removing() calls = calls + 1; e:off("x", self_removing) end
    e:on("x", self_removing)
    e:on("x", function() e:on("x", function() calls = calls + 100 end) end)
    e:emit("x")
    assert.equals(1, calls) -- the listener added during emit waits for the next one
    e:emit("x")
    assert.equals(101, calls)
  end)

  it("writes an 'error' event nobody listens to on stderr", function()
    local c = assert(tether.spawn(H.LUA, { "-e", [[
      local t = require "tether"
      setmetatable({}, t.Emitter):emit("error", t.error("ERR_CLOSED", "nobody listened"))
    ]] }, { stdio = { stderr = "pipe" }, channel = false,
            env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }))
    local err = ""
    c.stderr:on("data", function(d) err = err .. d end)
    H.run()
    assert.matches("unhandled 'error' event: ERR_CLOSED: nobody listened", err, 1, true)
  end)

  it("has no tether.parent in a process without a channel", function()
    assert.is_nil(tether.parent)
  end)
end)
