--- Worker for examples/ecosystem.lua: stands in for a web server process.
-- It does some periodic "work" (tether.every), answers messages, finishes
-- gracefully on {type = "shutdown"}, and on request crashes or leaks
-- memory so the supervisor's restarts can be seen.
--
-- Messages it understands (from sup:send / sup:broadcast):
--   {type = "ping"}           -> replies {type = "pong", ...}
--   {type = "crash"}          -> os.exit(1): the supervisor restarts it ("crash")
--   {type = "leak", mb = N, every = ms}
--                             -> grows by N MiB every `every` ms, until the
--                                supervisor's max_memory restarts it ("memory")
--   {type = "shutdown"}       -> stops its timer, says goodbye, tether.exit(0)
--                                (SIGTERM does the same; SIGINT is ignored)
local tether = require "tether"

-- stdout/stderr go to the supervisor's log files through a pipe: write
-- whole lines as they happen rather than in 4 KiB blocks
io.stdout:setvbuf("line")

local id = tonumber(os.getenv("TETHER_WORKER_ID")) or 0 -- given by the supervisor
local pid = 0
do
  local f = io.open("/proc/self/stat")
  if f then pid = tonumber(f:read("l"):match("^%d+")) or 0; f:close() end
end
local requests, ticks, leaked = 0, 0, {}

local function log(fmt, ...)
  -- the supervisor writes each line to the log with the prefix "[id] "
  print(os.date("%H:%M:%S ") .. fmt:format(...))
end

-- the periodic work: a little CPU every 250 ms, a log line every second
local work = tether.every(250, function()
  ticks = ticks + 1
  local x = 0
  for i = 1, 20000 do x = x + i % 7 end
  if ticks % 4 == 0 then log("pid %d alive, %d ticks, %d requests", pid, ticks, requests) end
end)

local leak_timer
local handlers = {}

function handlers.ping(msg)
  requests = requests + 1
  tether.parent:send({ type = "pong", pid = pid, seq = msg.seq, ticks = ticks, requests = requests })
end

function handlers.crash()
  log("crashing on request")
  io.stderr:write("worker ", id, ": simulated crash, exit code 1\n")
  os.exit(1)
end

function handlers.leak(msg)
  local mb, every = msg.mb or 16, msg.every or 200
  log("leaking %d MiB every %d ms", mb, every)
  if leak_timer then leak_timer:stop() end
  leak_timer = tether.every(every, function()
    -- distinct strings, written to, so they count in the RSS
    leaked[#leaked + 1] = string.rep(string.char(65 + #leaked % 26), mb * 1024 * 1024)
  end)
end

function handlers.shutdown()
  -- graceful: stop taking work, finish what is in hand, say goodbye, exit 0
  work:stop()
  if leak_timer then leak_timer:stop() end
  log("shutting down after %d ticks and %d requests", ticks, requests)
  tether.parent:send({ type = "bye", ticks = ticks, requests = requests })
  tether.exit(0) -- the "bye" is delivered before the process ends
end

tether.parent:on("message", function(msg)
  local h = type(msg) == "table" and handlers[msg.type]
  if h then
    h(msg)
  else
    io.stderr:write("worker ", id, ": unknown message ", tostring(msg), "\n")
  end
end)

-- Ctrl-C in a terminal sends SIGINT to the whole process group, workers
-- included: leave it to the supervisor, which answers it with the
-- shutdown message.  SIGTERM (the supervisor's next step when the message
-- is not enough, or `kill` on the whole group) takes the same graceful path.
tether.on_signal("SIGINT", function() end)
tether.on_signal("SIGTERM", function() handlers.shutdown() end)

log("worker %d started (pid %d, APP_ENV=%s)", id, pid, tostring(os.getenv("APP_ENV")))
