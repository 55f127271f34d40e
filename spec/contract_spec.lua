-- Contract details: exit paths, keep-alive, nothing lost silently, errors
-- carrying tracebacks, argument handling.
local tether = require "tether"
local H = require "helper"

local function lua_env()
  return { LUA_PATH = package.path, LUA_CPATH = package.cpath }
end

describe("contract details", function()
  H.leak_guard(before_each, after_each)

  it("tether.exit inside a request handler ends the worker", function()
    local c = assert(tether.fork(H.fixture("server.lua")))
    c:once("message", function()
      tether.go(function()
        local r, err = c:call({ op = "exit" }, { timeout = 5000 })
        assert.is_nil(r)
        assert.equals("ERR_IPC_CHANNEL_CLOSED", err.code)
      end)
    end)
    c:on("exit", H.expect(function(code) assert.equals(0, code) end))
    H.run()
  end)

  it("a worker waiting for its own call to the parent stays alive for the reply", function()
    local c = assert(tether.fork(H.script([[
      local t = require "tether"
      t.go(function()
        local r = t.parent:call({ q = 1 })
        t.parent:send({ got = r })
      end)
    ]])))
    c:handle(function(req)
      tether.sleep(150)
      return req.q + 41
    end)
    c:on("message", H.expect(function(m) assert.equals(42, m.got) end))
    c:on("exit", H.expect(function(code) assert.equals(0, code) end))
    H.run()
  end)

  it("reports queued messages that could not be delivered instead of dropping them silently", function()
    -- holds the channel open, never reads, then exits
    local c = assert(tether.spawn("sh", { "-c", "sleep 0.3" }))
    local big = string.rep("z", 1 << 20)
    for _ = 1, 40 do c:send(big) end
    c:on("error", H.expect(function(err)
      assert.equals("ERR_IPC_CHANNEL_CLOSED", err.code)
      assert.matches("queued messages were not delivered", err.message, 1, true)
    end))
    H.run()
    assert.is_true(c:stats().messages_sent < 40) -- counted when written, not when queued
  end)

  for _, ending in ipairs { "os.exit(0)", "-- (end of script without tether.run)" } do
    it("a spawned Lua script delivers what it sent before " .. ending, function()
      local c = assert(tether.spawn(H.LUA, { H.script([[
        local t = require "tether"
        local big = string.rep("s", 1 << 20)
        for i = 1, 20 do t.parent:send({ i = i, big = big }) end
        ]] .. ending) }, { env = lua_env() }))
      local n = 0
      c:on("message", function(m)
        n = n + 1
        assert.equals(n, m.i)
      end)
      c:on("error", H.expect(nil, 0))
      H.run(20)
      assert.equals(20, n)
      assert.equals(0, c.exit_code)
    end)
  end

  it("a parent that only disconnects lets the worker finish its work", function()
    local c = assert(tether.fork(H.script([[
      local t = require "tether"
      t.parent:on("message", function() end)
      t.timer(300, function() io.stdout:write("finished\n") end)
    ]]), nil, { stdio = { stdout = "pipe" } }))
    local out = ""
    c.stdout:on("data", function(d) out = out .. d end)
    c:on("spawn", function() tether.timer(50, function() c:disconnect() end) end)
    H.run()
    assert.equals("finished\n", out)
    assert.equals(0, c.exit_code)
  end)

  it("an error object raised in a callback keeps its identity and gains a traceback", function()
    local obj = tether.error("ERR_CLOSED", "from a timer")
    tether.timer(1, function() error(obj) end)
    local ok, err = pcall(tether.run)
    assert.is_false(ok)
    assert.equals(obj, err)
    assert.matches("stack traceback", err.traceback)
  end)

  it("stats() has every field even without a channel", function()
    local c = assert(tether.spawn("true", {}, { channel = false }))
    local s = c:stats()
    for _, k in ipairs { "messages_sent", "messages_received", "bytes_sent", "bytes_received", "queued_bytes" } do
      assert.equals(0, s[k])
    end
    H.run()
  end)

  it("accepts fractional delays and rejects bad ones", function()
    local fired = 0
    tether.timer(1.5, function() fired = fired + 1 end)
    local h
    h = tether.every(2.5, function() fired = fired + 1; h:stop() end)
    H.run()
    assert.equals(2, fired)
    assert.has_error(function() tether.timer(-1, function() end) end)
    assert.has_error(function() tether.every(0, function() end) end)
  end)

  it("gives a forked script the interpreter in arg[-1], as lua5.4 does", function()
    local c = assert(tether.fork(H.script([[
      require("tether").parent:send({ interp = arg[-1], script = arg[0] })
    ]])))
    c:on("message", H.expect(function(m)
      assert.matches("lua", m.interp)
      assert.matches("%.lua$", m.script)
      assert.is_nil(m.interp:match("runner"))
    end))
    H.run()
  end)

  it("calls every uncaught handler", function()
    local seen = {}
    local a = function() seen[#seen + 1] = "a" end
    local b = function() seen[#seen + 1] = "b" end
    tether.on("uncaught", a)
    tether.on("uncaught", b)
    tether.timer(1, function() error("x") end)
    H.run()
    tether.off("uncaught", a)
    tether.off("uncaught", b)
    assert.same({ "a", "b" }, seen)
  end)

  it("rejects args that are not strings or numbers", function()
    assert.has_error(function() tether.spawn("true", { {} }) end)
    assert.has_error(function() tether.fork("x.lua", { true }) end)
    assert.has_error(function() tether.fork("x.lua", {}, { env = "x" }) end)
  end)
end)
