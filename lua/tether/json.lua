--- The JSON codec of `serialization = "json"` channels (Node.js's IPC format),
-- over lua-cjson.  Encoding refuses what JSON cannot carry exactly, with
-- the path of the value, rather than sending different data:
--
--   Lua                         JSON
--   nil (the message itself)    null
--   tether.null                 null          (decodes to tether.null)
--   true, false                 true, false
--   integer, |n| <= 2^53        number        (integral numbers decode to integers)
--   float, finite               number        (NaN and +-inf: ERR_SERIALIZE)
--   string, valid UTF-8         string        (other bytes: ERR_SERIALIZE)
--   table with keys 1..n        array
--   table with string keys      object
--   empty table                 {}            ([] decodes to an empty table)
--
-- and ERR_SERIALIZE for functions, userdata, threads, cycles, integers
-- beyond 2^53, sparse arrays, tables mixing array and string keys, and keys
-- of other types.
local ok, cjson = pcall(require, "cjson")

local M = {}

if not ok then
  M.available = false
  M.why = "serialization = \"json\" needs lua-cjson (Debian: apt-get install lua-cjson)"
  return M
end
M.available = true

local enc = cjson.new()
enc.encode_invalid_numbers(false)
enc.encode_max_depth(1000)
local dec = cjson.new()
dec.decode_invalid_numbers(false)
dec.decode_max_depth(1000)

local null = cjson.null
M.null = null

local SAFE = 2 ^ 53
local type, pairs, next, tostring, math_type, utf8_len = type, pairs, next, tostring, math.type, utf8.len

local function key_path(path, k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") then return path .. "." .. k end
  if type(k) == "string" then return ("%s[%q]"):format(path, k) end
  return ("%s[%s]"):format(path, tostring(k))
end

-- A failure found deep down: the reason, and the keys from the failing
-- value up to the message, added while the recursion unwinds (paths are
-- built only when something fails, not for every value sent).
local function failure(why, key)
  return { why = why, keys = { key } }
end

local function path_of(f)
  local path = "msg"
  for i = #f.keys, 1, -1 do
    local k = f.keys[i]
    if k ~= nil then path = key_path(path, k) end
  end
  return path .. ": " .. f.why
end

-- Appends the JSON text of v to `out`; returns a failure when v has no
-- exact JSON form.  Our own walk rather than cjson.encode: cjson writes at
-- most 14 significant digits, and a double needs 17.
local encode_string = enc.encode
local fmt = string.format

local function emit(v, out, open, depth)
  local t = type(v)
  if t == "string" then
    if not utf8_len(v) then return failure("string is not valid UTF-8") end
    out[#out + 1] = encode_string(v)
  elseif t == "number" then
    if math_type(v) == "integer" then
      if v > SAFE or v < -SAFE then return failure("integer beyond 2^53 (JSON numbers are doubles)") end
      out[#out + 1] = tostring(v)
    elseif v ~= v or v == math.huge or v == -math.huge then
      return failure(tostring(v) .. " has no JSON form")
    else
      out[#out + 1] = fmt("%.17g", v)
    end
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == nil or v == null then
    out[#out + 1] = "null"
  elseif t == "table" then
    if open[v] then return failure("cycle (JSON cannot refer back)") end
    if depth >= 1000 then return failure("nested deeper than 1000 levels") end
    local n, strings, ints, maxi = 0, false, false, 0
    for k in pairs(v) do
      n = n + 1
      if type(k) == "string" then
        strings = true
      elseif math_type(k) == "integer" and k >= 1 then
        ints = true
        if k > maxi then maxi = k end
      else
        return { why = "key of type " .. type(k) .. " has no JSON form", keys = { k } }
      end
    end
    if strings and ints then return failure("table mixes array and string keys") end
    if ints and maxi ~= n then return failure("sparse array (holes become nulls in JSON)") end
    open[v] = true
    if ints then
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        local f = emit(v[i], out, open, depth + 1)
        if f then
          f.keys[#f.keys + 1] = i
          return f
        end
      end
      out[#out + 1] = "]"
    else
      out[#out + 1] = "{"
      local first = true
      for k, x in pairs(v) do
        if not utf8_len(k) then return { why = "key is not valid UTF-8", keys = { k } } end
        out[#out + 1] = first and encode_string(k) or "," .. encode_string(k)
        out[#out + 1] = ":"
        first = false
        local f = emit(x, out, open, depth + 1)
        if f then
          f.keys[#f.keys + 1] = k
          return f
        end
      end
      out[#out + 1] = "}"
    end
    open[v] = nil
  elseif t == "userdata" and tostring(v):find("^tether%.buffer") then
    return failure("a tether.buffer cannot travel to a Node (JSON) peer")
  else
    return failure(t)
  end
  return nil
end

--- encode(value) -> text | nil, why
function M.encode(v)
  local out = {}
  local f = emit(v, out, {}, 0)
  if f then return nil, path_of(f) end
  return table.concat(out)
end

-- JSON has one number type: integral values come back as Lua integers
local function integers(v)
  for k, x in next, v do
    local t = type(x)
    if t == "number" then
      if x == x // 1 and x >= -SAFE and x <= SAFE and math_type(x) == "float" then
        v[k] = math.tointeger(x)
      end
    elseif t == "table" then
      integers(x)
    end
  end
end

--- decode(text) -> true, value | false, why
function M.decode(text)
  local okdec, v = pcall(dec.decode, text)
  if not okdec then return false, "malformed JSON from the peer: " .. tostring(v) end
  local t = type(v)
  if t == "table" then
    integers(v)
  elseif t == "number" and v == v // 1 and v >= -SAFE and v <= SAFE then
    v = math.tointeger(v)
  end
  return true, v
end

--- Node's internal messages ({cmd = "NODE_..."}) never surface as user
-- messages (child_process.js isInternal).
function M.is_internal(m)
  return type(m) == "table" and type(m.cmd) == "string" and #m.cmd > 5
    and m.cmd:sub(1, 5) == "NODE_"
end

return M
