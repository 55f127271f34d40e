--- Where the `tether` command keeps things.
--
-- state (dump, logs, the daemon's own log): $TETHER_HOME, else ~/.tether
-- the daemon's socket and lock: $TETHER_HOME when set (a second home is a
-- second daemon), else $XDG_RUNTIME_DIR/tether, else ~/.tether
--
-- Every directory is made mode 0700: the socket accepts commands that run
-- programs, so only its owner may reach it.
local core = require "tether.core"

local M = {}

local function env(name)
  local v = os.getenv(name)
  if v ~= nil and v ~= "" then return v end
end

function M.paths()
  local home = env("TETHER_HOME")
  local explicit = home ~= nil
  if not home then
    local user_home = env("HOME")
    if not user_home then return nil, "neither TETHER_HOME nor HOME is set" end
    home = user_home .. "/.tether"
  end
  local run = explicit and home or (env("XDG_RUNTIME_DIR") and env("XDG_RUNTIME_DIR") .. "/tether") or home
  return {
    home = home,
    run = run,
    socket = run .. "/daemon.sock",
    lock = run .. "/daemon.lock",
    pid = run .. "/daemon.pid",
    logs = home .. "/logs",
    dump = home .. "/dump.json",
    daemon_log = home .. "/daemon.log",
  }
end

--- Makes the directories (0700).  paths | nil, err
function M.prepare()
  local p, err = M.paths()
  if not p then return nil, err end
  for _, d in ipairs { p.home, p.run, p.logs } do
    local ok, merr = core.mkdir(d, 448) -- 0700
    if not ok then return nil, merr end
    -- a directory someone else made for us would let them in
    local st = core.stat(d)
    if not st or st.uid ~= core.getuid() or st.mode & 63 ~= 0 then
      return nil, ("%s must be a directory of ours that nobody else may enter (mode 0700)"):format(d)
    end
  end
  return p
end

--- A name that is safe as a file name and in a log line.
function M.valid_name(name)
  return type(name) == "string" and #name > 0 and #name <= 64 and name:match("^[%w][%w._-]*$") ~= nil
    and name ~= "all"
end

return M
