--- A Lua script forked by a Node.js parent (examples/node/node_parent.js):
--   fork('lua_child.lua', [], {execPath: 'lua5.4', execArgv: [], env: {LUA_PATH, LUA_CPATH}})
-- Node sets NODE_CHANNEL_FD, so tether.parent is the channel to Node, in
-- JSON mode.  Node starts the script with plain lua5.4, not under tether's
-- runner: the script runs tether.run() itself.
local tether = require "tether"

local parent = tether.parent
if not parent then
  io.stderr:write("lua_child.lua: no channel; run node examples/node/node_parent.js\n")
  os.exit(1)
end

local function log(fmt, ...)
  io.write("[lua child] ", fmt:format(...), "\n")
  io.flush()
end

-- plain messages (process.send on the Node side arrives here)
parent:on("message", function(msg)
  if type(msg) == "table" and msg.op == "sum" then
    local total = 0
    for _, n in ipairs(msg.numbers) do total = total + n end
    parent:send({ op = "sum", total = total })
  elseif type(msg) == "table" and msg.op == "ask" then
    -- a call the other way: Node answers with tether.serve(fn, child)
    tether.go(function()
      local reply, err = parent:call({ question = msg.question }, { timeout = 2000 })
      parent:send({ op = "answered", reply = reply, err = err and err.code or tether.null })
    end)
  else
    parent:send({ echo = msg })
  end
end)

-- request/response: Node's tether.call(msg, child) lands here
parent:handle(function(req)
  if req.op == "fib" then
    local a, b = 0, 1
    for _ = 1, req.n do a, b = b, a + b end
    return { n = req.n, fib = a }
  end
  if req.op == "slow" then
    tether.sleep(req.ms) -- a handler may yield: other requests are served meanwhile
    return "slept " .. req.ms .. " ms"
  end
  error("unknown op " .. tostring(req.op))
end)

-- Node's child.disconnect(): the channel closes, we say so and exit
parent:on("disconnect", function()
  log("Node disconnected: exiting")
end)

parent:send({ hello = "from Lua", lua = _VERSION, json = parent.json })
tether.run()
