-- The native value codec (binding/codec.c, doc/codec-format.md).
-- Runs against tether.core when it is built, else the codec_test module.
-- The real module's encode/decode, plus the C probes of the test module
-- (built next to it by the Makefile) for what Lua cannot see.
local core = require "tether.core"
local probes = require "codec_test"
local codec = setmetatable({}, { __index = function(_, k)
  if k:sub(1, 1) == "_" then return probes[k] end
  return core[k]
end })

local encode, decode = codec.encode, codec.decode
local pack, unpack = string.pack, string.unpack

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function unhex(h)
  h = h:gsub("%s+", "")
  return (h:gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end

local function varint(n) -- n: non-negative integer (as unsigned 64-bit)
  local out = {}
  repeat
    local b = n & 0x7f
    n = n >> 7
    out[#out + 1] = string.char(n ~= 0 and (b | 0x80) or b)
  until n == 0
  return table.concat(out)
end

local function bits(x) return pack("<d", x) end

-- Structural equality that also demands the same sharing: each table of `a`
-- maps to exactly one table of `b`.  Numbers compare by subtype and bits.
local function same(a, b, map)
  map = map or {}
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then return false end
    if math.type(a) == "float" then return bits(a) == bits(b) end
    return a == b
  end
  if type(a) ~= "table" then return a == b end
  if map[a] ~= nil then return map[a] == b end
  map[a] = b
  local na, nb, tka, tkb = 0, 0, {}, {}
  for k, v in next, a do
    na = na + 1
    if type(k) == "table" then
      tka[#tka + 1] = k
    else
      local w = rawget(b, k)
      if w == nil or not same(v, w, map) then return false end
    end
  end
  for k in next, b do
    nb = nb + 1
    if type(k) == "table" then tkb[#tkb + 1] = k end
  end
  if na ~= nb or #tka ~= #tkb then return false end
  -- Table keys: pair them through the identity map when already known.
  for _, k in ipairs(tka) do
    local kb = map[k]
    if kb ~= nil then
      if rawget(b, kb) == nil or not same(rawget(a, k), rawget(b, kb), map) then
        return false
      end
    elseif #tka ~= 1 then
      return false -- keep the helper simple: one unknown table key at most
    else
      if not same(k, tkb[1], map) then return false end
      if not same(rawget(a, k), rawget(b, tkb[1]), map) then return false end
    end
  end
  return true
end

local function roundtrip(v)
  local s, err = encode(v)
  assert(s, err and tostring(err))
  local d, derr = decode(s)
  assert(derr == nil, derr and tostring(derr))
  return d, s
end

local function assert_roundtrip(v)
  local d = roundtrip(v)
  assert.is_true(same(v, d), "round trip changed the value")
  return d
end

local function assert_err(code, message, v, err)
  assert.is_nil(v)
  assert.is_table(err)
  assert.are.equal(code, err.code)
  assert.are.equal(message, err.message)
  assert.are.equal(code .. ": " .. message, tostring(err))
end

local function assert_protocol(s, message)
  local v, err = decode(s)
  assert.is_nil(v)
  assert.is_table(err, "expected a decode failure for " .. hex(s))
  assert.are.equal("ERR_IPC_PROTOCOL", err.code)
  if message then assert.are.equal(message, err.message) end
  assert.are.equal(err.code .. ": " .. err.message, tostring(err))
end

local function nest(depth, leaf)
  local t = leaf
  for _ = 1, depth do t = { t } end
  return t
end

-- A value exercising every feature: used for golden-free checks, truncation
-- and mutation tests.
local function complex()
  local shared = { "shared", 1.5 }
  local key = { k = true }
  local t = {
    1, -1, 63, 64, -64, -65, math.maxinteger, math.mininteger, 0.5, -0.0,
    "short", string.rep("L", 200), true, false,
    shared = shared, again = shared, [key] = key, [2.5] = "f",
    [true] = "t", [-7] = { {}, { {} } }, ["a b"] = "\0\1\255",
  }
  t.self = t
  for i = 1, 20 do t["s" .. i] = { i } end -- more than 16 tables
  t.late = t.s17
  return t
end

describe("codec", function()
  describe("scalars", function()
    it("round-trips nil and booleans", function()
      assert.is_nil((roundtrip(nil)))
      assert.is_true(roundtrip(true))
      assert.is_false(roundtrip(false))
    end)

    it("keeps integers exact and integer", function()
      local values = {
        0, 1, -1, 63, 64, -64, -65, 127, 128, 255, 256, 1000, -1000,
        1 << 31, -(1 << 31), (1 << 53) + 1, math.maxinteger,
        math.mininteger, math.maxinteger - 1, math.mininteger + 1,
      }
      for i = 0, 63 do
        values[#values + 1] = 1 << i
        values[#values + 1] = -(1 << i)
        values[#values + 1] = (1 << i) - 1
      end
      for _, v in ipairs(values) do
        local d = roundtrip(v)
        assert.are.equal("integer", math.type(d))
        assert.are.equal(v, d)
      end
    end)

    it("keeps floats float, even integral ones", function()
      for _, v in ipairs { 1.0, 0.0, -1.0, 2.0 ^ 63, 2.0 ^ 53, 1e300, 0.1 } do
        local d = roundtrip(v)
        assert.are.equal("float", math.type(d))
        assert.are.equal(bits(v), bits(d))
      end
    end)

    it("keeps float bits: NaN, payloads, signed zero, infinities", function()
      local custom = unpack("<d", unhex("efcdab8967452301")) -- payload NaN
      local neg_nan = unpack("<d", unhex("010000000000f8ff"))
      local values = {
        0 / 0, -(0 / 0), custom, neg_nan, -0.0, 0.0, math.huge, -math.huge,
        4.9e-324, -4.9e-324, 2.2250738585072009e-308, -- denormals
        2.2250738585072014e-308, 1.7976931348623157e308, math.pi,
      }
      for _, v in ipairs(values) do
        local d = roundtrip(v)
        assert.are.equal("float", math.type(d))
        assert.are.equal(hex(bits(v)), hex(bits(d)))
      end
      assert.are.equal("efcdab8967452301", hex(bits(roundtrip(custom))))
    end)

    it("keeps binary strings", function()
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      all = table.concat(all)
      for _, s in ipairs {
        "", "\0", "a\0b", all, all:reverse(), string.rep("x", 63),
        string.rep("y", 64), string.rep("\0", 1000),
      } do
        assert.are.equal(s, (roundtrip(s)))
      end
    end)

    it("round-trips a 4 MiB string", function()
      local s = string.rep("0123456789abcdef", 4 * 65536)
      local d, enc = roundtrip(s)
      assert.are.equal(s, d)
      assert.are.equal(#s + 5, #enc) -- tag + 4-byte varint length
    end)
  end)

  describe("byte layout", function()
    -- Pins doc/codec-format.md: peers in other languages rely on it.
    local golden = {
      { nil, "00" }, { false, "01" }, { true, "02" },
      { 0, "40" }, { 63, "7f" }, { -1, "ff" }, { -64, "c0" },
      { 64, "038001" }, { -65, "038101" }, { 300, "03d804" },
      { math.maxinteger, "03feffffffffffffffff01" },
      { math.mininteger, "03ffffffffffffffffff01" },
      { 1.0, "04000000000000f03f" }, { -0.0, "040000000000000080" },
      { "", "80" }, { "hi", "826869" },
      { string.rep("a", 64), "0540" .. string.rep("61", 64) },
      { {}, "060000" }, { { 1, 2 }, "0602004142" },
      { { x = 1 }, "060001817841" },
      { { [2.5] = true }, "060001" .. "040000000000000440" .. "02" },
    }
    for _, g in ipairs(golden) do
      it("encodes " .. tostring(g[1]) .. " as " .. g[2], function()
        assert.are.equal(g[2], hex((encode(g[1]))))
        local d = decode(unhex(g[2]))
        assert.is_true(same(g[1], d))
      end)
    end

    it("encodes shared tables once and refers back by id", function()
      local inner = {}
      assert.are.equal("060200" .. "060000" .. "0701",
        hex(encode { inner, inner }))
      local t = {}
      t[1] = t
      assert.are.equal("060100" .. "0700", hex(encode(t)))
    end)

    it("sizes the hash count varint for 127, 128 and 20000 entries", function()
      for _, n in ipairs { 127, 128, 129, 16383, 16384, 20000 } do
        local t = {}
        for i = 1, n do t["k" .. i] = i end
        local d, s = roundtrip(t)
        local head = "0600" .. hex(varint(n))
        assert.are.equal(head, hex(s:sub(1, #head // 2)))
        assert.is_true(same(t, d))
      end
    end)

    it("sizes both counts together: arrays and hashes of 128 and more", function()
      -- one walk writes the values first and the two counts after
      -- (doc/codec-format.md): counts past one byte move the body once
      for _, c in ipairs { { 127, 127 }, { 128, 0 }, { 0, 128 }, { 200, 300 }, { 20000, 129 } } do
        local t = {}
        for i = 1, c[1] do t[i] = i % 64 end
        for i = 1, c[2] do t["k" .. i] = true end
        local d, s = roundtrip(t)
        local head = "06" .. hex(varint(c[1])) .. hex(varint(c[2]))
        assert.are.equal(head, hex(s:sub(1, #head // 2)))
        assert.is_true(same(t, d))
      end
    end)

    it("sends a list as an array part wherever Lua keeps its keys, holes as nil", function()
      -- holes: the array part runs to the length, nil where there is none
      assert.are.equal("060300" .. "410043", hex(encode { 1, nil, 3 }))
      -- keys kept in the hash part (a constructor with [i] =, a list built
      -- backwards, a leading hole): still an array part, not pairs
      assert.are.equal("060300" .. "816181628163", hex(encode { [1] = "a", [2] = "b", [3] = "c" }))
      local back = {}
      for i = 3, 1, -1 do back[i] = i end
      assert.are.equal("060300" .. "414243", hex(encode(back)))
      local popped = {}
      for i = 1, 200 do popped[i] = i % 64 end
      popped[1] = nil -- a queue after a pop from the front
      local s = encode(popped)
      assert.is_true(#s <= 3 + 200 + 2, "encoded in " .. #s .. " bytes")
      assert.is_true(same(popped, decode(s)))
      -- and the pairs after an array part that broke early come once
      local mixed = { [1] = 1, [2] = 2, x = "y", [4] = 4 }
      assert.is_true(same(mixed, decode((encode(mixed)))))
    end)

    it("appends after what the buffer already holds", function()
      assert(codec._encode_into, "codec_test probes missing")
      local rc, buf, delta = codec._encode_into("HDR", { 1, "x" })
      assert.are.equal("OK", rc)
      assert.are.equal("HDR" .. encode { 1, "x" }, buf)
      assert.are.equal(0, delta)
    end)
  end)

  describe("tables", function()
    it("round-trips keys of every type", function()
      local tk = { "key table" }
      local t = {
        [true] = 1, [false] = 2, [0] = 3, [-5] = 4, [math.maxinteger] = 5,
        [math.mininteger] = 6, [1.5] = 7, [-0.25] = 8, [math.huge] = 9,
        [-math.huge] = 10, [2.0 ^ 63] = 11, s = 12, [""] = 13,
        ["\0"] = 14, [tk] = 15,
      }
      local d = assert_roundtrip(t)
      for k, v in pairs(d) do
        if type(k) == "table" then
          assert.are.equal("key table", k[1])
          assert.are.equal(15, v)
        end
      end
      assert.are.equal("float", math.type(next({ [1.5] = 1 })))
    end)

    it("round-trips mixed array and hash parts, and holes", function()
      assert_roundtrip { 1, 2, 3, x = "y", [10] = 10, [-1] = -1 }
      assert_roundtrip { 1, nil, 3, nil, 5 }
      assert_roundtrip { nil, nil, 3 }
      assert_roundtrip { [1] = 1, [2] = 2, [4] = 4, [100] = 100 }
      local big = {}
      for i = 1, 10000 do big[i] = i end
      big.n = 10000
      assert_roundtrip(big)
      local sparse = {}
      for i = 1, 1000, 7 do sparse[i] = tostring(i) end
      assert_roundtrip(sparse)
    end)

    it("preserves shared subtables", function()
      local inner = { 1 }
      local t = { a = inner, b = inner, list = { inner, inner } }
      local d = assert_roundtrip(t)
      assert.are.equal(d.a, d.b)
      assert.are.equal(d.a, d.list[1])
      assert.are.equal(d.a, d.list[2])
      assert.are_not.equal(d.a, d.list)
    end)

    it("preserves cycles", function()
      local t = { name = "root" }
      t.self = t
      t.child = { parent = t }
      t.child.child = t.child
      local d = roundtrip(t)
      assert.are.equal(d, d.self)
      assert.are.equal(d, d.child.parent)
      assert.are.equal(d.child, d.child.child)
      assert.are.equal("root", d.name)
    end)

    it("preserves a cycle through a table key", function()
      local t = {}
      t[t] = t
      local d = roundtrip(t)
      local k, v = next(d)
      assert.are.equal(d, k)
      assert.are.equal(d, v)
      assert.is_nil(next(d, k))
    end)

    it("keeps identity past the first 16 tables", function()
      local list = {}
      for i = 1, 100 do list[i] = { i } end
      local t = { list = list, again = {} }
      for i = 100, 1, -1 do t.again[i] = list[i] end
      local d = assert_roundtrip(t)
      for i = 1, 100 do
        assert.are.equal(d.list[i], d.again[i])
        assert.are.equal(i, d.list[i][1])
      end
    end)

    it("nests 1000 and 2000 deep, refuses 2001", function()
      for _, depth in ipairs { 1000, 2000 } do
        local d = roundtrip(nest(depth - 1, {}))
        local n = 1
        while d[1] do d, n = d[1], n + 1 end
        assert.are.equal(depth, n)
      end
      local v, err = encode(nest(2000, {}))
      assert.is_nil(v)
      assert.are.equal("ERR_SERIALIZE", err.code)
      local path = "msg" .. string.rep("[1]", 2000)
      assert.are.equal(path:sub(1, 120) .. "...: nesting deeper than 2000",
        err.message)
    end)

    it("honours a custom max_depth on both sides", function()
      local v, err = encode({ a = { b = { c = {} } } }, 3)
      assert_err("ERR_SERIALIZE", "msg.a.b.c: nesting deeper than 3", v, err)
      local s = assert(encode({ a = { b = { c = {} } } }))
      assert.is_table((decode(s, 4)))
      local d, derr = decode(s, 3)
      assert_err("ERR_IPC_PROTOCOL", "nesting deeper than 3 at byte 15", d,
        derr)
      assert.has_error(function() encode({}, 0) end)
      assert.has_error(function() decode("\0", 1e9) end)
    end)

    it("does not send metatables nor call metamethods", function()
      local calls = 0
      local mt = {
        __pairs = function() error("__pairs called") end,
        __index = function() calls = calls + 1; return "ghost" end,
        __len = function() error("__len called") end,
        __newindex = function() error("__newindex called") end,
        __eq = function() error("__eq called") end,
      }
      local t = setmetatable({ 1, 2, x = 3 }, mt)
      local d = roundtrip(t)
      assert.is_nil(getmetatable(d))
      assert.are.same({ 1, 2, x = 3 }, d)
      assert.are.equal(0, calls)
      -- A protected metatable is ignored just the same.
      local locked = setmetatable({ y = 1 }, { __metatable = false })
      assert.are.same({ y = 1 }, roundtrip(locked))
    end)
  end)

  describe("values that cannot be sent", function()
    local co = coroutine.create(function() end)
    local cases = {
      { print, "msg: function" },
      { io.stdout, "msg: userdata" },
      { co, "msg: thread" },
      { { items = { 1, 2, print } }, "msg.items[3]: function" },
      { { ["a b"] = co }, 'msg["a b"]: thread' },
      { { [2.5] = io.stdout }, "msg[2.5]: userdata" },
      { { [true] = { f = print } }, "msg[true].f: function" },
      { { [-3] = print }, "msg[-3]: function" },
      { { ["end"] = print }, 'msg["end"]: function' },
      { { ["a\n\"\\\0\255"] = print },
        'msg["a\\n\\"\\\\\\000\\255"]: function' },
      { { ["\r\t~"] = print }, 'msg["\\r\\t~"]: function' },
      { { x1 = { _Y = print } }, "msg.x1._Y: function" },
      { { ["1a"] = print }, 'msg["1a"]: function' },
      { { [0.1] = print }, "msg[0.1]: function" },
      { { a = { [{}] = { z = print } } }, "msg.a[table].z: function" },
      { { [{ g = co }] = 1 }, "msg[table].g: thread" },
      { { [print] = 1 }, "msg[function]: function used as a key" },
      { { x = { [io.stdout] = 1 } },
        "msg.x[userdata]: userdata used as a key" },
      { { [co] = true }, "msg[thread]: thread used as a key" },
    }
    for _, c in ipairs(cases) do
      it("reports " .. c[2], function()
        local v, err = encode(c[1])
        assert_err("ERR_SERIALIZE", c[2], v, err)
      end)
    end

    it("reports light userdata", function()
      assert(codec._lightuserdata, "codec_test probes missing")
      local lu = codec._lightuserdata()
      assert_err("ERR_SERIALIZE", "msg.p: userdata", encode { p = lu })
      assert_err("ERR_SERIALIZE", "msg[userdata]: userdata used as a key",
        encode { [lu] = 1 })
    end)

    it("caps long paths", function()
      local key = string.rep("k", 300)
      local v, err = encode { [key] = print }
      assert_err("ERR_SERIALIZE", "msg." .. key:sub(1, 116) .. "...: function",
        v, err)
    end)

    it("keeps nothing partial and balances the stack", function()
      assert(codec._encode_into, "codec_test probes missing")
      local big = string.rep("z", 100000)
      local rc, buf, delta = codec._encode_into("HDR", { big, big, print })
      assert.are.equal("ERR_SERIALIZE", rc)
      assert.are.equal("HDR", buf)
      assert.are.equal(1, delta)
      rc, buf, delta = codec._encode_into("", nest(10, {}), 5)
      assert.are.equal("ERR_SERIALIZE", rc)
      assert.are.equal("", buf)
      assert.are.equal(1, delta)
    end)

    it("still encodes after a failure", function()
      assert.is_nil((encode { string.rep("x", 1000), print }))
      assert.are.equal("060100" .. "0602004142", hex(encode { { 1, 2 } }))
    end)
  end)

  describe("malformed input", function()
    it("rejects an empty payload", function()
      assert_protocol("", "truncated value at byte 0")
    end)

    it("rejects unknown and reserved tags", function()
      for tag = 0x09, 0x3f do
        assert_protocol(string.char(tag),
          string.format("unknown tag 0x%02x at byte 0", tag))
      end
      assert_protocol("\6\1\0\63", "unknown tag 0x3f at byte 3")
    end)

    it("rejects a buffer (tag 0x08) where no descriptor can come with it", function()
      assert_protocol("\8\0", "a buffer where none may travel at byte 0")
      assert_protocol("\8", "truncated varint at byte 1")
      assert_protocol("\6\1\0\8\128\32", "a buffer where none may travel at byte 3")
    end)

    it("refuses to encode a buffer outside a frame that carries its descriptor", function()
      local b <close> = core.buffer(1)
      local v, err = encode({ b })
      assert.is_nil(v)
      assert.matches("travels only between processes on one machine", tostring(err), 1, true)
    end)

    it("rejects every truncation of a valid payload", function()
      local s = assert(encode(complex()))
      assert.is_true(same(complex(), decode(s)))
      for i = 0, #s - 1 do assert_protocol(s:sub(1, i)) end
    end)

    it("names the byte where data ran out", function()
      assert_protocol("\5\10abc", "truncated string at byte 0")
      assert_protocol("\6\0\1\133a", "truncated string at byte 3")
      assert_protocol("\4\0\0\0", "truncated float at byte 0")
      assert_protocol("\3\128", "truncated varint at byte 1")
      assert_protocol("\6\2\0\6\0\0", "truncated value at byte 6")
    end)

    it("rejects trailing bytes", function()
      assert_protocol("\64\0", "trailing bytes after the value at byte 1")
      assert_protocol(encode { 1, 2, x = 1 } .. "\0",
        "trailing bytes after the value at byte 8")
    end)

    it("rejects bad varints", function()
      assert_protocol("\3\128\0", "overlong varint at byte 1")
      assert_protocol("\3" .. string.rep("\255", 9) .. "\2",
        "varint overflows 64 bits at byte 1")
      assert_protocol("\3" .. string.rep("\128", 12),
        "varint overflows 64 bits at byte 1")
      -- The largest legal one is fine.
      assert.are.equal(math.mininteger,
        decode("\3" .. string.rep("\255", 9) .. "\1"))
    end)

    it("rejects huge counts and lengths before allocating", function()
      local t0 = os.clock()
      assert_protocol("\6" .. varint(1 << 60) .. "\0",
        "table array count 1152921504606846976 exceeds the data left at byte 0")
      assert_protocol("\6\0" .. varint(1 << 60),
        "table hash count 1152921504606846976 exceeds the data left at byte 0")
      assert_protocol("\6" .. varint(-1) .. varint(-1) .. "\0",
        "table array count 18446744073709551615 exceeds the data left" ..
        " at byte 0")
      assert_protocol("\5" .. varint(1 << 62) .. "abc",
        "truncated string at byte 0")
      assert_protocol("\5" .. varint(-1) .. "abc", "truncated string at byte 0")
      -- Nested tables cannot each claim the same remaining bytes.
      assert_protocol("\6\4\0\6\4\0\0\0\0\0",
        "table array count 4 exceeds the data left at byte 3")
      assert.is_true(os.clock() - t0 < 0.5)
    end)

    it("accepts exactly as many values as bytes allow", function()
      assert.are.same({ 1, 2, 3 }, decode("\6\3\0\65\66\67"))
      assert.are.same({ a = 1 }, decode("\6\0\1\129a\65"))
      assert_protocol("\6\3\0\65\66",
        "table array count 3 exceeds the data left at byte 0")
    end)

    it("rejects back-references to undefined tables", function()
      assert_protocol("\7\0", "reference to undefined table 0 at byte 0")
      assert_protocol("\6\1\0\7\1", "reference to undefined table 1 at byte 3")
      assert_protocol("\6\1\0\7" .. varint(1 << 62),
        "reference to undefined table 4611686018427387904 at byte 3")
      -- A reference to a table still being filled is fine (a cycle).
      local t = decode("\6\1\0\7\0")
      assert.are.equal(t, t[1])
    end)

    it("rejects nil and NaN keys", function()
      assert_protocol("\6\0\1\0\64", "nil table key at byte 3")
      assert_protocol("\6\0\1\4" .. bits(0 / 0) .. "\64",
        "NaN table key at byte 3")
    end)

    it("treats nil values as absent", function()
      local t = decode("\6\3\0\65\0\67")
      assert.are.equal(1, t[1])
      assert.is_nil(rawget(t, 2))
      assert.are.equal(3, t[3])
      assert.are.same({}, decode("\6\0\1\129a\0"))
    end)

    it("rejects a depth bomb without exhausting the C stack", function()
      local bomb = string.rep("\6\1\0", 100000) .. "\0"
      assert_protocol(bomb, "nesting deeper than 2000 at byte 6000")
      local refs = string.rep("\6\1\0", 2000) .. "\0"
      assert.is_table((decode(refs)))
      -- Through table keys too (each open pair still owes its value byte).
      assert_protocol("\6\0\1" .. string.rep("\6\0\1", 2000) ..
        string.rep("\0", 2002),
        "nesting deeper than 2000 at byte 6000")
    end)

    it("survives seeded garbage and mutations", function()
      math.randomseed(20240611)
      local base = assert(encode(complex()))
      local decoded = 0
      for round = 1, 4000 do
        local s
        if round % 2 == 0 then
          local t = {}
          for i = 1, math.random(0, 40) do
            t[i] = string.char(math.random(0, 255))
          end
          s = table.concat(t)
        else
          local b = { base:byte(1, -1) }
          for _ = 1, math.random(1, 4) do
            b[math.random(#b)] = math.random(0, 255)
          end
          s = string.char(table.unpack(b))
        end
        local v, err = decode(s)
        if err == nil then
          decoded = decoded + 1
          local again = assert(encode(v, 10000))
          assert.is_nil(select(2, decode(again, 10000)))
        else
          assert.is_nil(v)
          assert.are.equal("ERR_IPC_PROTOCOL", err.code)
        end
      end
      assert.is_true(decoded > 0)
    end)

    it("leaves exactly one value on the stack", function()
      assert(codec._decode_probe, "codec_test probes missing")
      local rc, v, delta = codec._decode_probe(encode { 1, { 2 } })
      assert.are.equal("OK", rc)
      assert.are.same({ 1, { 2 } }, v)
      assert.are.equal(1, delta)
      rc, v, delta = codec._decode_probe("\6\1\0\6\1\0\7\9")
      assert.are.equal("ERR_IPC_PROTOCOL", rc)
      assert.are.equal("reference to undefined table 9 at byte 6", v)
      assert.are.equal(1, delta)
    end)

    it("requires a string", function()
      assert.has_error(function() decode(123) end)
      assert.has_error(function() decode() end)
      assert.has_error(function() encode() end)
    end)
  end)
end)
