local tether = require "tether"
local H = require "helper"

local function echo_child(opts)
  local c = assert(tether.fork(H.fixture("echo.lua"), nil, opts))
  return c
end

describe("channel", function()
  H.leak_guard(before_each, after_each)

  it("round-trips values of every kind, in order", function()
    local c = echo_child()
    local values = {
      1, -1, math.maxinteger, math.mininteger, 0.5, -0.0, 1 / 0, "", "a\0b", true, false,
      { 1, 2, 3, x = { y = { z = "deep" } } }, string.rep("z", 100000),
    }
    local i = 0
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        for _, v in ipairs(values) do assert.is_true(c:send(v)) end
        return
      end
      i = i + 1
      assert.same(values[i], m)
      assert.equals(math.type(values[i]), math.type(m))
      if i == #values then c:disconnect() end
    end)
    H.run()
    assert.equals(#values, i)
  end)

  it("carries messages of 1 MiB and 16 MiB intact", function()
    local c = echo_child()
    local big = {}
    for k = 1, 1024 do big[k] = string.char(k % 256) end
    local mib = string.rep(table.concat(big), 1024)
    local sizes, n = { mib, string.rep(mib, 16) }, 0
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        for _, s in ipairs(sizes) do c:send(s) end
        return
      end
      n = n + 1
      assert.equals(#sizes[n], #m)
      assert.is_true(m == sizes[n])
      if n == #sizes then c:disconnect() end
    end)
    H.run(30)
    assert.equals(2, n)
  end)

  it("keeps 20,000 small messages in order and counts them in stats", function()
    local c = echo_child()
    local N, got = 20000, 0
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        for k = 1, N do c:send(k) end
        return
      end
      got = got + 1
      assert.equals(got, m)
      if got == N then c:disconnect() end
    end)
    H.run(30)
    local s = c:stats()
    assert.equals(N, s.messages_sent)
    assert.equals(N + 1, s.messages_received)
    assert.is_true(s.bytes_sent > N * 12)
    assert.is_true(s.bytes_received > N * 12)
    assert.equals(0, s.queued_bytes)
  end)

  it("coalesces the frames queued in one loop iteration into few writes", function()
    local c = echo_child()
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        local before = c:stats().writes
        for k = 1, 1000 do c:send(k) end
        c:send("done", function()
          local writes = c:stats().writes - before
          -- 1001 frames of ~14 bytes fit in one 64 KiB chunk: one sendmsg
          assert.is_true(writes >= 1 and writes <= 2, "writes: " .. writes)
          c:disconnect()
        end)
      end
    end)
    H.run()
  end)

  it("turns EPIPE into a disconnect (no SIGPIPE) when the peer closed its end", function()
    -- the child closes the channel at once and lingers; we block in a
    -- callback meanwhile, so the write meets the closed socket before the
    -- loop has seen the EOF
    local c = assert(tether.spawn("sh", { "-c", "exec 3>&-; sleep 1" }))
    c:on("disconnect", H.expect())
    c:on("spawn", function()
      os.execute("sleep 0.4")
      c:send(string.rep("p", 100000), H.expect(function(err)
        assert.equals("ERR_IPC_CHANNEL_CLOSED", err.code)
      end))
    end)
    c:on("exit", H.expect(function(code) assert.equals(0, code) end))
    H.run()
  end)

  it("reports a peer that exits with our data unread as a disconnect, not an error", function()
    for _ = 1, 5 do
      local c = assert(tether.spawn("sh", { "-c", "sleep 0.1" })) -- holds fd 3, never reads
      c:send(string.rep("u", 100000))
      c:on("error", H.expect(nil, 0))
      c:on("disconnect", H.expect())
      H.run()
    end
  end)

  it("returns false above the high-water mark and emits drain when the backlog empties", function()
    local c = echo_child({ high_water = 64 * 1024 })
    local saw_false, drained = false, 0
    c:on("drain", function() drained = drained + 1 end)
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        local s = string.rep("q", 1000)
        for _ = 1, 200 do
          if c:send(s) == false then saw_false = true end
        end
        assert.is_true(saw_false)
        assert.is_true(c:stats().queued_bytes > 64 * 1024)
        c:on("drain", function()
          assert.equals(0, c:stats().queued_bytes)
          c:disconnect()
        end)
      end
    end)
    H.run()
    assert.equals(1, drained)
  end)

  it("runs a send callback once, after the message was handed to the kernel", function()
    local c = echo_child()
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        c:send("x", H.expect(function(err)
          assert.is_nil(err)
          c:disconnect()
        end))
      end
    end)
    H.run()
  end)

  it("gives ERR_IPC_CHANNEL_CLOSED to the callback, else to 'error', when sending on a closed channel", function()
    local c = echo_child()
    c:on("message", function(m)
      if type(m) == "table" and m.ready then c:disconnect() end
    end)
    c:on("error", H.expect(function(err)
      assert.equals("ERR_IPC_CHANNEL_CLOSED", err.code)
    end))
    c:on("close", function()
      assert.is_false(c:send("late", H.expect(function(err)
        assert.equals("ERR_IPC_CHANNEL_CLOSED", err.code)
      end)))
      assert.is_false(c:send("late"))
    end)
    H.run()
  end)

  it("returns nil, ERR_SERIALIZE at once for an unserializable value and sends nothing", function()
    local c = echo_child()
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        local ok, err = c:send({ items = { 1, 2, print } })
        assert.is_nil(ok)
        assert.equals("ERR_SERIALIZE", err.code)
        assert.equals("msg.items[3]: function", err.message)
        assert.equals(0, c:stats().queued_bytes)
        c:send("after")
      elseif m == "after" then
        c:disconnect()
      else
        error("unexpected message " .. tostring(m))
      end
    end)
    H.run()
    assert.equals(0, c:stats().messages_sent - 1)
  end)

  it("fails a second disconnect with ERR_IPC_DISCONNECTED and emits disconnect once", function()
    local c = echo_child()
    c:on("disconnect", H.expect())
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        assert.is_true(c:disconnect())
        assert.is_false(c.connected)
        local ok, err = c:disconnect()
        assert.is_nil(ok)
        assert.equals("ERR_IPC_DISCONNECTED", err.code)
      end
    end)
    H.run()
  end)

  it("delivers queued messages before a local disconnect closes the channel", function()
    local c = echo_child()
    local got = {}
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        c:send({ cmd = "burst", n = 3, size = 10 })
        return
      end
      got[#got + 1] = m.i
      if #got == 3 then c:disconnect() end
    end)
    H.run()
    assert.same({ 1, 2, 3 }, got)
  end)

  it("loses nothing when the child exits right after sending (4 MiB, 1000 messages)", function()
    for _, mode in ipairs { "end", "os_exit", "tether_exit", "timer_exit" } do
      local c = assert(tether.fork(H.fixture("sender.lua"), { 1000, 4096, mode }))
      local n = 0
      c:on("message", function(m)
        n = n + 1
        assert.equals(n, m.i)
        assert.equals(4096, #m.s)
      end)
      local code
      c:on("exit", function(cd) code = cd end)
      H.run(20)
      assert.equals(1000, n)
      assert.equals(({ ["end"] = 0, os_exit = 7, tether_exit = 8, timer_exit = 9 })[mode], code)
    end
  end)

  it("rejects a frame over max_message with ERR_IPC_PROTOCOL and keeps running", function()
    local c = assert(tether.fork(H.script([[
      local t = require "tether"
      -- the child's own limit is the parent's (passed down); raise it to send
      t.parent:send(string.rep("b", 2048))
    ]]), nil, { max_message = 1024, env = { TETHER_MAX_MESSAGE = "4096" } }))
    c:on("error", H.expect(function(err)
      assert.equals("ERR_IPC_PROTOCOL", err.code)
      assert.matches("max_message", err.message)
    end))
    c:on("message", H.expect(nil, 0))
    c:on("disconnect", H.expect())
    H.run()
  end)

  it("refuses to send over its own max_message with ERR_SERIALIZE", function()
    local c = echo_child({ max_message = 1024 })
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        local ok, err = c:send(string.rep("x", 2000))
        assert.is_nil(ok)
        assert.equals("ERR_SERIALIZE", err.code)
        assert.matches("exceeds max_message", err.message)
        c:disconnect()
      end
    end)
    H.run()
  end)

  local function raw_peer(bytes)
    -- a non-tether program writing raw bytes on the channel (fd 3)
    return assert(tether.spawn("sh", { "-c", "printf '" .. bytes .. "' >&3; sleep 0.2" }))
  end

  local bad = {
    { "garbage header", [[\001\002\003\004\005\006\007\010\011\012\013\014]], "version" },
    { "unknown kind", [[\001\000\000\000\001\011\000\000\000\000\000\000x]], "kind" },
    { "4 GiB length", [[\377\377\377\377\001\001\000\000\000\000\000\000]], "max_message" },
    { "payload that does not decode", [[\001\000\000\000\001\001\000\000\000\000\000\000\010]], "" },
    { "empty payload", [[\000\000\000\000\001\001\000\000\000\000\000\000]], "" },
    { "truncated frame then EOF", [[\010\000\000\000\001\001\000\000\000\000\000\000ab]], "truncated" },
  }
  for _, case in ipairs(bad) do
    it("closes only that channel with ERR_IPC_PROTOCOL on " .. case[1], function()
      local c = raw_peer(case[2])
      c:on("error", H.expect(function(err)
        assert.equals("ERR_IPC_PROTOCOL", err.code)
        assert.matches(case[3], err.message, 1, true)
      end))
      c:on("message", H.expect(nil, 0))
      c:on("disconnect", H.expect())
      local other = echo_child()
      other:on("message", function(m)
        if type(m) == "table" and m.ready then other:send("still here") return end
        assert.equals("still here", m)
        other:disconnect()
      end)
      H.run()
      assert.equals(0, other.exit_code)
    end)
  end

  it("still writes the answers to a peer's good frames when a later frame is bad", function()
    -- one read brings the message 5 and a garbage header: our answer (10)
    -- to the good one was queued before the error, and is written before
    -- the channel ends (the peer then reads it back)
    local out = H.tmpfile("answers.bin")
    os.remove(out)
    local c = assert(tether.spawn("sh", { "-c",
      [[printf '\001\000\000\000\001\001\000\000\000\000\000\000\105\001\002\003\004\005\006\007\010\011\012\013\014' >&3; cat <&3 > ]]
        .. out }))
    c:on("message", H.expect(function(m)
      assert.equals(5, m)
      assert.is_true(c:send(m * 2))
    end))
    c:on("error", H.expect(function(err) assert.equals("ERR_IPC_PROTOCOL", err.code) end))
    c:on("disconnect", H.expect())
    H.run()
    assert.equals(0, c.exit_code)
    local got = assert(io.open(out, "rb")):read("a")
    assert.equals(13, #got)
    assert.equals(0x4a, got:byte(13)) -- 10, as one byte
    os.remove(out)
  end)

  -- request frames (kind 2) with ids from `first`, each carrying `payload`
  local function requests(path, first, n, payload)
    local parts = {}
    for i = first, first + n - 1 do
      parts[#parts + 1] = string.pack("<I4BBI2I4", #payload, 1, 2, 0, i) .. payload
    end
    local f = assert(io.open(path, "wb"))
    f:write(table.concat(parts))
    f:close()
  end

  it("stops reading a peer that sends requests and never reads the answers (memory stays bounded)", function()
    local flood = H.tmpfile("flood.bin")
    -- 20 MB of 1 KiB requests: more than the kernel buffers of both ends hold
    requests(flood, 1, 20000, "\5\128\8" .. string.rep("x", 1024))
    local c = assert(tether.spawn("sh", { "-c", "cat " .. flood .. " >&3; sleep 30" }, { high_water = 65536 }))
    c:handle(function(req) return req end)
    local last, still = -1, 0
    H.run_until(function()
      local n = c:stats().messages_received
      if n == last then still = still + 1 else still, last = 0, n end
      return still >= 20 -- nothing more read for a while: held
    end, 20)
    local s = c:stats()
    assert.is_true(s.messages_received < 20000, "read everything: " .. s.messages_received)
    assert.is_true(s.queued_bytes <= 4 * 65536 + 2048, "queued " .. s.queued_bytes)
    c:kill("SIGKILL")
    c:on("error", function() end) -- (the answers it never read)
    H.run()
    os.remove(flood)
  end)

  it("refuses requests beyond 10,000 in progress with ERR_QUEUE_FULL, and says nothing of its own refusals", function()
    local flood = H.tmpfile("many.bin")
    requests(flood, 1, 10050, "\64") -- the integer 0
    local c = assert(tether.spawn("sh", { "-c", "cat " .. flood .. " >&3; sleep 0.5" }))
    -- each handler waits until every request came (no timing involved)
    local active, peak, waiting = 0, 0, {}
    c:handle(function()
      active = active + 1
      peak = math.max(peak, active)
      tether.await(function(done) waiting[#waiting + 1] = done end)
      active = active - 1
    end)
    c:on("error", function(e) error("an error event: " .. tostring(e)) end)
    H.run_until(function() return c:stats().messages_received >= 10050 end, 60 * H.scale)
    assert.equals(10000, peak)
    for _, done in ipairs(waiting) do done() end
    H.run(60 * H.scale)
    assert.equals(0, active)
    os.remove(flood)
  end)

  it("takes a peer's fault only with the codes a peer may send", function()
    local c = assert(tether.fork(H.script [[
      local t = require "tether"
      local h = t.parent._h
      h:set_listener(function(msg, id)
        h:answer(id, { code = msg, message = "from the peer", traceback = {} }, true)
      end, "request")
      t.parent:keep_alive(true)
    ]]))
    local got = {}
    tether.go(function()
      for _, code in ipairs { "ERR_TIMEOUT", "ERR_NO_HANDLER", "ERR_IPC_CHANNEL_CLOSED" } do
        local r, err = c:call(code, { timeout = 5000 })
        got[code] = { err.code, err.peer_code, type(err.traceback) }
      end
      c:kill()
    end)
    H.run()
    assert.same({ "ERR_TASK_FAILED", "ERR_TIMEOUT", "nil" }, got.ERR_TIMEOUT)
    assert.same({ "ERR_NO_HANDLER", nil, "nil" }, got.ERR_NO_HANDLER)
    assert.same({ "ERR_TASK_FAILED", "ERR_IPC_CHANNEL_CLOSED", "nil" }, got.ERR_IPC_CHANNEL_CLOSED)
  end)

  it("survives a peer killed with SIGKILL mid-stream", function()
    local c = echo_child()
    local n = 0
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        c:send({ cmd = "burst", n = 100000, size = 100 })
        return
      end
      n = n + 1
      if n == 10 then c:kill("SIGKILL") end
    end)
    c:on("disconnect", H.expect())
    c:on("exit", H.expect(function(_, sig) assert.equals("SIGKILL", sig) end))
    H.run()
    assert.is_true(n >= 10)
  end)
  it("gives a lone listener each message, and keeps emit's rules for once, off and two listeners", function()
    -- one "message" listener is called straight from the dispatcher (the
    -- hot path); anything else goes through emit: the same order and rules
    local c = echo_child()
    local seen = {}
    local function log(tag) return function(m) seen[#seen + 1] = tag .. m.i end end
    local second = log("b")
    c:on("message", function(m)
      if type(m) == "table" and m.ready then
        c:send({ cmd = "burst", n = 6, size = 1 })
        return
      end
      if m.i == 1 then c:once("message", log("once")) end -- for message 2 only
      if m.i == 3 then c:on("message", second) end        -- 4 and 5
      if m.i == 5 then c:off("message", second) end
      seen[#seen + 1] = "a" .. m.i
      if m.i == 6 then c:disconnect() end
    end)
    H.run()
    assert.same({ "a1", "a2", "once2", "a3", "a4", "b4", "a5", "b5", "a6" }, seen)
  end)

  it("refuses another class's object as self, without touching it", function()
    local c = echo_child()
    local send = getmetatable(c._h).__index.send
    -- a channel method given a table that wears its metatable, or a
    -- handle of another kind: an argument error, never a crash
    local fake = setmetatable({}, getmetatable(c._h))
    assert.has_error(function() send(fake, 1) end)
    local timer = tether.timer(1000, function() end)
    assert.has_error(function() send(timer, 1) end)
    timer:stop()
    assert.has_error(function() send(nil, 1) end)
    local errs = 0
    c:on("error", function() errs = errs + 1 end)
    c:on("message", function(m) if m.ready then c:disconnect() end end)
    H.run()
    assert.equals(0, errs)
  end)

  -- a child held to 80 MB of address space (`ulimit -v`, which sanitizers
  -- and valgrind cannot run under), its `stream` piped: the child, and a
  -- function that returns what it wrote there
  local function fork_80mb(src, stream)
    local c = assert(tether.fork(H.script(src), nil,
      { lua = H.limited_lua("ulimit -v 80000"), stdio = { [stream] = "pipe" } }))
    local out = {}
    c[stream]:on("data", function(d) out[#out + 1] = d end)
    return c, function() return table.concat(out) end
  end

  it("ends a channel whose message the receiver has no memory to decode, with ENOMEM", function()
    if H.scale > 1 then return pending("address-space limit: plain build only") end
    -- the message decodes to about 120 MB (2 million tables, 6 MB on the wire)
    local c, out = fork_80mb([[
      local tether = require "tether"
      tether.parent:on("message", function() os.exit(8) end)
      tether.parent:on("error", function(e)
        io.stdout:write(e.code, ": ", e.message, "\n")
        io.stdout:flush()
        os.exit(7)
      end)
      tether.parent:send("ready")
    ]], "stdout")
    c:on("message", function()
      local big = {}
      for i = 1, 2000000 do big[i] = {} end
      c:send(big)
    end)
    c:on("error", function() end) -- (our end sees the child go)
    local code
    c:on("close", function(cd) code = cd end)
    H.run_until(function() return code ~= nil end, 30)
    assert.equals(7, code)
    assert.matches("ENOMEM: out of memory decoding a message", out(), 1, true)
  end)

  it("reports a listener's out-of-memory error as the worker's uncaught error, not a crash", function()
    if H.scale > 1 then return pending("address-space limit: plain build only") end
    -- Lua runs no message handler for a memory error: the error is a bare
    -- string, which the core used to index as its {err, traceback} box
    local c, err = fork_80mb([[
      local tether = require "tether"
      tether.parent:on("message", function()
        local t = {}
        for i = 1, 1e9 do t[i] = i end
      end)
      tether.parent:send("ready")
    ]], "stderr")
    local failure
    c:on("error", function(e) failure = e end)
    c:on("message", function() c:send("go") end)
    local code, sig
    c:on("close", function(cd, sg) code, sig = cd, sg end)
    H.run_until(function() return code ~= nil or sig ~= nil end, 30)
    assert.is_nil(sig)
    assert.equals(1, code)
    assert.matches("not enough memory", err(), 1, true)
    assert.equals("ERR_WORKER_UNCAUGHT", failure and failure.code)
  end)
end)
