-- One "machine" of examples/distributed.lua: an agent that feeds a local
-- pool of 2 workers from the queue.  On a real machine this is the whole
-- program (under systemd or a tether supervisor).
local tether = require "tether"
local broker, name = ...
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

local agent = assert(tether.agent{ broker = broker, queue = "squares",
  script = here .. "distributed_worker.lua", size = 2, env = { AGENT_NAME = name } })
agent:on("error", function(e) io.stderr:write(name, ": ", tostring(e), "\n") end)
tether.parent:on("message", function(m)
  if m == "stop" then agent:close(function() tether.exit(0) end) end
end)
