--- tether.zygote{preload = {...}, lua = path, spares = 2}: a warmed interpreter that
-- forks workers on request (core/tt_zygote.h), for `prefork` in
-- tether.fork, tether.supervise, tether.pool and tether.cluster:
--
--   local z = tether.zygote { preload = { "cjson", "myapp.models" } }
--   local pool = tether.pool { script = "work.lua", size = 32, prefork = z }
--   -- or prefork = true: one shared zygote that preloads tether only
--
-- A worker forked from the zygote starts in about the time a small process
-- takes to fork, instead of an interpreter start and its requires.  It is
-- the asking process's own child (reaped, signalled and supervised as any
-- other).  What it does not get, unlike an exec'd one: its own address
-- space layout (ASLR is the zygote's), fresh module state (what the
-- preloaded modules did at load time is there, copied), and interpreter
-- options.  A zygote lives as long as the process that made it; when it
-- is gone (killed, or a preload failed), workers are started the usual way.
local tether = require "tether"
local check = require "tether.check"
local core = tether.core

local M = {}
local Zygote = {}
Zygote.__index = Zygote

local MAX_SPARES = 64 -- (TT_ZYGOTE_MAX_SPARES)
local OPTIONS = { preload = check.array_of(function(v) return type(v) == "string" and not v:find("\0", 1, true) end,
  "module names"),
  lua = "path",
  spares = function(v)
    if math.type(v) == "integer" and v >= 1 and v <= MAX_SPARES then return true end
    return false, ("an integer from 1 to %d"):format(MAX_SPARES)
  end }

local function main_path()
  return assert(package.searchpath("tether.zygote_main", package.path), "tether/zygote_main.lua not found")
end

function M.new(spec, level)
  spec = spec or {}
  level = level or 2
  if type(spec) ~= "table" then check.argerror("zygote", 1, "table expected, got " .. type(spec), level) end
  check.options("zygote", 1, spec, OPTIONS, level)
  local lua = spec.lua or tether._internal.interpreter()
  if not core.can_prefork() then
    -- no pidfds here (Linux < 5.3, valgrind, TETHER_SPAWN=uv): workers
    -- are exec'd, and no zygote process is made for nothing
    return setmetatable({ lua = lua, inert = true }, Zygote)
  end
  local asker, theirs = core.zygote_pair()
  if not asker then return nil, theirs end
  local args = { main_path(), tostring(theirs), tostring(spec.spares or 2) }
  for _, m in ipairs(spec.preload or {}) do args[#args + 1] = m end
  local child, err = tether.spawn(lua, args, { channel = false, pass_fds = { theirs },
    env = { LUA_PATH_5_4 = package.path, LUA_CPATH_5_4 = package.cpath } })
  core.close_fd(theirs)
  if not child then
    asker:close()
    return nil, err
  end
  asker:set_pid(child.pid) -- (its records of the spares it makes count too)
  local self = setmetatable({ lua = lua, pid = child.pid, _asker = asker, _child = child }, Zygote)
  child._h:ref(false) -- it lives as long as we do, and keeps nothing running
  child:on("exit", function(code, sig)
    self.dead = true
    self.exit_code, self.signal = code, sig
    asker:close() -- its spare goes, and is reaped: workers are exec'd now
  end)
  return self
end

function Zygote:__tostring()
  if self.inert then return "tether.zygote (inert: workers are exec'd here)" end
  return ("tether.zygote (pid %d%s)"):format(self.pid, self.dead and ", dead" or "")
end

M.Zygote = Zygote

function M.is_zygote(v) return getmetatable(v) == Zygote end

local shared = {}

--- The core's zygote (the asker's end) a spawn of `interpreter` uses for
-- `prefork` (true or a zygote), or nil.
function M.asker_for(prefork, interpreter)
  if not prefork then return nil end
  local z = prefork
  if prefork == true then
    z = shared[interpreter]
    if not z then
      z = M.new({ lua = interpreter }, 4)
      if not z then return nil end
      shared[interpreter] = z
    end
  end
  if z.inert or z.dead or z.lua ~= interpreter then return nil end -- exec
  return z._asker
end

function M.check(v)
  if v == true or v == false or M.is_zygote(v) then return true end
  return false, "true, false or a tether.zygote"
end

return M
