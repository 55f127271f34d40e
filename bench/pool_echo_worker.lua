--- A pool worker for bench/pool_bench.lua: echoes each task.  A table
-- task is a chunk of tasks (the bench's counterpart of Python's imap
-- chunksize): each item goes through echo and the results come back as
-- one table, the way multiprocessing runs a chunk.
local tether = require "tether"

local function echo(x) return x end

tether.serve(function(task)
  if type(task) ~= "table" then return echo(task) end
  local out = {}
  for i = 1, #task do out[i] = echo(task[i]) end
  return out
end)
