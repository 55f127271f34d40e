--- tether benchmark: the same cases as ../shared/anchors (raw-c, libuv-c,
-- node, luv-lua), with the same output lines, so run.sh can put them side
-- by side:  anchor=tether case=<case> size=<bytes> metric=<m> value=<v>
--
-- Messages are what a Lua user sends: a table {seq, data} with `data` a
-- string of `size` bytes.  Every echo and every stream message is verified
-- (sequence number and length); a mismatch aborts with VERIFY FAILED.
--
-- Env: ANCHOR_SECS (default 1.5), ANCHOR_WARM (default 0.2),
--      BENCH_CASES (space-separated subset: pingpong buffer stream spawn call),
--      BENCH_SIZES (ping-pong sizes, default "16 1024 65536 1048576").
local tether = require "tether"

local SECS = tonumber(os.getenv("ANCHOR_SECS") or "") or 1.5
local WARM = tonumber(os.getenv("ANCHOR_WARM") or "") or 0.2
local CASES = os.getenv("BENCH_CASES") or "pingpong buffer stream call spawn"
local ANCHOR = os.getenv("BENCH_NAME") or "tether"
local PINGPONG_SIZES = {}
for w in (os.getenv("BENCH_SIZES") or "16 1024 65536 1048576"):gmatch("%d+") do
  PINGPONG_SIZES[#PINGPONG_SIZES + 1] = tonumber(w)
end
local SCRIPT = debug.getinfo(1, "S").source:sub(2)

local function fail(what)
  io.stderr:write(ANCHOR .. ": VERIFY FAILED: " .. what .. "\n")
  os.exit(3)
end

---------------------------------------------------------------------------
-- child

if arg[1] == "child" then
  local parent = tether.parent
  local expect, count, bytes, errs = 0, 0, 0, 0
  parent:on("message", function(m)
    local t = m[0]
    if t == "P" then
      parent:send(m)
    elseif t == "D" then
      if m[1] ~= expect or #m[2] ~= m[3] then errs = errs + 1 end
      expect = expect + 1
      count = count + 1
      bytes = bytes + #m[2]
    elseif t == "B" then
      -- a buffer: read where it is (its first and last byte checked), sent back
      local b = m[2]
      if b:read(1, 1) ~= "b" or b:read(-1) ~= "e" then errs = errs + 1 end
      parent:send(m)
    elseif t == "E" then
      if m[1] ~= count then errs = errs + 1 end
      parent:send({ [0] = "A", count, errs, bytes })
      expect, count, bytes, errs = 0, 0, 0, 0
    end
  end)
  parent:handle(function(m)
    if m[0] == "B" then -- (as the message case: its first and last byte read)
      local b = m[2]
      if b:read(1, 1) ~= "b" or b:read(-1) ~= "e" then errs = errs + 1 end
    end
    return m
  end)
  parent:send({ [0] = "R", tonumber(require("lfs").symlinkattributes("/proc/self").target) })
  return
end

if arg[1] == "spawn-child" then
  -- first message, then exit (nothing listens)
  tether.parent:send({ [0] = "R", 0 })
  return
end

---------------------------------------------------------------------------
-- parent: sequential steps written as a coroutine resumed from callbacks

local main = coroutine.running
local function wait()
  return coroutine.yield()
end

local function report(case, size, metric, v)
  io.write(("anchor=%s case=%s size=%d metric=%s value=%.6g\n"):format(ANCHOR, case, size, metric, v))
  io.flush()
end

local function now() return tether.hrtime() / 1e9 end

local function spawn_kid(script_arg)
  local co = main()
  local kid = assert(tether.fork(SCRIPT, { script_arg }))
  kid.inbox = nil
  kid:on("message", function(m)
    if kid.waiting then
      kid.waiting = false
      local ok, err = coroutine.resume(co, m)
      if not ok then error(err, 0) end
    else
      kid.inbox = m
    end
  end)
  kid:on("drain", function()
    if kid.draining then
      kid.draining = false
      local ok, err = coroutine.resume(co)
      if not ok then error(err, 0) end
    end
  end)
  kid:on("error", function(e) fail(tostring(e)) end)
  return kid
end

local function recv(kid)
  if kid.inbox ~= nil then
    local m = kid.inbox
    kid.inbox = nil
    return m
  end
  kid.waiting = true
  return wait()
end

local seq = 0
local function pingpong(kid, size, secs)
  local data = string.rep("x", size - 5) -- tag + seq, as the anchors count
  local msg = { [0] = "P", 0, data }
  local n, t0 = 0, now()
  local t
  repeat
    seq = seq + 1
    msg[1] = seq
    local ok, err = kid:send(msg)
    if ok == nil then fail("pingpong send: " .. tostring(err)) end -- (not wait for ever)
    local m = recv(kid)
    if m[1] ~= seq or #m[2] ~= #data or m[0] ~= "P" then fail("pingpong echo mismatch") end
    n = n + 1
    t = now()
  until t - t0 >= secs
  return n, t - t0
end

-- ping-pong of a tether.buffer (doc/zero-copy.md): `fresh` makes a new one
-- per round trip and writes all of it (as the anchors write their bytes),
-- else one buffer goes back and forth (a value passed on, never copied);
-- `by_call`: in a call and its reply instead of two messages
local function buffer_pingpong(kid, size, secs, fresh, by_call)
  local data = fresh and ("b" .. string.rep("x", size - 2) .. "e")
  local buf = tether.buffer(size)
  buf:write(1, "b")
  buf:write(size, "e")
  local msg = { [0] = "B", 0, buf }
  local n, t0 = 0, now()
  local t
  repeat
    seq = seq + 1
    msg[1] = seq
    if fresh then
      buf:close()
      buf = tether.buffer(size)
      buf:write(1, data)
      msg[2] = buf
    end
    local m
    if by_call then
      local err
      m, err = kid:call(msg)
      if not m then fail("buffer call: " .. tostring(err)) end
    else
      local ok, err = kid:send(msg)
      if ok == nil then fail("buffer send: " .. tostring(err)) end
      m = recv(kid)
    end
    if m[1] ~= seq or #m[2] ~= size or m[0] ~= "B" then fail("buffer echo mismatch") end
    m[2]:close()
    n = n + 1
    t = now()
  until t - t0 >= secs
  buf:close()
  return n, t - t0
end

local function stream(kid, size, secs)
  local data = string.rep("y", size - 5)
  local msg = { [0] = "D", 0, data, #data }
  local n, t0 = 0, now()
  while true do
    for _ = 1, 16 do
      msg[1] = n
      n = n + 1
      if kid:send(msg) == false then
        kid.draining = true
        wait()
      end
    end
    if now() - t0 >= secs then break end
  end
  kid:send({ [0] = "E", n })
  local a = recv(kid)
  local el = now() - t0
  if a[0] ~= "A" or a[1] ~= n then fail("stream ack: count mismatch") end
  if a[2] ~= 0 then fail("stream ack: child saw corrupt/out-of-order data") end
  if a[3] ~= n * #data then fail("stream ack: byte count mismatch") end
  return n, el
end

-- serial request/response: one call in flight
local function call_serial(kid, size, secs)
  local msg = { [0] = "C", 0, string.rep("c", size - 5) }
  local n, t0 = 0, now()
  local t
  repeat
    n = n + 1
    msg[1] = n
    local r, err = kid:call(msg)
    if not r or r[1] ~= n or #r[2] ~= #msg[2] then fail("call reply mismatch: " .. tostring(err)) end
    t = now()
  until t - t0 >= secs
  return n, t - t0
end

-- pipelined: `depth` calls kept in flight
local function call_pipelined(kid, size, secs, depth)
  local data = string.rep("c", size - 5)
  local co = main()
  local issued, done, t0, stop = 0, 0, now(), false
  local function issue()
    issued = issued + 1
    local i = issued
    kid:call({ [0] = "C", i, data }, function(err, r)
      if err or r[1] ~= i then fail("pipelined reply mismatch: " .. tostring(err)) end
      done = done + 1
      if not stop and now() - t0 < secs then
        issue()
      else
        stop = true
        if done == issued then coroutine.resume(co) end
      end
    end)
  end
  for _ = 1, depth do issue() end
  wait()
  return done, now() - t0
end

local function median(t)
  table.sort(t)
  return t[#t // 2 + 1]
end

local function spawn_test(k, reps)
  local ms = {}
  for r = 1, reps do
    local co = main()
    local ready, exited = 0, 0
    local t0 = now()
    local kids = {}
    for i = 1, k do
      local kid = assert(tether.fork(SCRIPT, { "spawn-child" }))
      kids[i] = kid
      kid:on("message", function(m)
        if m[0] ~= "R" then fail("bad ready message") end
        ready = ready + 1
        if ready == k then ms[r] = (now() - t0) * 1e3 end
      end)
      kid:on("close", function(code)
        if code ~= 0 then fail("spawn child exited with " .. tostring(code)) end
        exited = exited + 1
        if exited == k then coroutine.resume(co) end
      end)
    end
    wait()
    if ready ~= k then fail("not every spawned child was ready") end
  end
  return median(ms)
end

local function has(case) return (" " .. CASES .. " "):find(" " .. case .. " ", 1, true) end

local function main_task()
  local kid = spawn_kid("child")
  local r = recv(kid)
  if r[0] ~= "R" or r[1] ~= kid.pid then fail("bad ready message") end
  if has("pingpong") then
    for _, size in ipairs(PINGPONG_SIZES) do
      pingpong(kid, size, WARM)
      local n, el = pingpong(kid, size, SECS)
      report("pingpong", size, "rt_per_s", n / el)
      io.stderr:write(("# %s pingpong size=%d n=%d secs=%.3f verified\n"):format(ANCHOR, size, n, el))
    end
  end
  if has("buffer") then
    for _, size in ipairs(PINGPONG_SIZES) do
      if size >= 65536 then
        for _, fresh in ipairs { false, true } do
          buffer_pingpong(kid, size, WARM, fresh)
          local n, el = buffer_pingpong(kid, size, SECS, fresh)
          local case = fresh and "buffer-new" or "buffer-forward"
          report(case, size, "rt_per_s", n / el)
          io.stderr:write(("# %s %s size=%d n=%d secs=%.3f verified\n"):format(ANCHOR, case, size, n, el))
        end
        -- the same buffer in a call and its reply (the handler returns it)
        buffer_pingpong(kid, size, WARM, false, true)
        local n, el = buffer_pingpong(kid, size, SECS, false, true)
        report("buffer-call", size, "rt_per_s", n / el)
        io.stderr:write(("# %s buffer-call size=%d n=%d secs=%.3f verified\n"):format(ANCHOR, size, n, el))
      end
    end
  end
  if has("stream") then
    for _, size in ipairs { 16, 1024, 65536 } do
      stream(kid, size, WARM)
      local n, el = stream(kid, size, SECS)
      report("stream", size, "msgs_per_s", n / el)
      report("stream", size, "MB_per_s", n * size / el / 1e6)
      io.stderr:write(("# %s stream size=%d n=%d secs=%.3f verified\n"):format(ANCHOR, size, n, el))
    end
  end
  -- spawn before the call cases: the anchors measure it after the same
  -- history (ping-pong and stream), and fork costs grow with our memory
  if has("spawn") then
    report("spawn1", 0, "ms", spawn_test(1, 7))
    report("spawn32", 0, "ms", spawn_test(32, 5))
  end
  if has("call") then
    call_serial(kid, 16, WARM)
    local n, el = call_serial(kid, 16, SECS)
    report("call", 16, "rt_per_s", n / el)
    io.stderr:write(("# %s call size=16 n=%d secs=%.3f verified\n"):format(ANCHOR, n, el))
    call_pipelined(kid, 16, WARM, 1000)
    n, el = call_pipelined(kid, 16, SECS, 1000)
    report("call-pipelined", 16, "rt_per_s", n / el)
    io.stderr:write(("# %s call-pipelined(1000) size=16 n=%d secs=%.3f verified\n"):format(ANCHOR, n, el))
  end
  kid:disconnect()
end

local co
tether.timer(0, function() co = tether.go(main_task) end)
tether.run()
if coroutine.status(co) ~= "dead" then fail("benchmark did not finish") end
