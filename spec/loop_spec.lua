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

  it("re-raises a callback error from run() with a traceback", function()
    tether.timer(1, function() error("kaboom") end)
    local ok, err = pcall(tether.run)
    assert.is_false(ok)
    assert.matches("kaboom", err)
    assert.matches("stack traceback", err)
    tether.run() -- the loop is usable afterwards
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

  it("has no tether.parent in a process without a channel", function()
    assert.is_nil(tether.parent)
  end)
end)
