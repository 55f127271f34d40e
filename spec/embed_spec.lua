local tether = require "tether"
local H = require "helper"
local uv = require "luv"

-- Drives tether from luv's loop: a poll on tether.fd() for I/O, a luv
-- timer for tether.timeout(), and a prepare handle so work that luv's own
-- callbacks gave tether (a send, a call) is done before luv blocks.
-- Returns a stop function.
local function embed()
  local poll, timer, prepare = uv.new_poll(tether.fd()), uv.new_timer(), uv.new_prepare()
  local function pump()
    tether.run("nowait")
    timer:stop()
    local t = tether.timeout()
    if t >= 0 then timer:start(t, 0, pump) end
  end
  poll:start("r", pump)
  prepare:start(pump)
  pump()
  return function()
    for _, h in ipairs { poll, timer, prepare } do
      h:stop()
      h:close()
    end
  end
end

describe("loop embedding", function()
  H.leak_guard(before_each, after_each)

  it("runs tether children, messages and timers inside luv's loop", function()
    local stop = embed()
    local c = assert(tether.fork(H.fixture("echo.lua")))
    local got, timer_fired = {}, false
    tether.timer(30, function() timer_fired = true end)
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        c:send("one")
        c:send("two")
        return
      end
      got[#got + 1] = m
      if #got == 2 then c:disconnect() end
    end)
    c:on("close", function()
      if timer_fired then stop() else tether.timer(50, stop) end
    end)
    uv.run()
    assert.same({ "one", "two" }, got)
    assert.is_true(timer_fired)
    assert.equals(0, c.exit_code)
    tether.run() -- nothing left: returns at once
  end)

  it("shares the work with luv: a luv timer drives a tether child", function()
    local stop = embed()
    local c = assert(tether.fork(H.fixture("server.lua")))
    local ticks, answers = 0, 0
    local ticker = uv.new_timer()
    c:once("message", function()
      ticker:start(5, 5, function()
        ticks = ticks + 1
        c:call({ op = "add", a = ticks, b = 100 }, function(err, r)
          assert.is_nil(err)
          answers = answers + 1
          assert.is_true(r > 100)
          if answers == 10 then
            ticker:stop()
            ticker:close()
            c:disconnect()
          end
        end)
      end)
    end)
    c:on("close", function() stop() end)
    uv.run()
    assert.equals(10, answers)
    assert.is_true(ticks >= 10)
  end)
end)
