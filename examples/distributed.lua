-- A pool across machines on one machine: a redis-server of its own (a
-- Unix socket in a temp dir), two agents ("machines", each a process with
-- a local pool of 2 workers) and a submitter.  Needs redis-server
-- (Debian: apt-get install redis-server).  Run: lua5.4 examples/distributed.lua
local tether = require "tether"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
local sock = dir .. "/redis.sock"
local redis = assert(tether.spawn("redis-server", { "--port", "0", "--unixsocket", sock,
  "--save", "", "--dir", dir, "--logfile", "redis.log" }))
local broker = "unix:" .. sock

local agents, pool = {}, nil
local function cleanup()
  redis:kill("SIGTERM")
  os.execute("rm -rf " .. dir)
end

-- wait until Redis says it is ready, then start the agents and submit
local wait
wait = tether.every(20, function()
  local f = io.open(dir .. "/redis.log")
  local log = f and f:read("a") or ""
  if f then f:close() end
  if not log:find("ready to accept connections", 1, true) then return end
  wait:stop()
  for i = 1, 2 do
    agents[i] = assert(tether.fork(here .. "distributed_agent.lua", { broker, "machine-" .. i }))
  end
  pool = assert(tether.pool{ broker = broker, queue = "squares" })
  tether.go(function()
    local tasks = {}
    for n = 1, 40 do tasks[n] = { n = n } end
    local t0 = tether.now()
    local results = assert(pool:map(tasks))
    local per_host, sum = {}, 0
    for _, r in ipairs(results) do
      sum = sum + r.square
      per_host[r.host] = (per_host[r.host] or 0) + 1
    end
    print(("40 tasks in %d ms, sum of squares %d (right: %d)"):format(tether.now() - t0, sum, 40 * 41 * 81 / 6))
    for host, k in pairs(per_host) do print(("  %s ran %d"):format(host, k)) end
    print("stats: " .. require("tether.json").encode(pool:stats()))
    pool:close(function()
      local left = #agents
      for _, a in ipairs(agents) do
        a:on("exit", function()
          left = left - 1
          if left == 0 then cleanup() end
        end)
        a:send("stop")
      end
    end)
  end)
end)

tether.run()
