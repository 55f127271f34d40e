-- core.sd_notify (core/tt_notify.h) against build/notify_listen, the
-- stand-in for systemd's notify socket that the `tether` command's specs
-- use too.
local tether = require "tether"
local H = require "helper"

local LISTEN = H.dir .. "/../build/notify_listen"

local function slurp(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local lfs = require "lfs"

local function exists(path) -- (a socket cannot be opened with io.open)
  return lfs.attributes(path, "mode") ~= nil
end

describe("core.sd_notify", function()
  it("is false when NOTIFY_SOCKET is unset (the specs run without one)", function()
    if os.getenv("NOTIFY_SOCKET") then pending("run under a service manager") return end
    assert.is_false(tether.core.sd_notify("READY=1"))
    assert.has_error(function() tether.core.sd_notify() end)
  end)

  it("sends each state as one datagram; notify_listen prints them and ends at STOPPING=1", function()
    local sock, out = H.tmpfile("notify.sock"), H.tmpfile("notify.out")
    os.remove(sock)
    os.remove(out)
    assert(os.execute(("(%q %q 10000 > %q 2>&1; echo $? >> %q) &"):format(LISTEN, sock, out, out)))
    local deadline = os.time() + 10
    while not exists(sock) and os.time() < deadline do H.sleep(10) end
    assert.is_true(exists(sock), "notify_listen did not bind")
    local script = [[
      local core = require "tether.core"
      assert(core.sd_notify("READY=1") == true)
      assert(core.sd_notify("STATUS=serving") == true)
      assert(core.sd_notify("STOPPING=1") == true)
    ]]
    local ok = os.execute(("NOTIFY_SOCKET=%q LUA_PATH=%q LUA_CPATH=%q %s -e %q"):format(sock,
      package.path, package.cpath, H.LUA, script))
    assert.is_true(ok)
    while not (slurp(out) or ""):find("\n%d+\n$") and os.time() < deadline do H.sleep(10) end
    assert.equals("READY=1\nSTATUS=serving\nSTOPPING=1\n0\n", slurp(out))
    assert.is_false(exists(sock)) -- removed on exit
    -- nobody listens now: an error, not a raise
    local script2 = [[
      local core = require "tether.core"
      local ok, err = core.sd_notify("READY=1")
      os.exit(ok == nil and err.code == "ENOENT" and 0 or 1)
    ]]
    assert.is_true(os.execute(("NOTIFY_SOCKET=%q LUA_PATH=%q LUA_CPATH=%q %s -e %q"):format(sock,
      package.path, package.cpath, H.LUA, script2)))
    os.remove(out)
  end)

  it("notify_listen gives up after its timeout without STOPPING=1", function()
    local sock = H.tmpfile("notify2.sock")
    local p = io.popen(("%q %q 100; echo $?"):format(LISTEN, sock))
    assert.equals("2\n", p:read("a"))
    p:close()
  end)
end)
