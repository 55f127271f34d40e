--- Worker for examples/demo.lua: counts primes on request.
local tether = require "tether"
local id = ...

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

tether.parent:on("message", function(msg)
  local t0 = os.clock()
  local primes = count_primes(msg.below)
  tether.parent:send({ worker = id, below = msg.below, primes = primes,
    ms = (os.clock() - t0) * 1000 })
end)

tether.parent:send({ ready = true, worker = id })
