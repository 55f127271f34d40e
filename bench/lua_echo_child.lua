--- The Lua child of bench/node_bench.lua: echoes every message on
-- tether.parent and says {ready = pid} first.  Started by a Node parent
-- (bench/node_parent_bench.js lua: fork(this, [], {execPath: 'lua5.4',
-- execArgv: []}), JSON mode) or by tether (tether.spawn("lua5.4", {this}),
-- the native format); either way it runs the loop itself, and exits when
-- its parent disconnects.
local tether = require "tether"
local parent = assert(tether.parent, "lua_echo_child.lua: no channel")
parent:on("message", function(m) parent:send(m) end)
local stat = io.open("/proc/self/stat"):read("l")
parent:send({ ready = tonumber(stat:match("^(%d+)")) })
tether.run()
