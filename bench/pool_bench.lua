--- Worker pool benchmark (issue 5, item 7): trivial tasks per second with
-- 2 workers, tether's pool side by side with Python's
-- multiprocessing.Pool(2) and Node's child_process.fork, in one run.
--
--  tether   tether.pool{size = 2, concurrency = C} over
--           bench/pool_echo_worker.lua (tether.serve of an echo),
--           for each C in POOL_CONCURRENCY (1 4 8): the POOL_N (20000) tasks
--           are submitted at once (pool:submit, one callback per task) and
--           the clock stops when the last callback ran; every result is
--           checked against its task.  Also pool:map over the same tasks
--           (the counterpart of Python's imap).  Payloads: the integers
--           1..N ("int") and 16-byte strings ("%016d", "str16").
--           Then the same N items chunked by hand, K per task, for K in
--           POOL_TETHER_CHUNKS (10 100 1000), with pool:map at concurrency
--           1: what a tether user gets by batching the way imap's
--           chunksize does (reported in items/s).
--  python   bench/pool_python.py: Pool(2).imap(echo, tasks, chunksize=K)
--           for K in POOL_CHUNKSIZES (1 10 100 1000), the map only (the
--           pool is started and warmed up before).
--  node     bench/pool_node.js: a parent and 2 fork() children echoing
--           process.send messages (JSON), the N tasks sent at once round
--           robin.
--
-- Every measurement is preceded by a warm-up burst (POOL_WARM tasks, N by
-- default: Node's JIT needs a full burst) and repeated POOL_REPS (3)
-- times; the median is reported.  Pools are started and warmed up
-- before any clock starts.
--
-- Output: "name value unit" lines as they are measured, the python and
-- node scripts' own lines, "CHECK name PASS|FAIL detail" lines, and at the
-- end one "RESULT name value" line per metric, all prefixed "pool_", which
-- bench/summarize.lua turns into the "Pool (issue 5)" table.
--
-- Env: POOL_N (20000), POOL_REPS (3), POOL_WARM (N), POOL_CONCURRENCY ("1 4 8"),
--      POOL_TETHER_CHUNKS ("10 100 1000", "" for none),
--      POOL_CASES (subset of "tether python node"), POOL_PYTHON (python3),
--      POOL_NODE (node), POOL_CHUNKSIZES ("1 10 100 1000").
-- Exits 1 if a check failed.
local tether = require "tether"

local N = tonumber(os.getenv("POOL_N") or "") or 20000
local REPS = tonumber(os.getenv("POOL_REPS") or "") or 3
local WARM = tonumber(os.getenv("POOL_WARM") or "") or N -- tasks in the warm-up burst
local CONCURRENCY = os.getenv("POOL_CONCURRENCY") or "1 4 8"
local CASES = os.getenv("POOL_CASES") or "tether python node"
local PYTHON = os.getenv("POOL_PYTHON") or "python3"
local NODE = os.getenv("POOL_NODE") or "node"
local CHUNKS = os.getenv("POOL_CHUNKSIZES") or "1 10 100 1000"
local TETHER_CHUNKS = os.getenv("POOL_TETHER_CHUNKS") or "10 100 1000"
local SIZE = 2
local LIMIT_S = 60 -- per external script, and per tether burst

local DIR = debug.getinfo(1, "S").source:sub(2):match("^(.*/)") or "./"
local B = dofile(DIR .. "common.lua")
local slurp, self_pid, median, note, check = B.slurp, B.self_pid, B.median, B.note, B.check
local wait_for, sh_quote = B.wait_for, B.sh_quote
local function orphans() return B.orphans("pool_[e]cho_worker|pool_[n]ode\\.js|pool_[p]ython\\.py") end
local WORKER = DIR .. "pool_echo_worker.lua"

---------------------------------------------------------------------------
-- reporting

local results = {}

local function report(name, value, unit)
  results[#results + 1] = { name, value }
  io.write(("%-36s %12.6g %s\n"):format(name, value, unit))
  io.flush()
end





--- on-CPU ns of a process's main thread (/proc/<pid>/schedstat); the
-- parent's libuv has no other busy thread here, the workers neither
local function cpu_ns(pid)
  local s = slurp("/proc/" .. pid .. "/schedstat")
  return s and tonumber(s:match("^(%d+)"))
end


local function nproc()
  local p = io.popen("getconf _NPROCESSORS_ONLN 2>/dev/null")
  local v = p and p:read("l")
  if p then p:close() end
  return v or "?"
end


---------------------------------------------------------------------------
-- tether

local PAYLOADS = {
  { "int", function(n) local t = {} for i = 1, n do t[i] = i end return t end },
  { "str16", function(n) local t = {} for i = 1, n do t[i] = ("%016d"):format(i) end return t end },
}


--- all tasks submitted at once; seconds until the last callback ran
local function burst(pool, tasks)
  local n, got, bad = #tasks, 0, nil
  local t0 = tether.hrtime()
  local ok, err = wait_for(LIMIT_S, function(done)
    for i = 1, n do
      local task = tasks[i]
      local sent, e = pool:submit(task, function(e2, r)
        if e2 or r ~= task then bad = bad or ("task %d: %s"):format(i, tostring(e2 or r)) end
        got = got + 1
        if got == n then done(true) end
      end)
      if not sent then return done(nil, e) end
    end
  end)
  local secs = (tether.hrtime() - t0) / 1e9
  if not ok then return nil, tostring(err) end
  if bad then return nil, bad end
  return secs
end

--- pool:map over the tasks (results in order, checked)
local function map_burst(pool, tasks)
  local t0 = tether.hrtime()
  local res, err = pool:map(tasks)
  local secs = (tether.hrtime() - t0) / 1e9
  if not res then return nil, tostring(err) end
  for i = 1, #tasks do
    if res[i] ~= tasks[i] then return nil, ("task %d: %s"):format(i, tostring(res[i])) end
  end
  return secs
end

local function workers_cpu(pool)
  local total = 0
  for _, w in ipairs(pool:workers()) do
    total = total + ((w.pid and cpu_ns(w.pid)) or 0)
  end
  return total
end

--- REPS measured runs of fn(pool, tasks) after a warm-up; median tasks/s,
-- and the parent's and the workers' CPU per task (us, median)
local function measure(pool, fn, tasks, label)
  local ok, err = fn(pool, { table.unpack(tasks, 1, math.min(WARM, #tasks)) })
  if not ok then return nil, err end
  local rates, pcpu, wcpu = {}, {}, {}
  local me = self_pid()
  for _ = 1, REPS do
    collectgarbage()
    local p0, w0 = cpu_ns(me), workers_cpu(pool)
    local secs, e = fn(pool, tasks)
    if not secs then return nil, e end
    local p1, w1 = cpu_ns(me), workers_cpu(pool)
    rates[#rates + 1] = #tasks / secs
    if p0 and p1 then pcpu[#pcpu + 1] = (p1 - p0) / 1e3 / #tasks end
    wcpu[#wcpu + 1] = (w1 - w0) / 1e3 / #tasks
    note("tether %s n=%d secs=%.3f verified", label, #tasks, secs)
  end
  return median(rates), #pcpu > 0 and median(pcpu) or nil, median(wcpu)
end

local function tether_case(conc)
  local pool, err = tether.pool { script = WORKER, size = SIZE,
    concurrency = conc }
  if not pool then
    check("pool_tether_c" .. conc, false, "tether.pool: " .. tostring(err))
    return
  end
  local errors = 0
  pool:on("error", function(e)
    errors = errors + 1
    if errors <= 5 then io.stderr:write("# pool error: " .. tostring(e) .. "\n") end
  end)
  local failed
  for _, p in ipairs(PAYLOADS) do
    local name, tasks = p[1], p[2](N)
    local label = ("c%d_%s"):format(conc, name)
    local rate, pcpu, wcpu = measure(pool, burst, tasks, "submit " .. label)
    if not rate then
      failed = label .. ": " .. tostring(pcpu)
      break
    end
    report(("pool_tether_%s_per_s"):format(label), rate,
      ("tasks/s (submit x %d at once, concurrency %d)"):format(N, conc))
    if pcpu then report(("pool_tether_%s_parent_cpu_us"):format(label), pcpu, "us of parent CPU per task") end
    report(("pool_tether_%s_workers_cpu_us"):format(label), wcpu, "us of worker CPU per task (both)")
    if name == "int" then
      local mrate, e = measure(pool, map_burst, tasks, "map " .. label)
      if not mrate then
        failed = "map " .. label .. ": " .. tostring(e)
        break
      end
      report(("pool_tether_map_%s_per_s"):format(label), mrate, "tasks/s (pool:map)")
    end
  end
  local s = pool:stats()
  local stopped = wait_for(LIMIT_S, function(done) pool:close(function() done(true) end) end)
  check("pool_tether_c" .. conc, not failed and errors == 0 and stopped and (s.retried or 0) == 0,
    failed or ("all verified, %d errors, %d retried, %d done, closed=%s"):format(errors,
      s.retried or 0, s.done or 0, tostring(stopped)))
end

--- the N items in tasks of k items each: items/s through pool:map at
-- concurrency 1, every item checked
local function tether_chunked()
  local pool, err = tether.pool { script = WORKER, size = SIZE }
  if not pool then
    check("pool_tether_chunked", false, "tether.pool: " .. tostring(err))
    return
  end
  local errors = 0
  pool:on("error", function() errors = errors + 1 end)
  local failed
  for k in TETHER_CHUNKS:gmatch("%d+") do
    k = tonumber(k)
    for _, p in ipairs(PAYLOADS) do
      local items = p[2](N)
      local chunks = {}
      for c = 1, (N + k - 1) // k do
        chunks[c] = { table.unpack(items, (c - 1) * k + 1, math.min(c * k, N)) }
      end
      local function run(pl, tasks)
        local t0 = tether.hrtime()
        local res, e = pl:map(tasks)
        local secs = (tether.hrtime() - t0) / 1e9
        if not res then return nil, tostring(e) end
        for c = 1, #tasks do
          local want, got = tasks[c], res[c]
          if type(got) ~= "table" or #got ~= #want then return nil, "chunk " .. c end
          for i = 1, #want do
            if got[i] ~= want[i] then return nil, ("chunk %d item %d: %s"):format(c, i, tostring(got[i])) end
          end
        end
        return secs
      end
      local label = ("chunk%d_%s"):format(k, p[1])
      local rate, e = measure(pool, run, chunks, "map " .. label)
      if not rate then
        failed = label .. ": " .. tostring(e)
        break
      end
      -- measure counted chunks: items/s
      report(("pool_tether_%s_per_s"):format(label), rate * N / #chunks,
        ("items/s (pool:map of %d chunks of %d, concurrency 1)"):format(#chunks, k))
    end
    if failed then break end
  end
  local stopped = wait_for(LIMIT_S, function(done) pool:close(function() done(true) end) end)
  check("pool_tether_chunked", not failed and errors == 0 and stopped,
    failed or ("all verified, %d errors, closed=%s"):format(errors, tostring(stopped)))
end

---------------------------------------------------------------------------
-- python and node: run to completion (the loop is idle meanwhile), their
-- RESULT lines collected

local function external(name, cmd)
  note("running %s", cmd)
  local p = io.popen(cmd .. " 2>&1")
  local got = 0
  for line in p:lines() do
    local rname, rval = line:match("^RESULT (%S+) (%S+)")
    if rname and tonumber(rval) then
      results[#results + 1] = { rname, tonumber(rval) }
      got = got + 1
      io.write(("%-36s %12.6g tasks/s\n"):format(rname, tonumber(rval)))
    else
      io.write(line:match("^#") and line or "# " .. line, "\n")
    end
    io.flush()
  end
  local ok, how, code = p:close()
  check("pool_" .. name, ok and got > 0, ("%d results, exit %s %s"):format(got, tostring(how), tostring(code)))
end

---------------------------------------------------------------------------

local function has(case) return B.has(CASES, case) end


local function main()
  local aff = io.popen("taskset -pc " .. (self_pid() or "self") .. " 2>/dev/null")
  local cpus = aff and (aff:read("a"):match(":%s*(%S+)") or "?")
  if aff then aff:close() end
  note("pool bench: %d workers, N=%d tasks per burst, %d reps (median), concurrency %s; nproc=%s, allowed cpus=%s",
    SIZE, N, REPS, CONCURRENCY, nproc(), cpus)
  local before = orphans()
  if before ~= "" then note("fixture processes already running before the bench: %s", before) end
  if has("tether") then
    for c in CONCURRENCY:gmatch("%d+") do tether_case(tonumber(c)) end
    if TETHER_CHUNKS:match("%d") then tether_chunked() end
  end
  local limit = "timeout -k 3 " .. LIMIT_S .. " "
  if has("python") then
    local v = io.popen(PYTHON .. " --version 2>&1")
    note("%s", v:read("l") or "python3 not found")
    v:close()
    external("python", ("%s%s %s %d %d %s %d"):format(limit, PYTHON, sh_quote(DIR .. "pool_python.py"),
      N, REPS, sh_quote(CHUNKS), WARM))
  end
  if has("node") then
    local v = io.popen(NODE .. " --version 2>&1")
    note("node %s", v:read("l") or "not found")
    v:close()
    external("node", ("%s%s %s %d %d %d"):format(limit, NODE, sh_quote(DIR .. "pool_node.js"), N, REPS, WARM))
  end
  local after = orphans()
  check("pool_no_orphans", after == before, after == "" and "no fixture process left"
    or "left running: " .. after)
end

local co = tether.go(main)
tether.run()
if coroutine.status(co) ~= "dead" then
  check("pool_bench_finished", false, "the loop ended before the bench did")
end
for _, r in ipairs(results) do
  io.write(("RESULT %s %.6g\n"):format(r[1], r[2]))
end
os.exit(B.failed == 0 and 0 or 1)
