-- tether.cluster: a supervisor whose workers serve one listening socket
-- (CONTRACT.md "Handles", Node's cluster).  The workers are
-- examples/cluster_worker.lua (HTTP on luv); a load client
-- (fixtures/http_load.lua) makes one connection per request.
local tether = require "tether"
local H = require "helper"

local has_luv = pcall(require, "luv")
local WORKER = H.dir .. "/../examples/cluster_worker.lua"
local MODES = { "rr", "shared", "reuseport" }

-- a cluster of `n` workers, run until all are running
local function start(spec)
  spec.script = spec.script or WORKER
  spec.listen = spec.listen or "tcp://127.0.0.1:0"
  spec.handle_signals = false
  local errors_ok = spec.errors_ok
  spec.errors_ok = nil
  local c = assert(tether.cluster(spec))
  local up = {}
  c:on("start", function(w) up[w.id] = true end)
  c:on("error", function(e) if not errors_ok then error("cluster error: " .. tostring(e)) end end)
  local want = spec.instances or 1
  H.run_until(function()
    local k = 0
    for _ in pairs(up) do k = k + 1 end
    return k == want
  end, 20)
  return c
end

local function stop(c)
  local stopped = false
  c:stop(function() stopped = true end)
  H.run_until(function() return stopped and c.closed end, 20)
end

-- a load client on the cluster's port: returns a function that stops it
-- and returns its counts
local function load(port, conc)
  local client = assert(tether.fork(H.fixture("http_load.lua"), { port, conc or 4 }))
  local counts
  client:on("message", function(m) counts = m end)
  return function()
    client:send("stop")
    H.run_until(function() return counts ~= nil and client.exit_code ~= nil end, 20)
    return counts
  end
end

-- one HTTP request on a new connection, blocking in luv: the body
local function get(port)
  local uv = require "luv"
  local c, got, body = uv.new_tcp(), {}, nil
  c:connect("127.0.0.1", port, function(err)
    assert(not err, err)
    c:write("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    c:read_start(function(rerr, data)
      assert(not rerr, rerr)
      if data then got[#got + 1] = data else body = table.concat(got):match("\r\n\r\n(.*)$"); c:close() end
    end)
  end)
  -- tether's loop turns too: the parent (rr) accepts
  while body == nil do
    uv.run("nowait")
    tether.run("nowait")
  end
  uv.run("nowait")
  return body
end

describe("cluster", function()
  H.leak_guard(before_each, after_each)

  it("checks its spec", function()
    assert.has_error(function() tether.cluster() end, "bad argument #1 to 'cluster' (table expected, got nil)")
    assert.has_error(function() tether.cluster { script = WORKER } end,
      "bad argument #1 to 'cluster' (option 'listen' is required)")
    assert.has_error(function() tether.cluster { script = WORKER, listen = "tcp://127.0.0.1:0", balance = "random" } end)
    assert.has_error(function() tether.cluster { script = WORKER, listen = 80 } end)
    assert.has_error(function() tether.cluster { script = WORKER, listen = "tcp://127.0.0.1:0", balence = "rr" } end,
      "bad argument #1 to 'cluster' (unknown option 'balence' (did you mean 'balance'?))")
    assert.has_error(function()
      tether.cluster { cmd = "node", listen = "tcp://127.0.0.1:0", serialization = "json" }
    end)
    -- a bad address: nil, err and nothing left open
    local c, err = tether.cluster { script = WORKER, listen = "tcp://127.0.0.1", instances = 2 }
    assert.is_nil(c)
    assert.equals("EINVAL", err.code)
    local s = assert(tether.listen("tcp://127.0.0.1:0"))
    c, err = tether.cluster { script = WORKER, listen = "tcp://127.0.0.1:" .. select(2, s:address()) }
    assert.is_nil(c)
    assert.equals("EADDRINUSE", err.code)
    c, err = tether.cluster { script = WORKER, listen = s, balance = "reuseport" }
    assert.is_nil(c)
    assert.equals("EINVAL", err.code)
    s:close()
  end)

  it("tether.cluster.worker() outside a cluster: nil, ERR_NOT_CLUSTER", function()
    local c, err = tether.cluster.worker()
    assert.is_nil(c)
    assert.equals("ERR_NOT_CLUSTER", err.code)
    -- nor in a plain supervised worker
    local sup = assert(tether.supervise { handle_signals = false, script = H.script [[
      local tether = require "tether"
      local w, err = tether.cluster.worker()
      tether.parent:send(err and err.code or "?")
    ]] })
    local got
    sup:on("message", function(_, m) got = m; sup:stop() end)
    H.run_until(function() return got and sup.closed end)
    assert.equals("ERR_NOT_CLUSTER", got)
  end)

  for _, mode in ipairs(MODES) do
    it(("serves HTTP with 2 workers (%s), both of them, and closes every socket"):format(mode), function()
      if not has_luv then pending("luv is not installed") return end
      local c = start { instances = 2, balance = mode }
      assert.equals(mode, c.balance)
      local _, port = c:address()
      local seen = {}
      for _ = 1, (mode == "rr" and 4 or 40) do
        local body = get(port)
        local id = assert(body:match("hello from worker (%d)"), body)
        seen[id] = (seen[id] or 0) + 1
      end
      if mode == "rr" then
        -- turns among equals: 2 and 2
        assert.same({ ["1"] = 2, ["2"] = 2 }, seen)
        local conns = c:connections()
        assert.equals(2, conns[1].given)
        assert.equals(2, conns[2].given)
      elseif mode == "reuseport" then
        -- the kernel spreads them by address hash: 40 reach both (p = 2^-39)
        assert.is_truthy(seen["1"] and seen["2"], "one worker got every connection")
        assert.is_nil(c:connections())
      else
        -- "shared": whoever the kernel wakes accepts; one after another,
        -- that may well be the same worker every time (Node's docs say the
        -- same of its SCHED_NONE): served, not spread
        assert.is_nil(c:connections())
      end
      stop(c)
      -- the listening sockets are closed with the cluster
      local s = assert(tether.listen("tcp://127.0.0.1:" .. port))
      s:close()
    end)
  end

  it("rr: a connection goes to the worker with the fewest open ones", function()
    if not has_luv then pending("luv is not installed") return end
    -- workers that keep every connection open until told to close them
    local c = start { instances = 2, script = H.script [[
      local tether = require "tether"
      local uv = require "luv"
      local held = {}
      local w = tether.cluster.worker()
      w:on("connection", function(conn)
        local t = uv.new_tcp()
        t:open(conn:detach())
        held[#held + 1] = t
      end)
      tether.parent:on("message", function(m)
        if m == "drop" then for _, t in ipairs(held) do t:close() end held = {} end
        if m == "quit" then uv.stop() end
      end)
      local poll, timer, prepare = uv.new_poll(tether.fd()), uv.new_timer(), uv.new_prepare()
      local function pump()
        tether.run("nowait")
        timer:stop()
        local t = tether.timeout()
        if t >= 0 then timer:start(t, 0, pump) end
      end
      poll:start("r", pump)
      prepare:start(pump)
      tether.ready()
      uv.run()
      tether.exit(0)
    ]], balance = "rr", shutdown = { message = "quit" } }
    local _, port = c:address()
    local uv = require "luv"
    local clients = {}
    local function connect(k)
      for _ = 1, k do
        local t = uv.new_tcp()
        t:connect("127.0.0.1", port, function(err) assert(not err, err) end)
        clients[#clients + 1] = t
      end
    end
    local function given()
      local n = c:connections()
      return n[1].given + n[2].given
    end
    connect(4)
    H.run_until(function() uv.run("nowait"); return given() == 4 end)
    local n = c:connections()
    assert.same({ 2, 2 }, { n[1].open, n[2].open })
    -- worker 1 closes its two: it tells, and the next four go 3 to it
    -- (0 < 2, 1 < 2, then equal) and 1 to worker 2
    c:send(1, "drop")
    H.run_until(function() uv.run("nowait"); return c:connections()[1].open == 0 end)
    connect(4)
    H.run_until(function() uv.run("nowait"); return given() == 8 end)
    n = c:connections()
    assert.equals(2 + 3, n[1].given)
    assert.equals(2 + 1, n[2].given)
    assert.same({ 3, 3 }, { n[1].open, n[2].open })
    for _, t in ipairs(clients) do t:close() end
    uv.run("nowait")
    stop(c)
  end)

  it("rr: a worker without a 'connection' listener gets none", function()
    if not has_luv then pending("luv is not installed") return end
    local c = start { instances = 2, script = H.script([[
      local tether = require "tether"
      if os.getenv("TETHER_WORKER_ID") == "2" then
        tether.cluster.worker() -- takes part, listens to nothing
        return
      end
      dofile(]] .. ("%q"):format(WORKER) .. [[)
    ]]), balance = "rr" }
    local _, port = c:address()
    for _ = 1, 6 do assert.matches("hello from worker 1", get(port)) end
    assert.equals(0, c:connections()[2].given)
    stop(c)
  end)

  for _, mode in ipairs(MODES) do
    it(("reload under load (%s): no request fails, the socket stays open"):format(mode), function()
      if not has_luv then pending("luv is not installed") return end
      local c = start { instances = 2, balance = mode }
      local _, port = c:address()
      local finish = load(port, 4)
      H.sleep(300)
      local reloaded, rerr = false, nil
      assert(c:reload(function(e) reloaded, rerr = true, e end))
      H.run_until(function() return reloaded end, 30)
      assert.is_nil(rerr)
      H.sleep(300)
      local counts = finish()
      assert.equals(0, counts.failed, "failed requests: " .. require("tether.json").encode(counts.errors))
      assert.is_true(counts.ok > 20, "too few requests: " .. counts.ok)
      -- every worker was replaced
      for _, w in ipairs(c:workers()) do assert.equals(1, w.restarts) end
      stop(c)
    end)
  end

  for _, mode in ipairs(MODES) do
    it(("a worker killed under load (%s) is replaced; no connection is refused"):format(mode), function()
      if not has_luv then pending("luv is not installed") return end
      local c = start { instances = 2, balance = mode, backoff = { initial = 10, max = 10 } }
      local _, port = c:address()
      local finish = load(port, 4)
      H.sleep(200)
      local victim = c:worker(1).pid
      local restarted = false
      c:on("start", function(w) if w.id == 1 then restarted = true end end)
      c:kill(1, "SIGKILL")
      H.run_until(function() return restarted end, 20)
      assert.is_not.equals(victim, c:worker(1).pid)
      H.sleep(300)
      local counts = finish()
      -- requests the dead worker had under way fail (reset); the socket
      -- itself never went away, so nothing is refused
      assert.equals(0, counts.refused)
      assert.is_true(counts.failed <= 8, "failed: " .. counts.failed)
      assert.is_true(counts.ok > 20)
      -- and both serve afterwards
      if mode ~= "shared" then
        local seen = {}
        for _ = 1, 40 do seen[get(port):match("worker (%d)")] = true end
        assert.is_truthy(seen["1"] and seen["2"])
      end
      stop(c)
    end)
  end

  -- a worker that only listens for "connection", on tether's own loop
  -- (no luv loop of its own, no message listener): the channel keeps it
  -- alive; with a listener that raises, the parent still counts it closed
  local PLAIN = [[
    local tether = require "tether"
    local uv = require "luv"
    local n = 0
    tether.on("uncaught", function() end)
    local w = tether.cluster.worker()
    w:on("connection", function(conn)
      n = n + 1
      if os.getenv("RAISE") and n % 2 == 0 then error("raised on purpose") end
      local t = uv.new_tcp()
      t:open(conn:detach())
      t:write("HTTP/1.1 200 OK\r\nContent-Length: 17\r\nConnection: close\r\n\r\nhello from worker", function()
        t:shutdown(function() t:close() end)
      end)
      uv.run()
    end)
  ]]

  -- one request; the body, or nil if the connection closed without one
  local function try_get(port)
    local uv = require "luv"
    local c, got, done = uv.new_tcp(), {}, false
    c:connect("127.0.0.1", port, function(err)
      if err then done = true return end
      c:write("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      c:read_start(function(rerr, data)
        if data then got[#got + 1] = data else done = true; c:close() end
        if rerr then done = true end
      end)
    end)
    local deadline = tether.now() + 5000
    while not done and tether.now() < deadline do
      uv.run("nowait")
      tether.run("nowait")
    end
    if not c:is_closing() then c:close() end
    uv.run("nowait")
    return table.concat(got):match("\r\n\r\n(.*)$")
  end

  it("rr: a worker listening only for 'connection' on tether's loop stays up and serves", function()
    if not has_luv then pending("luv is not installed") return end
    local c = start { instances = 1, script = H.script(PLAIN), balance = "rr" }
    local restarts = 0
    c:on("restart", function() restarts = restarts + 1 end)
    for _ = 1, 3 do assert.equals("hello from worker", try_get(select(2, c:address()))) end
    assert.equals(0, restarts)
    stop(c)
  end)

  it("rr: a 'connection' listener that raises: the connection still counts as closed", function()
    if not has_luv then pending("luv is not installed") return end
    local c = start { instances = 1, script = H.script(PLAIN), balance = "rr", env = { RAISE = "1" } }
    local _, port = c:address()
    for _ = 1, 6 do try_get(port) end
    H.run_until(function() return c:connections()[1].open == 0 end, 10)
    assert.equals(6, c:connections()[1].given)
    stop(c)
  end)

  it("rr: a reload that fails leaves the old worker serving", function()
    if not has_luv then pending("luv is not installed") return end
    local flag = H.tmpfile("fail-next-start")
    os.remove(flag)
    local c = start { instances = 1, balance = "rr", errors_ok = true, script = H.script(([[
      local f = io.open(%q)
      if f then f:close() error("this start fails") end
      dofile(%q)
    ]]):format(flag, WORKER)) }
    local _, port = c:address()
    assert.matches("hello from worker 1", get(port))
    io.open(flag, "w"):close()
    local done, rerr = false, nil
    c:reload(function(e) done, rerr = true, e end)
    H.run_until(function() return done end, 20)
    assert.is_not_nil(rerr)
    os.remove(flag)
    assert.matches("hello from worker 1", try_get(port) or "(no answer)")
    stop(c)
  end)

  it("rr: an interpreter wrapper that does not exec (pids differ) still serves", function()
    if not has_luv then pending("luv is not installed") return end
    local wrap = H.tmpfile("wrap.sh")
    local f = assert(io.open(wrap, "w"))
    f:write("#!/bin/sh\n" .. H.LUA .. ' "$@"\n')
    f:close()
    os.execute("chmod +x " .. wrap)
    local c = start { instances = 1, balance = "rr", lua = wrap }
    assert.matches("hello from worker 1", try_get(select(2, c:address())) or "(no answer)")
    stop(c)
  end)

  for _, mode in ipairs(MODES) do
    it(("scale (%s): a worker added serves, a worker removed leaves; every socket closed"):format(mode), function()
      if not has_luv then pending("luv is not installed") return end
      local c = start { instances = 1, balance = mode }
      local _, port = c:address()
      local done = false
      assert.is_true(c:scale(2, function(err) assert.is_nil(err) done = true end))
      H.run_until(function() return done end, 20)
      local seen = {}
      for _ = 1, (mode == "rr" and 4 or 40) do
        local id = assert(get(port):match("hello from worker (%d)"))
        seen[id] = true
      end
      if mode ~= "shared" then assert.is_truthy(seen["2"], "the new worker got nothing") end
      done = false
      assert.is_true(c:scale(1, function(err) assert.is_nil(err) done = true end))
      H.run_until(function() return done end, 20)
      H.sleep(50) -- (reuseport: its socket leaves on the next turn)
      tether.run("nowait")
      for _ = 1, 12 do assert.matches("hello from worker 1", try_get(port) or "(no answer)") end
      stop(c)
      local s = assert(tether.listen("tcp://127.0.0.1:" .. port))
      s:close()
    end)
  end

  it("reuseport: a worker that will not run again leaves the group; nothing waits for it", function()
    if not has_luv then pending("luv is not installed") return end
    local c = start { instances = 2, balance = "reuseport", restart = "never", errors_ok = true }
    local _, port = c:address()
    local gone = false
    c:on("exit", function(w) if w.id == 2 then gone = true end end)
    c:kill(2, "SIGKILL")
    H.run_until(function() return gone end)
    H.sleep(50)
    for _ = 1, 12 do assert.matches("hello from worker 1", try_get(port) or "(no answer)") end
    stop(c)
  end)

  it("a spec the core refuses raises, and leaves no socket bound", function()
    local port
    do
      local s = assert(tether.listen("tcp://127.0.0.1:0"))
      port = select(2, s:address())
      s:close()
    end
    assert.has_error(function()
      tether.cluster { script = WORKER, listen = "tcp://127.0.0.1:" .. port, within = 1e13 }
    end)
    local s = assert(tether.listen("tcp://127.0.0.1:" .. port)) -- free again
    s:close()
  end)
end)
