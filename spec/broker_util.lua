-- Shared by the broker specs: a redis-server per test on a Unix socket in
-- a temp dir (no TCP port), agents as "machines" (a process in its own
-- session, killed as a whole), and task submission with checks.
local tether = require "tether"
local H = require "helper"

local B = {}

-- what the tests started, stopped by B.stop_all() after each test even
-- when one fails half-way (no redis-server or agent outlives its test)
local started = { servers = {}, agents = {}, pools = {} }

local function exists(p) local f = io.open(p) if f then f:close() end return f ~= nil end
B.HAS_REDIS = nil
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
  started.servers[#started.servers + 1] = self
  return self
end

local function agent(r, queue, size)
  local a = assert(tether.fork(AGENT, { r.addr, queue, WORKER, size or 2 }, { detached = true }))
  started.agents[#started.agents + 1] = a
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


B.HAS_REDIS = HAS_REDIS

-- a submitting pool the test started (closed at once after the test if
-- the test did not close it: its connections would keep the loop busy)
function B.pool(spec)
  local p = assert(tether.pool(spec))
  started.pools[#started.pools + 1] = p
  return p
end

function B.stop_all()
  for _, p in ipairs(started.pools) do
    if not p._closed then
      p._closed = true
      p._cmd:close()
      p._read:close()
    end
  end
  for _, a in ipairs(started.agents) do
    if a.exit_code == nil and a.signal == nil then
      kill_group(a, "KILL")
      H.run_until(function() return a.exit_code ~= nil or a.signal ~= nil end, 10)
    end
  end
  for _, r in ipairs(started.servers) do r.stop() end
  started = { servers = {}, agents = {}, pools = {} }
end
B.redis, B.agent, B.kill_group, B.finish_agent, B.submit = redis, agent, kill_group, finish_agent, submit
return B
