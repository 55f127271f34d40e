-- Handles: descriptors over channels (PROTOCOL.md "Handles", CONTRACT.md
-- "Handles").  A listening socket made by tether.listen goes to a forked
-- worker, which serves on it with luv; the sender's copy stays open; a
-- handle the receiver drops is closed; bad input gets clear errors.
local tether = require "tether"
local H = require "helper"

local has_luv = pcall(require, "luv")
local has_socket = pcall(require, "socket")

describe("handles", function()
  H.leak_guard(before_each, after_each)

  it("tether.listen makes listening sockets; their kind and address", function()
    local s = assert(tether.listen("tcp://127.0.0.1:0"))
    assert.equals("tcp-server", s.kind)
    local host, port = s:address()
    assert.equals("127.0.0.1", host)
    assert.is_true(port > 0)
    -- a second handle on a duplicate: same socket, its own descriptor
    local d = assert(tether.handle(s:fd()))
    assert.is_not.equals(s:fd(), d:fd())
    assert.equals(port, select(2, d:address()))
    d:close()
    assert.equals(port, select(2, s:address())) -- still open
    -- the port is taken
    local again, err = tether.listen("tcp://127.0.0.1:" .. port)
    assert.is_nil(again)
    assert.equals("EADDRINUSE", err.code)
    s:close()
    s:close() -- idempotent
    assert.is_nil(s.kind)
    local fd, e2 = s:fd()
    assert.is_nil(fd)
    assert.equals("ERR_CLOSED", e2.code)
    -- Unix paths
    local path = H.tmpfile("listen.sock")
    local u = assert(tether.listen("unix:" .. path))
    assert.equals("unix-server", u.kind)
    assert.equals(path, u:address())
    do
      local closing <close> = u
    end
    assert.is_nil(u.kind) -- closed by __close
    os.remove(path)
  end)

  it("refuses bad addresses and descriptors with clear errors", function()
    for _, a in ipairs { "127.0.0.1:80", "tcp://127.0.0.1", "tcp://::1:0", "http://x:1", "unix:" } do
      local h, err = tether.listen(a)
      assert.is_nil(h, a)
      assert.equals("EINVAL", err.code)
      assert.matches("bad address", err.message)
    end
    local h, err = tether.handle(987654)
    assert.is_nil(h)
    assert.equals("EBADF", err.code)
    assert.has_error(function() tether.handle("3") end)
    assert.has_error(function() tether.listen("tcp://127.0.0.1:0", { backlog = -1 }) end)
    assert.has_error(function() tether.listen("tcp://127.0.0.1:0", { nope = 1 }) end)
  end)

  it("a worker serves HTTP on a listening socket sent to it (luv)", function()
    if not has_luv then pending("luv is not installed") return end
    local uv = require "luv"
    local script = H.script [[
      local tether = require "tether"
      local uv = require "luv"
      tether.parent:on("message", function(m, h)
        assert(h and h.kind == "tcp-server", "no listening handle")
        local server = uv.new_tcp()
        assert(server:open(h:detach()))
        assert(server:listen(16, function()
          local c = uv.new_tcp()
          server:accept(c)
          c:read_start(function(err, data)
            if data and data:find("\r\n\r\n", 1, true) then
              local body = "hello " .. m.who
              c:write("HTTP/1.1 200 OK\r\nContent-Length: " .. #body ..
                      "\r\nConnection: close\r\n\r\n" .. body, function()
                c:close()
                server:close()
              end)
            end
          end)
        end))
        tether.parent:send({ listening = true })
        tether.parent:flush() -- out before we block in luv's loop
        uv.run() -- until the one request is served
        tether.parent:send({ served = true })
      end)
    ]]
    local s = assert(tether.listen("tcp://127.0.0.1:0"))
    local _, port = s:address()
    local c = assert(tether.fork(script))
    local reply, served, sent_err = nil, false, "no callback"
    assert.is_true(c:send({ who = "tether" }, s, function(err) sent_err = err end))
    c:on("message", function(m)
      if m.listening then
        -- the parent's copy is still open, yet the worker accepts: same
        -- socket; connect from here with luv (blocking until answered)
        local client = uv.new_tcp()
        local buf = {}
        client:connect("127.0.0.1", port, function(err)
          assert(not err, err)
          client:write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
          client:read_start(function(e, data)
            if data then buf[#buf + 1] = data else client:close() end
          end)
        end)
        uv.run()
        reply = table.concat(buf)
      elseif m.served then
        served = true
        c:disconnect()
      end
    end)
    H.run_until(function() return served end, 20)
    assert.is_nil(sent_err)
    assert.matches("hello tether$", reply)
    assert.equals("tcp-server", s.kind) -- the sender's copy stays open
    s:close()
    H.run_until(function() return c.exit_code ~= nil end, 10)
  end)

  it("a handle the receiver drops is closed for it", function()
    local c = assert(tether.fork(H.fixture("echo.lua")))
    local counts = {}
    c:on("message", function(m)
      if m.ready then
        c:send({ cmd = "fds" })
      elseif m.sockets then
        counts[#counts + 1] = m.sockets
        if #counts == 1 then
          local s = assert(tether.listen("tcp://127.0.0.1:0"))
          for _ = 1, 5 do c:send("take this", s) end
          s:close() -- ours; theirs travel as duplicates
          c:send({ cmd = "fds" })
        else
          c:disconnect()
        end
      end
    end)
    H.run_until(function() return c.exit_code ~= nil end, 20)
    assert.equals(2, #counts)
    assert.equals(counts[1], counts[2])
  end)

  it("sending a closed handle fails clearly; the callback comes third", function()
    local c = assert(tether.fork(H.fixture("echo.lua")))
    local done = false
    c:on("message", function(m)
      if not m.ready then return end
      local s = assert(tether.listen("tcp://127.0.0.1:0"))
      s:close()
      local ok, err = c:send("x", s)
      assert.is_nil(ok)
      assert.equals("ERR_CLOSED", err.code)
      assert.has_error(function() c:send("x", s, 42) end)
      c:disconnect()
      done = true
    end)
    H.run_until(function() return done and c.exit_code ~= nil end, 10)
  end)

  it("supervisors send handles to workers (queued before they run) and get them back", function()
    local script = H.script [[
      local tether = require "tether"
      tether.parent:on("message", function(m, h)
        local _, port = h:address()
        -- back to the supervisor, with the same socket
        tether.parent:send({ id = m.id, kind = h.kind, port = port }, h)
        h:close()
      end)
    ]]
    local s = assert(tether.listen("tcp://127.0.0.1:0"))
    local _, port = s:address()
    local sup = assert(tether.supervise { script = script, instances = 2, handle_signals = false })
    -- the workers are not running yet: the frames (and duplicates) wait
    for id = 1, 2 do assert.is_true(sup:send(id, { id = id }, s)) end
    local back, sent = {}, 0
    assert.is_true(sup:send(1, { id = 1 }, s, { timeout = 10000 }, function(err)
      assert.is_nil(err)
      sent = sent + 1
    end))
    sup:on("message", function(w, m, h)
      assert.equals(w.id, m.id)
      assert.equals("tcp-server", m.kind)
      assert.equals(port, m.port)
      assert.equals("tcp-server", h.kind)
      assert.equals(port, select(2, h:address()))
      h:close()
      back[#back + 1] = m.id
    end)
    H.run_until(function() return #back == 3 and sent == 1 end, 20)
    s:close()
    local stopped = false
    sup:stop(function() stopped = true end)
    H.run_until(function() return stopped and sup.closed end, 20)
  end)

  it("a listener that raises does not keep the handle", function()
    local script = H.script [[
      local tether = require "tether"
      tether.parent:on("message", function(m, h)
        tether.parent:send("back", h) -- the same socket, back to the parent
        h:close()
      end)
    ]]
    local c = assert(tether.fork(script))
    local s = assert(tether.listen("tcp://127.0.0.1:0"))
    c:send("there", s)
    s:close()
    local received
    c:on("message", function(m, h)
      received = h
      error("listener failed")
    end)
    local ok, err = pcall(tether.run) -- (raises the listener's error)
    assert.is_false(ok)
    assert.matches("listener failed", tostring(err))
    assert.is_nil(received.kind) -- closed as the error went on
    c:disconnect()
    H.run_until(function() return c.exit_code ~= nil end, 10)
  end)

  it("a handle that arrives with no message listener is closed at once", function()
    local out = H.tmpfile("no-listener.out")
    local script = H.script([[
      collectgarbage("stop") -- so only tether can have closed them
      local tether = require "tether"
      local lfs = require "lfs"
      tether.parent:keep_alive(true) -- no "message" listener at all
      tether.timer(500, function()
        local sockets = 0
        for name in lfs.dir("/proc/self/fd") do
          local a = tonumber(name) and lfs.symlinkattributes("/proc/self/fd/" .. name)
          if a and a.target and a.target:match("^socket:") then sockets = sockets + 1 end
        end
        local f = assert(io.open(]] .. ("%q"):format(out) .. [[, "w"))
        f:write(sockets)
        f:close()
        tether.exit(0)
      end)
    ]])
    local c = assert(tether.fork(script))
    local s = assert(tether.listen("tcp://127.0.0.1:0"))
    for _ = 1, 5 do c:send("unwanted", s) end
    s:close()
    H.run_until(function() return c.exit_code ~= nil end, 10)
    local f = assert(io.open(out))
    local sockets = tonumber(f:read("a"))
    f:close()
    os.remove(out)
    assert.equals(1, sockets) -- the channel only
  end)

  it("a worker serves on a passed listening socket with LuaSocket (setfd)", function()
    if not has_socket then pending("LuaSocket is not installed") return end
    local socket = require "socket"
    local script = H.script [[
      local tether = require "tether"
      local socket = require "socket"
      tether.parent:on("message", function(m, h)
        local server = socket.tcp() -- (no descriptor of its own yet)
        server:setfd(h:detach())
        assert(server:listen(16)) -- already listening: a LuaSocket server now
        tether.parent:send("ready")
        tether.parent:flush()
        local c = assert(server:accept())
        c:send("hi from luasocket\n")
        c:close()
        server:close()
        tether.parent:send("served")
      end)
    ]]
    local s = assert(tether.listen("tcp://127.0.0.1:0"))
    local _, port = s:address()
    local c = assert(tether.fork(script))
    c:send("take it", s)
    s:close()
    local line
    c:on("message", function(m)
      if m == "ready" then
        local client = assert(socket.connect("127.0.0.1", port))
        line = client:receive("*l")
        client:close()
      elseif m == "served" then
        c:disconnect()
      end
    end)
    H.run_until(function() return c.exit_code ~= nil end, 15)
    assert.equals("hi from luasocket", line)
  end)

  it("a descriptor on a control frame that nobody takes is closed at once (not left to the GC)", function()
    local c = assert(tether.fork(H.script [[
      local tether = require "tether"
      local s = assert(tether.listen("tcp://127.0.0.1:0"))
      for i = 1, 50 do tether.parent._h:send({ type = "x", i = i }, nil, tether._KIND_CONTROL, 0, s) end
      s:close()
      tether.parent:send("sent")
    ]]))
    collectgarbage("stop") -- what a __gc would close must already be closed
    local before = 0
    for _ in pairs(H.fds()) do before = before + 1 end
    local sent = false
    c:on("message", function(m) sent = m == "sent" end)
    H.run_until(function() return sent and c.exit_code ~= nil end, 10)
    local after = 0
    for _ in pairs(H.fds()) do after = after + 1 end
    collectgarbage("restart")
    assert.is_true(after <= before, ("%d descriptors more after 50 control frames"):format(after - before))
  end)
end)
