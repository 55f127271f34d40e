-- Pools across machines on Redis Streams (doc/distributed.md, CONTRACT.md
-- "Pools across machines").  Each test starts its own redis-server on a
-- Unix socket in a temp dir (no TCP port); an agent is a "machine": a
-- process in its own session (process group), killed as a whole.
local tether = require "tether"
local H = require "helper"
local json = require "tether.json"

local function exists(p) local f = io.open(p) if f then f:close() end return f ~= nil end
local HAS_REDIS = exists("/usr/bin/redis-server") and exists("/usr/bin/redis-cli")

local AGENT = H.script [[
  local tether = require "tether"
  local broker, queue, script, size, out = ...
  local a = assert(tether.agent{ broker = broker, queue = queue, script = script,
    size = tonumber(size), heartbeat = 200, ttl = 600, retries = 0 })
  a:on("error", function() end)
  -- asked by the spec: our stats, then close
  tether.parent:on("message", function(m)
    if m == "stats" then tether.parent:send(a:stats()) end
    if m == "close" then a:close(function() tether.exit(0) end) end
  end)
]]

-- a task that takes `ms`, then says who ran it
local WORKER = H.script [[
  local tether = require "tether"
  tether.serve(function(task, info)
    if task.fail then error("asked to fail") end
    if task.ms then tether.sleep(task.ms) end
    return { n = task.n, sq = task.n * task.n, pid = tether.core.pid(),
             task_id = info.task_id, attempt = info.attempt }
  end)
]]

local function redis(extra)
  local dir = H.tmpfile("redis-" .. math.random(1e9))
  assert(require("lfs").mkdir(dir))
  local sock = dir .. "/r.sock"
  local self = { dir = dir, sock = sock, addr = "unix:" .. sock }
  function self.start()
    local args = { "--port", "0", "--unixsocket", sock, "--save", "", "--dir", dir,
      "--logfile", "redis.log" }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    self.proc = assert(tether.spawn("redis-server", args, { stdio = "ignore" }))
    H.run_until(function() return require("lfs").attributes(sock) ~= nil end, 10)
  end
  function self.stop()
    if self.proc and self.proc.exit_code == nil and self.proc.signal == nil then
      self.proc:kill("SIGKILL")
      H.run_until(function() return self.proc.signal ~= nil or self.proc.exit_code ~= nil end, 10)
    end
    os.remove(sock)
  end
  function self.cli(...)
    local out = {}
    local c = assert(tether.spawn("redis-cli", { "-s", sock, ... }, { stdio = { stdout = "pipe" } }))
    c.stdout:on("data", function(d) out[#out + 1] = d end)
    H.run_until(function() return c.exit_code ~= nil end, 10)
    return table.concat(out)
  end
  self.start()
  return self
end

local function agent(r, queue, size)
  local a = assert(tether.fork(AGENT, { r.addr, queue, WORKER, size or 2 }, { detached = true }))
  return a
end

local function kill_group(a, sig)
  local k = assert(tether.spawn("kill", { "-" .. sig, "--", "-" .. a.pid }))
  H.run_until(function() return k.exit_code ~= nil end, 5)
end

local function finish_agent(a)
  if a.exit_code == nil and a.signal == nil then
    a:send("close")
    H.run_until(function() return a.exit_code ~= nil or a.signal ~= nil end, 15)
  end
end

-- submits n tasks; returns the results table (by n) and a predicate
local function submit(pool, n, ms, seen)
  local results, calls = {}, 0
  for i = 1, n do
    assert(pool:submit({ n = i, ms = ms }, function(err, r)
      calls = calls + 1
      assert(not err, tostring(err))
      assert(results[i] == nil, "a second callback for task " .. i)
      results[i] = r
      if seen then seen[r.task_id] = (seen[r.task_id] or 0) + 1 end
    end))
  end
  return results, function() return calls == n end
end

describe("pools across machines (Redis Streams)", function()
  H.leak_guard(before_each, after_each)

  before_each(function()
    if not HAS_REDIS then pending("redis-server is not installed") end
  end)

  it("runs every task once on two agents; results come back; Redis is left empty", function()
    local r = redis()
    local a1, a2 = agent(r, "q", 2), agent(r, "q", 2)
    local pool = assert(tether.pool { broker = r.addr, queue = "q" })
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
    assert.same({ submitted = 200, done = 200, failed = 0, late = 0, pending = 0 }, st)
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
    local pool = assert(tether.pool { broker = r.addr, queue = "qf" })
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
    pool:close()
    H.run_until(function() return pool.closed end)
    finish_agent(a1)
    r.stop()
  end)

  it("an agent killed with tasks in flight: its tasks run elsewhere, each callback once", function()
    local r = redis()
    local a1, a2 = agent(r, "qk", 2), agent(r, "qk", 2)
    local pool = assert(tether.pool { broker = r.addr, queue = "qk" })
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
    local pool = assert(tether.pool { broker = r.addr, queue = "qs" })
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

  it("Redis restarted (AOF) and connections killed mid-way: nothing lost, nothing twice", function()
    local r = redis { "--appendonly", "yes", "--appendfsync", "always" }
    local a1, a2 = agent(r, "qr", 2), agent(r, "qr", 2)
    local pool = assert(tether.pool { broker = r.addr, queue = "qr" })
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

  it("two submitters on one queue each get their own results", function()
    local r = redis()
    local a1 = agent(r, "q2", 2)
    local p1 = assert(tether.pool { broker = r.addr, queue = "q2" })
    local p2 = assert(tether.pool { broker = r.addr, queue = "q2" })
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
end)
