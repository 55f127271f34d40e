local tether = require "tether"
local H = require "helper"

describe("tether.fork", function()
  H.leak_guard(before_each, after_each)

  it("runs a Lua script with args and exchanges messages", function()
    local c = assert(tether.fork(H.fixture("echo.lua"), { "a", 2, "c d" }))
    assert.is_number(c.pid)
    assert.is_true(c.connected)
    local got = {}
    c:on("message", function(m)
      got[#got + 1] = m
      if m.ready then
        c:send({ n = 1, s = "hello" })
      else
        c:disconnect()
      end
    end)
    H.run()
    assert.same({ "a", "2", "c d" }, got[1].args)
    assert.equals(c.pid, got[1].pid)
    assert.same({ n = 1, s = "hello" }, got[2])
    assert.equals(0, c.exit_code)
    assert.is_nil(c.signal)
    assert.is_false(c.connected)
  end)

  it("emits spawn, disconnect, exit and close in order, each once", function()
    local c = assert(tether.fork(H.script([[require("tether").parent:send("hi")]])))
    local order = {}
    for _, ev in ipairs { "spawn", "message", "disconnect", "exit", "close" } do
      c:on(ev, H.expect(function(a, b)
        order[#order + 1] = ev
        if ev == "exit" or ev == "close" then
          assert.equals(0, a)
          assert.is_nil(b)
        end
      end, 1, ev))
    end
    H.run()
    assert.same({ "spawn", "message", "disconnect", "exit", "close" }, order)
  end)

  it("reports the exit code and the signal name", function()
    local c1 = assert(tether.fork(H.script("os.exit(3)")))
    local c2 = assert(tether.fork(H.script([[
      require("tether").parent:keep_alive(true)
      require("tether").every(1000, function() end)]])))
    c1:on("exit", H.expect(function(code, sig)
      assert.equals(3, code)
      assert.is_nil(sig)
    end))
    c2:on("spawn", function() assert.is_true(c2:kill("SIGKILL")) end)
    c2:on("exit", H.expect(function(code, sig)
      assert.is_nil(code)
      assert.equals("SIGKILL", sig)
    end))
    H.run()
    assert.equals("SIGKILL", c2.signal)
    assert.is_nil(c2.exit_code)
  end)

  it("kill defaults to SIGTERM, accepts names without SIG, and rejects unknown names", function()
    local c = assert(tether.fork(H.script([[
      require("tether").parent:keep_alive(true)
      require("tether").every(1000, function() end)]])))
    assert.has_error(function() c:kill("SIGNOPE") end)
    c:on("spawn", function() assert.is_true(c:kill()) end)
    c:on("exit", H.expect(function(_, sig) assert.equals("SIGTERM", sig) end))
    H.run()
    local ok, err = c:kill("HUP")
    assert.is_nil(ok)
    assert.equals("ESRCH", err.code)
  end)

  it("closes the process handle only after the exit was reaped (no zombies)", function()
    local kids = {}
    for i = 1, 20 do
      kids[i] = assert(tether.fork(H.script("os.exit(" .. (i % 5) .. ")")))
    end
    local closed = 0
    for i, c in ipairs(kids) do
      c:on("close", function(code)
        assert.equals(i % 5, code)
        closed = closed + 1
      end)
    end
    H.run()
    assert.equals(20, closed)
    assert.same({}, H.zombies())
  end)

  it("gives every child only its own channel (close-on-exec)", function()
    local a = assert(tether.fork(H.fixture("echo.lua")))
    local b = assert(tether.fork(H.fixture("echo.lua")))
    local answers = {}
    for _, c in ipairs { a, b } do
      c:on("message", function(m)
        if m.ready then
          c:send({ cmd = "fds" })
        else
          answers[#answers + 1] = m
          c:disconnect()
        end
      end)
    end
    H.run()
    assert.equals(2, #answers)
    for _, m in ipairs(answers) do assert.equals(1, m.sockets) end
  end)

  it("passes env additions and cwd, and scrubs tether's variables from the child's env", function()
    local out = H.tmpfile("cwd.txt")
    local c = assert(tether.fork(H.script([[
      local t = require "tether"
      local p = io.popen("pwd"); local cwd = p:read("l"); p:close()
      local leaked = {}
      for _, k in ipairs { "TETHER_CHANNEL_FD", "TETHER_PARENT_PID", "TETHER_MAX_MESSAGE" } do
        if os.getenv(k) then leaked[#leaked + 1] = k end
      end
      t.parent:send({ foo = os.getenv("FOO"), cwd = cwd, leaked = leaked })
    ]]), nil, { env = { FOO = "bar baz" }, cwd = "/tmp", max_message = 1 << 20 }))
    c:on("message", H.expect(function(m)
      assert.equals("bar baz", m.foo)
      assert.equals("/tmp", m.cwd)
      assert.same({}, m.leaked) -- grandchildren must not see our channel
    end))
    H.run()
    assert.is_string(out)
  end)

  it("fails at once with ENOENT for a missing interpreter and leaks nothing", function()
    local c, err = tether.fork(H.fixture("echo.lua"), nil, { lua = "/nonexistent/lua" })
    assert.is_nil(c)
    assert.equals("ENOENT", err.code)
    assert.equals("ENOENT: " .. err.message, tostring(err))
    H.run()
  end)

  it("rejects bad argument types", function()
    assert.has_error(function() tether.fork(42) end)
    assert.has_error(function() tether.fork("x.lua", "notatable") end)
    assert.has_error(function() tether.fork("x.lua", {}, { cwd = 5 }) end)
    assert.has_error(function() tether.fork("x.lua", {}, { stdio = 5 }) end)
    assert.has_error(function() tether.fork("x.lua", {}, { serialization = "xml" }) end)
  end)
end)

describe("tether.spawn", function()
  H.leak_guard(before_each, after_each)

  it("returns ENOENT and EACCES synchronously without leaking fds", function()
    local c, err = tether.spawn("/nonexistent/prog")
    assert.is_nil(c)
    assert.equals("ENOENT", err.code)
    local c2, err2 = tether.spawn("/etc/passwd")
    assert.is_nil(c2)
    assert.equals("EACCES", err2.code)
    H.run()
  end)

  it("sets TETHER_CHANNEL_FD for any program, and channel=false turns it off", function()
    local c = assert(tether.spawn("sh", { "-c", 'echo "fd=$TETHER_CHANNEL_FD"' }, { stdio = "pipe" }))
    local out = ""
    c.stdout:on("data", function(d) out = out .. d end)
    c.stdout:on("end", H.expect())
    H.run()
    assert.equals("fd=3\n", out)

    local c2 = assert(tether.spawn("sh", { "-c", 'echo "fd=$TETHER_CHANNEL_FD"' }, { stdio = "pipe", channel = false }))
    local out2 = ""
    c2.stdout:on("data", function(d) out2 = out2 .. d end)
    assert.is_false(c2.connected)
    local ok, err = c2:send("x")
    assert.is_nil(ok)
    assert.equals("ERR_NO_CHANNEL", err.code)
    H.run()
    assert.equals("fd=\n", out2)
  end)

  it("lets a plain Lua script started by spawn find tether.parent", function()
    local c = assert(tether.spawn(H.LUA, { H.script([[
      local t = require "tether"
      t.parent:on("message", function(m) t.parent:send(m * 2); t.parent:disconnect() end)
      t.run()
    ]]) }, { env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }))
    c:send(21)
    c:on("message", H.expect(function(m) assert.equals(42, m) end))
    H.run()
    assert.equals(0, c.exit_code)
  end)

  it("pipes stdin, stdout and stderr", function()
    local c = assert(tether.spawn("sh", { "-c", "read x; echo out:$x; echo err:$x >&2" },
      { stdio = "pipe", channel = false }))
    local out, err = "", ""
    c.stdout:on("data", function(d) out = out .. d end)
    c.stderr:on("data", function(d) err = err .. d end)
    c.stderr:on("end", H.expect())
    assert.is_true(c:write("hello\n"))
    assert.is_true(c:end_input())
    H.run()
    assert.equals("out:hello\n", out)
    assert.equals("err:hello\n", err)
  end)

  it("refuses a NUL byte in anything that reaches the system as a C string", function()
    -- (it would end the string there: another program, argument or path)
    local function refused(f, ...)
      local args = table.pack(...)
      local ok, err = pcall(function() f(table.unpack(args, 1, args.n)) end)
      assert.is_false(ok)
      assert.matches("NUL byte", err)
      assert.matches("process_spec", err) -- raised at the caller's line
    end
    refused(tether.spawn, "echo\0rm", { "a" }, { channel = false })
    refused(tether.spawn, "echo", { "a\0b" }, { channel = false })
    refused(tether.spawn, "echo", {}, { channel = false, env = { A = "x\0y" } })
    refused(tether.spawn, "echo", {}, { channel = false, cwd = "/tmp\0/x" })
    refused(tether.spawn, "echo", {}, { channel = false, stdio = { stdout = "/tmp/a\0b" } })
    refused(tether.fork, "w.lua\0junk")
    refused(tether.fork, "w.lua", {}, { lua = "lua5.4\0x" })
    refused(tether.supervise, { script = "w.lua\0x" })
    refused(tether.supervise, { script = "w.lua", stdout = "./log\0x" })
    local ok, err = pcall(tether.pool, { script = "w.lua", args = { "a\0" } })
    assert.is_false(ok)
    assert.matches("without NUL bytes", err)
  end)

  it("fails with EBADF when a pass_fds descriptor is not open", function()
    local path = H.tmpfile("passed.txt")
    local f = assert(io.open(path, "w"))
    local open, top = nil, 0
    for n, target in pairs(H.fds()) do
      if target == path then open = n end
      top = math.max(top, n)
    end
    local closed = top + 100 -- (nothing of ours is there)
    local c, err = tether.spawn("true", {}, { channel = false, pass_fds = { open, closed } })
    f:close()
    assert.is_nil(c)
    assert.equals("EBADF", err.code)
    assert.matches("descriptor " .. closed .. " is not open", err.message)
  end)

  it("ends a piped stdin only after everything written before was read", function()
    -- 1 MiB queued at once, far over the pipe's buffer, then end: the
    -- child counts every byte before its EOF
    local c = assert(tether.spawn("wc", { "-c" }, { stdio = "pipe", channel = false }))
    local out = ""
    c.stdout:on("data", function(d) out = out .. d end)
    local chunk = string.rep("a", 65536)
    for _ = 1, 16 do assert.is_not_nil(c.stdin:write(chunk)) end
    assert.is_true(c.stdin["end"](c.stdin))
    -- ended: no more writes, no second end
    local ok, err = c.stdin:write("late")
    assert.is_nil(ok)
    assert.equals("EPIPE", err.code)
    assert.is_nil((c.stdin["end"](c.stdin)))
    H.run()
    assert.equals("1048576", out:match("%d+"))
    assert.equals(0, c.exit_code)
  end)

  it("drops what a piped stdin still queues when the child exits", function()
    -- the child never reads: its exit closes the pipe, the shutdown is
    -- cancelled, and nothing hangs or leaks
    local c = assert(tether.spawn("sh", { "-c", "exit 3" }, { stdio = "pipe", channel = false }))
    local chunk = string.rep("b", 65536)
    for _ = 1, 16 do c.stdin:write(chunk) end
    c.stdin["end"](c.stdin)
    c:on("close", H.expect())
    H.run()
    assert.equals(3, c.exit_code)
  end)

  it("emits close only after exit and after the pipes are closed", function()
    local c = assert(tether.spawn("sh", { "-c", "echo a; echo b >&2" }, { stdio = "pipe" }))
    local order = {}
    c.stdout:on("end", function() order[#order + 1] = "stdout-end" end)
    c.stderr:on("end", function() order[#order + 1] = "stderr-end" end)
    c:on("exit", function() order[#order + 1] = "exit" end)
    c:on("close", function() order[#order + 1] = "close" end)
    H.run()
    assert.equals("close", order[#order])
    assert.equals(4, #order)
  end)

  it("ignores stdio, and appends stdout/stderr to files", function()
    local path = H.tmpfile("append.log")
    local f = assert(io.open(path, "w"))
    f:write("first\n")
    f:close()
    local c = assert(tether.spawn("sh", { "-c", "echo out; echo err >&2" },
      { stdio = { stdout = path, stderr = path }, channel = false }))
    local c2 = assert(tether.spawn("sh", { "-c", "echo hidden" }, { stdio = "ignore", channel = false }))
    H.run()
    assert.equals(0, c.exit_code)
    assert.equals(0, c2.exit_code)
    local text = assert(io.open(path)):read("a")
    assert.equals("first\nout\nerr\n", text)
  end)

  it("fails at once when a stdio file cannot be opened", function()
    local c, err = tether.spawn("true", {}, { stdio = { stdout = "/nonexistent/dir/x.log" } })
    assert.is_nil(c)
    assert.equals("ENOENT", err.code)
    H.run()
  end)

  it("starts a detached child in its own session", function()
    local c = assert(tether.spawn("sh", { "-c", "cut -d' ' -f6 /proc/$$/stat" }, { detached = true, stdio = "pipe" }))
    local out = ""
    c.stdout:on("data", function(d) out = out .. d end)
    H.run()
    assert.equals(c.pid, tonumber(out:match("%d+")))
  end)

  it("returns EAGAIN when the process limit is reached", function()
    local inner = H.script([[
      local tether = require "tether"
      local c, err = tether.spawn("true")
      io.write(c and "ok" or err.code, "\n")
      tether.run()
    ]])
    -- RLIMIT_NPROC does not bind root: run the script as nobody then
    local prefix = ""
    local p = io.popen("id -u")
    local root = p:read("l") == "0"
    p:close()
    local module = package.searchpath("tether.core", package.cpath)
    if root then
      prefix = "setpriv --reuid=65534 --regid=65534 --clear-groups "
      assert(os.execute(prefix .. "test -r " .. module .. " -a -r " .. inner),
        "nobody cannot read the build tree: run the specs from a world-readable checkout")
    end
    local c = assert(tether.spawn("sh", { "-c", prefix .. "prlimit --nproc=1 " .. H.LUA .. " " .. inner },
      { stdio = { stdout = "pipe" }, channel = false,
        -- LeakSanitizer needs a thread at exit, which the limit forbids
        env = { LUA_PATH = package.path, LUA_CPATH = package.cpath, ASAN_OPTIONS = "detect_leaks=0" } }))
    local out = ""
    c.stdout:on("data", function(d) out = out .. d end)
    H.run()
    assert.equals("EAGAIN\n", out)
  end)

  it("returns EMFILE when out of fds, leaks nothing, and works again after", function()
    local inner = H.script([[
      local tether = require "tether"
      local files = {}
      -- use up the fds, leaving too few for a socketpair + pipes
      while true do
        local f = io.open("/dev/null")
        if not f then break end
        files[#files + 1] = f
      end
      for _ = 1, 2 do table.remove(files):close() end
      local c, err = tether.spawn("true", {}, { stdio = "pipe" })
      local first = c and "ok" or err.code
      for _ = 1, 10 do table.remove(files):close() end
      local c2, err2 = tether.spawn("true")
      local second = c2 and "ok" or err2.code
      tether.run()
      io.write(first, " ", second, "\n")
    ]])
    local c = assert(tether.spawn("sh", { "-c", "ulimit -n 64; exec " .. H.LUA .. " " .. inner },
      { stdio = { stdout = "pipe" }, channel = false,
        env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }))
    local out = ""
    c.stdout:on("data", function(d) out = out .. d end)
    H.run()
    assert.equals("EMFILE ok\n", out)
    assert.equals(0, c.exit_code)
  end)
end)

describe("as Node's child_process tests expect", function()
  H.leak_guard(before_each, after_each)

  it("send(msg, nil, cb) calls cb; a third argument that is no function raises", function()
    local c = assert(tether.fork(H.fixture("echo.lua")))
    local called = 0
    assert.is_true(c:send("x", nil, function(err) assert.is_nil(err) called = called + 1 end))
    assert.has_error(function() c:send("y", nil, "foo") end)
    c:on("message", function() c:disconnect() end)
    H.run()
    assert.equals(1, called)
  end)

  it("an empty cwd is ours; killed says a signal was sent; a failed spawn names what it ran", function()
    local c = assert(tether.spawn("pwd", {}, { cwd = "", stdio = "pipe", channel = false }))
    local out = ""
    c.stdout:on("data", function(d) out = out .. d end)
    H.run()
    assert.equals(assert(tether.core.getcwd()) .. "\n", out)
    local cat = assert(tether.spawn("cat", {}, { stdio = "pipe", channel = false }))
    assert.is_false(cat.killed)
    assert.is_true(cat:kill())
    assert.is_true(cat.killed)
    H.run()
    local none, err = tether.spawn("foo123-no-such", { "bar" }, { channel = false })
    assert.is_nil(none)
    assert.equals("ENOENT", err.code)
    assert.equals("spawn foo123-no-such", err.syscall)
    assert.equals("foo123-no-such", err.path)
    assert.same({ "bar" }, err.spawnargs)
  end)

  it("stdio streams: 'end' then 'close', readable and writable flags", function()
    local c = assert(tether.spawn("cat", {}, { stdio = "pipe", channel = false }))
    local seen = {}
    for _, ev in ipairs { "end", "close" } do
      c.stdout:on(ev, function() seen[#seen + 1] = "stdout." .. ev end)
      c.stderr:on(ev, function() seen[#seen + 1] = "stderr." .. ev end)
    end
    assert.is_true(c.stdin.writable)
    assert.is_true(c.stdout.readable)
    c.stdin:write("hi")
    c.stdin["end"](c.stdin)
    assert.is_false(c.stdin.writable)
    H.run()
    table.sort(seen)
    assert.same({ "stderr.close", "stderr.end", "stdout.close", "stdout.end" }, seen)
    assert.is_false(c.stdout.readable)
  end)

  it("takes a descriptor given as a float (LuaSocket's getfd())", function()
    local path = H.tmpfile("float-fd.txt")
    local f = assert(io.open(path, "w"))
    local fd = H.fd_of(path)
    local h = assert(tether.handle(fd + 0.0))
    assert.equals("fd", h.kind)
    h:close()
    f:close()
  end)
end)
