--- The `tether` command (bin/tether): run and manage supervised Lua
-- services, as PM2 does for Node.  `tether help` lists the commands.
--
-- Everything but `run`, `agent`, `startup` and `logs` is a request to the
-- daemon (lua/tether/daemon.lua), started on first use.  The command
-- itself is one short Lua process: no daemon state is loaded to print a
-- list, so `tether ls` costs a Lua start and one round trip.
local tether = require "tether"
local core = tether.core
local home = require "tether.home"

local M = {}

local USAGE = [[
usage: tether COMMAND [options]

  run CONFIG.lua                 run the config's apps in the foreground (systemd, containers)
  start SCRIPT|CONFIG [options] [-- args]
        -i, --instances N|max    workers (default 1; max: one per CPU)
        --name NAME              the app's name (of a config: start only that app)
        --max-memory SIZE        restart a worker whose RSS is over SIZE ("300M")
  ls [--json]                    the apps; exit code 1 if one is not fully up
  logs [NAME] [-n N] [-f] [--raw]  the last N lines (15) of the log files; -f follows
  restart NAME|all [--update-env]  stop, re-read the config, start
  reload NAME|all [--update-env]   new workers first, then the old ones stop
  stop NAME|all                  stop (kept in the list)
  delete NAME|all                stop and forget
  scale NAME N                   run N workers
  save [--force]                 remember the apps for `resurrect` (atomic; keeps the previous dump)
  resurrect                      start the saved apps
  startup [--system]             print a systemd unit that runs the daemon and resurrects
  agent --broker URL --queue Q --script FILE [--size N] [--concurrency N]
                                 a host of a pool across machines (Redis Streams), foreground
  kill                           stop every app and the daemon
  daemon [--resurrect]           the daemon, in the foreground (what `startup` runs)
  version

A CONFIG is a Lua file named *config.lua (or tether.lua) returning one
supervisor spec or a list of them, each with a `name`.  State lives in
$TETHER_HOME (default ~/.tether); the daemon's socket in
$XDG_RUNTIME_DIR/tether (or $TETHER_HOME).
]]

local function say(...) io.stdout:write(...) end
local function fail(...)
  io.stderr:write("tether: ", ...)
  io.stderr:write("\n")
  return 2
end

---------------------------------------------------------------------------
-- arguments

