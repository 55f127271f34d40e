-- Pools across machines on Redis Streams (doc/distributed.md, CONTRACT.md
-- "Pools across machines").  Each test starts its own redis-server on a
-- Unix socket in a temp dir (no TCP port); an agent is a "machine": a
-- process in its own session (process group), killed as a whole.
local tether = require "tether"
local H = require "helper"
local json = require "tether.json"

local B = require "broker_util"
local HAS_REDIS = B.HAS_REDIS
local redis, agent, kill_group, finish_agent, submit = B.redis, B.agent, B.kill_group, B.finish_agent, B.submit

describe("pools across machines (Redis Streams)", function()
  after_each(function() B.stop_all() end) -- (before the leak guard's check)
  H.leak_guard(before_each, after_each)

  before_each(function()
    if not HAS_REDIS then pending("redis-server is not installed") end
  end)

  it("runs every task once on two agents; results come back; Redis is left empty", function()
    local r = redis()
    local a1, a2 = agent(r, "q", 2), agent(r, "q", 2)
    local pool = B.pool { broker = r.addr, queue = "q" }
    local results, done = submit(pool, 200)
    H.run_until(done, 30)
    local pids = {}
    for i = 1, 200 do
      assert.equals(i * i, results[i].sq)
      assert.equals(1, results[i].attempt)
      assert.is_string(results[i].task_id)
      pids[results[i].pid] = true
    end
    local st = pool:stats()
    assert.same({ submitted = 200, done = 200, failed = 0, late = 0, pending = 0, redelivered = 0 }, st)
    -- run and map, in a coroutine, as with a local pool
    local mapped, one
    tether.go(function()
      one = pool:run({ n = 7 })
      mapped = pool:map({ { n = 1 }, { n = 2 }, { n = 3 } })
    end)
    H.run_until(function() return mapped ~= nil end, 20)
    assert.equals(49, one.sq)
    assert.same({ 1, 4, 9 }, { mapped[1].sq, mapped[2].sq, mapped[3].sq })
    local closed = false
    pool:close(function() closed = true end)
    H.run_until(function() return closed end)
    finish_agent(a1)
    finish_agent(a2)
    -- nothing of the tasks is left: no entry, no marker, no result stream
    assert.equals("0", r.cli("XLEN", "{tether:q}:tasks"):match("%d+"))
    assert.equals("", r.cli("KEYS", "{tether:q}:sub:*"):gsub("%s", ""))
    assert.equals("", r.cli("KEYS", "{tether:q}:reply:*"):gsub("%s", ""))
    r.stop()
  end)

  it("a task that raises fails with ERR_TASK_FAILED; bad options are refused", function()
    local r = redis()
    local a1 = agent(r, "qf", 1)
    local pool = B.pool { broker = r.addr, queue = "qf" }
    local got
    pool:submit({ n = 1, fail = true }, function(err) got = err end)
    H.run_until(function() return got ~= nil end, 20)
    assert.equals("ERR_TASK_FAILED", got.code)
    assert.matches("asked to fail", got.message)
    assert.has_error(function() tether.pool { broker = r.addr } end,
      "bad argument #1 to 'pool' (option 'queue' (a name) is required with 'broker')")
    assert.has_error(function() tether.pool { broker = r.addr, queue = "x", sise = 1 } end)
    local p2, err = tether.pool { broker = "redis://", queue = "x" }
    assert.is_nil(p2)
    assert.equals("EINVAL", err.code)
    assert.is_nil(pool:submit(function() end, function() end))
    -- a buffer's descriptor cannot cross machines
    local b <close> = tether.buffer(8)
    local ok, berr = pool:submit({ data = b }, function() end)
    assert.is_nil(ok)
    assert.equals("ERR_SERIALIZE", berr.code)
    assert.matches("remote pool", berr.message)
    assert.is_false(b:frozen())
    pool:close()
    H.run_until(function() return pool.closed end)
    finish_agent(a1)
    r.stop()
  end)

  it("an agent killed with tasks in flight: its tasks run elsewhere, each callback once", function()
    local r = redis()
    local a1, a2 = agent(r, "qk", 2), agent(r, "qk", 2)
    local pool = B.pool { broker = r.addr, queue = "qk" }
    local seen = {}
    local results, done = submit(pool, 40, 150, seen)
    H.sleep(500)
    kill_group(a1, "KILL") -- the whole "machine": agent and workers
    local t0 = tether.now()
    H.run_until(done, 30)
    local again = 0
    for i = 1, 40 do
      assert.equals(i * i, results[i].sq)
      if results[i].attempt > 1 then again = again + 1 end
    end
    for _, n in pairs(seen) do assert.equals(1, n) end
    assert.is_true(again > 0, "no task was taken over from the killed agent")
    assert.equals(again, pool:stats().redelivered)
    -- taken over within the TTL (600 ms) and a few beats, not minutes
    assert.is_true(tether.now() - t0 < 10000)
    pool:close()
    H.run_until(function() return pool.closed end)
    finish_agent(a2)
    H.run_until(function() return a1.signal ~= nil end)
    r.stop()
  end)

  it("an agent stopped past its TTL loses its tasks; its late results are refused", function()
    local r = redis()
    local a1, a2 = agent(r, "qs", 2), agent(r, "qs", 2)
    local pool = B.pool { broker = r.addr, queue = "qs" }
    local seen = {}
    local results, done = submit(pool, 30, 200, seen)
    H.sleep(400)
    kill_group(a1, "STOP")
    H.sleep(2000) -- past the 600 ms TTL: a2 takes a1's tasks
    kill_group(a1, "CONT")
    H.run_until(done, 30)
    for i = 1, 30 do assert.equals(i * i, results[i].sq) end
    for _, n in pairs(seen) do assert.equals(1, n) end
    -- a1 finished what it had and was refused
    local s1
    a1:on("message", function(m) s1 = m end)
    a1:send("stats")
    H.run_until(function() return s1 ~= nil end, 10)
    assert.is_true(s1.late > 0, "no late completion was refused: " .. json.encode(s1))
    assert.equals(0, pool:stats().late) -- and none reached the submitter twice
    pool:close()
    H.run_until(function() return pool.closed end)
    finish_agent(a1)
    finish_agent(a2)
    r.stop()
  end)

  it("an agent presumed dead while its task runs, reaping its own old name, still completes it", function()
    -- its key gone (as after a Redis restart longer than the TTL): it goes
    -- on under a new name, and its own reaper (the only agent) claims its
    -- old name's entry while that entry runs here
    local r = redis()
    local a1 = agent(r, "qn", 1)
    local pool = B.pool { broker = r.addr, queue = "qn" }
    local results, done = submit(pool, 1, 3000)
    local key
    H.run_until(function()
      key = r.cli("KEYS", "{tether:qn}:host:*"):match("[^\n]+")
      return key ~= nil and r.cli("XPENDING", "{tether:qn}:tasks", "agents"):match("^1\n") ~= nil
    end, 10)
    r.cli("DEL", key)
    H.run_until(function() -- claimed by its new name
      return r.cli("XPENDING", "{tether:qn}:tasks", "agents", "-", "+", 10):match(key:match(":host:(.*)$"))
        == nil
    end, 10)
    H.run_until(done, 20)
    assert.equals(1, results[1].sq)
    assert.equals(1, results[1].attempt)
    pool:close()
    H.run_until(function() return pool.closed end)
    finish_agent(a1)
    r.stop()
  end)

  it("Redis restarted (AOF) and connections killed mid-way: nothing lost, nothing twice", function()
    local r = redis { "--appendonly", "yes", "--appendfsync", "always" }
    local a1, a2 = agent(r, "qr", 2), agent(r, "qr", 2)
    local pool = B.pool { broker = r.addr, queue = "qr" }
    local errors = 0
    pool:on("error", function(e) assert.equals("ERR_BROKER_DOWN", e.code) errors = errors + 1 end)
    local seen = {}
    local results, done = submit(pool, 60, 50, seen)
    H.sleep(300)
    r.cli("CLIENT", "KILL", "TYPE", "normal")
    H.sleep(300)
    r.stop()
    H.sleep(300)
    r.start()
    H.run_until(done, 40)
    for i = 1, 60 do assert.equals(i * i, results[i].sq) end
    for _, n in pairs(seen) do assert.equals(1, n) end
    assert.is_true(errors >= 1) -- it said so while Redis was away
    pool:close()
    H.run_until(function() return pool.closed end, 20)
    finish_agent(a1)
    finish_agent(a2)
    r.stop()
  end)

  it("scripts go by their SHA1; a Redis that lost them (SCRIPT FLUSH) gets them again", function()
    local r = redis()
    local a1 = agent(r, "qh", 2)
    local pool = B.pool { broker = r.addr, queue = "qh" }
    local r1, d1 = submit(pool, 50)
    H.run_until(d1, 20)
    r.cli("SCRIPT", "FLUSH")
    local r2, d2 = submit(pool, 50)
    H.run_until(d2, 20)
    for i = 1, 50 do
      assert.equals(i * i, r1[i].sq)
      assert.equals(i * i, r2[i].sq)
    end
    assert.matches("evalsha", r.cli("INFO", "commandstats"))
    pool:close()
    H.run_until(function() return pool.closed end)
    finish_agent(a1)
    r.stop()
  end)

  it("a Redis with a password: AUTH on every connection; a wrong one is ERR_BROKER", function()
    local r = redis({ "--requirepass", "s3cret" })
    local good = { addr = r.addr .. "?password=s3cret" }
    local a1 = agent(good, "qa", 2)
    local pool = B.pool { broker = good.addr, queue = "qa" }
    local results, done = submit(pool, 20)
    H.run_until(done, 30)
    for i = 1, 20 do assert.equals(i * i, results[i].sq) end
    local bad = B.pool { broker = r.addr .. "?password=b4dpw", queue = "qa" }
    local err
    bad:on("error", function(e) err = err or e end)
    H.run_until(function() return err ~= nil end, 10)
    assert.equals("ERR_BROKER", err.code)
    assert.is_nil(err.message:find("b4dpw", 1, true), "the password is not in the message")
    finish_agent(a1)
  end)

  it("works against a Redis Cluster, following MOVED to the node that holds the queue's slot", function()
    -- cluster mode needs TCP ports (and bus ports + 10000): random ones
    local base = 20000 + math.random(0, 4999) * 2
    local servers = {}
    local function cli(port, ...)
      local out = {}
      local c = assert(tether.spawn("redis-cli", { "-p", tostring(port), ... },
        { stdio = { stdout = "pipe", stderr = "ignore" } }))
      c.stdout:on("data", function(d) out[#out + 1] = d end)
      H.run_until(function() return c.exit_code ~= nil end, 10)
      return table.concat(out)
    end
    for i = 0, 1 do
      local port = base + i
      local dir = H.tmpfile("cluster-" .. port)
      require("lfs").mkdir(dir)
      servers[#servers + 1] = assert(tether.spawn("redis-server", { "--port", tostring(port), "--bind", "127.0.0.1",
        "--cluster-enabled", "yes", "--cluster-config-file", dir .. "/nodes.conf", "--save", "",
        "--appendonly", "no", "--dir", dir, "--logfile", "redis.log" }, { stdio = "ignore" }))
    end
    local ok, err = pcall(function()
      local a_port, b_port = base, base + 1
      for _, port in ipairs { a_port, b_port } do
        H.run_until(function() return cli(port, "PING"):find("PONG") ~= nil end, 10)
      end
      -- every slot on node A but the queue's, which is node B's: a client
      -- given node A's address is sent on to B
      local slot = tonumber(cli(a_port, "CLUSTER", "KEYSLOT", "{tether:cq}"):match("%d+"))
      if slot > 0 then cli(a_port, "CLUSTER", "ADDSLOTSRANGE", "0", tostring(slot - 1)) end
      if slot < 16383 then cli(a_port, "CLUSTER", "ADDSLOTSRANGE", tostring(slot + 1), "16383") end
      cli(b_port, "CLUSTER", "ADDSLOTS", tostring(slot))
      cli(a_port, "CLUSTER", "MEET", "127.0.0.1", tostring(b_port))
      for _, port in ipairs { a_port, b_port } do
        H.run_until(function() return cli(port, "CLUSTER", "INFO"):find("cluster_state:ok") ~= nil end, 20)
      end
      local r = { addr = ("redis://127.0.0.1:%d"):format(a_port) }
      local a = agent(r, "cq", 2)
      local pool = B.pool { broker = r.addr, queue = "cq" }
      pool:on("error", function() end) -- (the first connection is moved on)
      local results, done = submit(pool, 50)
      H.run_until(done, 30)
      for i = 1, 50 do assert.equals(i * i, results[i].sq) end
      -- the queue lives on node B, and Redis is left clean there too
      assert.matches("^0", cli(b_port, "XLEN", "{tether:cq}:tasks"))
      pool:close()
      H.run_until(function() return pool.closed end)
      finish_agent(a)
    end)
    for _, srv in ipairs(servers) do
      srv:kill("SIGKILL")
      H.run_until(function() return srv.exit_code ~= nil or srv.signal ~= nil end, 10)
    end
    assert(ok, err)
  end)

  it("two submitters on one queue each get their own results", function()
    local r = redis()
    local a1 = agent(r, "q2", 2)
    local p1 = B.pool { broker = r.addr, queue = "q2" }
    local p2 = B.pool { broker = r.addr, queue = "q2" }
    local r1, d1 = submit(p1, 50)
    local r2, d2 = submit(p2, 50)
    H.run_until(function() return d1() and d2() end, 30)
    for i = 1, 50 do
      assert.equals(i * i, r1[i].sq)
      assert.equals(i * i, r2[i].sq)
    end
    assert.equals(0, p1:stats().late)
    assert.equals(0, p2:stats().late)
    p1:close()
    p2:close()
    H.run_until(function() return p1.closed and p2.closed end)
    finish_agent(a1)
    r.stop()
  end)

  it("terminate stops waiting: tasks no agent took fail with ERR_CLOSED, and the pool closes", function()
    local r = redis()
    -- no agent: close() alone would wait for one, as a queue does
    local pool = B.pool { broker = r.addr, queue = "qt" }
    local errs, closed = {}, false
    for i = 1, 3 do assert.is_true(pool:submit({ n = i }, function(e) errs[#errs + 1] = { i, e and e.code } end)) end
    H.sleep(100)
    pool:close(function() closed = true end)
    H.sleep(100)
    assert.is_false(closed)
    assert.is_true(pool:terminate())
    assert.is_true(pool:terminate()) -- twice: harmless
    H.run_until(function() return closed end)
    assert.same({ { 1, "ERR_CLOSED" }, { 2, "ERR_CLOSED" }, { 3, "ERR_CLOSED" } }, errs)
    assert.is_true(pool.closed)
    local ok, err = pool:submit({}, function() end)
    assert.is_nil(ok)
    assert.equals("ERR_CLOSED", err.code)
    -- and with Redis gone: terminate and close still end
    local gone = B.pool { broker = r.addr, queue = "qt2" }
    r.stop()
    local e2
    gone:submit({}, function(e) e2 = e end)
    local closed2 = false
    gone:close(function() closed2 = true end)
    gone:terminate()
    H.run_until(function() return closed2 end)
    assert.equals("ERR_CLOSED", e2.code)
  end)

  it("examples/distributed.lua runs a 2-agent pool on one machine", function()
    local out = {}
    local c = assert(tether.spawn(H.LUA, { H.dir .. "/../examples/distributed.lua" },
      { stdio = { stdout = "pipe" } }))
    c.stdout:on("data", function(d) out[#out + 1] = d end)
    H.run_until(function() return c.exit_code ~= nil end, 30)
    local text = table.concat(out)
    assert.equals(0, c.exit_code)
    assert.matches("sum of squares 22140 %(right: 22140%)", text)
    assert.matches("machine%-%d ran %d+", text)
  end)

  it("a callback that raises does not stop the others; an agent that cannot run tasks fails them", function()
    local r = redis()
    local a1 = agent(r, "qe", 1)
    local pool = B.pool { broker = r.addr, queue = "qe" }
    local raised, calls = 0, 0
    local function on_uncaught() raised = raised + 1 end
    tether.on("uncaught", on_uncaught)
    for i = 1, 6 do
      pool:submit({ n = i }, function()
        calls = calls + 1
        if i == 1 then error("a user's callback raised") end
      end)
    end
    H.run_until(function() return calls == 6 and raised == 1 end, 20)
    tether.off("uncaught", on_uncaught)
    pool:close()
    H.run_until(function() return pool.closed end)
    finish_agent(a1)
    -- an agent whose workers cannot start (the script raises as it
    -- loads: a syntax error): its pool gives up; the tasks fail with why, nothing hangs
    local bad = H.script [[this is not Lua]]
    local broken = assert(tether.fork(H.script [[
      local tether = require "tether"
      local broker, bad = ...
      local a = assert(tether.agent{ broker = broker, queue = "qb", script = bad,
        size = 1, heartbeat = 200, ttl = 600.0 })
      a:on("error", function() end)
      tether.parent:on("message", function() a:close(function() tether.exit(0) end) end)
    ]], { r.addr, bad }, { detached = true }))
    local p2 = B.pool { broker = r.addr, queue = "qb" }
    local errs = {}
    for i = 1, 3 do p2:submit({ n = i }, function(e) errs[#errs + 1] = e end) end
    H.run_until(function() return #errs == 3 end, 20)
    for _, e in ipairs(errs) do
      assert.is_truthy(e.code == "ERR_WORKER_INIT" or e.code == "ERR_CLOSED", tostring(e))
    end
    p2:close()
    H.run_until(function() return p2.closed end)
    finish_agent(broken)
    r.stop()
  end)
end)
