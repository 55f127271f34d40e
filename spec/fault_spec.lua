-- Fault injection: what the user sees when processes and the kernel
-- misbehave.  Each test is bounded in time.
local tether = require "tether"
local H = require "helper"

describe("faults", function()
  H.leak_guard(before_each, after_each)

  it("a peer killed in the middle of a frame: ERR_IPC_PROTOCOL (truncated), disconnect, exit by SIGKILL", function()
    -- a frame header promising 100 bytes, 3 of them, then SIGKILL
    local c = assert(tether.spawn("sh", { "-c",
      [[printf '\144\000\000\000\001\001\000\000\000\000\000\000abc' >&3; kill -9 $$]] }))
    c:on("error", H.expect(function(err)
      assert.equals("ERR_IPC_PROTOCOL", err.code)
      assert.matches("truncated", err.message)
    end))
    c:on("disconnect", H.expect())
    c:on("exit", H.expect(function(code, sig)
      assert.is_nil(code)
      assert.equals("SIGKILL", sig)
    end))
    H.run()
  end)

  it("a reader that stops reading: send reports backpressure and memory stays bounded", function()
    local c = assert(tether.fork(H.fixture("echo.lua"), nil, { high_water = 256 * 1024 }))
    local chunk = string.rep("m", 4096)
    local sent, got, max_queued, falses = 0, 0, 0, 0
    local N = 2000 -- 8 MiB in all
    local function pump()
      while sent < N do
        sent = sent + 1
        local ok = c:send({ i = sent, s = chunk })
        local q = c:stats().queued_bytes
        if q > max_queued then max_queued = q end
        if ok == false then
          falses = falses + 1
          return -- wait for "drain"
        end
      end
    end
    c:on("drain", pump)
    c:on("message", function(m)
      if m.ready then
        assert.is_true(c:kill("SIGSTOP"))  -- the reader stops
        pump()
        tether.timer(300, function() assert.is_true(c:kill("SIGCONT")) end)
        return
      end
      got = got + 1
      assert.equals(got, m.i)
      if got == N then c:disconnect() end
    end)
    H.run(30)
    assert.equals(N, got)
    assert.is_true(falses > 0, "send never reported backpressure")
    -- the backlog never grew past the mark by more than one message
    assert.is_true(max_queued <= 256 * 1024 + 4096 + 64, "queued " .. max_queued)
  end)

  it("500 children exiting at once: 500 exit events, no zombies, no fd left", function()
    local kids, exits, closes = {}, 0, 0
    for i = 1, 500 do
      kids[i] = assert(tether.spawn("sleep", { "0.3" }))
      kids[i]:on("exit", function(code) assert.equals(0, code); exits = exits + 1 end)
      kids[i]:on("close", function() closes = closes + 1 end)
    end
    H.run(120) -- slow under sanitizers: 500 execs of a sanitized sleep
    assert.equals(500, exits)
    assert.equals(500, closes)
    assert.same({}, H.zombies())
  end)

  it("spawning through a storm of SIGCHLD and SIGUSR1 loses no exit and no message", function()
    local usr1 = 0
    local h = tether.on_signal("SIGUSR1", function() usr1 = usr1 + 1 end)
    local storm = assert(tether.spawn("sh", { "-c",
      "i=0; while [ $i -lt 3000 ]; do kill -CHLD " .. H.pid() .. "; kill -USR1 " .. H.pid() ..
      " 2>/dev/null; i=$((i+1)); done" }, { channel = false }))
    local n, exits, msgs = 100, 0, 0
    for _ = 1, n do
      local c = assert(tether.fork(H.script([[require("tether").parent:send("hello")]])))
      c:on("message", function(m) assert.equals("hello", m); msgs = msgs + 1 end)
      c:on("exit", function(code) assert.equals(0, code); exits = exits + 1 end)
    end
    local storm_code
    storm:on("exit", function(code) storm_code = code; h:stop() end)
    H.run(60)
    assert.equals(0, storm_code) -- the storm really ran
    assert.equals(n, exits)
    assert.equals(n, msgs)
  end)
end)
