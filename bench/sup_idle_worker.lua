--- A supervised worker for bench/supervisor_bench.lua that does nothing.
-- The message listener keeps it alive (and, unlike keep_alive(true), lets
-- it exit when its parent dies, so a killed bench leaves no orphans).
local tether = require "tether"
tether.parent:on("message", function() end)
