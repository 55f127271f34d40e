-- Usability (issue 12): strict options, errors that point at the caller,
-- messages that name what was wrong.
local tether = require "tether"
local H = require "helper"

local THIS = debug.getinfo(1, "S").short_src

-- calls f, expecting an argument error raised at the line of the call
local function raises_here(f, pattern)
  local line = debug.getinfo(2, "l").currentline
  local ok, err = pcall(f)
  assert.is_false(ok, "no error")
  assert.is_string(err)
  assert.matches(pattern, err, 1, true)
  -- the position is the caller's (the line of the pcall'd function here),
  -- never a line of tether's own files
  assert.not_matches("tether%.lua:", err)
  assert.not_matches("tether/[%w_]+%.lua:", err)
  assert.matches(THIS:gsub("%p", "%%%0") .. ":%d+:", err)
  local _ = line
end

describe("usability (issue 12)", function()
  H.leak_guard(before_each, after_each)

  local W = H.fixture("echo.lua")

  local cases = {
    { "pool: unknown key with a near miss", function() tether.pool { script = W, sise = 2 } end,
      "unknown option 'sise' (did you mean 'size'?)" },
    { "supervise: unknown key", function() tether.supervise { script = W, instancse = 2 } end,
      "unknown option 'instancse' (did you mean 'instances'?)" },
    { "supervise: nested unknown key", function() tether.supervise { script = W, heartbeat = { intervl = 5 } } end,
      "unknown option 'heartbeat.intervl' (did you mean 'heartbeat.interval'?)" },
    { "supervise: an enum typo", function() tether.supervise { script = W, restart = "allways" } end,
      "(did you mean \"always\"?)" },
    { "supervise: a bad size", function() tether.supervise { script = W, max_memory = "lots" } end,
      "option 'max_memory'" },
    { "pool: a wrong type", function() tether.pool { script = W, timeout = "5" } end,
      "option 'timeout': number of ms (>= 0, below 1e15) expected, got '5'" },
    { "pool: an option of supervisors only", function() tether.pool { script = W, handle_signals = false } end,
      "unknown option 'handle_signals'" },
    { "fork: stdio as a bare path", function() tether.fork(W, nil, { stdio = "bogus" }) end,
      "a file path goes in the table form" },
    { "fork: stdio typo", function() tether.fork(W, nil, { stdio = "inhert" }) end,
      "(did you mean \"inherit\"?)" },
    { "fork: stdio table typo", function() tether.fork(W, nil, { stdio = { stdout = "inhert" } }) end,
      "did you mean \"inherit\"?" },
    { "fork: env of a function", function() tether.fork(W, nil, { env = { A = print } }) end,
      "env.A is a function" },
    { "spawn: unknown key", function() tether.spawn("true", nil, { cwdir = "/" }) end,
      "unknown option 'cwdir' (did you mean 'cwd'?)" },
    { "fork: bad script", function() tether.fork(42) end, "bad argument #1 to 'fork' (string expected, got number)" },
    { "fork: bad args", function() tether.fork(W, { {} }) end, "args[1] is a table" },
    { "timer: bad delay", function() tether.timer(-1, function() end) end, "bad argument #1 to 'timer'" },
    { "every: no function", function() tether.every(10) end, "bad argument #2 to 'every' (function expected" },
    { "on_signal: unknown signal", function() tether.on_signal("SIGBOGUS", function() end) end,
      "unknown signal 'SIGBOGUS'" },
    { "sleep: bad delay", function() tether.sleep("x") end, "bad argument #1 to 'sleep'" },
    -- times the core cannot hold are refused here, not deep inside tether
    { "timer: an infinite delay", function() tether.timer(math.huge, function() end) end,
      "bad argument #1 to 'timer' (number of ms >= 0 (below 1e15) expected, got inf)" },
    { "every: a huge period", function() tether.every(1e300, function() end) end,
      "bad argument #1 to 'every'" },
    { "pool: an infinite timeout", function() tether.pool { script = W, timeout = math.huge } end,
      "option 'timeout': number of ms (>= 0, below 1e15)" },
    { "supervise: an infinite heartbeat", function() tether.supervise { script = W, heartbeat = { interval = math.huge } } end,
      "option 'heartbeat.interval'" },
    { "exit: a code that is not one", function() tether.exit("x") end,
      "bad argument #1 to 'exit' (integer or boolean expected, got 'x')" },
    { "pool: too many workers", function() tether.pool { script = W, size = 100001 } end,
      "option 'size': integer from 1 to 100000 expected" },
    { "supervise: too many workers", function() tether.supervise { script = W, instances = math.maxinteger } end,
      "option 'instances': integer from 1 to 100000 expected" },
    { "pool: max_queue 0 (no task could wait)", function() tether.pool { script = W, max_queue = 0 } end,
      "option 'max_queue': integer >= 1 expected, got integer" },
    { "supervise: within is in seconds", function() tether.supervise { script = W, within = -1 } end,
      "option 'within': number of seconds (>= 0) expected" },
    { "handle: not a descriptor", function() tether.handle("x") end,
      "bad argument #1 to 'handle' (integer (a descriptor) expected, got 'x')" },
    { "handle: a fractional descriptor", function() tether.handle(1.5) end,
      "bad argument #1 to 'handle' (integer (a descriptor) expected, got number)" },
    { "listen: not an address", function() tether.listen(123) end,
      "bad argument #1 to 'listen' (string expected, got integer)" },
    { "os.exit: a fractional code", function() os.exit(2.5) end,
      "bad argument #1 to 'exit' (integer or boolean expected" },
  }
  for _, case in ipairs(cases) do
    it("checks options strictly and points at the caller: " .. case[1], function()
      raises_here(case[2], case[3])
    end)
  end

  it("returns nil, ERR_SERIALIZE for a shutdown message that cannot be sent, and starts nothing", function()
    for _, make in ipairs {
      function() return tether.supervise { script = W, shutdown = { message = { f = print } } } end,
      function() return tether.pool { script = W, shutdown = { message = print } } end,
      function() return tether.cluster { script = W, listen = "tcp://127.0.0.1:0", shutdown = { message = print } } end,
    } do
      local s, err = make()
      assert.is_nil(s)
      assert.equals("ERR_SERIALIZE", err.code)
      assert.matches("option 'shutdown.message'", err.message, 1, true)
    end
  end)

  it("checks call options before it needs a coroutine, and at the caller's line", function()
    local c = assert(tether.fork(W))
    raises_here(function() c:call(1, { tiemout = 5 }) end, "unknown option 'tiemout' (did you mean 'timeout'?)")
    raises_here(function() c:call(1, { backoff = "fast" }) end, "option 'backoff': table expected")
    raises_here(function() c:call(1, { retries = 2 }) end, "needs a 'timeout'")
    raises_here(function() c:kill("SIGBOGUS") end, "unknown signal 'SIGBOGUS'")
    raises_here(function() c:send(1, "not a function") end, "bad argument #2 to 'send'")
    raises_here(function() c:call(1, { timeout = math.huge }) end, "option 'timeout': number of ms")
    -- valid options outside a coroutine: the usual nil, ERR_NO_COROUTINE
    local r, err = c:call(1, { timeout = 5 })
    assert.is_nil(r)
    assert.equals("ERR_NO_COROUTINE", err.code)
    c:kill()
    H.run()
  end)

  it("sup:send, sup:kill and pool:map check their arguments", function()
    local sup = assert(tether.supervise { script = W, handle_signals = false })
    raises_here(function() sup:send(1, "x", { timeuot = 1 }) end, "unknown option 'timeuot' (did you mean 'timeout'?)")
    raises_here(function() sup:send(7, "x") end, "worker id 1..1 expected")
    raises_here(function() sup:kill(1, "SIGNOPE") end, "unknown signal 'SIGNOPE'")
    sup:stop()
    local pool = assert(tether.pool { script = H.script([[require("tether").serve(function(t) return t end)]]), size = 1 })
    tether.go(function()
      raises_here(function() pool:map({ 1 }, { colect = true }) end, "unknown option 'colect' (did you mean 'collect'?)")
      pool:close()
    end)
    H.run(20)
  end)

  it("names the program, the working directory or the stdio file a spawn could not use", function()
    local r, err = tether.spawn("no-such-program-here")
    assert.is_nil(r)
    assert.equals("ENOENT", err.code)
    assert.matches("cannot run 'no-such-program-here'", err.message, 1, true)
    r, err = tether.spawn("true", nil, { cwd = "/nonexistent/dir" })
    assert.equals("ENOENT", err.code)
    assert.matches("cwd '/nonexistent/dir'", err.message, 1, true)
    r, err = tether.spawn("true", nil, { stdio = { stdout = "/nonexistent/dir/out.log" } })
    assert.equals("ENOENT", err.code)
    assert.matches("stdio.stdout '/nonexistent/dir/out.log'", err.message, 1, true)
    r, err = tether.supervise { script = W, stderr = "/nonexistent/dir/err.log" }
    assert.is_nil(r)
    assert.equals("ENOENT", err.code)
    assert.matches("stderr log '/nonexistent/dir/err.log'", err.message, 1, true)
  end)

  it("says how a pool's worker died: ERR_WORKER_CRASH with the signal", function()
    local pool = assert(tether.pool { size = 1, retries = 0, script = H.script([[
      local tether = require "tether"
      tether.serve(function(t) os.execute("kill -9 " .. require("tether").core.pid()) end)]]) })
    local got
    tether.go(function()
      local _, err = pool:run(1)
      got = err
      pool:terminate()
    end)
    H.run(20)
    assert.equals("ERR_WORKER_CRASH", got.code)
    assert.matches("worker 1 was killed by SIGKILL", got.message, 1, true)
  end)

  it("says that a closed pool is closed", function()
    local pool = assert(tether.pool { size = 1, script = H.script([[require("tether").serve(function(t) return t end)]]) })
    pool:close()
    local ok, err = pool:submit(1, function() end)
    assert.is_nil(ok)
    assert.equals("ERR_CLOSED", err.code)
    assert.equals("pool is closed", err.message)
    H.run(20)
  end)

  it("a second SIGINT kills a stopping supervisor's workers at once", function()
    local p = assert(tether.spawn(H.LUA, { H.script(([[
      local tether = require "tether"
      local sup = assert(tether.supervise { script = %q, instances = 2,
        shutdown = { timeout = 20000, kill_timeout = 20000 } })
      local up = 0
      sup:on("start", function() up = up + 1 if up == 2 then io.stdout:write("up\n") io.stdout:flush() end end)
      sup:on("exit", function(w, code, sig) io.stdout:write("exit ", tostring(sig), "\n") end)
      tether.run()
      io.stdout:write("stopped\n")
    ]]):format(H.script([[
      local t = require "tether"
      t.on_signal("SIGTERM", function() end)
      t.on_signal("SIGINT", function() end)
      t.parent:on("message", function() end)]]))) },
      { env = { LUA_PATH = package.path, LUA_CPATH = package.cpath }, channel = false,
        stdio = { stdout = "pipe" } }))
    local out = {}
    p.stdout:on("data", function(d)
      out[#out + 1] = d
      if d:match("up\n") then
        p:kill("SIGINT")
        tether.timer(300, function() p:kill("SIGINT") end)
      end
    end)
    local t0 = tether.hrtime()
    p:on("exit", H.expect(function(code) assert.equals(0, code) end))
    H.run(20)
    assert.is_true((tether.hrtime() - t0) / 1e9 < 10, "the workers were not killed at once")
    assert.equals("up\nexit SIGKILL\nexit SIGKILL\nstopped\n", table.concat(out))
  end)

  it("a nesting limit above the codec's cap is refused, not clamped in silence", function()
    local ok, err = pcall(tether.core.set_max_depth, 1e6)
    assert.is_false(ok)
    assert.matches("depth must be 1 to 10000", err, 1, true)
    assert.is_false((pcall(tether.core.set_max_depth, 0)))
  end)

  it("tether.node_helper is the path of the Node.js helper", function()
    local f = assert(io.open(tether.node_helper))
    assert.matches("TETHER_REQUEST", f:read("a"), 1, true)
    f:close()
  end)
end)
