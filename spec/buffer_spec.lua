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

  it("refuses what cannot travel: the same one twice, 17, a closed one, a Node peer", function()
    local c = assert(tether.fork(H.script(ECHO)))
    local a = tether.buffer(3)
    local ok, err = c:send({ a, a })
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", err.code)
    assert.matches("the same tether.buffer twice", err.message)
    assert.is_false(a:frozen(), "a refused message froze it")
    local many = {}
    for i = 1, 17 do many[i] = tether.buffer(1) end
    ok, err = c:send(many)
    assert.is_nil(ok)
    assert.matches("at most 16 tether.buffers", err.message)
    -- 16 and a handle are 17 descriptors for one frame
    local h = assert(tether.listen("tcp://127.0.0.1:0"))
    ok, err = c:send({ table.unpack(many, 1, 16) }, h)
    assert.is_nil(ok)
    assert.matches("at most 16 descriptors", err.message)
    for i = 1, 17 do assert.is_false(many[i]:frozen()) many[i]:close() end
    h:close()
    local closed = tether.buffer(1)
    closed:close()
    ok, err = c:send({ data = closed })
    assert.is_nil(ok)
    assert.matches("closed", err.message)
    c:send({ op = "bye" })
    H.run_until(function() return c.exit_code ~= nil end, 10)
    -- a Node (JSON) peer has no such type
    local n = assert(tether.spawn("sh", { "-c", "cat <&3 >/dev/null" }, { serialization = "json" }))
    ok, err = n:send({ data = a })
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", err.code)
    assert.matches("cannot travel to a Node", err.message)
    ok, err = n:call({ data = a }, function() end)
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", err.code)
    n:disconnect()
    H.run_until(function() return n.exit_code ~= nil end, 10)
    assert.is_false(a:frozen())
    a:close()
  end)

  it("travels several to a message, each its own, with a handle beside them", function()
    local c = assert(tether.fork(H.script([[
      local tether = require "tether"
      tether.parent:on("message", function(m, handle)
        if m.op == "bye" then return tether.parent:disconnect() end
        local got = {}
        for i, b in ipairs(m.list) do got[i] = b:read() end
        tether.parent:send({ got = got, named = m.named:read(), handle = handle ~= nil,
          list = m.list, fresh = tether.buffer("fresh") })
        if handle then handle:close() end
      end)
    ]])))
    local before = memfds()
    local list = {}
    for i = 1, 15 do list[i] = tether.buffer("buffer " .. i) end
    local named <close> = tether.buffer("named")
    local h = assert(tether.listen("tcp://127.0.0.1:0"))
    assert.is_true(c:send({ list = { table.unpack(list, 1, 14) }, named = named }, h))
    h:close()
    local got
    c:on("message", function(m) got = m end)
    H.run_until(function() return got ~= nil end, 10)
    for i = 1, 14 do
      assert.equals("buffer " .. i, got.got[i])
      assert.equals("buffer " .. i, got.list[i]:read(), "came back in its place")
      assert.is_true(list[i]:frozen())
      got.list[i]:close()
    end
    assert.is_false(list[15]:frozen())
    assert.equals("named", got.named)
    assert.is_true(got.handle)
    assert.equals("fresh", got.fresh:read())
    got.fresh:close()
    for i = 1, 15 do list[i]:close() end
    c:send({ op = "bye" })
    H.run_until(function() return c.exit_code ~= nil end, 10)
    named:close()
    assert.equals(before, memfds())
  end)

  it("counts several toward max_message together, and a refused send leaves them unfrozen", function()
    local c = assert(tether.fork(H.script(ECHO), nil, { max_message = 1024 }))
    local a <close> = tether.buffer(600)
    local b <close> = tether.buffer(600)
    local ok, err = c:send({ a, b })
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", err.code)
    assert.matches("tether.buffers together of 1200 bytes exceeds max_message", err.message, 1, true)
    assert.is_false(a:frozen() or b:frozen())
    c:send({ op = "bye" })
    H.run_until(function() return c.exit_code ~= nil end, 10)
  end)

  local SERVE = [[
    local tether = require "tether"
    local asked = 0
    tether.serve(function(req)
      asked = asked + 1
      if req.op == "slow_once" and asked == 1 then tether.sleep(400) end
      if req.op == "two" then return { tether.buffer("one"), tether.buffer("two") } end
      if req.op == "fail" then error({ code = "E", message = "with a buffer", b = req.data }) end
      return { read = req.data:read(), asked = asked, back = req.data, fresh = tether.buffer("fresh " .. asked) }
    end)
  ]]

  it("travels in a call and in its reply: the same one back, and new ones", function()
    local c = assert(tether.fork(H.script(SERVE)))
    local before = memfds()
    local b = tether.buffer("asked with")
    local r, err
    assert.is_true(c:call({ data = b }, function(e, v) err, r = e, v end))
    assert.is_true(b:frozen())
    H.run_until(function() return r ~= nil or err ~= nil end, 10)
    assert.is_nil(err)
    assert.equals("asked with", r.read)
    assert.equals("asked with", r.back:read())
    assert.equals("fresh 1", r.fresh:read())
    r.back:close()
    r.fresh:close()
    local two
    c:call({ op = "two" }, function(e, v) err, two = e, v end)
    H.run_until(function() return two ~= nil or err ~= nil end, 10)
    assert.is_nil(err)
    assert.equals("one", two[1]:read())
    assert.equals("two", two[2]:read())
    two[1]:close()
    two[2]:close()
    -- a handler's error holding one: the caller learns of the error, not of a
    -- buffer it cannot get
    local failed
    c:call({ op = "fail", data = b }, function(e) failed = e end)
    H.run_until(function() return failed ~= nil end, 10)
    assert.equals("ERR_TASK_FAILED", failed.code)
    assert.matches("E: with a buffer", failed.message, 1, true)
    b:close()
    c:disconnect()
    H.run_until(function() return c.exit_code ~= nil end, 10)
    assert.equals(before, memfds())
  end)

  it("travels again with a call's re-send, after the first try timed out", function()
    local c = assert(tether.fork(H.script(SERVE)))
    local before = memfds()
    local r, err
    do
      local b <close> = tether.buffer("sent twice")
      assert.is_true(c:call({ op = "slow_once", data = b },
        { timeout = 150, retries = 2, backoff = { initial = 10 } },
        function(e, v) err, r = e, v end))
    end -- (closed by us: the call keeps its own copy for the re-send)
    H.run_until(function() return r ~= nil or err ~= nil end, 10)
    assert.is_nil(err)
    assert.equals("sent twice", r.read)
    assert.equals(2, r.asked)
    assert.equals(1, c:stats().retries)
    r.back:close()
    r.fresh:close()
    H.run_until(function() return c:stats().late_replies == 1 end, 10)
    c:disconnect()
    H.run_until(function() return c.exit_code ~= nil end, 10)
    collectgarbage() -- (the late reply's buffers were dropped)
    assert.equals(before, memfds())
  end)

  it("stays writable when a reply, a task or sup:send that holds it is refused", function()
    -- a reply over the caller's max_message: the handler's buffer is not frozen
    local c = assert(tether.fork(H.script([[
      local tether = require "tether"
      local keep = tether.buffer("kept")
      tether.serve(function(req)
        if req.op == "check" then return { frozen = keep:frozen() } end
        return { data = keep, pad = ("x"):rep(2000) }
      end)
    ]]), nil, { max_message = 1024 }))
    local e1, r2, e2
    c:call({ op = "big" }, function(e) e1 = e or false end)
    H.run_until(function() return e1 ~= nil end, 10)
    assert.equals("ERR_TASK_FAILED", e1.code)
    assert.matches("exceeds max_message", e1.message)
    c:call({ op = "check" }, function(e, v) e2, r2 = e, v end)
    H.run_until(function() return r2 ~= nil or e2 ~= nil end, 10)
    assert.is_false(r2.frozen, "a reply refused for its size froze the buffer")
    c:disconnect()
    H.run_until(function() return c.exit_code ~= nil end, 10)
    -- a task refused with ERR_QUEUE_FULL
    local pool = assert(tether.pool { script = H.script([[
      local tether = require "tether"
      tether.serve(function() tether.sleep(300) return 1 end)
    ]]), size = 1, max_queue = 1, prefetch = 0 })
    local b <close> = tether.buffer("x")
    local ok, err
    for i = 1, 5 do
      ok, err = pool:submit({ i = i }, function() end)
      if not ok then break end
    end
    assert.equals("ERR_QUEUE_FULL", err.code)
    ok, err = pool:submit({ data = b }, function() end)
    assert.is_nil(ok)
    assert.equals("ERR_QUEUE_FULL", err.code)
    assert.is_false(b:frozen(), "a refused task froze the buffer")
    local closed = false
    pool:terminate()
    pool:close(function() closed = true end)
    H.run_until(function() return closed end, 20)
    -- sup:send refused with ERR_QUEUE_FULL
    local sup = assert(tether.supervise { script = H.script([[
      local tether = require "tether"
      tether.parent:on("message", function() end)
      tether.sleep(200)
    ]]), instances = 1, queue_limit = 1 })
    repeat ok, err = sup:send(1, { "filler" }, function() end) until not ok
    assert.equals("ERR_QUEUE_FULL", err.code)
    ok, err = sup:send(1, { data = b }, function() end)
    assert.equals("ERR_QUEUE_FULL", err.code)
    assert.is_false(b:frozen(), "a refused sup:send froze the buffer")
    local stopped = false
    sup:stop(function() stopped = true end)
    H.run_until(function() return stopped end, 20)
  end)

  it("travels in a pool's task and result, and again when the task is re-run after a crash", function()
    local marker = H.tmpfile("crashed")
    os.remove(marker)
    local script = H.script(([[
      local tether = require "tether"
      tether.serve(function(task)
        if task.crash_once and not io.open(%q) then
          io.open(%q, "w"):close()
          os.exit(3)
        end
        return { up = tether.buffer(task.data:read():upper()), pid = tether.core.getpid() }
      end)
    ]]):format(marker, marker))
    local before = memfds()
    local pool = assert(tether.pool { script = script, size = 2, retries = 1 })
    local results, errs = {}, {}
    local b <close> = tether.buffer("a task's bytes")
    assert.is_true(pool:submit({ data = b }, function(e, v) errs[1], results[1] = e, v end))
    assert.is_true(pool:submit({ data = b, crash_once = true }, function(e, v) errs[2], results[2] = e, v end))
    H.run_until(function() return (results[1] or errs[1]) and (results[2] or errs[2]) end, 20)
    assert.is_nil(errs[1])
    assert.is_nil(errs[2])
    assert.equals("A TASK'S BYTES", results[1].up:read())
    assert.equals("A TASK'S BYTES", results[2].up:read(), "the re-run had the buffer")
    assert.is_truthy(io.open(marker), "a worker crashed")
    os.remove(marker)
    results[1].up:close()
    results[2].up:close()
    local closed = false
    pool:close(function() closed = true end)
    H.run_until(function() return closed end, 20)
    b:close()
    assert.equals(before, memfds())
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

  it("travels between a supervisor and its worker, both ways", function()
    local script = H.script([[
      local tether = require "tether"
      local b = tether.buffer("from worker " .. tostring(tether.core.getpid()))
      tether.parent:send({ kind = "buf", data = b })
      b:close()
      tether.parent:on("message", function(m)
        tether.parent:send({ kind = "echo", read = m.data:read(), data = m.data })
      end)
    ]])
    local sup = assert(tether.supervise { script = script, instances = 1, restart = "never",
      handle_signals = false })
    local got
    sup:on("message", function(id, m) if m.kind == "buf" then got = m end end)
    H.run_until(function() return got ~= nil end, 10)
    assert.matches("^from worker %d+$", got.data:read())
    assert.is_true(got.data:frozen())
    got.data:close()
    local echo
    sup:on("message", function(_, m) if m.kind == "echo" then echo = m end end)
    do
      local b <close> = tether.buffer("from the supervisor")
      assert.is_true(sup:send(1, { data = b }))
      assert.is_true(b:frozen())
    end
    H.run_until(function() return echo ~= nil end, 10)
    assert.equals("from the supervisor", echo.read)
    assert.equals("from the supervisor", echo.data:read())
    echo.data:close()
    local stopped = false
    sup:stop(function() stopped = true end)
    H.run_until(function() return stopped end, 10)
  end)

  -- a peer that is not tether sends a BUFFER tag with a descriptor of its
  -- choosing (build/fd_peer); with `reply`, as its answer to our call
  local function from_peer(mode, opts, reply)
    local c = assert(tether.spawn(ROOT .. "/build/fd_peer", { mode, reply and "reply" or nil }, opts))
    local got, err
    if reply then
      c:on("error", function() end) -- (the call's callback is told)
      assert.is_true(c:call({ op = "?" }, function(e, v) err, got = e, v end))
    else
      c:on("message", function(m) got = m end)
      c:on("error", function(e) err = e end)
    end
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

  it("takes two buffers, each with its descriptor, from any peer", function()
    local before = memfds()
    local got, err = from_peer("two")
    assert.is_nil(err)
    assert.equals("ok", got[1]:read(1, 2))
    assert.equals("ok", got[2]:read(1, 2))
    got[1]:close()
    got[2]:close()
    -- and refuses them when together they are over our max_message
    got, err = from_peer("two", { max_message = 6000 })
    assert.is_nil(got)
    assert.equals("ERR_IPC_PROTOCOL", err.code)
    assert.matches("larger than max_message together", err.message)
    collectgarbage()
    assert.equals(before, memfds())
  end)

  it("closes a descriptor no tag took, and refuses a frame with fewer than its header says", function()
    local before = memfds()
    local got, err = from_peer("extra")
    assert.is_nil(err)
    assert.equals("ok", got:read(1, 2))
    got:close()
    got, err = from_peer("fewer")
    assert.is_nil(got)
    assert.equals("ERR_IPC_PROTOCOL", err.code)
    assert.matches("fewer descriptors than its header says", err.message)
    collectgarbage()
    assert.equals(before, memfds())
  end)

  it("takes a buffer in a peer's reply, and refuses a reply's buffer without its descriptor", function()
    local before = memfds()
    local got, err = from_peer("good", nil, true)
    assert.is_nil(err)
    assert.equals("ok", got:read(1, 2))
    got:close()
    got, err = from_peer("none", nil, true)
    assert.is_nil(got)
    assert.equals("ERR_IPC_PROTOCOL", err.code)
    assert.matches("without its descriptor", err.message)
    got, err = from_peer("unsealed", nil, true)
    assert.is_nil(got)
    assert.matches("could still change", err.message)
    collectgarbage()
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
