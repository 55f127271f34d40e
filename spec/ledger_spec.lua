-- Nothing lost: numbered messages while the sender is killed at a random
-- point.  Every message the kernel accepted before the kill (the sender's
-- last "acked N" line) must arrive, exactly once and in order.
local tether = require "tether"
local H = require "helper"

local function last_acked(text)
  local n = 0
  for v in text:gmatch("acked (%d+)") do n = math.max(n, tonumber(v)) end
  return n
end

describe("ledger", function()
  H.leak_guard(before_each, after_each)
  math.randomseed(os.time())

  it("child -> parent: the child is SIGKILLed at random points", function()
    for round = 1, 5 do
      local c = assert(tether.fork(H.fixture("ledger_sender.lua"), { 64 + round * 50 },
        { stdio = { stderr = "pipe" } }))
      local got, in_order, err_text = 0, true, ""
      c:on("message", function(m)
        got = got + 1
        if m.seq ~= got then in_order = false end
      end)
      -- killed at a random point once the transfer is under way
      c.stderr:on("data", function(d)
        if err_text == "" then tether.timer(math.random(5, 150), function() c:kill("SIGKILL") end) end
        err_text = err_text .. d
      end)
      H.run(20)
      local acked = last_acked(err_text)
      assert.is_true(in_order, "messages out of order or duplicated")
      assert.is_true(acked > 0, "the sender never got going")
      assert.is_true(got >= acked, ("round %d: received %d < acked %d"):format(round, got, acked))
      if os.getenv("LEDGER_VERBOSE") then print("child->parent", round, got, acked) end
    end
  end)

  it("parent -> child: the sending parent is SIGKILLed at random points", function()
    for round = 1, 3 do
      local result = H.tmpfile("ledger" .. round .. ".txt")
      os.remove(result)
      local p = assert(tether.spawn(H.LUA, {
        package.searchpath("tether.runner", package.path),
        H.fixture("ledger_sender.lua"), 100, H.fixture("ledger_receiver.lua"), result,
      }, { stdio = { stderr = "pipe" }, channel = false,
           env = { LUA_PATH_5_4 = package.path, LUA_CPATH_5_4 = package.cpath } }))
      local err_text = ""
      p.stderr:on("data", function(d)
        if err_text == "" then tether.timer(math.random(5, 150), function() p:kill("SIGKILL") end) end
        err_text = err_text .. d
      end)
      H.run(20)
      local acked = last_acked(err_text)
      local text
      for _ = 1, 250 do -- the orphaned receiver writes its result, then exits
        local f = io.open(result)
        if f then text = f:read("a"); f:close(); break end
        H.sleep(20)
      end
      assert.is_string(text, "the receiver wrote no result")
      local count, verdict = text:match("(%d+) (%a+)")
      assert.equals("ok", verdict)
      assert.is_true(acked > 0, "the sender never got going")
      assert.is_true(tonumber(count) >= acked, ("round %d: received %s < acked %d"):format(round, count, acked))
      if os.getenv("LEDGER_VERBOSE") then print("parent->child", round, count, acked) end
    end
  end)
end)
