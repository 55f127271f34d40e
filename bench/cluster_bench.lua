--- HTTP under a cluster (issue 14): tether.cluster against Node's cluster
-- module, 2 workers each, driven by wrk, in one run.
--
-- The servers (all on 127.0.0.1, an ephemeral port):
--   tether-rr          tether.cluster{balance = "rr"}: the parent accepts and
--                      hands each connection to the worker with the fewest
--                      open ones
--   tether-shared      balance = "shared": both workers accept on one socket
--   tether-reuseport   balance = "reuseport": a SO_REUSEPORT socket per worker
--     (all three run examples/cluster_worker.lua: a luv HTTP/1.1 keep-alive
--     responder, a fixed body)
--   node-rr            bench/cluster_node.js: node:cluster, SCHED_RR (the
--                      primary accepts and hands connections round robin),
--                      a raw `net` responder parsing requests the way the luv
--                      one does
--   node-shared        the same with NODE_CLUSTER_SCHED_POLICY=none (the
--                      workers accept on the shared socket)
--   node-http-rr       SCHED_RR with http.createServer (Node's parser): what a
--                      Node user would write; one run (CLUSTER_HTTP_REPS)
--
-- 1. Throughput: wrk -t2 -c64 -d5s --latency (keep-alive) against each
--    server, CLUSTER_REPS (3) runs each, the cases alternated (the order
--    rotates each round), after a 1 s warm-up per server; the median
--    requests/s and p99 latency, and the ratio tether / Node (rr / rr,
--    shared / shared; reuseport against Node's rr, Node having no
--    reuseport).  Also the on-CPU time of the accepting parent (tether's
--    bench process, Node's primary) and of the workers, % of a core.
-- 2. Spread: requests each worker counted during the runs (the worker's
--    answer to the message "served"), as the share of the busiest worker.
-- 3. Reload under load: wrk -H "Connection: close" (a new connection per
--    request) for CLUSTER_RELOAD_DURATION (5 s); CLUSTER_RELOAD_AT (1.5 s)
--    in, cluster:reload() (tether) or a rolling restart (Node: fork a new
--    worker, wait for 'listening', then old.disconnect(), one at a time).
--    Failed requests = wrk's socket errors (connect, read, write, timeout)
--    + non-2xx answers.  Target: 0 for tether in every mode.
--
-- Output: "name value unit" lines as measured, "# notes", "CHECK name
-- PASS|FAIL detail" lines, a markdown table, and "RESULT cluster_... value"
-- lines at the end.  Every process started is stopped at the end, on
-- failure too (CHECK cluster_no_orphans).
--
-- Env: CLUSTER_DURATION (5, s per wrk run), CLUSTER_REPS (3),
--      CLUSTER_HTTP_REPS (1), CLUSTER_WARM (1, s; 0: none),
--      CLUSTER_THREADS (2), CLUSTER_CONNECTIONS (64),
--      CLUSTER_RELOAD_DURATION (5), CLUSTER_RELOAD_AT (1.5),
--      CLUSTER_CASES ("tether-rr tether-shared tether-reuseport node-rr
--      node-shared node-http-rr"), CLUSTER_RELOAD_CASES ("tether-rr
--      tether-shared tether-reuseport node-rr"; "" for none),
--      CLUSTER_INSTANCES (2), CLUSTER_NODE (node), CLUSTER_WRK (wrk).
-- Exits 1 if a check failed.
local tether = require "tether"

local function env_num(name, dflt)
  return tonumber(os.getenv(name) or "") or dflt
end
local DURATION = env_num("CLUSTER_DURATION", 5)
local REPS = env_num("CLUSTER_REPS", 3)
local HTTP_REPS = env_num("CLUSTER_HTTP_REPS", 1)
local WARM = env_num("CLUSTER_WARM", 1)
local THREADS = env_num("CLUSTER_THREADS", 2)
local CONNS = env_num("CLUSTER_CONNECTIONS", 64)
local RELOAD_DURATION = env_num("CLUSTER_RELOAD_DURATION", 5)
local RELOAD_AT = env_num("CLUSTER_RELOAD_AT", 1.5)
local INSTANCES = env_num("CLUSTER_INSTANCES", 2)
local CASES = os.getenv("CLUSTER_CASES")
  or "tether-rr tether-shared tether-reuseport node-rr node-shared node-http-rr"
local RELOAD_CASES = os.getenv("CLUSTER_RELOAD_CASES") or "tether-rr tether-shared tether-reuseport node-rr"
local NODE = os.getenv("CLUSTER_NODE") or "node"
local WRK = os.getenv("CLUSTER_WRK") or "wrk"
local START_S = 15 -- a server to be listening, a stop, a reload
local WRK_SLACK_S = 15 -- past its -d, wrk is killed

local DIR = debug.getinfo(1, "S").source:sub(2):match("^(.*/)") or "./"
local B = dofile(DIR .. "common.lua")
local slurp, self_pid, median, note, check, wait_for = B.slurp, B.self_pid, B.median, B.note, B.check, B.wait_for
local WORKER = DIR .. "../examples/cluster_worker.lua"
local NODE_SCRIPT = DIR .. "cluster_node.js"
local ORPHANS = "cluster_[w]orker|cluster_[n]ode\\.js|[w]rk .*127\\.0\\.0\\.1"
local function orphans() return B.orphans(ORPHANS) end
local EPOCH = os.time()

local results = {}
local function report(name, value, unit)
  results[#results + 1] = { name, value }
  io.write(("%-44s %12.6g %s\n"):format(name, value, unit))
  io.flush()
end

--- on-CPU ns of a process (all its threads: Node has helper threads)
local function cpu_ns(pid)
  local total, any = 0, false
  local p = io.popen("cat /proc/" .. math.tointeger(pid) .. "/task/*/schedstat 2>/dev/null")
  for line in p:lines() do
    local v = tonumber(line:match("^(%d+)"))
    if v then total, any = total + v, true end
  end
  p:close()
  return any and total or nil
end

---------------------------------------------------------------------------
-- processes we started, to stop at the end whatever happens

local live_servers, live_children = {}, {}
-- every pid we started or were told of (workers, node, wrk): none may be
-- left at the end.  pid -> a pattern its /proc/<pid>/cmdline matches (a
-- reused pid is not ours).  The tree is shared: other people's processes
-- matching ORPHANS are only noted, not counted.
local our_pids = {}
local function ours(pid, pattern)
  pid = math.tointeger(pid)
  if pid then our_pids[pid] = pattern end
end

local function spawn(cmd, args, opts)
  local c, err = tether.spawn(cmd, args, opts)
  if c then
    live_children[c] = true
    ours(c.pid, cmd)
    c:on("exit", function() live_children[c] = nil end)
  end
  return c, err
end


---------------------------------------------------------------------------
-- wrk

local function to_ms(v, unit)
  v = tonumber(v)
  if not v then return nil end
  if unit == "us" then return v / 1000 end
  if unit == "ms" then return v end
  if unit == "s" then return v * 1000 end
  if unit == "m" then return v * 60000 end
  return nil
end

local function parse_wrk(out)
  local r = {}
  r.rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
  r.requests = tonumber(out:match("(%d+) requests in"))
  local v, u = out:match("\n%s*99%%%s+([%d%.]+)(%a+)")
  r.p99_ms = to_ms(v, u)
  v, u = out:match("\n%s*50%%%s+([%d%.]+)(%a+)")
  r.p50_ms = to_ms(v, u)
  local c, rd, w, t = out:match("Socket errors: connect (%d+), read (%d+), write (%d+), timeout (%d+)")
  r.connect, r.read, r.write, r.timeout = tonumber(c) or 0, tonumber(rd) or 0, tonumber(w) or 0, tonumber(t) or 0
  r.non2xx = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  r.failed = r.connect + r.read + r.write + r.timeout + r.non2xx
  return r
end

--- runs wrk for `secs` (at most secs + WRK_SLACK_S): its parsed output, or
-- nil, err.  `during(child)` is called once it runs.
local function run_wrk(port, secs, extra, during)
  local args = { "-t" .. THREADS, "-c" .. CONNS, "-d" .. secs .. "s", "--latency" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  args[#args + 1] = ("http://127.0.0.1:%d/"):format(port)
  local child, err = spawn(WRK, args, { stdio = { stdin = "ignore", stdout = "pipe", stderr = "pipe" },
    channel = false })
  if not child then return nil, "wrk: " .. tostring(err) end
  local out, errout = {}, {}
  child.stdout:on("data", function(d) out[#out + 1] = d end)
  child.stderr:on("data", function(d) errout[#errout + 1] = d end)
  local code, sig = wait_for(secs + WRK_SLACK_S, function(done)
    child:on("exit", function(c, s) done(c, s) end)
    if during then during(child) end
  end)
  if code == nil and sig == "timeout" then
    child:kill("SIGKILL")
    return nil, "wrk did not finish in time"
  end
  out = table.concat(out)
  if code ~= 0 then
    return nil, ("wrk exit %s %s: %s"):format(tostring(code), tostring(sig), table.concat(errout) .. out)
  end
  local r = parse_wrk(out)
  if not r.rps then return nil, "wrk output not understood: " .. out end
  r.raw = out
  return r
end

---------------------------------------------------------------------------
-- servers: {name, port, served() -> {[id] = {pid=, n=}}, reload() -> ms,
-- stop(), primary_pid}

local function tether_server(mode)
  local c, err = tether.cluster { script = WORKER, instances = INSTANCES,
    listen = "tcp://127.0.0.1:0", balance = mode }
  if not c then return nil, "tether.cluster: " .. tostring(err) end
  local self = { name = "tether-" .. mode, primary_pid = tonumber(self_pid()), cluster = c }
  live_servers[self] = true
  local started, on_started = 0, nil
  c:on("start", function(w)
    ours(w.pid, "cluster_worker")
    started = started + 1
    if on_started then on_started() end
  end)
  local errors = 0
  c:on("error", function(e)
    errors = errors + 1
    if errors <= 5 then note("%s error: %s", self.name, tostring(e)) end
  end)
  local replies, on_reply = {}, nil
  c:on("message", function(w, msg)
    if type(msg) == "table" and msg.served then
      replies[w.id] = { pid = math.tointeger(msg.pid) or msg.pid, n = msg.served }
      ours(msg.pid, "cluster_worker")
      if on_reply then on_reply() end
    end
  end)

  function self.served()
    replies = {}
    local got = wait_for(5, function(done)
      on_reply = function()
        local n = 0
        for _ in pairs(replies) do n = n + 1 end
        if n >= INSTANCES then done(true) end
      end
      for id = 1, INSTANCES do c:send(id, "served") end
    end)
    on_reply = nil
    if not got then return nil, "no answer from every worker" end
    return replies
  end

  function self.reload()
    local t0 = tether.hrtime()
    local r, e = wait_for(START_S, function(done)
      local okr, er = c:reload(function(e2) done(e2 == nil, e2) end)
      if not okr then done(false, er) end
    end)
    if not r then return nil, tostring(e) end
    return (tether.hrtime() - t0) / 1e6
  end

  function self.stop()
    if self.stopped then return true end
    self.stopped = true
    local r = wait_for(START_S, function(done) c:stop(function() done(true) end) end)
    live_servers[self] = nil
    return r
  end

  function self.errors() return errors end

  local ok = wait_for(START_S, function(done)
    on_started = function() if started >= INSTANCES then done(true) end end
    on_started()
  end)
  on_started = nil
  if not ok then
    self.stop()
    return nil, self.name .. ": workers not started in time"
  end
  self.port = select(2, c:address())
  return self
end

local function node_server(name, impl, sched)
  local child, err = spawn("timeout", { "-k", "5", "600", NODE, NODE_SCRIPT, "--impl", impl },
    { stdio = { stdin = "pipe", stdout = "pipe", stderr = "inherit" }, channel = false,
      env = { NODE_CLUSTER_SCHED_POLICY = sched } })
  if not child then return nil, "node: " .. tostring(err) end
  local self = { name = name, child = child }
  live_servers[self] = true
  local waiter, exited = nil, false
  local served_acc = {}
  B.on_lines(child.stdout, function(line)
    if line:match("^SERVED ") then
      local id, pid, n = line:match("^SERVED (%d+) (%d+) (%d+)")
      served_acc[tonumber(id)] = { pid = tonumber(pid), n = tonumber(n) }
      ours(pid, "cluster_node")
    end
    if waiter then waiter(line) end
  end)
  child:on("exit", function()
    exited = true
    if waiter then waiter(nil) end
  end)
  local function wait_line(prefix, secs)
    local line = wait_for(secs, function(done)
      waiter = function(l)
        if l == nil then return done(nil) end
        if l:sub(1, #prefix) == prefix then done(l) end
      end
    end)
    waiter = nil
    return line
  end

  function self.served()
    if exited then return nil, "node exited" end
    served_acc = {}
    local l = wait_for(5, function(done)
      waiter = function(x)
        if x == nil or x:match("^SERVED_END") then done(x) end
      end
      child.stdin:write("served\n")
    end)
    waiter = nil
    if not l then return nil, "no SERVED_END" end
    return served_acc
  end

  function self.reload()
    if exited then return nil, "node exited" end
    local l = wait_for(START_S, function(done)
      waiter = function(x)
        if x == nil or x:match("^RELOADED") then done(x) end
      end
      child.stdin:write("reload\n")
    end)
    waiter = nil
    local ms = l and tonumber(l:match("^RELOADED ([%d%.]+)"))
    if not ms then return nil, "no RELOADED line" end
    return ms
  end

  function self.stop()
    if self.stopped then return true end
    self.stopped = true
    local ok = exited or wait_for(START_S, function(done)
      child:on("exit", function() done(true) end)
      child.stdin:write("stop\n")
      child.stdin["end"](child.stdin)
    end)
    if not exited then
      child:kill("SIGKILL")
      wait_for(2, function(done) child:on("exit", function() done(true) end) end)
    end
    live_servers[self] = nil
    return ok
  end

  function self.errors() return 0 end

  local line = wait_line("PORT ", START_S)
  if not line then
    self.stop()
    return nil, name .. ": no PORT line"
  end
  local port, policy = line:match("^PORT (%d+) (%S+)")
  self.port, self.policy = tonumber(port), policy
  -- the primary: node itself, timeout's child
  local p = io.popen("pgrep -P " .. child.pid)
  self.primary_pid = tonumber(p:read("l") or "")
  p:close()
  ours(self.primary_pid, "cluster_node")
  if self.primary_pid then
    p = io.popen("pgrep -P " .. self.primary_pid)
    for pid in p:lines() do ours(pid, "cluster_node") end
    p:close()
  end
  return self
end

local STARTERS = {
  ["tether-rr"] = function() return tether_server("rr") end,
  ["tether-shared"] = function() return tether_server("shared") end,
  ["tether-reuseport"] = function() return tether_server("reuseport") end,
  ["node-rr"] = function() return node_server("node-rr", "net", "rr") end,
  ["node-shared"] = function() return node_server("node-shared", "net", "none") end,
  ["node-http-rr"] = function() return node_server("node-http-rr", "http", "rr") end,
}
local ORDER = { "tether-rr", "tether-shared", "tether-reuseport", "node-rr", "node-shared", "node-http-rr" }

local function cleanup()
  for s in pairs(live_servers) do pcall(s.stop) end
  for c in pairs(live_children) do pcall(c.kill, c, "SIGKILL") end
end

---------------------------------------------------------------------------
-- the measurements

local runs = {}   -- case -> list of wrk results (with .cpu_parent, .cpu_workers)
local spread = {} -- case -> [id] = requests counted during the measured runs
local reloads = {} -- case -> {wrk result, reload ms}

--- per-worker counts now: pid -> n
local function counts(server)
  local r, err = server.served()
  if not r then return nil, err end
  local by_pid = {}
  for _, w in pairs(r) do by_pid[w.pid] = w.n end
  return by_pid
end

local function measure(case, server, secs, record)
  local before, err = counts(server)
  if not before then return nil, err end
  local pids = {}
  for pid in pairs(before) do pids[#pids + 1] = pid end
  local function cpu_all()
    local p = server.primary_pid and cpu_ns(server.primary_pid) or 0
    local w = 0
    for _, pid in ipairs(pids) do w = w + (cpu_ns(pid) or 0) end
    return p, w
  end
  collectgarbage()
  local p0, w0 = cpu_all()
  local t0 = tether.hrtime()
  local r, e = run_wrk(server.port, secs)
  local wall = (tether.hrtime() - t0)
  local p1, w1 = cpu_all()
  if not r then return nil, e end
  local after, err2 = counts(server)
  if not after then return nil, err2 end
  r.cpu_parent = (p1 - p0) / wall * 100
  r.cpu_workers = (w1 - w0) / wall * 100
  r.per_worker = {}
  local total = 0
  for pid, n in pairs(after) do
    local d = n - (before[pid] or 0)
    r.per_worker[#r.per_worker + 1] = d
    total = total + d
  end
  table.sort(r.per_worker, function(a, b) return a > b end)
  r.served = total
  if record then
    runs[case] = runs[case] or {}
    table.insert(runs[case], r)
    spread[case] = spread[case] or {}
    for i, d in ipairs(r.per_worker) do spread[case][i] = (spread[case][i] or 0) + d end
  end
  return r
end

local function ver(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local v = p:read("l") or "?"
  p:close()
  return v
end

local function reload_case(case, server)
  local before = counts(server) or {}
  local reload_ms, reload_err
  local p0, t0 = server.primary_pid and cpu_ns(server.primary_pid), tether.hrtime()
  local r, e = run_wrk(server.port, RELOAD_DURATION, { "-H", "Connection: close" }, function()
    tether.timer(math.floor(RELOAD_AT * 1000), function()
      tether.go(function()
        reload_ms, reload_err = server.reload()
      end)
    end)
  end)
  local p1, wall = server.primary_pid and cpu_ns(server.primary_pid), tether.hrtime() - t0
  if not r then
    check("cluster_reload_" .. case, false, e)
    return
  end
  if p0 and p1 then
    r.cpu_parent = (p1 - p0) / wall * 100
    r.parent_us_per_conn = r.requests and r.requests > 0 and (p1 - p0) / 1e3 / r.requests or nil
  end
  -- a reload still going on after wrk ended (should not: START_S)
  if not reload_ms and not reload_err then
    wait_for(START_S, function(done)
      local t
      t = tether.every(50, function() if reload_ms or reload_err then t:stop() done() end end)
    end)
  end
  local after = counts(server) or {}
  local replaced = 0
  for pid in pairs(after) do if not before[pid] then replaced = replaced + 1 end end
  reloads[case] = { wrk = r, ms = reload_ms, replaced = replaced }
  local key = case:gsub("-", "_")
  report(("cluster_reload_%s_failed"):format(key), r.failed,
    ("failed requests (connect %d, read %d, write %d, timeout %d, non-2xx %d) of %d, reload %s ms, %d new workers")
      :format(r.connect, r.read, r.write, r.timeout, r.non2xx, r.requests or 0,
        reload_ms and ("%.0f"):format(reload_ms) or ("FAILED " .. tostring(reload_err)), replaced))
  report(("cluster_reload_%s_per_s"):format(key), r.rps, "requests/s (Connection: close, during the reload)")
  if r.cpu_parent then
    report(("cluster_reload_%s_parent_cpu_pct"):format(key), r.cpu_parent, "% of a core, accepting parent")
  end
  if r.parent_us_per_conn then
    report(("cluster_reload_%s_parent_us_per_conn"):format(key), r.parent_us_per_conn,
      "us of parent CPU per connection (request)")
  end
  if reload_ms then report(("cluster_reload_%s_ms"):format(key), reload_ms, "ms for the rolling restart") end
  if case:match("^tether") then
    check("cluster_reload_" .. case, reload_ms ~= nil and r.failed == 0 and replaced == INSTANCES,
      ("%d failed, reload %s, %d of %d workers replaced"):format(r.failed,
        reload_ms and "done" or tostring(reload_err), replaced, INSTANCES))
  end
end

---------------------------------------------------------------------------

local function fmt(v, d)
  if v == nil then return "-" end
  if d then return ("%." .. d .. "f"):format(v) end
  if v >= 100 then return ("%.0f"):format(v) end
  if v >= 10 then return ("%.1f"):format(v) end
  return ("%.2f"):format(v)
end

local LABEL = {
  ["tether-rr"] = "tether rr (parent accepts)",
  ["tether-shared"] = "tether shared",
  ["tether-reuseport"] = "tether reuseport",
  ["node-rr"] = "Node cluster rr (net)",
  ["node-shared"] = "Node cluster shared / SCHED_NONE (net)",
  ["node-http-rr"] = "Node cluster rr (http.createServer)",
}
local VERSUS = { ["tether-rr"] = "node-rr", ["tether-shared"] = "node-shared", ["tether-reuseport"] = "node-rr" }

local function summary()
  local med = {}
  for _, case in ipairs(ORDER) do
    local rs = runs[case]
    if rs then
      local rps, p99, p50, cp, cw = {}, {}, {}, {}, {}
      for _, r in ipairs(rs) do
        rps[#rps + 1], p99[#p99 + 1], p50[#p50 + 1] = r.rps, r.p99_ms, r.p50_ms
        cp[#cp + 1], cw[#cw + 1] = r.cpu_parent, r.cpu_workers
      end
      local sp = spread[case]
      local total = 0
      for _, n in ipairs(sp) do total = total + n end
      med[case] = { rps = median(rps), p99 = median(p99), p50 = median(p50), cpu_parent = median(cp),
        cpu_workers = median(cw), n = #rs, min = math.min(table.unpack(rps)), max = math.max(table.unpack(rps)),
        busiest = total > 0 and sp[1] / total * 100 or nil, spread = sp }
      local m = med[case]
      local key = case:gsub("-", "_")
      report(("cluster_%s_per_s"):format(key), m.rps, ("requests/s, median of %d (%.0f - %.0f)"):format(m.n, m.min, m.max))
      report(("cluster_%s_p99_ms"):format(key), m.p99, "ms p99 latency (median)")
      report(("cluster_%s_parent_cpu_pct"):format(key), m.cpu_parent, "% of a core, accepting parent")
      report(("cluster_%s_workers_cpu_pct"):format(key), m.cpu_workers, "% of a core, both workers")
      if m.busiest then report(("cluster_%s_busiest_pct"):format(key), m.busiest, "% of the requests on the busiest worker") end
    end
  end
  local paired = {}
  for _, case in ipairs(ORDER) do
    local other = VERSUS[case]
    if other and med[case] and med[other] then
      local key = ("cluster_%s_vs_%s"):format(case:gsub("-", "_"), other:gsub("-", "_"))
      report(key, med[case].rps / med[other].rps, "ratio of the median requests/s")
      -- the same round's runs, a few seconds apart: less drift of the load
      local q = {}
      for i = 1, math.min(#runs[case], #runs[other]) do q[i] = runs[case][i].rps / runs[other][i].rps end
      paired[case] = median(q)
      local shown = {}
      for i, v in ipairs(q) do shown[i] = ("%.2f"):format(v) end
      note("%s / %s round by round: %s", case, other, table.concat(shown, " "))
      report(key .. "_paired", paired[case], "median of the ratios round by round")
    end
  end

  print()
  print(("wrk -t%d -c%d -d%ds --latency, keep-alive, %d workers; medians of the runs (requests/s min - max)")
    :format(THREADS, CONNS, DURATION, INSTANCES))
  print()
  print("| server | runs | requests/s | p50 ms | p99 ms | vs Node | parent CPU % | workers CPU % | requests per worker, busiest first (share) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for _, case in ipairs(ORDER) do
    local m = med[case]
    if m then
      local other = VERSUS[case]
      local ratio = other and med[other]
        and ("%.2f (/ %s; by round %.2f)"):format(m.rps / med[other].rps, other, paired[case]) or "-"
      local total, parts = 0, {}
      for _, n in ipairs(m.spread) do total = total + n end
      for _, n in ipairs(m.spread) do parts[#parts + 1] = ("%d (%.0f %%)"):format(n, total > 0 and n / total * 100 or 0) end
      print(("| %s | %d | %.0f (%.0f - %.0f) | %s | %s | %s | %.0f | %.0f | %s |"):format(LABEL[case], m.n, m.rps,
        m.min, m.max, fmt(m.p50, 2), fmt(m.p99, 2), ratio, m.cpu_parent, m.cpu_workers, table.concat(parts, " / ")))
    end
  end
  local any = false
  for _, case in ipairs(ORDER) do if reloads[case] then any = true end end
  if any then
    print()
    print(("Reload under load: wrk -t%d -c%d -d%ds -H \"Connection: close\", the reload %.1f s in")
      :format(THREADS, CONNS, RELOAD_DURATION, RELOAD_AT))
    print()
    print("| server | failed requests | connect / read / write / timeout / non-2xx | requests | requests/s | p99 ms | reload ms | parent CPU % | parent CPU us / connection |")
    print("|---|---|---|---|---|---|---|---|---|")
    for _, case in ipairs(ORDER) do
      local rl = reloads[case]
      if rl then
        local r = rl.wrk
        print(("| %s | %d | %d / %d / %d / %d / %d | %d | %.0f | %s | %s | %s | %s |"):format(LABEL[case], r.failed,
          r.connect, r.read, r.write, r.timeout, r.non2xx, r.requests or 0, r.rps, fmt(r.p99_ms, 2),
          rl.ms and ("%.0f"):format(rl.ms) or "failed", r.cpu_parent and ("%.0f"):format(r.cpu_parent) or "-",
          fmt(r.parent_us_per_conn)))
      end
    end
  end
  print()
end

local function main()
  note("cluster bench: %d workers, wrk -t%d -c%d -d%ds x %d reps (node-http-rr x %d), warm-up %gs; reload: %gs, at %gs",
    INSTANCES, THREADS, CONNS, DURATION, REPS, HTTP_REPS, WARM, RELOAD_DURATION, RELOAD_AT)
  note("nproc=%s load=\"%s\" %s; node %s; %s", ver("nproc"), (slurp("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)"),
    ver("uname -srm"), ver(NODE .. " --version"), ver(WRK .. " -v"):match("^(wrk %S+)") or "wrk ?")
  local before = orphans()
  if before ~= "" then note("processes matching %s before the bench (not ours: the tree is shared): %s", ORPHANS, before) end

  local cases = {}
  for _, case in ipairs(ORDER) do
    if B.has(CASES, case) or B.has(RELOAD_CASES, case) then cases[#cases + 1] = case end
  end
  local servers = {}
  for _, case in ipairs(cases) do
    local s, err = STARTERS[case]()
    if not s then
      check("cluster_start_" .. case, false, err)
    else
      servers[case] = s
      if s.policy then note("%s: port %d, Node scheduling policy %s", case, s.port, s.policy)
      else note("%s: port %d", case, s.port) end
      if WARM > 0 and B.has(CASES, case) then
        local r, e = measure(case, s, WARM, false)
        if not r then check("cluster_warm_" .. case, false, e) end
      end
    end
  end

  -- 1 and 2: rounds of every case, the order rotating
  local bench_cases = {}
  for _, case in ipairs(cases) do if servers[case] and B.has(CASES, case) then bench_cases[#bench_cases + 1] = case end end
  for rep = 1, math.max(REPS, HTTP_REPS) do
    local n = #bench_cases
    for k = 0, n - 1 do
      local case = bench_cases[(rep - 1 + k) % n + 1]
      local reps = case == "node-http-rr" and HTTP_REPS or REPS
      if rep <= reps then
        local r, e = measure(case, servers[case], DURATION, true)
        if r then
          note("%s run %d: %.0f requests/s, p99 %s ms, per worker %s, parent CPU %.0f %%, workers %.0f %%, errors %d",
            case, rep, r.rps, fmt(r.p99_ms, 2), table.concat(r.per_worker, "/"), r.cpu_parent, r.cpu_workers, r.failed)
          if r.failed > 0 then check("cluster_run_" .. case, false, r.failed .. " failed requests") end
        else
          check("cluster_run_" .. case, false, e)
        end
      end
    end
  end

  -- 3: reload under load
  for _, case in ipairs(cases) do
    if servers[case] and B.has(RELOAD_CASES, case) then reload_case(case, servers[case]) end
  end

  for _, case in ipairs(cases) do
    local s = servers[case]
    if s then
      local errs = s.errors()
      local ok = s.stop()
      check("cluster_stop_" .. case, ok and errs == 0, ("stopped=%s, %d error events"):format(tostring(ok), errs))
    end
  end
  summary()
  note("cluster bench: %d s in all, load=\"%s\"", os.time() - EPOCH, (slurp("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)"))
end

local finished = false
tether.go(function()
  local ok, err = pcall(main)
  if not ok then check("cluster_bench", false, "raised: " .. tostring(err)) end
  local ok2, err2 = pcall(cleanup)
  if not ok2 then check("cluster_cleanup", false, tostring(err2)) end
  finished = true
  tether.stop()
end)
-- a signal: everything stopped, then out
local interrupted = false
for _, sig in ipairs({ "SIGINT", "SIGTERM" }) do
  tether.on_signal(sig, function()
    if interrupted then return end
    interrupted = true
    note("%s: stopping everything", sig)
    tether.go(function()
      pcall(cleanup)
      os.exit(130)
    end)
  end)
end
tether.run()
if not finished then check("cluster_bench_finished", false, "the loop ended before the bench did") end
-- the workers are gone once their cluster stopped; wait a little for exits
local function ours_alive()
  local left = {}
  for pid, pattern in pairs(our_pids) do
    local cmd = slurp("/proc/" .. pid .. "/cmdline")
    local stat = slurp("/proc/" .. pid .. "/stat") or ""
    -- a zombie (our own unreaped child) is not running
    if cmd and cmd:gsub("%z", " "):find(pattern, 1, true) and not stat:match("^%d+ %b() Z") then
      left[#left + 1] = pid
    end
  end
  table.sort(left)
  return table.concat(left, " ")
end
local left
for _ = 1, 30 do
  left = ours_alive()
  if left == "" then break end
  os.execute("sleep 0.1")
end
local n_ours = 0
for _ in pairs(our_pids) do n_ours = n_ours + 1 end
check("cluster_no_orphans", left == "", left == "" and ("none of the %d processes we started or were told of is left"):format(n_ours)
  or "left running: " .. left)
local others = orphans()
if others ~= "" then note("other processes matching %s (not ours: the tree is shared): %s", ORPHANS, others) end
for _, r in ipairs(results) do
  io.write(("RESULT %s %.6g\n"):format(r[1], r[2]))
end
os.exit(B.failed == 0 and 0 or 1)
