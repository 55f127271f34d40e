-- The zygote process (core/tt_zygote.h, lua/tether/zygote.lua): loads
-- tether and the modules it was asked to preload, then forks a worker for
-- each request of its parent until the parent closes the socket.  In a
-- worker, zygote_serve returns the argv the parent would have exec'd
-- ({interpreter, runner.lua, script, args...}) and the runner takes over.
local fd = math.tointeger(tonumber(arg[1] or ""))
local spares = math.tointeger(tonumber(arg[2] or ""))
if not fd or not spares then
  io.stderr:write("usage: zygote_main.lua FD SPARES [MODULE...]\n")
  os.exit(2)
end
-- The loop's own descriptors are made now: placeholders hold the low
-- numbers meanwhile, so they land above those a worker is given (stdio, the
-- channel, pass_fds), which the worker's loop must not close when it is
-- renewed after the fork.
local hold = {}
for i = 1, 64 do hold[i] = io.open("/dev/null") end
local tether = require "tether"
for _, f in ipairs(hold) do f:close() end
hold = nil
for i = 3, #arg do
  local ok, err = pcall(require, arg[i])
  if not ok then
    io.stderr:write(("tether zygote: preload %q: %s\n"):format(arg[i], tostring(err)))
    os.exit(1)
  end
end
-- A compact heap, shared copy-on-write by every worker, whose objects are
-- all old: the generational collector's minor cycles in a worker then
-- leave them (and their pages) alone, where an incremental cycle would
-- write a mark into every object and so copy every page of the heap.
collectgarbage("generational")
collectgarbage()
collectgarbage()

-- The runner, compiled once here rather than in every worker.
local runner_path = package.searchpath("tether.runner", package.path)
local runner_chunk = runner_path and loadfile(runner_path)

-- What a preload wrote and left in a buffer goes out now, once: every
-- spare and worker is a copy of this process, buffers included.
io.stdout:flush()
io.stderr:flush()
local link, err = tether.core.zygote_serve(fd, spares)
if link == false then os.exit(0) end
if not link then
  io.stderr:write("tether zygote: ", type(err) == "table" and tostring(err.message) or tostring(err), "\n")
  os.exit(1)
end

-- A spare: what every worker does first is done before it is asked for.
-- Its random seed is not the zygote's sequence, nor its siblings' (math.
-- randomseed() alone would mix the time and addresses, both the same in
-- every sibling).
do
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(16)
  if f then f:close() end
  if bytes and #bytes == 16 then math.randomseed(string.unpack("<i8i8", bytes))
  else math.randomseed(tether.core.getpid(), tether.hrtime()) end
end

local argv
argv, err = tether.core.zygote_claim(fd, link)
if argv == false then os.exit(0) end
if not argv then
  io.stderr:write("tether zygote: ", type(err) == "table" and tostring(err.message) or tostring(err), "\n")
  os.exit(1)
end

-- a new worker
tether._after_fork()
local runner = argv[2]
arg = { [-1] = argv[1], [0] = runner }
for i = 3, #argv do arg[i - 2] = argv[i] end
if runner == runner_path and runner_chunk then
  runner_chunk()
else
  dofile(runner)
end
