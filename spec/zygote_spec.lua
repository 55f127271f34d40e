-- Prefork: workers forked from a warmed zygote (core/tt_zygote.h,
-- lua/tether/zygote.lua) instead of started by exec.
local tether = require "tether"
local H = require "helper"

local function stat_field(pid, n)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local s = f:read("l")
  f:close()
  -- (a process that ended between the listing and the read has nothing)
  local rest = s and s:match("%) (.*)$")
  if not rest then return nil end
  local fields = {}
  for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
  return tonumber(fields[n - 2])
end

local function my_pid() return H.pid() end

-- a child that reports what it is and what it has
local REPORT = [[
local tether = require "tether"
local fds = {}
local p = io.popen("ls /proc/" .. tostring(tether.core.getpid()) .. "/fd")
for l in p:lines() do fds[#fds + 1] = tonumber(l) end
p:close()
table.sort(fds)
tether.parent:send({ pid = tether.core.getpid(), args = { ... }, arg0 = arg[0], env = os.getenv("ZY_VAR"),
  cwd = tether.core.getcwd(), fds = fds, random = math.random(1 << 40),
  preloaded = package.loaded["zy_preload_mod"] and package.loaded["zy_preload_mod"].loaded_in or false })
]]

describe("prefork (zygote)", function()
  local z

  setup(function()
    z = assert(tether.zygote {})
  end)

  local function report(opts, args)
    local script = H.script(REPORT)
    local c = assert(tether.fork(script, args or { "a", "b" }, opts))
    local got
    c:on("message", function(m) got = m end)
    H.run_until(function() return got ~= nil and c.exit_code ~= nil end, 10)
    return got, c
  end

  it("forks a worker that is our own child, with its args, env, cwd and only its descriptors", function()
    local dir = H.tmpfile("zy-cwd")
    require("lfs").mkdir(dir)
    local got, c = report({ prefork = z, env = { ZY_VAR = "v" }, cwd = dir })
    assert.are.equal(c.pid, got.pid)
    assert.are_not.equal(z.pid, got.pid)
    assert.are.same({ "a", "b" }, got.args)
    assert.matches("%.lua$", got.arg0)
    assert.are.equal("v", got.env)
    assert.are.equal(dir, got.cwd)
    assert.are.same({ 0, 1, 2, 3 }, { got.fds[1], got.fds[2], got.fds[3], got.fds[4] })
    assert.are.equal(0, c.exit_code)
    -- nothing of the zygote's: as many descriptors as an exec'd worker has
    -- (stdio, the channel, its loop's, the `ls` pipe)
    local exec = report({ env = { ZY_VAR = "v" }, cwd = dir })
    assert(#got.fds <= #exec.fds, ("forked %s, exec'd %s"):format(table.concat(got.fds, ","),
      table.concat(exec.fds, ",")))
  end)

  it("reports a killed worker's signal, as for any child", function()
    local c = assert(tether.fork(H.script([[
      local tether = require "tether"
      tether.parent:send("up")
      tether.every(1000, function() end)
    ]]), {}, { prefork = z }))
    local up
    c:on("message", function() up = true end)
    H.run_until(function() return up end, 10)
    assert.are.equal(my_pid(), stat_field(c.pid, 4), "its parent is us")
    c:kill("SIGKILL")
    H.run_until(function() return c.signal ~= nil end, 10)
    assert.are.equal("SIGKILL", c.signal)
  end)

  it("gives each worker its own random sequence", function()
    local a = report({ prefork = z })
    local b = report({ prefork = z })
    assert.are_not.equal(a.random, b.random)
  end)

  it("pipes a worker's output like an exec'd one's", function()
    local out = {}
    local c = assert(tether.fork(H.script([[print("from the zygote's child")]]), {},
      { prefork = z, stdio = { stdout = "pipe" } }))
    c.stdout:on("data", function(d) out[#out + 1] = d end)
    H.run_until(function() return c.exit_code ~= nil end, 10)
    H.run(5)
    assert.matches("from the zygote's child", table.concat(out))
  end)

  it("runs a supervisor's and a pool's workers, restarts included", function()
    local sup = assert(tether.supervise { script = H.script([[
      local tether = require "tether"
      tether.parent:on("message", function() end)
    ]]), instances = 3, prefork = true, handle_signals = false })
    H.run_until(function()
      local n = 0
      for _, w in ipairs(sup:workers()) do if w.state == "running" then n = n + 1 end end
      return n == 3
    end, 10)
    local first = sup:workers()[1].pid
    assert.are.equal(my_pid(), stat_field(first, 4))
    sup:kill(1, "SIGKILL")
    H.run_until(function()
      local w = sup:workers()[1]
      return w.state == "running" and w.pid ~= first
    end, 10)
    sup:stop()
    H.run(10)

    local pool = assert(tether.pool { script = H.script([[
      local tether = require "tether"
      tether.serve(function(n) return n * 2 end)
    ]]), size = 4, prefork = true })
    local sum, n = 0, 0
    for i = 1, 50 do pool:submit(i, function(err, v) assert.is_nil(err) sum, n = sum + v, n + 1 end) end
    H.run_until(function() return n == 50 end, 10)
    assert.are.equal(2550, sum)
    pool:close()
    H.run(10)
  end)

  it("preloads modules in the zygote, before any worker", function()
    if not tether.core.can_prefork() then
      assert.is_true(z.inert)
      return pending("no pidfds here (valgrind): workers are exec'd")
    end
    local dir = H.tmpfile("zy-mod")
    require("lfs").mkdir(dir)
    local f = assert(io.open(dir .. "/zy_preload_mod.lua", "w"))
    f:write([[return { loaded_in = require("tether").core.getpid() }]])
    f:close()
    local saved = package.path
    package.path = dir .. "/?.lua;" .. package.path
    local z2 = assert(tether.zygote { preload = { "zy_preload_mod" } })
    package.path = saved
    local got = report({ prefork = z2 })
    assert.are.equal(z2.pid, got.preloaded, "the module was loaded once, in the zygote")
  end)

  it("falls back to exec when the zygote is gone, or never started", function()
    if not tether.core.can_prefork() then return pending("no pidfds here (valgrind)") end
    local z3 = assert(tether.zygote { preload = { "no.such.module" } })
    H.run_until(function() return z3.dead end, 10)
    local got, c = report({ prefork = z3 })
    assert.are.equal(c.pid, got.pid)
    assert.is_false(got.preloaded)
    local z4 = assert(tether.zygote {})
    os.execute("kill -9 " .. z4.pid)
    H.run_until(function() return z4.dead end, 10)
    got = report({ prefork = z4 })
    assert.are.same({ "a", "b" }, got.args)
  end)

  -- our children running zygote_main.lua other than the zygote and those
  -- in `before` (other zygotes' spares): its spares
  local function spares_of(zy, before)
    local out = {}
    local p = io.popen("ls /proc")
    for name in p:lines() do
      local pid = tonumber(name)
      if pid and pid ~= zy.pid and not (before and before[pid]) and stat_field(pid, 4) == my_pid() then
        local f = io.open("/proc/" .. pid .. "/cmdline")
        local cmd = f and f:read("a") or ""
        if f then f:close() end
        if cmd:find("zygote_main", 1, true) then out[#out + 1] = pid end
      end
    end
    p:close()
    return out
  end

  local function alive(pid) return io.open("/proc/" .. pid .. "/stat") ~= nil end

  -- a new zygote, and a function giving its spare once there is one (not
  -- those of zygotes made before it)
  local function zygote_with_spares(opts)
    local before = {}
    for _, pid in ipairs(spares_of({})) do before[pid] = true end
    local zy = assert(tether.zygote(opts or {}))
    local function next_spare()
      local spare
      H.run_until(function() spare = spares_of(zy, before)[1] return spare ~= nil end, 10)
      return spare
    end
    return zy, next_spare, function() return spares_of(zy, before) end
  end

  it("keeps a spare ready, our child, which serves the next request; a spare never used is reaped", function()
    if not tether.core.can_prefork() then return pending("no pidfds here (valgrind)") end
    local z5, spare_of_z5, spares_of_z5 = zygote_with_spares()
    local spare = spare_of_z5()
    local got, c = report({ prefork = z5 })
    assert.are.equal(spare, got.pid, "the spare became the worker")
    assert.are.equal(0, c.exit_code)
    local next_spare = spare_of_z5()
    assert.are_not.equal(spare, next_spare)
    os.execute("kill -9 " .. z5.pid)
    H.run_until(function() return z5.dead end, 10)
    assert.is_false(alive(next_spare), "the spare outlived its zygote, or was left a zombie")
    assert.are.same({}, spares_of_z5())
  end)

  it("stops the zygote when its spare dies unused; workers are exec'd then", function()
    if not tether.core.can_prefork() then return pending("no pidfds here (valgrind)") end
    local z6, spare_of_z6 = zygote_with_spares()
    local spare = spare_of_z6()
    os.execute("kill -9 " .. spare)
    H.run_until(function() return z6.dead end, 10)
    assert.are.equal(1, z6.exit_code)
    assert.is_false(alive(spare), "the dead spare was not reaped")
    local got, c = report({ prefork = z6 })
    assert.are.equal(c.pid, got.pid)
    assert.are.same({ "a", "b" }, got.args)
  end)

  it("keeps as many spares as asked; each serves one request; the unused are reaped", function()
    if not tether.core.can_prefork() then return pending("no pidfds here (valgrind)") end
    local z7, _, spares_of_z7 = zygote_with_spares { spares = 3 }
    H.run_until(function() return #spares_of_z7() == 3 end, 10)
    local seen = {}
    for _ = 1, 7 do -- back to back: more than it has ready
      local got, c = report({ prefork = z7 })
      assert.are.same({ "a", "b" }, got.args)
      assert.are.equal(c.pid, got.pid)
      assert.is_nil(seen[got.pid], "one spare served twice")
      seen[got.pid] = true
      assert.is_true(#spares_of_z7() <= 3)
    end
    H.run_until(function() return #spares_of_z7() == 3 end, 10)
    local last = spares_of_z7()
    z7._asker:close() -- (as when the zygote exits)
    H.run_until(function() return z7.dead end, 10)
    for _, pid in ipairs(last) do assert.is_false(alive(pid), "a spare outlived its zygote, or was left a zombie") end
  end)

  it("refuses bad options", function()
    for _, bad in ipairs { 0, 65, 1.5, "2" } do
      local ok, err = pcall(tether.zygote, { spares = bad })
      assert.is_false(ok)
      assert.matches("spares", err)
    end
    assert.has_error(function() tether.fork("x.lua", {}, { prefork = "yes" }) end)
    assert.has_error(function() tether.zygote { preload = "cjson" } end)
    assert.has_error(function() tether.zygote { bogus = 1 } end)
  end)
end)
