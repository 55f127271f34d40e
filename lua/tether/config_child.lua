-- Runs a config file for the `tether` daemon in a process of its own, so
-- that a config which loops, exits or crashes costs the daemon nothing: the
-- daemon forks this with the environment of the command that asked, and
-- gets {specs = ...} or {error = "..."} back.
local tether = require "tether"
local config = require "tether.config"

local specs, err = config.load(assert(arg[1], "usage: config_child.lua CONFIG"))
local ok, serr = tether.parent:send(specs and { specs = specs } or { error = err })
if not ok and serr then
  -- e.g. a function in a spec: say which rule was broken
  tether.parent:send({ error = arg[1] .. ": a spec must be plain data: " .. tostring(serr) })
end
