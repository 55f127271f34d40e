-- tether.buffer: shared memory sent without copying its bytes
-- (core/tt_shmbuf.h, binding/buffer.c, the codec's BUFFER tag;
-- doc/zero-copy.md).
local tether = require "tether"
local H = require "helper"

local ROOT = H.dir .. "/.."

-- every memfd of ours, by descriptor
local function memfds()
  collectgarbage()
  local n = 0
  for _, target in pairs(H.fds()) do
    if target:find("memfd:", 1, true) then n = n + 1 end
  end
  return n
end

describe("tether.buffer", function()
  H.leak_guard(before_each, after_each)

  it("is zeroed shared memory, read and written with string.sub's positions", function()
    local b = tether.buffer(10)
    assert.equals(10, #b)
    assert.equals(("\0"):rep(10), b:read())
    assert.equals(b, b:write(1, "hello"))
    b:write(8, "xyz")
    assert.equals("hello\0\0xyz", b:read())
    assert.equals("ello", b:read(2, 5))
    assert.equals("xyz", b:read(-3))
    assert.equals("", b:read(6, 5))
    assert.equals("hello\0\0xyz", b:read(-100, 100))
    assert.matches("10 bytes", tostring(b))
    local s = tether.buffer("from a string")
    assert.equals("from a string", s:read())
    local z <close> = tether.buffer(0)
    assert.equals(0, #z)
    local e <close> = tether.buffer("")
    assert.equals("", e:read())
    b:close()
    s:close()
  end)

  it("refuses a write out of its bounds, whole, and bad sizes", function()
    local b = tether.buffer(4)
    assert.has_error(function() b:write(3, "abc") end)
    assert.has_error(function() b:write(0, "a") end)
    assert.has_error(function() b:write(6, "") end)
    assert.equals(("\0"):rep(4), b:read(), "nothing of a refused write was written")
    b:write(5, "") -- (the empty string fits at the end)
    assert.has_error(function() tether.buffer(-1) end)
    assert.has_error(function() tether.buffer((1 << 30) + 1) end)
    assert.has_error(function() tether.buffer({}) end)
    b:close()
  end)

  it("reads any positions without fault, math.mininteger and maxinteger included", function()
    local b <close> = tether.buffer("abcdef")
    assert.equals("", b:read(1, math.mininteger))
    assert.equals("abcdef", b:read(math.mininteger, math.maxinteger))
    assert.equals("", b:read(math.maxinteger))
    assert.equals("f", b:read(-1, -1))
    local z <close> = tether.buffer(0)
    assert.equals("", z:read(-1))
  end)

  it("leaves a stopped collector stopped", function()
    collectgarbage()
    collectgarbage("stop")
    local junk = {}
    for i = 1, 20000 do junk[i] = { i } end
    junk = nil
    local before = collectgarbage("count")
    local b = tether.buffer(8 << 20)
    b:close()
    local after = collectgarbage("count")
    collectgarbage("restart")
    assert.is_true(after >= before * 0.9, ("the collector ran: %.0f KiB -> %.0f KiB"):format(before, after))
  end)

  it("is frozen for good by freeze(), closed by close() and <close>", function()
    local b = tether.buffer("abc")
    assert.is_false(b:frozen())
    assert.equals(b, b:freeze())
    assert.is_true(b:frozen())
    assert.equals(b, b:freeze())
    local ok, err = pcall(b.write, b, 1, "x")
    assert.is_false(ok)
    assert.matches("frozen", err)
    assert.equals("abc", b:read())
    b:close()
    b:close()
    assert.matches("closed", tostring(b))
    assert.has_error(function() b:read() end)
    local before = memfds()
    do
      local c <close> = tether.buffer(100)
      assert.equals(before + 1, memfds())
    end
    assert.equals(before, memfds())
  end)

  local ECHO = [[
    local tether = require "tether"
    tether.parent:on("message", function(m)
      if m.op == "bye" then return tether.parent:disconnect() end
      local b = m.data
      tether.parent:send({ op = "got", len = #b, frozen = b:frozen(), head = b:read(1, 8),
        tail = b:read(-8), sum = #b > 0 and b:read():byte(#b // 2) or 0, data = b })
    end)
  ]]

  it("travels to a child and back without its bytes in the frame, frozen on both sides", function()
    local c = assert(tether.fork(H.script(ECHO)))
    local size = 8 << 20
    local b = tether.buffer(size)
    b:write(1, "the head")
    b:write(size // 2, "M")
    b:write(size - 7, "the tail")
    local before = c:stats().bytes_sent
    assert.is_true(c:send({ op = "echo", data = b }))
    assert.is_true(b:frozen(), "sending froze it")
    assert.has_error(function() b:write(1, "x") end)
    local got
    c:on("message", function(m) got = m end)
    H.run_until(function() return got ~= nil end, 10)
    assert.is_true(c:stats().bytes_sent - before < 100, "the bytes travelled in the frame")
    assert.equals(size, got.len)
    assert.is_true(got.frozen)
    assert.equals("the head", got.head)
    assert.equals("the tail", got.tail)
    assert.equals(("M"):byte(), got.sum)
    -- what came back is the same memory, read here without a copy in the frame
    assert.equals(size, #got.data)
    assert.equals("the head", got.data:read(1, 8))
    assert.is_true(got.data:frozen())
    c:send({ op = "bye" })
    H.run_until(function() return c.exit_code ~= nil end, 10)
    b:close()
    got.data:close()
  end)

  it("refuses what cannot travel: two buffers, a buffer and a handle, a closed one, a call, a Node peer", function()
    local c = assert(tether.fork(H.script(ECHO)))
    local a, b = tether.buffer(3), tether.buffer(4)
    local ok, err = c:send({ a, b })
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", err.code)
    assert.matches("at most one", err.message)
    assert.is_false(b:frozen() and a:frozen(), "a refused message froze both")
    ok, err = c:send({ a, a })
    assert.is_nil(ok)
    assert.matches("the same tether.buffer twice", err.message)
    local h = assert(tether.listen("tcp://127.0.0.1:0"))
    ok, err = c:send({ data = a }, h)
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", err.code)
    assert.matches("not both", err.message)
    h:close()
    local closed = tether.buffer(1)
    closed:close()
    ok, err = c:send({ data = closed })
    assert.is_nil(ok)
    assert.matches("closed", err.message)
    -- (a call's refusal is synchronous, as for any value that cannot be sent)
    ok, err = c:call({ data = a }, function() end)
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", err.code)
    assert.matches("only in a message", err.message)
    c:send({ op = "bye" })
    H.run_until(function() return c.exit_code ~= nil end, 10)
    -- a Node (JSON) peer has no such type
    local n = assert(tether.spawn("sh", { "-c", "cat <&3 >/dev/null" }, { serialization = "json" }))
    ok, err = n:send({ data = a })
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", err.code)
    assert.matches("cannot travel to a Node", err.message)
    n:disconnect()
    H.run_until(function() return n.exit_code ~= nil end, 10)
    a:close()
    b:close()
  end)

  it("counts toward max_message, and a refused send leaves it unfrozen", function()
    local c = assert(tether.fork(H.script(ECHO), nil, { max_message = 1024 }))
    local big <close> = tether.buffer(2048)
    local ok, err = c:send({ data = big })
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", err.code)
    assert.matches("exceeds max_message", err.message)
    assert.is_false(big:frozen())
    local small <close> = tether.buffer(16)
    ok, err = c:send({ data = small, pad = ("x"):rep(2000) })
    assert.is_nil(ok)
    assert.matches("exceeds max_message", err.message)
    assert.is_false(small:frozen(), "a send refused for its size froze the buffer")
    c:send({ op = "bye" })
    H.run_until(function() return c.exit_code ~= nil end, 10)
  end)

  it("does not pile up descriptors when small buffers are dropped", function()
    local script = H.script([[
      local tether = require "tether"
      local sent = 0
      local t
      t = tether.every(1, function()
        for _ = 1, 100 do
          local b <close> = tether.buffer(100)
          tether.parent:send({ b })
          sent = sent + 1
        end
        if sent >= 3000 then t:stop() tether.parent:send("done") end
      end)
    ]])
    local c = assert(tether.fork(script))
    local n, peak, done = 0, 0, false
    c:on("message", function(m)
      if m == "done" then done = true return end
      n = n + 1
      if n % 100 == 0 then
        local k = 0
        for _ in pairs(H.fds()) do k = k + 1 end
        if k > peak then peak = k end
      end
    end)
    H.run_until(function() return done end, 30)
    assert.equals(3000, n)
    assert.is_true(peak < 400, "descriptors held at once: " .. peak)
    c:disconnect()
    H.run_until(function() return c.exit_code ~= nil end, 10)
    collectgarbage() -- (the last ones dropped)
  end)

  it("sends a burst of buffers in one tick without a descriptor held per queued frame", function()
    -- a child limited to 200 descriptors sends 600 buffers in one loop
    -- tick: each frame's descriptor must go with its frame, not wait in a
    -- queue as a duplicate (EMFILE at the 190th or so)
    local wrapper = H.limited_lua("ulimit -n 200")
    local script = H.script([[
      local tether = require "tether"
      local failed
      for i = 1, 600 do
        local b <close> = tether.buffer(100)
        local ok, err = tether.parent:send({ i, b })
        if ok == nil then failed = tostring(err) break end
      end
      tether.parent:send({ failed = failed or false })
    ]])
    local c = assert(tether.fork(script, nil, { lua = wrapper }))
    local n, report = 0, nil
    c:on("message", function(m)
      if m.failed ~= nil then report = m else n = n + 1 end
    end)
    H.run_until(function() return report ~= nil end, 20)
    assert.is_false(report.failed)
    assert.equals(600, n)
    H.run_until(function() return c.exit_code ~= nil end, 10)
    collectgarbage()
  end)

  it("comes from a supervised worker's tether.parent:send to the supervisor", function()
    local script = H.script([[
      local tether = require "tether"
      local b = tether.buffer("from worker " .. tostring(tether.core.getpid()))
      tether.parent:send({ kind = "buf", data = b })
      b:close()
      tether.parent:on("message", function() end) -- (alive until stopped)
    ]])
    local sup = assert(tether.supervise { script = script, instances = 1, restart = "never",
      handle_signals = false })
    local got
    sup:on("message", function(id, m) if m.kind == "buf" then got = m end end)
    H.run_until(function() return got ~= nil end, 10)
    assert.matches("^from worker %d+$", got.data:read())
    assert.is_true(got.data:frozen())
    got.data:close()
    -- and a supervisor cannot send one to its worker (yet): refused, not lost
    local b <close> = tether.buffer(1)
    local ok, err = sup:send(1, { b })
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", err.code)
    local stopped = false
    sup:stop(function() stopped = true end)
    H.run_until(function() return stopped end, 10)
  end)

  -- a peer that is not tether sends a BUFFER tag with a descriptor of its
  -- choosing (build/fd_peer)
  local function from_peer(mode, opts)
    local c = assert(tether.spawn(ROOT .. "/build/fd_peer", { mode }, opts))
    local got, err
    c:on("message", function(m) got = m end)
    c:on("error", function(e) err = e end)
    H.run_until(function() return got ~= nil or err ~= nil end, 10)
    c:disconnect()
    H.run_until(function() return c.exit_code ~= nil end, 10)
    return got, err
  end

  it("takes a sealed memfd of the announced size from any peer", function()
    local before = memfds()
    local got, err = from_peer("good")
    assert.is_nil(err)
    assert.equals(4096, #got)
    assert.equals("ok", got:read(1, 2))
    assert.is_true(got:frozen())
    got:close()
    assert.equals(before, memfds())
  end)

  it("refuses a peer's buffer larger than our max_message", function()
    local before = memfds()
    local got, err = from_peer("good", { max_message = 1024 })
    assert.is_nil(got)
    assert.equals("ERR_IPC_PROTOCOL", err.code)
    assert.matches("larger than max_message", err.message)
    assert.equals(before, memfds())
  end)

  for _, case in ipairs {
    { "none", "without its descriptor" },
    { "pipe", "not a memfd" },
    { "unsealed", "could still change" },
    { "short", "another size" },
    { "twotags", "without its descriptor" },
  } do
    it("refuses a buffer " .. case[2] .. " (ERR_IPC_PROTOCOL), keeping no descriptor", function()
      local before = memfds()
      local got, err = from_peer(case[1])
      assert.is_nil(got)
      assert.equals("ERR_IPC_PROTOCOL", err.code)
      assert.matches(case[2], err.message, 1, true)
      collectgarbage()
      assert.equals(before, memfds())
    end)
  end
end)
