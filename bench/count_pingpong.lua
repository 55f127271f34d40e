--- A fixed number of 16-byte round trips, as bench/bench.lua makes them (a
-- table {seq, data}, a coroutine waiting for each echo), for counting the
-- instructions per message under callgrind (bench/instructions.sh): a
-- count does not move with the machine's load as a time does.
-- Env: PP_N (round trips, default 20000), PP_MODE ("send": send + echo;
-- "call": child:call answered by the child's handle()), PP_PAD (that
-- many one-slot tables made and dropped in the child per message, work
-- of the kind a message costs: allocation and the collector's share;
-- bench/calibrate.sh prices a number of such instructions in round-trip
-- time with it).
local tether = require "tether"
local N = tonumber(os.getenv("PP_N") or "20000")
local MODE = os.getenv("PP_MODE") or "send"
local PAD = tonumber(os.getenv("PP_PAD") or "0")
if arg[1] == "child" then
  local parent = tether.parent
  if PAD > 0 then
    parent:on("message", function(m) for i = 1, PAD do local t = { i } end parent:send(m) end)
    parent:handle(function(m) for i = 1, PAD do local t = { i } end return m end)
  else
    parent:on("message", function(m) parent:send(m) end)
    parent:handle(function(m) return m end)
  end
  parent:send({ [0] = "R", 0 })
  return
end
local SCRIPT = debug.getinfo(1, "S").source:sub(2)
tether.go(function()
  local co = coroutine.running()
  local kid = assert(tether.fork(SCRIPT, { "child" }))
  local waiting, inbox = false, nil
  kid:on("message", function(m)
    if waiting then waiting = false; assert(coroutine.resume(co, m)) else inbox = m end
  end)
  local function recv()
    if inbox then local m = inbox; inbox = nil; return m end
    waiting = true
    return coroutine.yield()
  end
  recv()
  local msg = { [0] = "P", 0, string.rep("x", 11) }
  local t0 = tether.hrtime()
  for i = 1, N do
    msg[1] = i
    if MODE == "call" then
      local r = kid:call(msg)
      assert(r[1] == i)
    else
      kid:send(msg)
      local m = recv()
      assert(m[1] == i)
    end
  end
  local el = (tether.hrtime() - t0) / 1e9
  io.stderr:write(("# %s n=%d %.0f rt/s\n"):format(MODE, N, N / el))
  kid:disconnect()
end)
tether.run()
