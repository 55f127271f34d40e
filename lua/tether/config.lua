--- Config files of the `tether` command: a Lua chunk that returns one
-- supervisor spec (a table with `script` or `cmd`) or a list of them.
-- Every spec is a tether.supervise spec (tether.cluster's when it has
-- `listen`) plus `name`, which defaults to the script's base name.
--
--   return {
--     { name = "api", script = "api.lua", instances = 2, listen = "tcp://0.0.0.0:8080" },
--     { name = "jobs", script = "jobs.lua", env = { QUEUE = os.getenv("QUEUE") or "main" } },
--   }
--
-- Paths (`script`, `cwd`, `stdout`, `stderr`) are relative to the config
-- file's directory, which is also the workers' default `cwd`.  The chunk
-- runs with the standard library (os.getenv sees the environment of the
-- command that started or restarted the apps).
local home = require "tether.home"

local M = {}

--- Is this file a config (rather than a worker script)?  By its name:
-- *.config.lua, *config.lua, tether.lua, Tetherfile.lua.
function M.is_config(path)
  local base = path:match("([^/]*)$")
  return base:match("config%.lua$") ~= nil or base == "tether.lua" or base == "Tetherfile.lua"
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function absolute(path, base)
  if path:sub(1, 1) == "/" then return path end
  if path:sub(1, 2) == "./" then path = path:sub(3) end
  return base .. "/" .. path
end

function M.default_name(spec)
  local from = spec.script or spec.cmd
  if type(from) ~= "string" then return nil end
  return (from:match("([^/]*)$"):gsub("%.lua$", ""))
end

--- Checks and completes a list of specs (relative paths made absolute
-- against `base`).  specs | nil, err
function M.normalize(value, base)
  if type(value) ~= "table" then return nil, "expected a spec table or a list of them, got " .. type(value) end
  local list = (value.script ~= nil or value.cmd ~= nil) and { value } or value
  if #list == 0 then return nil, "no apps in it (a spec needs 'script' or 'cmd')" end
  local seen, out = {}, {}
  for i, spec in ipairs(list) do
    if type(spec) ~= "table" then return nil, ("app %d: a table expected, got %s"):format(i, type(spec)) end
    local s = {}
    for k, v in pairs(spec) do s[k] = v end
    if s.script == nil and s.cmd == nil then return nil, ("app %d: 'script' or 'cmd' expected"):format(i) end
    s.name = s.name or M.default_name(s)
    if not home.valid_name(s.name) then
      return nil, ("app %d: bad name %q (letters, digits, '.', '_', '-'; not \"all\")"):format(i, tostring(s.name))
    end
    if seen[s.name] then return nil, ("two apps named %q"):format(s.name) end
    if s.env ~= nil and type(s.env) ~= "table" then
      return nil, ("app %s: 'env' must be a table of variables, got %s"):format(s.name, type(s.env))
    end
    seen[s.name] = true
    if type(s.script) == "string" then s.script = absolute(s.script, base) end
    if type(s.cwd) == "string" then s.cwd = absolute(s.cwd, base) else s.cwd = s.cwd or base end
    for _, k in ipairs { "stdout", "stderr" } do
      local v = s[k]
      if type(v) == "string" and v ~= "inherit" and v ~= "ignore" and v ~= "pipe" then s[k] = absolute(v, base) end
    end
    out[i] = s
  end
  return out
end

--- Runs the config file `path` (absolute) and returns its specs.
-- specs | nil, err (the Lua error of a config that does not load or run)
function M.load(path)
  local env = setmetatable({}, { __index = _G })
  local chunk, err = loadfile(path, "t", env)
  if not chunk then return nil, err end
  local ok, value = pcall(chunk)
  if not ok then return nil, path .. ": " .. tostring(value) end
  local specs, nerr = M.normalize(value, dirname(path))
  if not specs then return nil, path .. ": " .. nerr end
  return specs
end

--- M.eval(path, env, cwd, timeout_ms, cb): the config's specs, run in a
-- process of its own (config_child.lua) with `env` and `cwd`, so that a
-- config which loops, exits or crashes costs the caller nothing: killed
-- after timeout_ms.  cb(specs) or cb(nil, err), once.  Returns cancel():
-- the process is killed and cb is not called.
function M.eval(path, env, cwd, timeout_ms, cb)
  local tether = require "tether"
  local script = assert(package.searchpath("tether.config_child", package.path))
  local answered = false
  local function answer(a, b)
    if answered then return end
    answered = true
    cb(a, b)
  end
  local child, err = tether.fork(script, { path }, {
    env = env, cwd = cwd, stdio = { stdin = "ignore", stdout = "ignore", stderr = "ignore" } })
  if not child then
    answer(nil, "cannot run the config: " .. tostring(err))
    return function() end
  end
  local timer = tether.timer(timeout_ms, function()
    child:kill("SIGKILL")
    answer(nil, ("%s: did not finish within %d s"):format(path, timeout_ms // 1000))
  end)
  child:on("message", function(m)
    if type(m) ~= "table" then return end
    if m.error then return answer(nil, tostring(m.error)) end
    -- what config_child sends, unless the config itself sent something
    -- else on the channel: checked, since the daemon uses it from here
    local specs = m.specs
    if type(specs) ~= "table" or #specs == 0 then return answer(nil, path .. ": no specs in the answer") end
    for i, s in ipairs(specs) do
      if type(s) ~= "table" or not home.valid_name(s.name) then
        return answer(nil, ("%s: app %d: not a spec with a valid name"):format(path, i))
      end
      if s.env ~= nil and type(s.env) ~= "table" then
        return answer(nil, ("%s: app %s: 'env' must be a table, got %s"):format(path, s.name, type(s.env)))
      end
    end
    answer(specs)
  end)
  child:on("error", function(e) answer(nil, tostring(e.message or e)) end)
  child:on("exit", function(code, sig)
    timer:stop()
    answer(nil, ("%s: the config's process ended (%s) without an answer"):format(path,
      sig and ("signal " .. tostring(sig)) or ("code " .. tostring(code))))
  end)
  return function()
    if answered then return end
    answered = true
    timer:stop()
    child:kill("SIGKILL")
  end
end

return M
