-- A minimal HTTP responder on luv for tether.cluster: keep-alive, a fixed
-- body.  Works in every balance mode: connections handed over ("rr") or
-- a listening socket shared with the other workers ("shared",
-- "reuseport").  On "stop" (a reload or the cluster stopping) it takes no
-- new connection, finishes the requests under way and exits.
local tether = require "tether"
local uv = require "luv"

local BODY = ("hello from worker %s\n"):format(os.getenv("TETHER_WORKER_ID"))
local RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
  .. #BODY .. "\r\n\r\n" .. BODY
local CLOSE_RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: "
  .. #BODY .. "\r\n\r\n" .. BODY

local open, stopping, served = 0, false, 0

-- try_write first, as Node does: a response that fits in the socket
-- buffer costs one write(2) and no epoll_ctl
local function send(client, data)
  local n = client:try_write(data)
  if n ~= #data then client:write(n and data:sub(n + 1) or data) end
end

-- Ending: luv's loop is left (uv.stop) and the script exits after
-- uv.run() returns (below), never from inside luv's callbacks, which
-- would close luv's loop while it runs.
local function finish() uv.stop() end

local function serve(client)
  open = open + 1
  local buf = ""
  local function done()
    if not client:is_closing() then client:close() end
    open = open - 1
    if stopping and open == 0 then finish() end
  end
  client:read_start(function(err, data)
    if err or not data then return done() end
    buf = buf .. data
    -- answer every complete request (headers only: GET)
    while true do
      local e = buf:find("\r\n\r\n", 1, true)
      if not e then break end
      local head = buf:sub(1, e):lower()
      buf = buf:sub(e + 4)
      served = served + 1
      if stopping or head:find("connection: close", 1, true) then
        send(client, CLOSE_RESPONSE)
        client:shutdown(done)
        client:read_stop()
        return
      end
      send(client, RESPONSE)
    end
  end)
end

-- the parent may ask how many requests we served (benchmarks)
tether.parent:on("message", function(msg)
  if msg == "served" then tether.parent:send({ served = served, pid = uv.os_getpid() }) end
end)

local listening, w = tether.cluster.worker()
if w then -- "shared" or "reuseport": accept on the socket ourselves
  local server = uv.new_tcp()
  assert(server:open(listening:detach()))
  assert(server:listen(511, function()
    local client = uv.new_tcp()
    if server:accept(client) then serve(client) else client:close() end
  end))
  w:on("stop", function()
    stopping = true
    server:close()
    if open == 0 then finish() end
  end)
else -- "rr": the parent hands us each connection
  w = listening
  w:on("connection", function(conn)
    local client = uv.new_tcp()
    client:open(conn:detach())
    serve(client)
  end)
  w:on("stop", function()
    stopping = true
    if open == 0 then finish() end
  end)
end

-- Two loops: luv's runs here and drives tether's (README, "Inside another
-- event loop"); ready now, since the main chunk ends only when luv is idle.
local poll, timer, prepare = uv.new_poll(tether.fd()), uv.new_timer(), uv.new_prepare()
local function pump()
  tether.run("nowait")
  timer:stop()
  local t = tether.timeout()
  if t >= 0 then timer:start(t, 0, pump) end
end
poll:start("r", pump)
prepare:start(pump)
tether.ready()
uv.run()
tether.exit(0)
