--- Worker for examples/demo.lua: counts primes, one task at a time.
local tether = require "tether"
local id = tonumber(os.getenv("TETHER_WORKER_ID"))

local function count_primes(below)
  local sieve, count = {}, 0
  for i = 2, below - 1 do
    if not sieve[i] then
      count = count + 1
      for j = i * i, below - 1, i do sieve[j] = true end
    end
  end
  return count
end

tether.serve(function(task)
  local t0 = os.clock()
  local primes = count_primes(task.below)
  return { worker = id,
    below = task.below, primes = primes, ms = (os.clock() - t0) * 1000 }
end)
