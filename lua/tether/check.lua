--- Argument and option checking for the tether facade.
--
-- Every public function checks its option table strictly: an unknown key,
-- or a value of the wrong type, raises an argument error that names the
-- function, the argument, the key and what was expected, with the closest
-- valid key for a near miss:
--
--   bad argument #1 to 'pool' (unknown option 'sise' (did you mean 'size'?))
--   bad argument #3 to 'fork' (option 'env.A': string expected, got function)
--
-- Errors are raised at `level`, counted as for error(): the caller's line,
-- never a line of tether's own files.
local M = {}

local type, pairs, tostring, math_type = type, pairs, tostring, math.type

--- error(...) for argument `n` of `fname`
function M.argerror(fname, n, msg, level)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), level + 1)
end

-- Levenshtein distance, capped: only near misses matter
local function distance(a, b)
  if math.abs(#a - #b) > 3 then return 99 end
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

--- the valid key closest to `key` (a typo, a case slip, a missing
-- underscore), or nil when none is close
function M.closest(key, schema)
  if type(key) ~= "string" then return nil end
  local best, best_d
  local lk = key:lower():gsub("[-_ ]", "")
  for k in pairs(schema) do
    local d = distance(lk, k:lower():gsub("[-_ ]", ""))
    if d < (best_d or 99) or (d == best_d and k < best) then best, best_d = k, d end
  end
  if best and best_d <= (#key <= 4 and 1 or 2) then return best end
  return nil
end

local function describe(v)
  local t = type(v)
  if t == "number" then return math_type(v) == "integer" and "integer" or "number" end
  if t == "string" then return ("'%s'"):format((#v > 40 and v:sub(1, 37) .. "..." or v):gsub("%z", "\\0")) end
  return t
end
M.describe = describe

-- Value checkers: f(v) -> true | false, "what was expected" | false, nil,
-- "the whole complaint" (for values with parts).
local checks = {}

function checks.string(v) return type(v) == "string", "string" end
-- what reaches the system as a C string (a path, a program, an argument):
-- a NUL byte would end it there and silently run something else
local NUL_COMPLAINT = "%s has a NUL byte (a path, a program, an argument or a variable ends there)"
function M.nul_complaint(v) return NUL_COMPLAINT:format(describe(v)) end
function checks.path(v)
  if type(v) ~= "string" then return false, "string" end
  if v:find("\0", 1, true) then return false, nil, M.nul_complaint(v) end
  return true
end
function checks.boolean(v) return type(v) == "boolean", "boolean" end
function checks.table(v) return type(v) == "table", "table" end
function checks.func(v) return type(v) == "function", "function" end
function checks.any() return true end
function checks.number(v) return type(v) == "number" and v == v, "number" end
-- a time in ms: finite, and below what the core's clocks take (uint64 ns
-- and libuv's timers); math.huge only where "for ever" is a meaning
M.MAX_MS = 1e15
function checks.ms(v)
  return type(v) == "number" and v >= 0 and v < M.MAX_MS, "number of ms (>= 0, below 1e15)"
end
function checks.seconds(v)
  return type(v) == "number" and v >= 0 and v < M.MAX_MS / 1000, "number of seconds (>= 0)"
end
function checks.ms_or_forever(v)
  return type(v) == "number" and v >= 0 and (v < M.MAX_MS or v == math.huge),
    "number of ms (>= 0; math.huge: for ever)"
end
function checks.count(v)
  return math_type(v) == "integer" and v >= 0, "integer >= 0"
end
function checks.positive(v)
  return math_type(v) == "integer" and v >= 1, "integer >= 1"
end
-- a number of workers (the core's TT_SUPERVISOR_MAX_INSTANCES)
M.MAX_WORKERS = 100000
function checks.workers(v)
  return math_type(v) == "integer" and v >= 1 and v <= M.MAX_WORKERS,
    ("integer from 1 to %d"):format(M.MAX_WORKERS)
end
function checks.bytes(v) -- a size: a positive integer below 4 GiB
  return math_type(v) == "integer" and v >= 1 and v < (1 << 32), "positive integer below 4 GiB"
end
M.checks = checks

--- oneof("a", "b"): one of these strings
function M.oneof(...)
  local allowed = { ... }
  local set = {}
  for _, a in ipairs(allowed) do set[a] = true end
  local expected = '"' .. table.concat(allowed, '", "') .. '"'
  return function(v)
    if set[v] then return true end
    local near = type(v) == "string" and M.closest(v, set)
    return false, nil, ("%s is not one of %s%s"):format(describe(v), expected,
      near and (" (did you mean \"" .. near .. "\"?)") or "")
  end
end

--- an array whose items pass `item` (`what` names an item)
function M.array_of(item, what)
  return function(v)
    if type(v) ~= "table" then return false, "array of " .. what end
    for i, x in pairs(v) do
      if math_type(i) ~= "integer" or i < 1 or i > #v or not item(x) then
        return false, nil, ("item [%s] is %s: an array of %s expected"):format(tostring(i), describe(x), what)
      end
    end
    return true
  end
end

--- a nested table of options with its own schema
function M.nested(schema)
  return { nested = schema }
end

local function check_table(fname, n, prefix, t, schema, level)
  for k, v in pairs(t) do
    local spec = type(k) == "string" and schema[k] or nil
    if spec == nil then
      local near = M.closest(k, schema)
      M.argerror(fname, n, ("unknown option '%s%s'%s"):format(prefix, tostring(k),
        near and (" (did you mean '" .. prefix .. near .. "'?)") or ""), level + 1)
    end
    if type(spec) == "table" and spec.nested then
      if type(v) ~= "table" then
        M.argerror(fname, n, ("option '%s%s': table expected, got %s"):format(prefix, k, describe(v)), level + 1)
      end
      check_table(fname, n, prefix .. k .. ".", v, spec.nested, level + 1)
    else
      local f = type(spec) == "string" and assert(checks[spec], spec) or spec
      local ok, expected, complaint = f(v)
      if not ok then
        M.argerror(fname, n, complaint and ("option '%s%s': %s"):format(prefix, k, complaint)
          or ("option '%s%s': %s expected, got %s"):format(prefix, k, expected, describe(v)), level + 1)
      end
    end
  end
end

--- options(fname, n, opts, schema, level) -> opts (or {} for nil)
-- schema: key -> a checker name ("string", "ms", ...), a checker function,
-- or M.nested(schema).
function M.options(fname, n, opts, schema, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    M.argerror(fname, n, "table expected, got " .. describe(opts), level + 1)
  end
  check_table(fname, n, "", opts, schema, level + 1)
  return opts
end

--- an environment table: variable names to strings (numbers and booleans
-- are turned into strings, as Node does)
function M.env(v)
  if type(v) ~= "table" then return false, "table of variables" end
  for k, x in pairs(v) do
    if type(k) ~= "string" or k == "" or k:find("=", 1, true) or k:find("\0", 1, true) then
      return false, nil, "key " .. describe(k) .. " is not a variable name"
    end
    local t = type(x)
    if t ~= "string" and t ~= "number" and t ~= "boolean" then
      return false, nil, ("env.%s is a %s: a string expected"):format(k, t)
    end
    if t == "string" and x:find("\0", 1, true) then return false, nil, "env." .. k .. ": " .. M.nul_complaint(x) end
  end
  return true
end

M.backoff = M.nested { initial = "ms", max = "ms", factor = "number", jitter = "ms" }

return M
