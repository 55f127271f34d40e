-- The `tether` command (bin/tether), driven as a user drives it: a real
-- daemon per test, in a home of its own (HOME and XDG_RUNTIME_DIR in a
-- temp directory).
local H = require "helper"
local lfs = require "lfs"

local ROOT = H.dir .. "/.."
local BIN = ROOT .. "/bin/tether"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

local T = {} -- the current test's home

local function new_home()
  local dir = H.tmpfile(("home%d"):format(math.random(1e9)))
  assert(lfs.mkdir(dir))
  assert(lfs.mkdir(dir .. "/run"))
  assert(lfs.mkdir(dir .. "/app"))
  T = { dir = dir, app = dir .. "/app", state = dir .. "/.tether", run = dir .. "/run/tether" }
  return T
end

--- tether(args..., {env = {...}, cwd = dir}) -> exit code, stdout, stderr
local function tether(...)
  local args, opts = { ... }, {}
  if type(args[#args]) == "table" then opts = table.remove(args) end
  local env = { HOME = T.dir, XDG_RUNTIME_DIR = T.dir .. "/run", TETHER_HOME = "" }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local parts = { "cd", q(opts.cwd or T.app), "&&", "env" }
  for k, v in pairs(env) do parts[#parts + 1] = q(k .. "=" .. v) end
  parts[#parts + 1] = H.LUA
  parts[#parts + 1] = q(BIN)
  for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
  local errf = T.dir .. "/stderr"
  parts[#parts + 1] = "2>" .. q(errf)
  local p = io.popen(table.concat(parts, " "), "r")
  local out = p:read("a")
  local _, _, code = p:close()
  return code, out, read(errf) or ""
end

--- tether_bg(name, args...): the command in the background; done(name)
-- says whether it ended, its exit code then in T.dir/name.code
local function tether_bg(name, ...)
  local env = { HOME = T.dir, XDG_RUNTIME_DIR = T.dir .. "/run", TETHER_HOME = "" }
  local parts = { "cd", q(T.app), "&&", "(", "env" }
  for k, v in pairs(env) do parts[#parts + 1] = q(k .. "=" .. v) end
  parts[#parts + 1] = H.LUA
  parts[#parts + 1] = q(BIN)
  for _, a in ipairs { ... } do parts[#parts + 1] = q(a) end
  local base = T.dir .. "/" .. name
  parts[#parts + 1] = (">%s 2>&1; echo $? >%s.tmp; mv %s.tmp %s.code ) </dev/null &"):format(q(base .. ".out"),
    q(base), q(base), q(base))
  assert(os.execute(table.concat(parts, " ")))
end

local function bg_code(name)
  return tonumber(read(T.dir .. "/" .. name .. ".code") or "")
end

local function ls_json()
  local code, out = tether("ls", "--json")
  local json = require "cjson"
  return json.decode(out), code
end

local function app(apps, name)
  for _, a in ipairs(apps) do if a.name == name then return a end end
end

local function pids(a)
  local list = {}
  for _, w in ipairs(a.workers) do list[#list + 1] = w.pid end
  table.sort(list)
  return list
end

local function daemon_pid()
  return tonumber(read(T.run .. "/daemon.pid") or "")
end

local function wait_until(pred, secs)
  local deadline = os.time() + (secs or 10) * H.scale
  while os.time() <= deadline do
    if pred() then return true end
    H.sleep(50)
  end
  return pred()
end

-- a worker that says hello (with its id and $GREETING) and then waits
local HELLO = [[
local tether = require "tether"
print(("hello %s %s"):format(os.getenv("TETHER_WORKER_ID"), tostring(os.getenv("GREETING"))))
io.stdout:flush()
tether.every(1000, function() end)
]]

describe("tether command", function()
  local started_pids

  before_each(function()
    new_home()
    started_pids = {}
  end)

  after_each(function()
    -- every test leaves no daemon and no worker behind
    local pid = daemon_pid()
    tether("kill")
    if pid and not wait_until(function() return not H.alive(pid) end, 5) then
      os.execute("kill -9 " .. pid)
      error("the daemon did not exit on `tether kill`")
    end
    for _, p in ipairs(started_pids) do
      assert(wait_until(function() return not H.alive(p) end, 5), "worker " .. p .. " outlived its daemon")
    end
  end)

  local function remember(a)
    for _, p in ipairs(pids(a)) do started_pids[#started_pids + 1] = p end
  end

  it("starts, lists, shows logs, reloads, stops and deletes an app", function()
    write(T.app .. "/hello.lua", HELLO)
    local code, out, err = tether("start", "hello.lua", "-i", "2", { env = { GREETING = "hi" } })
    assert.are.equal(0, code, err)
    assert.matches("hello%s+online%s+2/2", out)
    local apps = ls_json()
    local a = app(apps, "hello")
    assert.are.equal("online", a.status)
    assert.are.equal(2, #a.workers)
    remember(a)
    local first = pids(a)

    code, out = tether("ls")
    assert.are.equal(0, code)
    assert.matches("hello%s+online%s+2/2", out)

    assert(wait_until(function()
      local _, o = tether("logs", "hello", "--raw")
      return o:find("[1] hello 1 hi", 1, true) and o:find("[2] hello 2 hi", 1, true)
    end), "both workers' lines in the log")

    -- reload: new workers, the environment of the start kept
    code, out, err = tether("reload", "hello", { env = { GREETING = "other" } })
    assert.are.equal(0, code, err)
    a = app(ls_json(), "hello")
    remember(a)
    assert.are.equal("online", a.status)
    assert.are.equal(2, a.running)
    for _, p in ipairs(pids(a)) do
      assert.is_nil(({ [first[1]] = true, [first[2]] = true })[p], "a new generation")
    end
    for _, p in ipairs(first) do
      assert(wait_until(function() return not H.alive(p) end, 10), "the old generation stopped")
    end

    code = tether("stop", "hello")
    assert.are.equal(0, code)
    apps, code = ls_json()
    assert.are.equal(1, code, "ls says an app is down")
    assert.are.equal("stopped", app(apps, "hello").status)

    code = tether("restart", "hello")
    assert.are.equal(0, code)
    a = app(ls_json(), "hello")
    remember(a)
    assert.are.equal("online", a.status)

    code = tether("delete", "all")
    assert.are.equal(0, code)
    apps, code = ls_json()
    assert.are.equal(0, #apps)
    assert.are.equal(0, code)
  end)

  it("re-reads the config and the environment on restart, never caching it", function()
    write(T.app .. "/hello.lua", HELLO)
    local cfg = T.app .. "/hello.config.lua"
    write(cfg, [[return { name = "h", script = "hello.lua", env = { GREETING = "one-" .. (os.getenv("SUFFIX") or "none") } }]])
    local code, _, err = tether("start", "hello.config.lua", { env = { SUFFIX = "a" } })
    assert.are.equal(0, code, err)
    remember(app(ls_json(), "h"))
    assert(wait_until(function() return select(2, tether("logs", "h", "--raw")):find("hello 1 one-a", 1, true) end))

    write(cfg, [[return { name = "h", script = "hello.lua", env = { GREETING = "two-" .. (os.getenv("SUFFIX") or "none") } }]])
    code, _, err = tether("restart", "h", { env = { SUFFIX = "b" } })
    assert.are.equal(0, code, err)
    remember(app(ls_json(), "h"))
    -- the config was read again, with the environment of the start
    assert(wait_until(function() return select(2, tether("logs", "h", "--raw")):find("hello 1 two-a", 1, true) end))

    code, _, err = tether("reload", "h", "--update-env", { env = { SUFFIX = "c" } })
    assert.are.equal(0, code, err)
    remember(app(ls_json(), "h"))
    assert(wait_until(function() return select(2, tether("logs", "h", "--raw")):find("hello 1 two-c", 1, true) end))

    -- a config that no longer runs leaves the app as it was
    write(cfg, "return {")
    code, _, err = tether("restart", "h")
    assert.are.equal(1, code)
    assert.matches("hello.config.lua", err)
    assert.are.equal("online", app(ls_json(), "h").status)
  end)

  it("keeps an app running when a restart finds a spec the supervisor refuses", function()
    write(T.app .. "/hello.lua", HELLO)
    local cfg = T.app .. "/d.config.lua"
    write(cfg, 'return { name = "d1", script = "hello.lua" }')
    assert.are.equal(0, (tether("start", "d.config.lua")))
    local before = app(ls_json(), "d1")
    remember(before)
    write(cfg, 'return { name = "d1", script = "hello.lua", instances = "many" }')
    local code, _, err = tether("restart", "d1")
    assert.are.equal(1, code)
    assert.matches("option 'instances'", err)
    assert.matches("runs on as it was", err)
    local after = app(ls_json(), "d1")
    assert.are.equal("online", after.status)
    assert.are.same(pids(before), pids(after))
  end)

  it("answers a start of a script that exits before it is ready with why (exit 1)", function()
    write(T.app .. "/quits.lua", "os.exit(0)")
    local code, _, err = tether("start", "quits.lua")
    assert.are.equal(1, code)
    assert.matches("no worker is running after %d+ s: they exited %d+ times before they were ready", err)
  end)

  it("brings the saved apps back after the daemon was killed with -9", function()
    write(T.app .. "/hello.lua", HELLO)
    assert.are.equal(0, (tether("start", "hello.lua", "--name", "web", "-i", "2")))
    local code, out = tether("save")
    assert.are.equal(0, code)
    assert.matches("saved 1 app", out)
    local before = app(ls_json(), "web")
    remember(before)
    local pid = daemon_pid()
    assert.is_truthy(pid)
    os.execute("kill -9 " .. pid)
    -- its workers go with it (no orphan keeps serving beside the new ones)
    for _, p in ipairs(pids(before)) do
      assert(wait_until(function() return not H.alive(p) end, 5), "worker " .. p .. " died with its daemon")
    end
    code, out = tether("resurrect")
    assert.are.equal(0, code, out)
    assert.matches("started 1 app", out)
    local a = app(ls_json(), "web")
    remember(a)
    assert.are.equal("online", a.status)
    assert.are.equal(2, a.running)
    assert.are_not.equal(pid, daemon_pid())
  end)

  it("scales an app up and down, and keeps the size across restarts", function()
    write(T.app .. "/hello.lua", HELLO)
    assert.are.equal(0, (tether("start", "hello.lua", "-i", "2")))
    remember(app(ls_json(), "hello"))
    local code, out, err = tether("scale", "hello", "4")
    assert.are.equal(0, code, err)
    assert.matches("hello%s+online%s+4/4", out)
    local a = app(ls_json(), "hello")
    remember(a)
    assert.are.equal(4, a.running)
    code = tether("scale", "hello", "1")
    assert.are.equal(0, code)
    assert(wait_until(function()
      local b = app(ls_json(), "hello")
      return #b.workers == 1 and b.running == 1
    end, 10), "scaled down to one worker")
    assert.are.equal(0, (tether("restart", "hello")))
    a = app(ls_json(), "hello")
    remember(a)
    assert.are.equal(1, #a.workers)
    code, _, err = tether("scale", "hello", "0")
    assert.are.equal(2, code)
    assert.matches("N >= 1", err)
    code, _, err = tether("scale", "nope", "2")
    assert.are.equal(1, code)
    assert.matches("no app named", err)
  end)

  it("rotates an app's log by size, keeping the configured number of old files", function()
    write(T.app .. "/chatty.lua", [[
      local tether = require "tether"
      for i = 1, 3000 do print(("line %05d %s"):format(i, ("x"):rep(40))) end
      io.stdout:flush()
      tether.every(1000, function() end)
    ]])
    write(T.app .. "/chatty.config.lua", [[
      return { name = "chatty", script = "chatty.lua", log_rotate = { size = 8192, keep = 2 } }]])
    assert.are.equal(0, (tether("start", "chatty.config.lua")))
    remember(app(ls_json(), "chatty"))
    local base = T.state .. "/logs/chatty.out.log"
    assert(wait_until(function() return (read(base) or ""):find("line 03000", 1, true) end, 10),
      "the last line reached the current file")
    assert.is_truthy(read(base .. ".1"))
    assert.is_truthy(read(base .. ".2"))
    assert.is_nil(read(base .. ".3"), "only `keep` old files")
    -- whole lines, in order, none lost across the files that are kept
    local last
    for _, f in ipairs { base .. ".2", base .. ".1", base } do
      local text = read(f)
      assert(#text <= 8192, f .. " is over the size")
      for line in text:gmatch("([^\n]*)\n") do
        local n = tonumber(line:match("^%[1%] line (%d+) x+$"))
        assert(n, "a whole line: " .. line)
        if last then assert.are.equal(last + 1, n) end
        last = n
      end
    end
    assert.are.equal(3000, last)
    -- `tether logs` reads the current file
    assert.matches("line 03000", select(2, tether("logs", "chatty", "-n", "1", "--raw")))
  end)

  it("takes programs that are not Lua workers (cmd apps) down with a daemon killed with -9", function()
    write(T.app .. "/sl.config.lua", [[return { name = "sl", cmd = "sleep", args = { "4321" }, instances = 2 }]])
    assert.are.equal(0, (tether("start", "sl.config.lua")))
    local a = app(ls_json(), "sl")
    assert.are.equal(2, a.running)
    os.execute("kill -9 " .. daemon_pid())
    for _, p in ipairs(pids(a)) do
      assert(wait_until(function() return not H.alive(p) end, 5), "cmd worker " .. p .. " died with its daemon")
    end
  end)

  it("never changes the mode of a shared directory given as TETHER_HOME", function()
    local shared = T.dir .. "/shared"
    assert(lfs.mkdir(shared))
    os.execute("chmod 1777 " .. q(shared))
    local code, _, err = tether("ls", { env = { TETHER_HOME = shared } })
    assert.are.equal(2, code)
    assert.matches("mode 0700", err)
    assert.are.equal("rwxrwxrwx", lfs.attributes(shared, "permissions"))
  end)

  it("never replaces a dump of apps by an empty one, and keeps the previous dump", function()
    write(T.app .. "/hello.lua", HELLO)
    assert.are.equal(0, (tether("start", "hello.lua")))
    remember(app(ls_json(), "hello"))
    assert.are.equal(0, (tether("save")))
    assert.are.equal(0, (tether("save")))
    assert.is_truthy(read(T.state .. "/dump.json.bak"), "the previous dump is kept")
    assert.are.equal(0, (tether("delete", "all")))
    local code, _, err = tether("save")
    assert.are.equal(1, code)
    assert.matches("refusing to replace", err)
    assert.matches('"hello"', read(T.state .. "/dump.json"))
    -- a dump that cannot be read: the previous one is used
    write(T.state .. "/dump.json", "{ not json")
    local out
    code, out = tether("resurrect")
    assert.are.equal(0, code)
    assert.matches("started 1 app", out)
    remember(app(ls_json(), "hello"))
    assert.are.equal(0, (tether("save", "--force")))
  end)

  it("gives up on an app that crashes in a loop, and says so", function()
    write(T.app .. "/crash.config.lua", [[
      return { name = "crash", script = "crash.lua", max_restarts = 2, within = 60,
               backoff = { initial = 10, max = 20 } }]])
    write(T.app .. "/crash.lua", [[io.stderr:write("about to crash\n") os.exit(3)]])
    local code, out, err = tether("start", "crash.config.lua")
    assert.are.equal(1, code)
    assert.matches("crash", err)
    local apps, lcode = ls_json()
    assert.are.equal(1, lcode)
    local a = app(apps, "crash")
    assert.are.equal("errored", a.status)
    assert.matches("gave up", a.errors[#a.errors].text)
    assert.matches("about to crash", select(2, tether("logs", "crash", "--raw")))
    out = select(2, tether("ls"))
    assert.matches("crash%s+errored", out)
  end)

  it("follows the logs with -f", function()
    write(T.app .. "/ticker.lua", [[
      local tether = require "tether"
      local n = 0
      tether.every(50, function() n = n + 1 print("tick " .. n) io.stdout:flush() end)
    ]])
    assert.are.equal(0, (tether("start", "ticker.lua")))
    remember(app(ls_json(), "ticker"))
    local out_file = T.dir .. "/follow.out"
    local cmd = ("cd %s && env HOME=%s XDG_RUNTIME_DIR=%s %s %s logs ticker -f --raw > %s 2>&1 & echo $!"):format(
      q(T.app), q(T.dir), q(T.dir .. "/run"), H.LUA, q(BIN), q(out_file))
    local p = io.popen(cmd)
    local follower = tonumber(p:read("l"))
    p:close()
    -- a tick written after the follower started shows up
    local ok = wait_until(function()
      local text = read(out_file) or ""
      local last = 0
      for n in text:gmatch("tick (%d+)") do last = math.max(last, tonumber(n)) end
      return last >= 40
    end, 10)
    os.execute("kill " .. follower)
    assert(ok, "followed lines: " .. tostring(read(out_file)))
  end)

  it("refuses bad input with clear errors", function()
    local code, _, err = tether("frobnicate")
    assert.are.equal(2, code)
    assert.matches("unknown command", err)
    code, _, err = tether("start", "missing.lua")
    assert.are.equal(2, code)
    assert.matches("missing.lua", err)
    write(T.app .. "/hello.lua", HELLO)
    code, _, err = tether("start", "hello.lua", "-i", "zero")
    assert.are.equal(2, code)
    assert.matches("%-i", err)
    code, _, err = tether("start", "hello.lua", "--name", "../x")
    assert.are.equal(2, code)
    assert.matches("bad name", err)
    code, _, err = tether("restart", "nothing")
    assert.are.equal(1, code)
    assert.matches("no app named", err)
    -- configs: a syntax error, a function in a spec, one that exits
    write(T.app .. "/broken.config.lua", "return {")
    code, _, err = tether("start", "broken.config.lua")
    assert.are.equal(1, code)
    assert.matches("broken.config.lua", err)
    write(T.app .. "/fn.config.lua", "return { script = 'hello.lua', env = { X = function() end } }")
    code, _, err = tether("start", "fn.config.lua")
    assert.are.equal(1, code)
    assert.matches("plain data", err)
    write(T.app .. "/exit.config.lua", "os.exit(7)")
    code, _, err = tether("start", "exit.config.lua")
    assert.are.equal(1, code)
    assert.matches("code 7", err)
    code, _, err = tether("start", "hello.lua", "--max-memory", "lots")
    assert.are.equal(2, code)
    assert.matches("bad size", err)
    -- an app that is running is not started twice
    assert.are.equal(0, (tether("start", "hello.lua")))
    remember(app(ls_json(), "hello"))
    code, _, err = tether("start", "hello.lua")
    assert.are.equal(1, code)
    assert.matches("already running", err)
  end)

  it("survives a config whose answer it cannot use, and says why", function()
    write(T.app .. "/hello.lua", HELLO)
    write(T.app .. "/env.config.lua", "return { script = 'hello.lua', env = 'GREETING=hi' }")
    local code, _, err = tether("start", "env.config.lua")
    assert.are.equal(1, code)
    assert.matches("'env' must be a table", err)
    local pid = daemon_pid()
    -- a config that answers on the channel itself, before config_child does
    write(T.app .. "/own.config.lua", [[
      require("tether").parent:send({ specs = { { name = "own", script = "hello.lua", env = "X" } } })
      return { name = "own", script = "hello.lua" }]])
    code, _, err = tether("start", "own.config.lua")
    assert.are.equal(1, code)
    assert.matches("'env' must be a table", err)
    write(T.app .. "/num.config.lua", [[
      require("tether").parent:send({ specs = { 5 } })
      return { name = "num", script = "hello.lua" }]])
    code, _, err = tether("start", "num.config.lua")
    assert.are.equal(1, code)
    assert.matches("not a spec", err)
    -- the same daemon answers
    local apps
    apps, code = ls_json()
    assert.are.equal(0, code)
    assert.are.same({}, apps)
    assert.are.equal(pid, daemon_pid())
  end)

  it("lets a start finish before a delete, so no worker is left unseen", function()
    local dir = T.app
    write(dir .. "/pid.lua", ([[
      local tether = require "tether"
      local f = io.open(%q .. "/pid." .. tether.core.getpid(), "w") f:close()
      tether.every(1000, function() end)]]):format(dir))
    -- the second run of this config (the start's own) waits for the file "go"
    write(dir .. "/slow.config.lua", ([[
      local dir = %q
      local f = io.open(dir .. "/evals", "a") f:write("x\n") f:close()
      local n = 0
      for _ in io.lines(dir .. "/evals") do n = n + 1 end
      if n == 2 then
        local deadline = os.time() + 8
        while not io.open(dir .. "/go") and os.time() < deadline do os.execute("sleep 0.05") end
      end
      return { name = "slow", script = "pid.lua", instances = 2 }]]):format(dir))
    tether_bg("start", "start", "slow.config.lua")
    assert.is_true(wait_until(function() return #(read(dir .. "/evals") or "") >= 4 end))
    tether_bg("delete", "delete", "slow")
    H.sleep(200)
    write(dir .. "/go", "")
    assert.is_true(wait_until(function() return bg_code("start") and bg_code("delete") end, 20))
    assert.are.equal(0, bg_code("delete"))
    assert.are.same({}, (ls_json()))
    local workers = {}
    for f in lfs.dir(dir) do
      local pid = tonumber(f:match("^pid%.(%d+)$") or "")
      if pid then workers[#workers + 1] = pid end
    end
    for _, pid in ipairs(workers) do
      assert(wait_until(function() return not H.alive(pid) end, 5), "worker " .. pid .. " left running, unlisted")
    end
  end)

  it("answers a start or a reload into a script that cannot load at once, keeping the old workers", function()
    write(T.app .. "/hello.lua", HELLO)
    write(T.app .. "/broken.lua", 'error("cannot load: \255 bytes")')
    write(T.app .. "/one.config.lua", 'return { name = "one", script = os.getenv("S") or "hello.lua" }')
    assert.are.equal(0, (tether("start", "one.config.lua")))
    local before = app(ls_json(), "one")
    remember(before)
    -- one worker restarts slowly (backoff), far from giving up: still no success
    local t0 = os.time()
    local code, _, err = tether("reload", "one", "--update-env", { env = { S = "broken.lua" } })
    assert.are.equal(1, code)
    assert.matches("cannot load", err)
    assert.is_true(os.time() - t0 < 8)
    local after = app(ls_json(), "one")
    assert.are.equal("online", after.status)
    assert.are.same(pids(before), pids(after))
    code, _, err = tether("start", "broken.lua")
    assert.are.equal(1, code)
    assert.matches("cannot load", err)
    -- its error, not UTF-8, still makes valid JSON
    local apps
    apps, code = ls_json()
    assert.are.equal(1, code)
    assert.matches("cannot load", app(apps, "broken").errors[1].text)
  end)

  it("keeps its socket in a directory only its owner can enter, one daemon per home", function()
    assert.are.equal(0, (tether("ls")))
    assert.are.equal("rwx------", lfs.attributes(T.run, "permissions"))
    assert.are.equal("rwx------", lfs.attributes(T.state, "permissions"))
    local pid = daemon_pid()
    -- a second daemon for the same home leaves at once
    local code, _, err = tether("daemon")
    assert.are.equal(0, code)
    assert.matches("another tether daemon", err)
    assert.are.equal(pid, daemon_pid())
    assert.is_true(H.alive(pid))
  end)

  it("prints a systemd unit that runs the daemon and resurrects", function()
    local code, out = tether("startup")
    assert.are.equal(0, code)
    assert.matches("Type=notify", out)
    assert.matches("ExecStart=%S+ %S+/bin/tether daemon %-%-resurrect", out)
    assert.matches("ExecStop=%S+ %S+/bin/tether kill", out)
    assert.matches("WantedBy=default.target", out)
  end)
end)

describe("tether run (foreground)", function()
  local tether_lib = require "tether"
  before_each(function() new_home() end)

  -- tether run CFG in the background: the child, and its output so far
  local function run(cfg, env)
    local out = {}
    local e = { HOME = T.dir, XDG_RUNTIME_DIR = T.dir .. "/run" }
    for k, v in pairs(env or {}) do e[k] = v end
    local child = assert(tether_lib.spawn(H.LUA, { BIN, "run", cfg }, { env = e, cwd = T.app,
      stdio = { stdout = "pipe", stderr = "pipe" } }))
    child.stdout:on("data", function(d) out[#out + 1] = d end)
    child.stderr:on("data", function(d) out[#out + 1] = d end)
    return child, function() return table.concat(out) end
  end

  local function exited(child) return function() return child.exit_code ~= nil or child.signal ~= nil end end

  it("runs a config's apps, stops them on SIGTERM and exits 0", function()
    write(T.app .. "/hello.lua", HELLO)
    write(T.app .. "/two.config.lua", [[
      return {
        { name = "a", script = "hello.lua", instances = 2, env = { GREETING = "A" } },
        { name = "b", script = "hello.lua", env = { GREETING = "B" } },
      }]])
    local child, output = run("two.config.lua")
    H.run_until(function()
      local o = output()
      return o:find("hello 1 A", 1, true) and o:find("hello 2 A", 1, true) and o:find("hello 1 B", 1, true)
    end, 10)
    child:kill("SIGTERM")
    H.run_until(exited(child), 15)
    assert.are.equal(0, child.exit_code, output())
    assert.is_nil(child.signal)
    H.run(5)
  end)

  it("tells systemd READY=1 once every worker runs, and STOPPING=1 (NOTIFY_SOCKET)", function()
    write(T.app .. "/hello.lua", HELLO)
    write(T.app .. "/n.config.lua", [[return { name = "n", script = "hello.lua", instances = 2 }]])
    local sock, got = T.dir .. "/notify.sock", T.dir .. "/notify.out"
    local listen = ROOT .. "/build/notify_listen"
    assert(os.execute(("(%s %s 20000 > %s 2>&1) &"):format(q(listen), q(sock), q(got))))
    assert(wait_until(function() return lfs.attributes(sock, "mode") ~= nil end, 10), "notify_listen bound")
    local child, output = run("n.config.lua", { NOTIFY_SOCKET = sock })
    H.run_until(function() return (read(got) or ""):find("READY=1", 1, true) end, 10)
    -- both workers ran their main chunk by then (their lines may still be
    -- on the way through the pipe)
    H.run_until(function()
      local o = output()
      return o:find("hello 1", 1, true) and o:find("hello 2", 1, true)
    end, 2)
    child:kill("SIGTERM")
    H.run_until(exited(child), 15)
    assert.are.equal(0, child.exit_code)
    H.run_until(function() return (read(got) or ""):find("STOPPING=1", 1, true) end, 10)
    H.run(5)
  end)

  it("exits 1 when an app gives up, stopping the others", function()
    write(T.app .. "/hello.lua", HELLO)
    write(T.app .. "/crash.lua", "os.exit(5)")
    write(T.app .. "/mixed.config.lua", [[
      return {
        { name = "ok", script = "hello.lua" },
        { name = "bad", script = "crash.lua", max_restarts = 1, backoff = { initial = 10, max = 10 } },
      }]])
    local child, output = run("mixed.config.lua")
    H.run_until(exited(child), 20)
    assert.are.equal(1, child.exit_code, output())
    assert.matches("bad gave up", output())
    H.run(5)
  end)

  it("reloads on SIGHUP with the config run apart: one that exits, is refused or loops changes nothing", function()
    write(T.app .. "/hello.lua", HELLO)
    local cfg = T.app .. "/r.config.lua"
    write(cfg, 'return { name = "r", script = "hello.lua", env = { GREETING = "one" } }')
    local child, output = run("r.config.lua")
    H.run_until(function() return output():find("hello 1 one", 1, true) end, 10)
    write(cfg, "os.exit(3)")
    child:kill("SIGHUP")
    H.run_until(function() return output():find("ended (code 3) without an answer", 1, true) end, 10)
    write(cfg, 'return { name = "r", script = "hello.lua", instances = "many" }')
    child:kill("SIGHUP")
    H.run_until(function() return output():find("option 'instances'", 1, true) end, 10)
    -- a config that loops: signals are still answered, and a stop kills it
    local pidfile = T.dir .. "/config.pid"
    write(cfg, ("local f = io.open(%q, 'w') f:write(require('tether').core.getpid()) f:close() while true do end")
      :format(pidfile))
    child:kill("SIGHUP")
    H.run_until(function() return read(pidfile) ~= nil and read(pidfile) ~= "" end, 10)
    local t0 = tether_lib.hrtime()
    child:kill("SIGTERM")
    H.run_until(exited(child), 15)
    assert.is_true((tether_lib.hrtime() - t0) / 1e9 < 5, "the stop waited for the config")
    assert.are.equal(0, child.exit_code, output())
    local cpid = tonumber(read(pidfile))
    assert.is_true(wait_until(function() return not H.alive(cpid) end, 5), "the config's process outlived the stop")
    assert.is_nil(output():find("hello 2", 1, true))
    H.run(5)
  end)

  it("exits 1 on a config it cannot use", function()
    write(T.app .. "/bad.config.lua", "return 42")
    local child, output = run("bad.config.lua")
    H.run_until(exited(child), 10)
    assert.are.equal(1, child.exit_code)
    assert.matches("spec table", output())
    H.run(5)
  end)
end)

describe("tether agent", function()
  local B = require "broker_util"
  local tether_lib = require "tether"
  before_each(function() new_home() end)
  after_each(function() B.stop_all() end)

  it("serves a queue across machines from the command line until SIGTERM", function()
    local r = B.redis()
    local worker = write(T.app .. "/square.lua", [[
      local tether = require "tether"
      tether.serve(function(n) return n * n end)
    ]])
    local agent = assert(tether_lib.spawn(H.LUA, { BIN, "agent", "--broker", r.addr, "--queue", "sq",
      "--script", worker, "--size", "2" }, { stdio = { stdout = "ignore", stderr = "inherit" } }))
    local pool = assert(tether_lib.pool { broker = r.addr, queue = "sq" })
    local results, n = {}, 0
    for i = 1, 20 do
      assert(pool:submit(i, function(err, v)
        results[i] = err or v
        n = n + 1
      end))
    end
    H.run_until(function() return n == 20 end, 20)
    for i = 1, 20 do assert.are.equal(i * i, results[i]) end
    pool:close()
    H.run_until(function() return pool.closed end)
    agent:kill("SIGTERM")
    H.run_until(function() return agent.exit_code ~= nil or agent.signal ~= nil end, 15)
    assert.are.equal(0, agent.exit_code)
    B.stop_all()
    H.run(5)
  end)

  it("says what is missing", function()
    local code, _, err = tether("agent", "--queue", "q")
    assert.are.equal(2, code)
    assert.matches("%-%-broker is required", err)
  end)
end)
