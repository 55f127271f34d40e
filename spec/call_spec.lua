local tether = require "tether"
local H = require "helper"

-- fork the call server and run `body(child)` in a tether coroutine once it
-- is ready; the child is disconnected after body returns
local function with_server(body, opts)
  local c = assert(tether.fork(H.fixture("server.lua"), nil, opts))
  local finished = false
  c:once("message", function()
    tether.go(function()
      body(c)
      finished = true
      if c.connected then c:disconnect() end
    end)
  end)
  H.run(30)
  assert.is_true(finished, "the test body did not finish")
  return c
end

describe("call", function()
  H.leak_guard(before_each, after_each)

  it("returns the reply inside a coroutine, and passes it to a callback outside", function()
    with_server(function(c)
      assert.equals(5, c:call({ op = "add", a = 2, b = 3 }))
      local got = tether.await(function(done)
        assert.is_true(c:call({ op = "echo", v = { x = 1 } }, nil, function(err, r) done(err, r) end))
      end)
      assert.is_nil(got)
    end)
  end)

  it("drops the answer for a task closed while it waited, and its timer, without an error", function()
    local c = assert(tether.fork(H.script([[
      local tether = require "tether"
      tether.serve(function(req) tether.sleep(req.ms) return req.ms end)
    ]])))
    local seen = {}
    local handler = function(err) seen[#seen + 1] = tostring(err) end
    tether.on("uncaught", handler)
    finally(function()
      tether.off("uncaught", handler)
      if c.connected then c:disconnect() end
      H.run_until(function() return c.exit_code ~= nil end, 10)
    end)
    local waited = tether.go(function() c:call({ ms = 100 }) error("resumed after close") end)
    local slept = tether.go(function() tether.sleep(50) error("resumed after close") end)
    assert.is_true(coroutine.close(waited))
    assert.is_true(coroutine.close(slept))
    local r
    tether.go(function() r = c:call({ ms = 200 }) end) -- (answered after the dropped one)
    H.run_until(function() return r ~= nil end, 10)
    assert.equals(200, r)
    assert.equals(2, c:stats().replies)
    assert.same({}, seen, "a closed task's wake-up was an error")
    -- a task that died of this very error still has it told
    tether.go(function()
      local dead = coroutine.create(function() end)
      coroutine.resume(dead)
      tether.sleep(10)
      assert(coroutine.resume(dead))
    end)
    H.run_until(function() return #seen > 0 end, 5)
    assert.matches("cannot resume dead coroutine", seen[1])
  end)

  it("gives a callback err == nil and the reply", function()
    local c = assert(tether.fork(H.fixture("server.lua")))
    c:once("message", function()
      c:call({ op = "add", a = 40, b = 2 }, function(err, r)
        assert.is_nil(err)
        assert.equals(42, r)
        c:disconnect()
      end)
    end)
    H.run()
  end)

  it("answers 10,000 concurrent calls, each with its own reply", function()
    with_server(function(c)
      local N, done, wrong = 10000, 0, 0
      local co = coroutine.running()
      for i = 1, N do
        c:call({ op = "sleep", ms = i % 7, v = i }, nil, function(err, r)
          if err or r ~= i then wrong = wrong + 1 end
          done = done + 1
          if done == N then tether._resume(co) end
        end)
      end
      coroutine.yield()
      assert.equals(0, wrong)
      local s = c:stats()
      assert.equals(N, s.calls)
      assert.equals(N, s.replies)
      assert.equals(0, s.calls_in_flight)
    end)
  end)

  it("times out with ERR_TIMEOUT, and drops the late reply (counted) instead of misdelivering it", function()
    with_server(function(c)
      local r, err = c:call({ op = "sleep", ms = 200, v = "late" }, { timeout = 30 })
      assert.is_nil(r)
      assert.equals("ERR_TIMEOUT", err.code)
      -- the next call gets its own reply, even while the late one arrives
      local r2 = c:call({ op = "sleep", ms = 300, v = "mine" }, { timeout = 2000 })
      assert.equals("mine", r2)
      local s = c:stats()
      assert.equals(1, s.late_replies)
      assert.equals(1, s.timeouts)
    end)
  end)

  it("ends every pending call once with ERR_IPC_CHANNEL_CLOSED when the channel closes", function()
    with_server(function(c)
      local errs, n = {}, 50
      local co = coroutine.running()
      for i = 1, n do
        c:call({ op = "sleep", ms = 1000, v = i }, { timeout = 5000 }, function(err, r)
          errs[#errs + 1] = err and err.code or ("reply " .. tostring(r))
          if #errs == n then tether._resume(co) end
        end)
      end
      tether.timer(20, function() c:kill("SIGKILL") end)
      coroutine.yield()
      tether.sleep(50) -- nothing more may arrive
      assert.equals(n, #errs)
      for _, e in ipairs(errs) do assert.equals("ERR_IPC_CHANNEL_CLOSED", e) end
    end)
  end)

  it("fails a call on a closed channel with ERR_IPC_CHANNEL_CLOSED", function()
    with_server(function(c)
      c:disconnect()
      local r, err = c:call("x")
      assert.is_nil(r)
      assert.equals("ERR_IPC_CHANNEL_CLOSED", err.code)
    end)
  end)

  it("gives ERR_TASK_FAILED with the message and traceback when the handler raises", function()
    with_server(function(c)
      local r, err = c:call({ op = "fail", msg = "no such user" })
      assert.is_nil(r)
      assert.equals("ERR_TASK_FAILED", err.code)
      assert.matches("no such user", err.message, 1, true)
      assert.matches("stack traceback", err.traceback, 1, true)
      local _, err2 = c:call({ op = "fail_obj" })
      assert.equals("ERR_TASK_FAILED", err2.code)
      assert.matches("ERR_QUEUE_FULL: busy", err2.message, 1, true)
      -- a plain table with only a code, or only a message, says it
      local _, e4 = c:call({ op = "fail_code" })
      assert.equals("ERR_TASK_FAILED", e4.code)
      assert.equals("E_ONLY_CODE", e4.message)
      local _, e5 = c:call({ op = "fail_msg" })
      assert.equals("only a message", e5.message)
      local _, err3 = c:call({ op = "bad_reply" })
      assert.equals("ERR_TASK_FAILED", err3.code)
      assert.matches("msg.f: function", err3.message, 1, true)
    end)
  end)

  it("gives ERR_NO_HANDLER when the peer has no handler", function()
    local c = assert(tether.fork(H.fixture("echo.lua")))
    c:once("message", function()
      tether.go(function()
        local r, err = c:call("anyone?")
        assert.is_nil(r)
        assert.equals("ERR_NO_HANDLER", err.code)
        c:disconnect()
      end)
    end)
    H.run()
  end)

  it("retries a timed-out call with backoff and succeeds on the 3rd try", function()
    with_server(function(c)
      assert.equals("reset", c:call({ op = "slow_first", reset = true, n = 2 }))
      local t0 = tether.now()
      local r, err = c:call({ op = "slow_first", ms = 300 },
        { timeout = 60, retries = 4, backoff = { initial = 20, factor = 2, max = 1000, jitter = 0 } })
      assert.is_nil(err)
      assert.equals("answered", r)
      local s = c:stats()
      assert.equals(2, s.retries)
      -- two timeouts (60 each) and two backoff delays (20, then 40)
      assert.is_true(tether.now() - t0 >= 60 + 20 + 60 + 40)
      tether.sleep(400) -- the two slow answers arrive late and are dropped
      assert.equals(2, c:stats().late_replies)
    end)
  end)

  it("gives up with ERR_TIMEOUT after retries + 1 attempts", function()
    with_server(function(c)
      local r, err = c:call({ op = "sleep", ms = 500 },
        { timeout = 20, retries = 2, backoff = { initial = 5, jitter = 0 } })
      assert.is_nil(r)
      assert.equals("ERR_TIMEOUT", err.code)
      assert.equals(2, c:stats().retries)
      assert.equals(1, c:stats().timeouts)
    end)
  end)

  it("rejects bad call options", function()
    with_server(function(c)
      assert.has_error(function() c:call("x", { retries = 2 }) end) -- no timeout
      assert.has_error(function() c:call("x", { timeout = 10, retries = 1, backoff = { factor = 0.5 } }) end)
      assert.has_error(function() c:call("x", { timeout = -1 }) end)
      assert.has_error(function() c:call("x", "notatable") end)
    end)
  end)

  it("lets a handler yield: many slow requests are served at once", function()
    with_server(function(c)
      local t0, n, done = tether.now(), 20, 0
      local co = coroutine.running()
      for i = 1, n do
        c:call({ op = "sleep", ms = 200, v = i }, nil, function(err, r)
          assert.is_nil(err)
          assert.equals(i, r)
          done = done + 1
          if done == n then tether._resume(co) end
        end)
      end
      coroutine.yield()
      assert.is_true(tether.now() - t0 < 200 * 5, "handlers did not run concurrently")
    end)
  end)

  it("works both ways: the child calls its parent while answering", function()
    with_server(function(c)
      c:handle(function(req) return "parent says " .. req.q end)
      assert.equals("parent says hi", c:call({ op = "call_back", q = "hi" }))
    end)
  end)
end)

describe("coroutines", function()
  H.leak_guard(before_each, after_each)

  it("runs go() at once until it suspends, and sleep suspends only the coroutine", function()
    local order = {}
    tether.go(function()
      order[#order + 1] = "a1"
      tether.sleep(20)
      order[#order + 1] = "a2"
    end)
    tether.go(function()
      order[#order + 1] = "b1"
      tether.sleep(5)
      order[#order + 1] = "b2"
    end)
    order[#order + 1] = "main"
    H.run()
    assert.same({ "a1", "b1", "main", "b2", "a2" }, order)
  end)

  it("gives ERR_NO_COROUTINE outside a tether coroutine", function()
    local r, err = tether.sleep(1)
    assert.is_nil(r)
    assert.equals("ERR_NO_COROUTINE", err.code)
    local c = coroutine.wrap(function() return tether.sleep(1) end)
    local _, err2 = c() -- a coroutine of our own is not a tether one
    assert.equals("ERR_NO_COROUTINE", err2.code)
    local _, err3 = tether.await(function() end)
    assert.equals("ERR_NO_COROUTINE", err3.code)
    local child = assert(tether.fork(H.fixture("server.lua")))
    child:once("message", function()
      local _, err4 = child:call("x")
      assert.equals("ERR_NO_COROUTINE", err4.code)
      child:disconnect()
    end)
    H.run()
  end)

  it("sends an error raised in a coroutine to the uncaught handler", function()
    local seen
    local handler = function(err, tb) seen = { err = err, tb = tb } end
    tether.on("uncaught", handler)
    tether.go(function()
      tether.sleep(1)
      error("in a task")
    end)
    H.run()
    tether.off("uncaught", handler)
    assert.matches("in a task", seen.err)
    assert.matches("stack traceback", seen.tb)
  end)

  it("re-raises an error from a coroutine out of run() without a handler", function()
    tether.go(function()
      tether.sleep(1)
      error("task failed")
    end)
    local ok, err = pcall(tether.run)
    assert.is_false(ok)
    assert.matches("task failed", err)
    tether.run()
  end)

  it("raises at once when a coroutine fails before the loop runs", function()
    assert.has_error(function() tether.go(function() error("early") end) end)
  end)

  it("await returns what the callback got, also when it was called at once", function()
    tether.go(function()
      local a, b = tether.await(function(done) done(1, 2) end)
      assert.equals(1, a)
      assert.equals(2, b)
      local c, d = tether.await(function(done) tether.timer(1, function() done("x", nil) done("again") end) end)
      assert.equals("x", c)
      assert.is_nil(d)
    end)
    H.run()
  end)
end)
