-- Rounds of faults against a pool across machines (issue 15): in each
-- round two agents run tasks while one fault strikes: kill -9 of a whole
-- agent group, SIGSTOP of an agent past its TTL then SIGCONT, CLIENT KILL
-- of every connection, or Redis restarted (AOF, fsync always).  Over all
-- rounds: no task lost, no callback twice; tasks run more than once
-- (after a host died or stalled) are counted and reported.
-- TETHER_FAULT_ROUNDS (default 4, one of each; CI runs 50).
local tether = require "tether"
local H = require "helper"
local B = require "broker_util"

local ROUNDS = tonumber(os.getenv("TETHER_FAULT_ROUNDS") or "4")
local FAULTS = { "kill", "stop", "client-kill", "restart" }

describe("pools across machines under faults", function()
  after_each(function() B.stop_all() end) -- (before the leak guard's check)
  H.leak_guard(before_each, after_each)

  it(("%d rounds: nothing lost, nothing twice"):format(ROUNDS), function()
    if not B.HAS_REDIS then pending("redis-server is not installed") return end
    local r = B.redis { "--appendonly", "yes", "--appendfsync", "always" }
    local totals = { tasks = 0, callbacks = 0, twice = 0, lost = 0, ran_again = 0, failed = 0 }
    local by_fault = {}
    for round = 1, ROUNDS do
      local fault = FAULTS[(round - 1) % #FAULTS + 1]
      local queue = "faults" .. round
      local a1, a2 = B.agent(r, queue, 2), B.agent(r, queue, 2)
      local pool = B.pool { broker = r.addr, queue = queue }
      pool:on("error", function() end)
      local n, calls, got = 24, 0, {}
      for i = 1, n do
        pool:submit({ n = i, ms = 80 }, function(err, res)
          calls = calls + 1
          if got[i] then totals.twice = totals.twice + 1 end
          got[i] = err or res
          if err then totals.failed = totals.failed + 1 end
        end)
      end
      H.sleep(250)
      if fault == "kill" then
        B.kill_group(a1, "KILL")
      elseif fault == "stop" then
        B.kill_group(a1, "STOP")
        H.sleep(1500)
        B.kill_group(a1, "CONT")
      elseif fault == "client-kill" then
        r.cli("CLIENT", "KILL", "TYPE", "normal")
      else
        r.stop()
        H.sleep(200)
        r.start()
      end
      H.run_until(function() return calls >= n end, 60)
      H.sleep(100) -- a second callback would come now
      for i = 1, n do
        if not got[i] then totals.lost = totals.lost + 1
        elseif type(got[i]) == "table" and got[i].attempt and got[i].attempt > 1 then
          totals.ran_again = totals.ran_again + 1
        end
      end
      totals.tasks, totals.callbacks = totals.tasks + n, totals.callbacks + calls
      by_fault[fault] = (by_fault[fault] or 0) + 1
      pool:close()
      H.run_until(function() return pool.closed end, 20)
      if fault == "kill" then H.run_until(function() return a1.signal ~= nil end) else B.finish_agent(a1) end
      B.finish_agent(a2)
    end
    r.stop()
    io.stderr:write(("\n[faults] %d rounds (%s): %d tasks, %d callbacks, %d lost, %d twice, "
      .. "%d ran more than once (after a host died or stalled), %d failed\n"):format(ROUNDS,
      (function()
        local t = {}
        for f, k in pairs(by_fault) do t[#t + 1] = f .. " " .. k end
        table.sort(t)
        return table.concat(t, ", ")
      end)(), totals.tasks, totals.callbacks, totals.lost, totals.twice, totals.ran_again, totals.failed))
    assert.equals(0, totals.lost)
    assert.equals(0, totals.twice)
    assert.equals(0, totals.failed)
    assert.equals(totals.tasks, totals.callbacks)
  end)
end)