-- parse(argv, from, spec) -> opts, positional | nil, err.  spec: flag ->
-- "flag" (boolean), "value", or an alias string "=name"
local function parse(argv, from, spec)
  local opts, pos = {}, {}
  local i = from
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      opts["--"] = table.move(argv, i + 1, #argv, 1, {})
      break
    end
    local name, inline = a:match("^(%-%-?[%w-]+)=(.*)$")
    name = name or a
    local kind = spec[name]
    if type(kind) == "string" and kind:sub(1, 1) == "=" then name, kind = kind:sub(2), spec[kind:sub(2)] end
    if a:sub(1, 1) == "-" and #a > 1 and not tonumber(a) then
      if not kind then return nil, ("unknown option %s"):format(a) end
      if kind == "flag" then
        opts[name] = true
      else
        local v = inline
        if v == nil then
          i = i + 1
          v = argv[i]
        end
        if v == nil then return nil, ("option %s needs a value"):format(name) end
        opts[name] = v
      end
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  return opts, pos
end

---------------------------------------------------------------------------
-- talking to the daemon

-- what the daemon keeps of the environment of whoever started it (apps get
-- the environment of the command that starts them, not the daemon's)
local DAEMON_ENV = { "PATH", "HOME", "USER", "LOGNAME", "LANG", "TMPDIR", "TETHER_HOME", "XDG_RUNTIME_DIR",
  "LUA_PATH", "LUA_CPATH", "LUA_PATH_5_4", "LUA_CPATH_5_4", "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS",
  "LSAN_OPTIONS", "TETHER_GC" }

local function self_path()
  return core.realpath(M.program or arg and arg[0] or "tether")
end

local function start_daemon(paths)
  local me, err = self_path()
  if not me then return nil, err end
  local args = { "-i" }
  for _, k in ipairs(DAEMON_ENV) do
    local v = os.getenv(k)
    if v then args[#args + 1] = k .. "=" .. v end
  end
  args[#args + 1] = tether._internal.interpreter()
  args[#args + 1] = me
  args[#args + 1] = "daemon"
  local child, serr = tether.spawn("env", args, { detached = true, channel = false, cwd = "/",
    stdio = { stdin = "ignore", stdout = paths.daemon_log, stderr = paths.daemon_log } })
  if not child then return nil, serr end
  return child
end

-- a peer on the daemon's socket, the daemon started if none runs (in a
-- coroutine).  peer | nil, err
local function connect(paths, autostart)
  local address = "unix:" .. paths.socket
  local peer, err = tether._connect(address)
  if peer or autostart == false then return peer, err end
  if err.code ~= "ENOENT" and err.code ~= "ECONNREFUSED" then return nil, err end
  local child, serr = start_daemon(paths)
  if not child then return nil, serr end
  local exited
  child:on("exit", function(code) exited = code end)
  for _ = 1, 250 do -- 5 s
    tether.sleep(20)
    peer, err = tether._connect(address)
    if peer then return peer end
    if exited and exited ~= 0 then break end
  end
  return nil, ("the daemon did not start (see %s): %s"):format(paths.daemon_log, tostring(err))
end

local TIMEOUTS = { start = 120000, restart = 180000, reload = 180000, stop = 180000, delete = 180000,
  kill = 180000, resurrect = 180000, scale = 180000 }

-- one request; reply | nil, err.  In a coroutine.
local function request(paths, req, autostart)
  local peer, err = connect(paths, autostart)
  if not peer then return nil, err end
  local reply, cerr = peer:call(req, { timeout = TIMEOUTS[req.cmd] or 30000 })
  peer:disconnect()
  if not reply then return nil, cerr end
  return reply
end

---------------------------------------------------------------------------
-- printing

local function human_bytes(n)
  if not n or n <= 0 then return "-" end
  local units = { "B", "K", "M", "G", "T" }
  local i = 1
  while n >= 1024 and i < #units do n, i = n / 1024, i + 1 end
  return i == 1 and ("%d%s"):format(n, units[i]) or ("%.1f%s"):format(n, units[i])
end

local function human_ms(ms)
  if not ms then return "-" end
  local s = ms // 1000
  if s < 60 then return s .. "s" end
  if s < 3600 then return (s // 60) .. "m" end
  if s < 86400 then return (s // 3600) .. "h" end
  return (s // 86400) .. "d"
end

local function table_print(header, rows)
  local widths = {}
  for i, h in ipairs(header) do widths[i] = #h end
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do widths[i] = math.max(widths[i], #tostring(c)) end
  end
  local function line(cells)
    local out = {}
    for i, c in ipairs(cells) do out[i] = i < #cells and ("%-" .. widths[i] .. "s"):format(c) or tostring(c) end
    say(table.concat(out, "  "), "\n")
  end
  line(header)
  for _, r in ipairs(rows) do line(r) end
end

local function is_down(app)
  return app.status ~= "online" or app.running < app.instances
end

local function print_apps(apps)
  local rows = {}
  for _, a in ipairs(apps) do
    local pids, uptime = {}, nil
    for _, w in ipairs(a.workers or {}) do
      if w.pid then pids[#pids + 1] = tostring(w.pid) end
      if w.uptime then uptime = math.min(uptime or w.uptime, w.uptime) end
    end
    rows[#rows + 1] = { a.name, a.status, ("%d/%d"):format(a.running, a.instances), tostring(a.restarts),
      human_ms(uptime), human_bytes(a.rss), #pids > 0 and table.concat(pids, ",") or "-" }
  end
  if #rows == 0 then return say("no apps (tether start SCRIPT)\n") end
  table_print({ "NAME", "STATUS", "WORKERS", "RESTARTS", "UPTIME", "MEMORY", "PIDS" }, rows)
  for _, a in ipairs(apps) do
    if a.status == "errored" and a.errors and #a.errors > 0 then
      say(("%s: %s\n"):format(a.name, a.errors[#a.errors].text))
    end
  end
end

local function reply_or_fail(reply, err)
  if not reply then return fail(tostring(err)) end
  if reply.error then
    io.stderr:write("tether: ", tostring(reply.error), "\n")
    return 1
  end
  return 0
end

---------------------------------------------------------------------------
-- commands; each fn(paths, argv) -> exit code, in a coroutine

local C = {}

local function size_arg(v)
  if v == nil then return nil end
  if v:match("^%d+$") then return math.tointeger(tonumber(v)) end
  if v:match("^%d+%.?%d*[KkMmGg][Bb]?$") then return v:gsub("[Bb]$", ""):upper() end
  return nil, ("bad size %q (bytes, or like 300M, 1G)"):format(v)
end

function C.start(paths, argv)
  local opts, pos = parse(argv, 2, { ["-i"] = "value", ["--instances"] = "=-i", ["--name"] = "value",
    ["--max-memory"] = "value" })
  if not opts then return fail(pos, "\n", "usage: tether start SCRIPT|CONFIG [-i N] [--name NAME] [--max-memory SIZE] [-- args]") end
  if #pos ~= 1 then return fail("usage: tether start SCRIPT|CONFIG [-i N] [--name NAME] [--max-memory SIZE] [-- args]") end
  local path, perr = core.realpath(pos[1])
  if not path then return fail(("cannot start %s: %s"):format(pos[1], perr.message or tostring(perr))) end
  local st = core.stat(path)
  if st and st.dir then return fail(path, " is a directory, not a Lua script or config") end
  local req = { cmd = "start", path = path, env = core.environ(), cwd = core.getcwd(),
    kind = require("tether.config").is_config(path) and "config" or "script",
    name = opts["--name"], args = opts["--"] }
  if req.name and not home.valid_name(req.name) then
    return fail(("bad name %q (letters, digits, '.', '_', '-')"):format(req.name))
  end
  local i = opts["-i"]
  if i then
    if i == "max" or i == "0" then req.instances = core.parallelism()
    else
      req.instances = math.tointeger(tonumber(i))
      if not req.instances or req.instances < 1 then return fail(("bad -i %q (a number >= 1, or max)"):format(i)) end
    end
  end
  local mm, merr = size_arg(opts["--max-memory"])
  if merr then return fail(merr) end
  req.max_memory = mm
  local reply, err = request(paths, req)
  local code = reply_or_fail(reply, err)
  if reply and reply.apps then print_apps(reply.apps) end
  return code
end

-- JSON strings are UTF-8: a byte that is not (a worker's error about binary
-- data, a script path in another encoding) becomes U+FFFD
local function utf8_clean(v)
  if type(v) == "string" then
    if utf8.len(v) then return v end
    local out, i = {}, 1
    while i <= #v do
      local n, bad = utf8.len(v, i)
      if n then out[#out + 1] = v:sub(i) break end
      out[#out + 1] = v:sub(i, bad - 1)
      out[#out + 1] = "\u{FFFD}"
      i = bad + 1
    end
    return table.concat(out)
  elseif type(v) == "table" then
    for k, x in pairs(v) do v[k] = utf8_clean(x) end
  end
  return v
end

function C.ls(paths, argv)
  local opts, pos = parse(argv, 2, { ["--json"] = "flag" })
  if not opts or #pos > 0 then return fail("usage: tether ls [--json]") end
  local reply, err = request(paths, { cmd = "ls" })
  if not reply or reply.error then return reply_or_fail(reply, err) end
  if opts["--json"] then
    -- lists stay lists when empty ("errors": [], not {}): lua-cjson 2.1.0
    -- (Debian's) writes an empty table as {}, so they go as a mark first
    local EMPTY = "\0[]"
    utf8_clean(reply.apps)
    for _, a in ipairs(reply.apps) do
      for _, k in ipairs { "workers", "errors" } do
        if type(a[k]) == "table" and next(a[k]) == nil then a[k] = EMPTY end
      end
    end
    local text = assert(require("tether.json").encode(reply.apps))
    say(#reply.apps == 0 and "[]" or (text:gsub('"\\u0000%[%]"', "[]")), "\n")
  else
    print_apps(reply.apps)
  end
  for _, a in ipairs(reply.apps) do
    if is_down(a) then return 1 end
  end
  return 0
end

local function target_command(cmd, extra)
  return function(paths, argv)
    local spec = {}
    for _, f in ipairs(extra or {}) do spec[f] = "flag" end
    local opts, pos = parse(argv, 2, spec)
    if not opts or #pos ~= 1 then
      return fail(("usage: tether %s NAME|all%s"):format(cmd, extra and " [" .. table.concat(extra, "] [") .. "]" or ""))
    end
    local req = { cmd = cmd, target = pos[1] }
    if opts["--update-env"] then req.update_env, req.env = true, core.environ() end
    local reply, err = request(paths, req)
    return reply_or_fail(reply, err)
  end
end

C.restart = target_command("restart", { "--update-env" })
C.reload = target_command("reload", { "--update-env" })
C.stop = target_command("stop")
C.delete = target_command("delete")

function C.scale(paths, argv)
  local n = math.tointeger(tonumber(argv[3] or ""))
  if #argv ~= 3 or not n or n < 1 then return fail("usage: tether scale NAME N (N >= 1)") end
  local reply, err = request(paths, { cmd = "scale", name = argv[2], n = n })
  local code = reply_or_fail(reply, err)
  if code == 0 and reply.app then print_apps({ reply.app }) end
  return code
end

function C.save(paths, argv)
  local opts, pos = parse(argv, 2, { ["--force"] = "flag" })
  if not opts or #pos > 0 then return fail("usage: tether save [--force]") end
  local reply, err = request(paths, { cmd = "save", force = opts["--force"] })
  local code = reply_or_fail(reply, err)
  if code == 0 then say(("saved %d app(s) to %s\n"):format(reply.apps, reply.path)) end
  return code
end

function C.resurrect(paths, argv)
  if #argv ~= 1 then return fail("usage: tether resurrect") end
  local reply, err = request(paths, { cmd = "resurrect" })
  local code = reply_or_fail(reply, err)
  if code == 0 then say(("started %d app(s)\n"):format(reply.apps)) end
  return code
end

function C.kill(paths, argv)
  if #argv ~= 1 then return fail("usage: tether kill") end
  local reply, err = request(paths, { cmd = "kill" }, false)
  if not reply and err and (err.code == "ENOENT" or err.code == "ECONNREFUSED") then
    say("no daemon runs\n")
    return 0
  end
  local code = reply_or_fail(reply, err)
  if code == 0 then
    -- gone once its socket is
    for _ = 1, 500 do
      if not core.stat(paths.socket) then break end
      tether.sleep(10)
    end
    say("daemon stopped\n")
  end
  return code
end

C.logs = function(paths, argv) return require("tether.logs").main(paths, argv, request, parse) end

function C.run(_, argv)
  if #argv ~= 2 then return fail("usage: tether run CONFIG.lua") end
  return require("tether.foreground").main(argv[2])
end

function C.daemon(_, argv)
  local opts, pos = parse(argv, 2, { ["--resurrect"] = "flag" })
  if not opts or #pos > 0 then return fail("usage: tether daemon [--resurrect]") end
  return require("tether.daemon").main({ resurrect = opts["--resurrect"] })
end

function C.startup(paths, argv)
  local opts, pos = parse(argv, 2, { ["--system"] = "flag" })
  if not opts or #pos > 0 then return fail("usage: tether startup [--system]") end
  local me, err = self_path()
  if not me then return fail(tostring(err)) end
  local lua = tether._internal.interpreter()
  local env = {}
  for _, k in ipairs { "TETHER_HOME", "LUA_PATH", "LUA_CPATH", "PATH" } do
    local v = os.getenv(k)
    if v and (k ~= "TETHER_HOME" or opts["--system"] or v ~= paths.home) then
      env[#env + 1] = ("Environment=%s=%s"):format(k, v:gsub("%%", "%%%%"))
    end
  end
  if opts["--system"] then
    env[#env + 1] = "Environment=TETHER_HOME=" .. paths.home
    env[#env + 1] = "User=" .. (os.getenv("USER") or os.getenv("LOGNAME") or "root")
  end
  local unit = {
    "# " .. (opts["--system"] and "/etc/systemd/system/tether.service"
      or "~/.config/systemd/user/tether.service") .. ", then:",
    "#   systemctl " .. (opts["--system"] and "" or "--user ") .. "daemon-reload && systemctl "
      .. (opts["--system"] and "" or "--user ") .. "enable --now tether",
    "# (`tether save` first: the daemon starts the saved apps)",
    "[Unit]",
    "Description=tether: supervised Lua services",
    "After=network.target",
    "",
    "[Service]",
    "Type=notify",
    "NotifyAccess=main",
  }
  for _, e in ipairs(env) do unit[#unit + 1] = e end
  for _, l in ipairs {
    ("ExecStart=%s %s daemon --resurrect"):format(lua, me),
    ("ExecStop=%s %s kill"):format(lua, me),
    ("ExecReload=%s %s reload all"):format(lua, me),
    "Restart=on-failure",
    "TimeoutStopSec=60",
    "",
    "[Install]",
    "WantedBy=" .. (opts["--system"] and "multi-user.target" or "default.target"),
  } do unit[#unit + 1] = l end
  say(table.concat(unit, "\n"), "\n")
  return 0
end

function C.agent(_, argv)
  local opts, pos = parse(argv, 2, { ["--broker"] = "value", ["--queue"] = "value", ["--script"] = "value",
    ["--size"] = "value", ["--concurrency"] = "value", ["--max-deliver"] = "value", ["--ttl"] = "value",
    ["--heartbeat"] = "value", ["--prefetch"] = "value" })
  local usage = "usage: tether agent --broker redis://HOST:PORT|unix:PATH --queue Q --script FILE "
    .. "[--size N] [--concurrency N] [--max-deliver N] [--ttl MS] [--heartbeat MS] [--prefetch N]"
  if not opts or #pos > 0 then return fail(pos or "", "\n", usage) end
  for _, k in ipairs { "--broker", "--queue", "--script" } do
    if not opts[k] then return fail(("option %s is required\n%s"):format(k, usage)) end
  end
  local spec = { broker = opts["--broker"], queue = opts["--queue"], script = opts["--script"] }
  for flag, key in pairs { ["--size"] = "size", ["--concurrency"] = "concurrency", ["--max-deliver"] = "max_deliver",
    ["--ttl"] = "ttl", ["--heartbeat"] = "heartbeat", ["--prefetch"] = "prefetch" } do
    if opts[flag] then
      local n = math.tointeger(tonumber(opts[flag]))
      if not n or n < 0 then return fail(("option %s: a whole number expected, got %q"):format(flag, opts[flag])) end
      spec[key] = n
    end
  end
  local ok, agent, err = pcall(tether.agent, spec)
  if not ok then return fail(tostring(agent)) end
  if not agent then return fail(tostring(err)) end
  agent:on("error", function(e) io.stderr:write("tether agent: ", tostring(e), "\n") end)
  local done = false
  local function stop()
    if done then return end
    done = true
    agent:close(function() tether.stop() end)
  end
  tether.on_signal("SIGINT", stop)
  tether.on_signal("SIGTERM", stop)
  io.stderr:write(("tether agent: queue %s on %s\n"):format(spec.queue, spec.broker))
  return nil -- runs until a signal
end

function C.version()
  say("tether ", tostring(tether.version or core.version and core.version() or "?"), "\n")
  return 0
end

function C.help()
  say(USAGE)
  return 0
end
C["--help"], C["-h"], C["--version"] = C.help, C.help, C.version

-- commands that need no daemon paths
local LOCAL = { run = true, agent = true, version = true, help = true, ["--help"] = true, ["-h"] = true,
  ["--version"] = true }

--- main(argv) -> exit code
function M.main(argv)
  local cmd = argv[1]
  if not cmd then
    io.stderr:write(USAGE)
    return 2
  end
  local fn = C[cmd]
  if not fn then
    return fail(("unknown command %q (tether help)"):format(cmd))
  end
  local paths
  if not LOCAL[cmd] then
    local err
    paths, err = home.prepare()
    if not paths then return fail(tostring(err)) end
  end
  local code
  if cmd == "run" or cmd == "daemon" then return fn(paths, argv) end
  tether.go(function()
    code = fn(paths, argv)
    if code ~= nil then tether.stop() end
  end)
  if code == nil then tether.run() end
  return code or 0
end

return M
