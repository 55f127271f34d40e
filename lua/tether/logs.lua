--- `tether logs [NAME] [-n N] [-f] [--raw]`: the command reads the log files
-- itself (the daemon only says where they are), so following a busy app's
-- output costs the daemon nothing.  -f follows the files across rotations
-- (a new file at the path) and truncations.
local tether = require "tether"
local core = tether.core

local M = {}

local CHUNK = 65536

-- the last `n` lines of the file at `path` (a list, oldest first)
local function tail(path, n)
  local f = io.open(path, "rb")
  if not f then return {} end
  local size = f:seek("end")
  local pos, data = size, ""
  local _, count = 0, 0
  while pos > 0 do
    local step = math.min(CHUNK, pos)
    pos = pos - step
    f:seek("set", pos)
    data = f:read(step) .. data
    _, count = data:gsub("\n", "")
    if count > n then break end
  end
  f:close()
  local lines = {}
  for line in data:gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  local rest = data:match("([^\n]+)$") -- a last line still being written
  if rest then lines[#lines + 1] = rest end
  local first = math.max(1, #lines - n + 1)
  return table.move(lines, first, #lines, 1, {}), size
end

local function printer(app, stream, raw)
  local prefix = raw and "" or ("%s %s | "):format(app, stream)
  return function(line) io.stdout:write(prefix, line, "\n") end
end

-- follows one file: returns poll() which prints what was added since
local function follower(path, emit, offset)
  local f, ino, pos, partial = nil, nil, offset or 0, ""
  local function open()
    local st = core.stat(path)
    if not st then return false end
    f = io.open(path, "rb")
    if not f then return false end
    ino = st.ino
    if pos > st.size then pos = 0 end
    f:seek("set", pos)
    return true
  end
  local function drain()
    local data = f:read(CHUNK * 4)
    while data do
      pos = pos + #data
      data = partial .. data
      local last = 1
      for line, next_at in data:gmatch("([^\n]*)\n()") do
        emit(line)
        last = next_at
      end
      partial = data:sub(last)
      data = f:read(CHUNK * 4)
    end
  end
  return function()
    if not f and not open() then return end
    drain()
    local st = core.stat(path)
    if st and (st.ino ~= ino or st.size < pos) then
      -- rotated (a new file at the path) or truncated: what was left in the
      -- old one was read above; the new one is read from its start
      if partial ~= "" then emit(partial) partial = "" end
      f:close()
      f, pos = nil, 0
      if open() then drain() end
    end
  end
end

function M.main(paths, argv, request, parse)
  local opts, pos = parse(argv, 2, { ["-n"] = "value", ["--lines"] = "=-n", ["-f"] = "flag", ["--follow"] = "=-f",
    ["--raw"] = "flag" })
  local usage = "usage: tether logs [NAME] [-n N] [-f] [--raw]"
  if not opts or #pos > 1 then
    io.stderr:write("tether: ", opts and usage or (pos .. "\n" .. usage), "\n")
    return 2
  end
  local n = 15
  if opts["-n"] then
    n = math.tointeger(tonumber(opts["-n"]))
    if not n or n < 0 then
      io.stderr:write("tether: -n needs a number of lines\n")
      return 2
    end
  end
  local reply, err = request(paths, { cmd = "logs", name = pos[1] })
  if not reply then
    io.stderr:write("tether: ", tostring(err), "\n")
    return 2
  end
  if reply.error then
    io.stderr:write("tether: ", reply.error, "\n")
    return 1
  end
  local polls = {}
  for _, app in ipairs(reply.apps) do
    for _, which in ipairs { "out", "err" } do
      local path = app[which]
      local emit = printer(app.name, which, opts["--raw"])
      local lines, size = tail(path, n)
      if not opts["--raw"] and #lines > 0 and not opts["-f"] then
        io.stdout:write(("==> %s %s (%s) <==\n"):format(app.name, which, path))
      end
      for _, l in ipairs(lines) do emit(l) end
      if opts["-f"] then polls[#polls + 1] = follower(path, emit, size) end
    end
  end
  io.stdout:flush()
  if not opts["-f"] then return 0 end
  tether.every(100, function()
    for _, p in ipairs(polls) do p() end
    io.stdout:flush()
  end)
  tether.on_signal("SIGINT", function() tether.exit(0) end)
  tether.on_signal("SIGTERM", function() tether.exit(0) end)
  tether.on_signal("SIGPIPE", function() tether.exit(0) end)
  return nil -- until a signal
end

return M
