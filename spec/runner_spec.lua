local tether = require "tether"
local H = require "helper"

local function fork_script(src, args, opts)
  return assert(tether.fork(H.script(src), args, opts))
end

describe("child runner", function()
  H.leak_guard(before_each, after_each)

  it("gives the script its args in arg and ...", function()
    local c = fork_script([[
      local t = require "tether"
      t.parent:send({ dots = { ... }, arg0 = arg[0], arg1 = arg[1], n = #arg })
    ]], { "x", "y" })
    c:on("message", H.expect(function(m)
      assert.same({ "x", "y" }, m.dots)
      assert.matches("%.lua$", m.arg0)
      assert.equals("x", m.arg1)
      assert.equals(2, m.n)
    end))
    H.run()
  end)

  local init_cases = {
    { "a syntax error", "x(", "unexpected symbol" },
    { "an error in the main chunk", "error('bad start')", "bad start" },
    { "a missing script", nil, "cannot open" },
  }
  for _, case in ipairs(init_cases) do
    it("reports ERR_WORKER_INIT with message and traceback for " .. case[1] .. " and exits 1", function()
      local path = case[2] and H.script(case[2]) or "/nonexistent/script.lua"
      local c = assert(tether.fork(path))
      c:on("error", H.expect(function(err)
        assert.equals("ERR_WORKER_INIT", err.code)
        assert.matches(case[3], err.message, 1, true)
        assert.is_string(err.traceback)
      end))
      c:on("exit", H.expect(function(code) assert.equals(1, code) end))
      H.run()
    end)
  end

  it("reports ERR_WORKER_UNCAUGHT for an error raised in a callback, and exits 1", function()
    local c = fork_script([[
      local t = require "tether"
      t.timer(1, function() error("late failure") end)
    ]])
    c:on("error", H.expect(function(err)
      assert.equals("ERR_WORKER_UNCAUGHT", err.code)
      assert.matches("late failure", err.message, 1, true)
      assert.matches("stack traceback", err.traceback, 1, true)
    end))
    c:on("exit", H.expect(function(code) assert.equals(1, code) end))
    H.run()
  end)

  it("lets tether.on('uncaught') in the child keep it running", function()
    local c = fork_script([[
      local t = require "tether"
      t.on("uncaught", function(err, tb) t.parent:send({ err = tostring(err), tb = tb }) end)
      t.timer(1, function() error("handled") end)
    ]])
    c:on("message", H.expect(function(m)
      assert.matches("handled", m.err)
      assert.matches("stack traceback", m.tb)
    end))
    c:on("error", H.expect(nil, 0))
    c:on("exit", H.expect(function(code) assert.equals(0, code) end))
    H.run()
  end)

  it("exits once its work is done when it does not listen on the channel", function()
    local c = fork_script([[
      local t = require "tether"
      t.timer(50, function() t.parent:send("timer done") end)
    ]])
    c:on("message", H.expect(function(m) assert.equals("timer done", m) end))
    c:on("exit", H.expect(function(code) assert.equals(0, code) end))
    H.run()
  end)

  it("stays alive while it listens, and exits when the parent disconnects", function()
    local c = fork_script([[
      local t = require "tether"
      t.parent:on("message", function() end)
      t.parent:on("disconnect", function() io.stderr:write("") end)
      t.parent:send("listening")
    ]])
    local exited = false
    c:on("exit", function() exited = true end)
    c:on("message", function()
      tether.timer(200, function()
        assert.is_false(exited)
        c:disconnect()
      end)
    end)
    H.run()
    assert.is_true(exited)
    assert.equals(0, c.exit_code)
  end)

  it("stays alive after the parent disconnects with keep_alive(true)", function()
    local c = fork_script([[
      local t = require "tether"
      t.parent:keep_alive(true)
      t.parent:on("disconnect", function()
        t.timer(100, function() os.exit(5) end)
      end)
    ]])
    c:on("spawn", function() c:disconnect() end)
    c:on("exit", H.expect(function(code) assert.equals(5, code) end))
    H.run()
  end)

  it("exits when its parent is killed with SIGKILL, within 2 s", function()
    -- a middle process forks a grandchild that listens forever, reports its
    -- pid, then waits; we SIGKILL the middle one
    local grandchild = H.script([[
      local t = require "tether"
      t.parent:on("message", function() end)
      t.every(1000, function() end)
    ]])
    local middle = fork_script(([[
      local t = require "tether"
      local g = assert(t.fork(%q))
      t.parent:send(g.pid)
      t.parent:on("message", function() end)
    ]]):format(grandchild))
    local gpid
    middle:on("message", function(p)
      gpid = p
      middle:kill("SIGKILL")
    end)
    H.run()
    assert.is_number(gpid)
    local deadline = tether.hrtime() + 2e9
    while H.alive(gpid) and tether.hrtime() < deadline do H.sleep(20) end
    assert.is_false(H.alive(gpid))
  end)

  it("a stuck child is ended by the parent-death backstop", function()
    local grandchild = H.script([[
      local t = require "tether"
      t.parent:send("stuck")
      t.parent:flush()
      while true do end
    ]])
    local middle = fork_script(([[
      local t = require "tether"
      local g = assert(t.fork(%q))
      g:on("message", function() t.parent:send(g.pid) end)
      t.parent:on("message", function() end)
    ]]):format(grandchild))
    local gpid
    middle:on("message", function(p)
      gpid = p
      middle:kill("SIGKILL")
    end)
    H.run()
    local deadline = tether.hrtime() + 3e9
    while H.alive(gpid) and tether.hrtime() < deadline do H.sleep(20) end
    assert.is_false(H.alive(gpid))
  end)
end)
