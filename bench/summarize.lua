--- Table of medians per (case, size, metric, anchor) over the given result
-- files, each anchor as a ratio to raw-c, and tether's targets checked;
-- then the supervisor bench's medians ("RESULT name value" lines) and its
-- checks ("CHECK name PASS|FAIL ..."); the pool bench's "RESULT pool_..."
-- and "CHECK pool_..." lines make the "Pool (issue 5)" tables instead, and
-- the Node bench's "RESULT node_..." and "CHECK node_..." lines the
-- "Node.js interop (issue 6)" tables.
--   lua5.4 bench/summarize.lua results1.txt [results2.txt ...]
local ORDER = { "tether", "raw-c", "libuv-c", "node-json", "node-advanced", "luv-lua" }
local CASES = { "pingpong", "call", "call-pipelined", "stream", "spawn1", "spawn32" }
local METRICS = { rt_per_s = "round trips/s", msgs_per_s = "msgs/s", MB_per_s = "MB/s", ms = "ms" }

local vals = {}
local sup, sup_order, checks, check_order = {}, {}, {}, {}
local pool, pool_checks, pool_check_order = {}, {}, {}
local nodeb, node_checks, node_check_order = {}, {}, {}
for _, file in ipairs(arg) do
  for line in io.lines(file) do
    local a, c, s, m, v = line:match("^anchor=(%S+) case=(%S+) size=(%d+) metric=(%S+) value=(%S+)")
    local rname, rval = line:match("^RESULT (%S+) (%S+)")
    local cname, cres = line:match("^CHECK (%S+) (%u+)")
    if rname and tonumber(rval) and rname:match("^node_") then
      nodeb[rname] = nodeb[rname] or {}
      table.insert(nodeb[rname], tonumber(rval))
    elseif cname and cname:match("^node_") then
      if not node_checks[cname] then
        node_checks[cname], node_check_order[#node_check_order + 1] = { PASS = 0, FAIL = 0 }, cname
      end
      node_checks[cname][cres] = (node_checks[cname][cres] or 0) + 1
    elseif rname and tonumber(rval) and rname:match("^pool_") then
      pool[rname] = pool[rname] or {}
      table.insert(pool[rname], tonumber(rval))
    elseif cname and cname:match("^pool_") then
      if not pool_checks[cname] then
        pool_checks[cname], pool_check_order[#pool_check_order + 1] = { PASS = 0, FAIL = 0 }, cname
      end
      pool_checks[cname][cres] = (pool_checks[cname][cres] or 0) + 1
    elseif rname and tonumber(rval) then
      if not sup[rname] then sup[rname], sup_order[#sup_order + 1] = {}, rname end
      table.insert(sup[rname], tonumber(rval))
    elseif cname then
      if not checks[cname] then
        checks[cname], check_order[#check_order + 1] = { PASS = 0, FAIL = 0 }, cname
      end
      checks[cname][cres] = (checks[cname][cres] or 0) + 1
    elseif a then
      local k = table.concat({ c, s, m }, "|")
      vals[k] = vals[k] or {}
      vals[k][a] = vals[k][a] or {}
      table.insert(vals[k][a], tonumber(v))
    end
  end
end

local function median(t)
  if not t then return nil end
  table.sort(t)
  local n = #t
  return n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
end

local function fmt(v)
  if not v then return "-" end
  if v >= 100 then return ("%.0f"):format(v) end
  if v >= 10 then return ("%.1f"):format(v) end
  return ("%.2f"):format(v)
end

local function size_str(n)
  n = tonumber(n)
  if n == 0 then return "-" end
  if n >= 1 << 20 and n % (1 << 20) == 0 then return (n >> 20) .. " MiB" end
  if n >= 1024 and n % 1024 == 0 then return (n >> 10) .. " KiB" end
  return n .. " B"
end

local keys = {}
for k in pairs(vals) do keys[#keys + 1] = k end
local function rank(k)
  local c, s, m = k:match("([^|]+)|([^|]+)|([^|]+)")
  local ci = 99
  for i, x in ipairs(CASES) do if x == c then ci = i end end
  return ci * 1e12 + tonumber(s) * 10 + (m == "MB_per_s" and 1 or 0)
end
table.sort(keys, function(a, b) return rank(a) < rank(b) end)

local present = {}
for _, a in ipairs(ORDER) do
  for _, k in ipairs(keys) do if vals[k][a] then present[#present + 1] = a break end end
end

-- the table of the anchors and the targets (skipped for a file with only
-- the supervisor bench)
local function anchors_table()
  print("| case | size | metric | " .. table.concat(present, " | ") .. " | tether / raw-c |")
  print("|" .. string.rep("---|", #present + 4))
  local ratio = {}
  for _, k in ipairs(keys) do
    local c, s, m = k:match("([^|]+)|([^|]+)|([^|]+)")
    local row = { c, size_str(s), METRICS[m] or m }
    for _, a in ipairs(present) do row[#row + 1] = fmt(median(vals[k][a])) end
    local t, r = median(vals[k].tether), median(vals[k]["raw-c"])
    -- a call is a round trip: compared with raw-c's ping-pong of the same size
    if c == "call" or c == "call-pipelined" then
      local pp = vals["pingpong|" .. s .. "|rt_per_s"]
      r = pp and median(pp["raw-c"])
    end
    local q = t and r and (m == "ms" and r / t or t / r)
    ratio[k] = q
    row[#row + 1] = q and ("%.2f"):format(q) or "-"
    print("| " .. table.concat(row, " | ") .. " |")
  end

  -- the targets of issues #2 and #3 (ratios to raw-c; spawn against luv-lua)
  local function r(k) return ratio[k] end
  local spawn_t, spawn_luv = median(vals["spawn1|0|ms"] and vals["spawn1|0|ms"].tether),
    median(vals["spawn1|0|ms"] and vals["spawn1|0|ms"]["luv-lua"])
  local targets = {
    { "ping-pong 16 B >= 0.8x raw-c", r("pingpong|16|rt_per_s"), 0.8 },
    { "stream 16 B >= 1.0x raw-c", r("stream|16|msgs_per_s"), 1.0 },
    { "stream 64 KiB >= 0.6x raw-c", r("stream|65536|msgs_per_s"), 0.6 },
    { "ping-pong 1 MiB >= 0.6x raw-c", r("pingpong|1048576|rt_per_s"), 0.6 },
    { "call 16 B >= 0.7x raw-c ping-pong", r("call|16|rt_per_s"), 0.7 },
    { "pipelined calls (1000 in flight) >= 3x serial calls",
      r("call-pipelined|16|rt_per_s") and r("call|16|rt_per_s") and r("call-pipelined|16|rt_per_s") / r("call|16|rt_per_s"), 3 },
    { "spawn of one worker <= 1.2x luv-lua", spawn_t and spawn_luv and spawn_luv / spawn_t, 1 / 1.2 },
  }
  print()
  for _, t in ipairs(targets) do
    local v = t[2]
    local shown = v and ("%.2f"):format(v) or "-"
    if t[1]:match("^spawn") and v then shown = ("%.2fx luv-lua"):format(1 / v) end
    print(("- %s: %s %s"):format(t[1], shown, v == nil and "(not measured)" or (v >= t[3] and "PASS" or "MISS")))
  end
end
if #keys > 0 then anchors_table() end

---------------------------------------------------------------------------
-- the supervisor bench

local SUP_UNITS = { ms = "ms", kib = "KiB", mib = "MiB", pct = "% of a core",
  per_s = "/s", worker = "per worker" }

local function sup_unit(name)
  if name:match("_per_s$") then return SUP_UNITS.per_s end
  return SUP_UNITS[name:match("_(%a+)$")] or ""
end

if #sup_order > 0 then
  print()
  print("| supervisor metric | unit | median | min | max | runs |")
  print("|---|---|---|---|---|---|")
  for _, name in ipairs(sup_order) do
    local t = sup[name]
    local lo, hi = math.min(table.unpack(t)), math.max(table.unpack(t))
    print(("| %s | %s | %s | %s | %s | %d |"):format(name, sup_unit(name), fmt(median(t)),
      fmt(lo), fmt(hi), #t))
  end
end
if #check_order > 0 then
  print()
  for _, name in ipairs(check_order) do
    local c = checks[name]
    print(("- %s: %s (%d PASS, %d FAIL)"):format(name, c.FAIL == 0 and "PASS" or "FAIL", c.PASS, c.FAIL))
  end
end

---------------------------------------------------------------------------
-- the pool bench (issue 5): tasks/s of tether's pool, Python's
-- multiprocessing.Pool(2).imap and Node fork() children, 2 workers each

local POOL_TARGET = 3 -- tether >= 3x Python's chunksize-1 rate
local PAYLOADS = { "int", "str16" }

local function pm(name) return median(pool[name] and { table.unpack(pool[name]) }) end

local function pool_tables()
  local conc, chunks, tchunks = {}, {}, {}
  for name in pairs(pool) do
    local c = name:match("^pool_tether_c(%d+)_int_per_s$")
    if c then conc[#conc + 1] = tonumber(c) end
    local k = name:match("^pool_python_int_chunk(%d+)_per_s$")
    if k then chunks[#chunks + 1] = tonumber(k) end
    k = name:match("^pool_tether_chunk(%d+)_int_per_s$")
    if k then tchunks[#tchunks + 1] = tonumber(k) end
  end
  table.sort(conc)
  table.sort(chunks)
  table.sort(tchunks)
  local runs = 0
  for _, t in pairs(pool) do runs = math.max(runs, #t) end

  -- the best chunksize, per payload (over the medians): Python's, and
  -- tether's with tasks chunked by hand
  local function best_of(list, name)
    local best, best_k = {}, {}
    for _, p in ipairs(PAYLOADS) do
      for _, k in ipairs(list) do
        local v = pm(name(p, k))
        if v and (not best[p] or v > best[p]) then best[p], best_k[p] = v, k end
      end
    end
    return best, best_k
  end
  local best, best_k = best_of(chunks, function(p, k) return ("pool_python_%s_chunk%d_per_s"):format(p, k) end)
  local tbest, tbest_k = best_of(tchunks, function(p, k) return ("pool_tether_chunk%d_%s_per_s"):format(k, p) end)

  print()
  print(("Pool (issue 5): tasks/s, 2 workers, medians of %d run%s"):format(runs, runs == 1 and "" or "s"))
  print()
  print("| implementation | int tasks/s | str16 tasks/s |")
  print("|---|---|---|")
  local function row(label, fmtname)
    local cells = {}
    for _, p in ipairs(PAYLOADS) do cells[#cells + 1] = fmt(pm(fmtname:format(p))) end
    if cells[1] ~= "-" or cells[2] ~= "-" then
      print(("| %s | %s |"):format(label, table.concat(cells, " | ")))
    end
  end
  for _, c in ipairs(conc) do
    row(("tether pool, submit, concurrency %d%s"):format(c, c == 1 and " (default)" or ""),
      "pool_tether_c" .. c .. "_%s_per_s")
  end
  for _, c in ipairs(conc) do
    row(("tether pool, map, concurrency %d"):format(c), "pool_tether_map_c" .. c .. "_%s_per_s")
  end
  for _, k in ipairs(tchunks) do
    row(("tether pool, map of chunks of %d items (items/s)"):format(k), "pool_tether_chunk" .. k .. "_%s_per_s")
  end
  for _, k in ipairs(chunks) do
    row(("python Pool(2).imap, chunksize %d"):format(k), "pool_python_%s_chunk" .. k .. "_per_s")
  end
  if next(best) then
    print(("| python best (chunksize %s / %s) | %s | %s |"):format(best_k.int or "-", best_k.str16 or "-",
      fmt(best.int), fmt(best.str16)))
  end
  row("node fork() x 2, JSON", "pool_node_%s_per_s")

  print()
  print("| tether pool | payload | / python chunksize 1 | / python best | / node | parent CPU us/task | workers CPU us/task |")
  print("|---|---|---|---|---|---|---|")
  local function ratio(a, b) return a and b and ("%.2f"):format(a / b) or "-" end
  for _, c in ipairs(conc) do
    for _, p in ipairs(PAYLOADS) do
      local t = pm(("pool_tether_c%d_%s_per_s"):format(c, p))
      if t then
        print(("| concurrency %d | %s | %s | %s | %s | %s | %s |"):format(c, p,
          ratio(t, pm(("pool_python_%s_chunk1_per_s"):format(p))), ratio(t, best[p]),
          ratio(t, pm(("pool_node_%s_per_s"):format(p))),
          fmt(pm(("pool_tether_c%d_%s_parent_cpu_us"):format(c, p))),
          fmt(pm(("pool_tether_c%d_%s_workers_cpu_us"):format(c, p)))))
      end
    end
  end

  for _, p in ipairs(PAYLOADS) do
    if tbest[p] and best[p] then
      print(("| chunked by hand, best (%d items per task) | %s | - | %s | - | - | - |"):format(tbest_k[p], p,
        ratio(tbest[p], best[p])))
    end
  end

  print()
  local function target(c, label)
    for _, p in ipairs(PAYLOADS) do
      local t = pm(("pool_tether_c%d_%s_per_s"):format(c, p))
      local py = pm(("pool_python_%s_chunk1_per_s"):format(p))
      local q = t and py and t / py
      print(("- tether %s >= %gx python chunksize 1 (%s): %s %s"):format(label, POOL_TARGET, p,
        q and ("%.2f"):format(q) or "-", q == nil and "(not measured)" or (q >= POOL_TARGET and "PASS" or "FAIL")))
    end
  end
  if #conc > 0 then
    target(conc[1], ("(concurrency %d%s)"):format(conc[1], conc[1] == 1 and ", the default" or ""))
    if #conc > 1 then target(conc[#conc], ("(concurrency %d)"):format(conc[#conc])) end
  end
  for _, name in ipairs(pool_check_order) do
    local c = pool_checks[name]
    print(("- %s: %s (%d PASS, %d FAIL)"):format(name, c.FAIL == 0 and "PASS" or "FAIL", c.PASS, c.FAIL))
  end
end
if next(pool) or #pool_check_order > 0 then pool_tables() end

---------------------------------------------------------------------------
-- the Node bench (issue 6): a tether Lua parent with a Node child against
-- a Node parent with a Node child, same messages; the other direction and
-- tether's native format for reference

local function nm(name) return median(nodeb[name] and { table.unpack(nodeb[name]) }) end

local function node_tables()
  local runs = 0
  for _, t in pairs(nodeb) do runs = math.max(runs, #t) end
  local big = nm("node_big_bytes") or 65536
  local CASES_N = {
    { "pingpong", "small", "ping-pong, `{n, s = \"hello\"}`", "round trips/s" },
    { "pingpong", "big", ("ping-pong, `{n, s = <%s string>}`"):format(size_str(big)), "round trips/s" },
    { "stream", "small", "stream, `{n, s = \"hello\"}`", "echoed msgs/s" },
    { "stream", "big", ("stream, `{n, s = <%s string>}`"):format(size_str(big)), "echoed msgs/s" },
  }
  local function v(impl, c, metric) return nm(("node_%s_%s_%s_%s"):format(impl, c[1], c[2], metric)) end
  local function ratio(a, b) return a and b and ("%.2f"):format(a / b) or "-" end

  print()
  print(("Node.js interop (issue 6): medians of %d run%s"):format(runs, runs == 1 and "" or "s"))
  print()
  print("| case | unit | tether Lua parent, node child (JSON) | Node parent, node child | Lua / Node | " ..
    "Node parent, tether Lua child (JSON) | tether Lua parent, Lua child (native) |")
  print("|---|---|---|---|---|---|---|")
  for _, c in ipairs(CASES_N) do
    local a, b = v("lua_node", c, "per_s"), v("node_node", c, "per_s")
    if a or b then
      print(("| %s | %s | %s | %s | %s | %s | %s |"):format(c[3], c[4], fmt(a), fmt(b), ratio(a, b),
        fmt(v("node_lua", c, "per_s")), fmt(v("lua_lua", c, "per_s"))))
    end
  end

  print()
  print("CPU per message (us, user + system, all threads), same runs:")
  print()
  print("| case | tether Lua parent | Node parent | Lua / Node | its node child, Lua parent | its node child, Node parent |")
  print("|---|---|---|---|---|---|")
  for _, c in ipairs(CASES_N) do
    local a, b = v("lua_node", c, "parent_cpu_us"), v("node_node", c, "parent_cpu_us")
    if a or b then
      print(("| %s | %s | %s | %s | %s | %s |"):format(c[3], fmt(a), fmt(b), ratio(a, b),
        fmt(v("lua_node", c, "child_cpu_us")), fmt(v("node_node", c, "child_cpu_us"))))
    end
  end
  if #node_check_order > 0 then
    print()
    for _, name in ipairs(node_check_order) do
      local c = node_checks[name]
      print(("- %s: %s (%d PASS, %d FAIL)"):format(name, c.FAIL == 0 and "PASS" or "FAIL", c.PASS, c.FAIL))
    end
  end
end
if next(nodeb) or #node_check_order > 0 then node_tables() end
