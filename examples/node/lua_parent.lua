--- A Lua parent with Node.js children (serialization = "json"): Node's own
-- IPC wire format, so the children are plain `node` scripts using
-- process.send / process.on('message').
--   1. tether.spawn("node", {"node_worker.js"}): messages both ways, a
--      child:call answered by the worker's tether.serve (examples/node/tether.js),
--      a call the other way answered by child:handle, then disconnect;
--   2. a pool of 2 Node workers (pool_worker.js) mapping tasks;
--   3. a supervisor whose Node worker crashes once and is restarted.
--
--   make
--   LUA_PATH="$PWD/lua/?.lua;;" LUA_CPATH="$PWD/build/?.so;;" lua5.4 examples/node/lua_parent.lua
local tether = require "tether"

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local START = tether.now()
local function log(fmt, ...)
  io.write(("[%5d ms] "):format(tether.now() - START), fmt:format(...), "\n")
  io.flush()
end

-- waits (inside tether.go) until fn(done) calls done(...), or `ms`
local function wait_for(ms, what, fn)
  local r = table.pack(tether.await(function(done)
    local over = false
    local guard = tether.timer(ms, function() over = true; done(nil, "timed out: " .. what) end)
    fn(function(...)
      if over then return end
      over = true
      guard:stop()
      done(...)
    end)
  end))
  return table.unpack(r, 1, r.n)
end

---------------------------------------------------------------------------
-- 1. one Node child

local function one_child()
  log("1. tether.spawn('node', {'node_worker.js'}, {serialization = 'json'})")
  local child = assert(tether.spawn("node", { dir .. "/node_worker.js" }, { serialization = "json" }))
  local inbox = {}
  local waiting
  child:on("message", function(msg)
    if waiting then
      local w = waiting
      waiting = nil
      w(msg)
    else
      inbox[#inbox + 1] = msg
    end
  end)
  child:on("error", function(err) log("child error: %s", tostring(err)) end)
  local exited = {}
  child:on("exit", function(code, signal) exited.code, exited.signal = code, signal end)
  local function next_message()
    if #inbox > 0 then return table.remove(inbox, 1) end
    return wait_for(5000, "a message from node", function(done) waiting = done end)
  end

  -- the Node worker calls us back: child:handle answers its tether.call()
  child:handle(function(req)
    return { question = req.question, answer = #req.question, by = "lua" }
  end)

  local hello = assert(next_message())
  log("node says hello: %s %s (pid %d)", hello.hello, hello.version, hello.pid)

  -- messages: any JSON value; tether.null is JSON null, {} is an empty object
  assert(child:send({ greeting = "hi from Lua", list = { 1, 2.5, "three" }, nothing = tether.null,
    nested = { ok = true } }))
  local echo = assert(next_message())
  log("echo: greeting=%q list={%s, %s, %s} nothing==tether.null: %s", echo.echo.greeting,
    echo.echo.list[1], echo.echo.list[2], echo.echo.list[3], tostring(echo.echo.nothing == tether.null))

  -- what JSON cannot carry is refused at once, with the path
  local ok, err = child:send({ items = { 1, 2, function() end } })
  log("send of a function: %s, %s: %s", tostring(ok), err.code, err.message)

  -- request/response: the worker's tether.serve answers
  local sum = assert(child:call({ op = "add", a = 2, b = 40 }, { timeout = 2000 }))
  log("child:call add -> %d", sum)
  local up = assert(child:call({ op = "upper", s = "tether" }, { timeout = 2000 }))
  log("child:call upper -> %s", up)
  local r, cerr = child:call({ op = "nope" }, { timeout = 2000 })
  log("child:call nope -> %s, %s: %s", tostring(r), cerr.code, cerr.message)

  -- and the other way: the worker calls our handle()
  child:send({ op = "ask", question = "how long is this question?" })
  local answered = assert(next_message())
  log("node asked %q, our handler said %d", answered.question, answered.answer.answer)

  -- done: disconnect, the Node worker sees 'disconnect' and exits
  wait_for(5000, "node to exit", function(done)
    child:once("close", function() done(true) end)
    child:disconnect()
  end)
  log("node worker exited: code %s, signal %s", tostring(exited.code), tostring(exited.signal))
  assert(exited.code == 0)
end

---------------------------------------------------------------------------
-- 2. a pool of Node workers

local function node_pool()
  log("2. tether.pool{cmd = 'node', args = {'pool_worker.js'}, serialization = 'json', size = 2}")
  local pool = assert(tether.pool {
    cmd = "node", args = { dir .. "/pool_worker.js" }, serialization = "json",
    size = 2, timeout = 5000, handle_signals = false,
  })
  pool:on("error", function(err) log("pool error: %s", tostring(err)) end)
  local tasks = {}
  for i = 1, 8 do tasks[i] = { n = i } end
  local results = assert(pool:map(tasks))
  for i, r in ipairs(results) do
    log("task %d: %d^2 = %d (worker %d, pid %d)", i, r.n, r.square, r.worker, r.pid)
  end
  local _, terr = pool:run({ n = "not a number" })
  log("a task that throws: %s: %s", terr.code, terr.message)
  local s = pool:stats()
  log("pool stats: done %d, failed %d, workers %d", s.done, s.failed, s.workers)
  wait_for(10000, "the pool to close", function(done) pool:close(function() done(true) end) end)
  log("pool closed")
end

---------------------------------------------------------------------------
-- 3. a supervised Node worker that crashes once

local function supervised()
  log("3. tether.supervise{cmd = 'node', args = {'node_worker.js'}, serialization = 'json'}")
  local sup = assert(tether.supervise {
    cmd = "node", args = { dir .. "/node_worker.js" }, serialization = "json",
    backoff = { initial = 100, max = 1000 },
    shutdown = { message = { op = "shutdown" }, timeout = 2000, kill_timeout = 1000 },
    handle_signals = false,
  })
  local hellos, restarts = 0, 0
  local stopped = false
  sup:on("error", function(err) log("supervisor error: %s", tostring(err)) end)
  sup:on("exit", function(w, code, signal, reason)
    log("worker %d exited: code %s, signal %s (%s)", w.id, tostring(code), tostring(signal), reason)
  end)
  sup:on("restart", function(w, reason)
    restarts = restarts + 1
    log("worker %d restarted after a %s", w.id, reason)
  end)
  wait_for(10000, "the supervisor to stop", function(done)
    sup:on("message", function(w, msg)
      if type(msg) ~= "table" or not msg.hello then return end
      hellos = hellos + 1
      log("worker %d (pid %d) says hello, incarnation %d", w.id, msg.pid, hellos)
      if hellos == 1 then
        sup:send(1, { op = "crash" })
      else
        sup:stop()
      end
    end)
    sup:on("stopped", function()
      stopped = true
      done(true)
    end)
  end)
  log("supervisor stopped: %d restart(s)", restarts)
  assert(stopped and restarts == 1, "expected exactly one restart")
end

tether.go(function()
  one_child()
  node_pool()
  supervised()
  log("all done")
end)
tether.run()
