--- Worker for examples/progress.lua: counts the primes in [lo, hi) by trial
-- division, a few tens of ms of CPU per task.
local tether = require "tether"

local function is_prime(n)
  if n < 2 then return false end
  if n % 2 == 0 then return n == 2 end
  local d = 3
  while d * d <= n do
    if n % d == 0 then return false end
    d = d + 2
  end
  return true
end

tether.serve(function(task)
  local t0 = os.clock()
  local count = 0
  for n = task.lo, task.hi - 1 do
    if is_prime(n) then count = count + 1 end
  end
  return { primes = count, ms = (os.clock() - t0) * 1000 }
end)
