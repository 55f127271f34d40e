--- `tether save` and `tether resurrect`: the list of apps in a file.
--
-- PM2's dump could be emptied (saved while the daemon had just restarted
-- with nothing in it) and then `resurrect` restored nothing after a reboot.
-- Here: the file is replaced atomically and durably (a crash leaves the old
-- one or the new one, whole), the previous good dump is kept beside it
-- (dump.json.bak) and read when the dump itself is unreadable, and a dump
-- naming no app never replaces one that names some unless forced.
local core = require "tether.core"
local json = require "tether.json"

local M = {}
local VERSION = 1

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil, "missing" end
  local text = f:read("a")
  f:close()
  local ok, value = json.decode(text)
  if not ok or type(value) ~= "table" or value.version ~= VERSION or type(value.apps) ~= "table" then
    return nil, "unreadable"
  end
  return value.apps, nil, text
end

--- save(path, entries, force) -> true | nil, err
function M.save(path, entries, force)
  local old, why, old_text = read(path)
  if #entries == 0 and not force and old and #old > 0 then
    return nil, ("refusing to replace the dump of %d app(s) in %s by an empty one (nothing runs now); "
      .. "`tether save --force` does it"):format(#old, path)
  end
  local text, err = json.encode({ version = VERSION, saved = os.time(), apps = entries })
  if not text then return nil, "cannot write the dump: " .. tostring(err) end
  if old_text then
    local ok, berr = core.write_file(path .. ".bak", old_text)
    if not ok then return nil, berr end
  elseif why == "unreadable" then
    os.rename(path, path .. ".broken") -- kept for a look, not read again
  end
  return core.write_file(path, text)
end

--- load(path) -> entries, the file read | nil, err
function M.load(path)
  local apps, why = read(path)
  if apps then return apps, path end
  local bak, bwhy = read(path .. ".bak")
  if bak then return bak, path .. ".bak" end
  if why == "missing" and bwhy == "missing" then
    return nil, nil, "no dump to resurrect from (" .. path .. "): run `tether save` first"
  end
  return nil, nil, ("%s is %s and so is its previous copy"):format(path, why)
end

return M
