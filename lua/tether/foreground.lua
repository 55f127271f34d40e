--- `tether run CONFIG.lua`: the config's apps in the foreground, for
-- systemd units and containers.
--
-- - Workers' output goes to ours unless a spec names log files, so the
--   journal or the container runtime gets it.
-- - SIGINT/SIGTERM stop every app gracefully (a second one kills what is
--   left); SIGHUP reloads every app (rolling, config re-read).
-- - Exit code: 0 after a requested stop, or when every app ended by
--   itself with every worker's last exit 0; 1 when an app gave up (its
--   workers failed too often: the service manager should know) or the
--   config cannot be used.
-- - With NOTIFY_SOCKET set (systemd's Type=notify): READY=1 once every
--   worker of every app runs, RELOADING=1/READY=1 around a reload,
--   STOPPING=1, and WATCHDOG=1 every WATCHDOG_USEC/2 while the loop runs.
local tether = require "tether"
local core = tether.core
local config = require "tether.config"
local app_mod = require "tether.app"

local M = {}

-- how long a config may take to run at a reload (the daemon's limit too)
local CONFIG_TIMEOUT = 10000

local function notify(state)
  if core.sd_notify then core.sd_notify(state) end
end

local function log(fmt, ...)
  io.stderr:write("tether: ", fmt:format(...), "\n")
end

function M.main(path)
  local abs, rerr = core.realpath(path)
  if not abs then
    log("cannot run %s: %s", path, rerr.message or tostring(rerr))
    return 1
  end
  local specs, err = config.load(abs)
  if not specs then
    log("%s", err)
    return 1
  end
  local apps, code, stopping = {}, 0, false
  local left = #specs

  local cancel_reload -- a config being run for a reload: killed at a stop
  local function stop_all(why)
    if cancel_reload then cancel_reload() cancel_reload = nil end
    if stopping then
      -- a second signal: kill what is left
      for _, a in ipairs(apps) do if a.sup and a.sup._h and not a.sup.stopped then a.sup._h:hurry() end end
      return
    end
    stopping = true
    if why then log("%s: stopping every app", why) end
    notify("STOPPING=1")
    for _, a in ipairs(apps) do a:stop(function() end) end
  end

  local ready_told = false
  local function check_ready()
    if ready_told then return end
    for _, a in ipairs(apps) do
      if a.status ~= "online" then return end
    end
    ready_told = true
    notify("READY=1")
    notify(("STATUS=%d app(s) running"):format(#apps))
  end

  for i, spec in ipairs(specs) do
    local a = app_mod.new(spec.name, { on_change = function(app, what)
      if what == "give_up" then
        log("%s gave up: %s", app.name, app.errors[#app.errors] and app.errors[#app.errors].text or "")
        code = 1
        stop_all()
      elseif what == "online" then
        check_ready()
      elseif what == "stopped" then
        -- an app that ended by itself (restart = "never" / "on-failure"):
        -- its workers' last exits say how it went
        if not stopping then
          for _, w in ipairs(app.sup:workers()) do
            if (w.last_code and w.last_code ~= 0) or w.last_signal then code = 1 end
          end
        end
        left = left - 1
        if left == 0 then tether.stop() end
      end
    end })
    apps[i] = a
    local ok, serr = a:start(spec, function() check_ready() end)
    if not ok then
      log("%s: %s", spec.name, tostring(serr))
      code = 1
      left = i - 1
      stop_all()
      if left == 0 then return code end
      break
    end
  end

  tether.on_signal("SIGINT", function() stop_all("SIGINT") end)
  tether.on_signal("SIGTERM", function() stop_all("SIGTERM") end)
  local reloading = false
  tether.on_signal("SIGHUP", function()
    if stopping then return end
    if reloading then return log("reload: one is already under way (this SIGHUP is ignored)") end
    reloading = true
    notify("RELOADING=1")
    -- the config runs in a process of its own, as the daemon's does: one
    -- that loops, exits or crashes is an error message, and we go on
    -- serving and answering signals meanwhile
    cancel_reload = config.eval(abs, nil, nil, CONFIG_TIMEOUT, function(fresh, ferr)
      cancel_reload = nil
      if stopping then reloading = false return end
      if not fresh then
        reloading = false
        log("reload: %s (the running apps stay)", ferr)
        return notify("READY=1")
      end
      local pending = 1 -- (this loop's own, dropped at its end)
      local function one_done()
        pending = pending - 1
        if pending == 0 then
          reloading = false
          notify("READY=1")
        end
      end
      for _, a in ipairs(apps) do
        for _, s in ipairs(fresh) do
          if s.name == a.name then
            pending = pending + 1
            local ok, rerr = a:reload(s, function(e)
              if e then log("reload %s: %s", a.name, e) end
              one_done()
            end)
            if not ok then
              log("reload %s: %s (it runs on as it was)", a.name, tostring(rerr))
              one_done()
            end
          end
        end
      end
      one_done()
    end)
  end)
  local usec = tonumber(os.getenv("WATCHDOG_USEC") or "")
  if usec and usec > 0 then
    local t = tether.every(math.max(1, math.floor(usec / 2000)), function() notify("WATCHDOG=1") end)
    t:unref()
  end
  tether.run()
  return code
end

return M
