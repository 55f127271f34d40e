-- JSON mode against the real Node.js, both directions.
local tether = require "tether"
local H = require "helper"

local NODE = os.getenv("TETHER_NODE") or "node"
local TETHER_JS = H.dir .. "/../examples/node/tether.js"

local function js(name, src)
  local path = H.tmpfile(name)
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return path
end

-- Node must not run under the sanitizer runtimes the specs may preload
local NODE_ENV = { LD_PRELOAD = "" }

local function spawn_node(path, args, opts)
  opts = opts or {}
  opts.serialization = "json"
  opts.env = NODE_ENV
  local a = { path }
  for _, v in ipairs(args or {}) do a[#a + 1] = v end
  return assert(tether.spawn(NODE, a, opts))
end

local ECHO = js("echo.js", ([[
const tether = require(%q);
tether.serve(async (task) => ({ doubled: task * 2 }));
process.on('message', (m) => {
  if (m === 'bye') return process.disconnect();
  if (tether.isEnvelope(m)) return;
  process.send({ echo: m, type: m === null ? 'null' : Array.isArray(m) ? 'array' : typeof m });
});
process.send({ hello: 'from node', pid: process.pid, int: 42, float: 2.5, big: 2 ** 53, nul: null,
  arr: [1, 'two', null], empty_obj: {}, empty_arr: [], uni: 'é€😀', line: 'a\nb' });
]]):format(TETHER_JS))

describe("serialization = \"json\" (Node.js)", function()
  H.leak_guard(before_each, after_each)

  it("exchanges messages with a node child, with the documented value mapping", function()
    local c = spawn_node(ECHO)
    local got = {}
    c:on("message", function(m)
      got[#got + 1] = m
      if #got == 1 then
        c:send({ 1, 2, 3 })
        c:send("text")
        c:send({ a = { b = tether.null }, n = -7, f = 0.1 + 0.2 })
        c:send({})
        c:send(nil)
        c:send(true)
      elseif #got == 7 then
        c:send("bye")
      end
    end)
    local disconnected, code = false, nil
    c:on("disconnect", function() disconnected = true end)
    c:on("exit", function(cd) code = cd end)
    H.run(10)
    local hello = got[1]
    assert.equals("from node", hello.hello)
    assert.equals(c.pid, hello.pid)
    assert.equals("integer", math.type(hello.int))
    assert.equals(2.5, hello.float)
    assert.equals("integer", math.type(hello.big))
    assert.equals(tether.null, hello.nul)
    assert.same({ 1, "two", tether.null }, hello.arr)
    assert.same({}, hello.empty_obj)
    assert.same({}, hello.empty_arr)
    assert.equals("é€😀", hello.uni)
    assert.equals("a\nb", hello.line)
    assert.same({ echo = { 1, 2, 3 }, type = "array" }, got[2])
    assert.same({ echo = "text", type = "string" }, got[3])
    assert.same({ a = { b = tether.null }, n = -7, f = 0.1 + 0.2 }, got[4].echo)
    assert.equals("object", got[5].type)
    assert.equals("null", got[6].type)
    assert.same({ echo = true, type = "boolean" }, got[7])
    assert.is_true(disconnected)
    assert.equals(0, code)
  end)

  it("refuses what JSON cannot carry with ERR_SERIALIZE and the path", function()
    local c = spawn_node(ECHO)
    local t = {}
    t.self = t
    for _, case in ipairs {
      { { items = { 1, 2, function() end } }, "msg.items[3]: function" },
      { t, "msg.self: cycle" },
      { { x = 0 / 0 }, "msg.x: " },
      { { n = math.maxinteger }, "msg.n: integer beyond 2^53" },
      { { 1, nil, 3 }, "sparse array" },
      { { 1, 2, k = "v" }, "mixes array and string keys" },
      { { s = "\xff\xfe" }, "msg.s: string is not valid UTF-8" },
      { { [true] = 1 }, "key of type boolean" },
      { coroutine.create(function() end), "msg: thread" },
    } do
      local ok, err = c:send(case[1])
      assert.is_nil(ok)
      assert.equals("ERR_SERIALIZE", err.code)
      assert.matches(case[2], err.message, 1, true)
    end
    c:send("bye")
    H.run(10)
  end)

  it("calls a node worker's tether.serve and answers node's calls", function()
    local c = spawn_node(ECHO)
    local reply, err
    c:once("message", function()
      tether.go(function()
        reply, err = c:call(21, { timeout = 5000 })
        c:send("bye")
      end)
    end)
    H.run(10)
    assert.is_nil(err)
    assert.same({ doubled = 42 }, reply)
  end)

  it("survives a malformed line and a partial line at EOF (ERR_IPC_PROTOCOL)", function()
    for _, case in ipairs {
      { "process.send({ok: 1}); require('fs').writeSync(3, '{oops}\\n'); setTimeout(() => {}, 300);",
        "malformed JSON" },
      { "require('fs').writeSync(3, '{\"a\":1}\\n{\"partial\":'); process.exit(0);", "partial line" },
      { "require('fs').writeSync(3, '{\"a\":1}\\n\\n'); setTimeout(() => {}, 300);", "empty line" },
    } do
      local c = spawn_node(js("bad.js", case[1]))
      local errors, msgs = {}, 0
      c:on("error", function(e) errors[#errors + 1] = e end)
      c:on("message", function() msgs = msgs + 1 end)
      H.run(10)
      assert.equals(1, #errors)
      assert.equals("ERR_IPC_PROTOCOL", errors[1].code)
      assert.matches(case[2], errors[1].message, 1, true)
      assert.equals(1, msgs) -- the good line before it was delivered
    end
  end)

  it("loses nothing a node child sent before it exited", function()
    local c = spawn_node(js("burst.js", [[
      const N = 2000;
      for (let i = 1; i <= N; i++) process.send({ i, pad: 'x'.repeat(200) }, i === N ? () => process.exit(0) : undefined);
    ]]))
    local n, ordered = 0, true
    c:on("message", function(m)
      n = n + 1
      if m.i ~= n then ordered = false end
    end)
    H.run(20)
    assert.equals(2000, n)
    assert.is_true(ordered)
  end)

  it("keeps Node's internal messages out and takes a sent handle (ACK)", function()
    local c = spawn_node(js("internal.js", [[
      const net = require('net');
      const srv = net.createServer().listen(0, '127.0.0.1', () => {
        // a handle: Node waits for our ACK/NACK before anything else goes
        process.send({ with: 'handle' }, srv);
        process.send({ after: 'handle' });
      });
      process.on('message', (m) => { if (m === 'bye') { srv.close(); process.disconnect(); } });
    ]]), { stdio = { stderr = "ignore" } })
    local got, kinds = {}, {}
    c:on("message", function(m, h)
      got[#got + 1] = m
      kinds[#got] = h and h.kind or "none"
      if h then h:close() end
      if #got == 2 then c:send("bye") end
    end)
    H.run(10)
    -- the wrapper never surfaces: the message comes with its handle, and
    -- the ACK let Node send the next one
    assert.same({ { with = "handle" }, { after = "handle" } }, got)
    assert.same({ "tcp-server", "none" }, kinds)
  end)

  it("a Lua script forked by Node finds tether.parent in JSON mode", function()
    local out = H.tmpfile("node-parent.out")
    local child = H.script [[
      local tether = require "tether"
      assert(tether.parent and tether.parent.json)
      tether.parent:handle(function(x) return { squared = x * x } end)
      tether.parent:on("message", function(m) tether.parent:send({ got = m }) end)
      tether.parent:on("disconnect", function()
        io.stderr:write("lua child: disconnect\n")
      end)
      tether.parent:send("ready")
      tether.run()
    ]]
    local parent = js("parent.js", ([[
      const { fork } = require('child_process');
      const tether = require(%q);
      const c = fork(%q, [], { execPath: %q, execArgv: [], stdio: ['inherit', 'inherit', 'pipe', 'ipc'],
        env: { ...process.env, LUA_PATH: %q, LUA_CPATH: %q, LD_PRELOAD: %q } });
      let err = '';
      c.stderr.on('data', (d) => { err += d; });
      const seen = [];
      c.on('message', async (m) => {
        if (m && m.cmd === 'TETHER_REQUEST') return;
        seen.push(m);
        if (m === 'ready') {
          c.send({ n: 1 });
        } else if (m.got) {
          // call the Lua child's handle() through the envelopes, by hand
          c.send({ cmd: 'TETHER_REQUEST', id: 7, task: 12 });
        } else if (m.cmd === 'TETHER_REPLY') {
          c.disconnect();
        }
      });
      c.on('exit', (code) => {
        require('fs').writeFileSync(%q, JSON.stringify({ seen, code, err }));
      });
    ]]):format(TETHER_JS, child, H.LUA, package.path, package.cpath,
      os.getenv("LD_PRELOAD") or "", out)) -- the Lua child runs our build, sanitized or not
    local p = assert(tether.spawn(NODE, { parent }, { channel = false, env = NODE_ENV }))
    local code
    p:on("exit", function(cd) code = cd end)
    H.run(15)
    assert.equals(0, code)
    local f = assert(io.open(out))
    local text = f:read("a")
    f:close()
    local ok, res = tether._json.decode(text)
    assert.is_true(ok)
    assert.same({ "ready", { got = { n = 1 } }, { cmd = "TETHER_REPLY", id = 7, result = { squared = 144 } } }, res.seen)
    assert.equals(0, res.code)
    assert.matches("lua child: disconnect", res.err, 1, true)
    os.remove(out)
  end)

  it("supervises node workers (restarted like Lua ones) and runs a pool of them", function()
    local flag = H.tmpfile("node-crashed")
    os.remove(flag)
    local worker = js("sup.js", ([[
      const fs = require('fs');
      const tether = require(%q);
      tether.serve(async (t) => t + 1);
      process.on('message', (m) => {
        if (m === 'crash' && !fs.existsSync(%q)) { fs.writeFileSync(%q, 'x'); process.exit(3); }
        if (m === 'ping') process.send('pong');
      });
    ]]):format(TETHER_JS, flag, flag))
    local sup = assert(tether.supervise { cmd = NODE, args = { worker }, serialization = "json",
      handle_signals = false, env = NODE_ENV, backoff = { initial = 10, max = 10, jitter = 0 } })
    local starts, reasons, pongs = 0, {}, 0
    sup:on("start", function() starts = starts + 1 end)
    sup:on("restart", function(w, r) reasons[#reasons + 1] = r end)
    sup:on("message", function(w, m) if m == "pong" then pongs = pongs + 1 end end)
    H.run_until(function() return starts == 1 end)
    sup:send(1, "crash")
    H.run_until(function() return starts == 2 end)
    sup:send(1, "ping")
    H.run_until(function() return pongs == 1 end)
    assert.same({ "crash" }, reasons)
    local stopped = false
    sup:stop(function() stopped = true end)
    H.run_until(function() return stopped and sup.closed end)

    local pool = assert(tether.pool { cmd = NODE, args = { worker }, serialization = "json", size = 2,
      env = NODE_ENV })
    local results
    tether.go(function() results = assert(pool:map({ 1, 2, 3, 4, 5 })) end)
    H.run_until(function() return results end)
    assert.same({ 2, 3, 4, 5, 6 }, results)
    local closed = false
    pool:close(function() closed = true end)
    H.run_until(function() return closed and pool.closed end)
    os.remove(flag)
  end)

  it("a node child sees 'disconnect' when the Lua parent disconnects", function()
    local marker = H.tmpfile("node-disconnect")
    os.remove(marker)
    local c = spawn_node(js("disc.js", ([[
      process.on('disconnect', () => require('fs').writeFileSync(%q, 'disconnected'));
      process.on('message', () => {});
      process.send('up');
    ]]):format(marker)))
    local code
    c:once("message", function() assert.is_true(c:disconnect()) end)
    c:on("exit", function(cd) code = cd end)
    H.run(10)
    assert.equals(0, code)
    local f = assert(io.open(marker))
    assert.equals("disconnected", f:read("a"))
    f:close()
    os.remove(marker)
  end)

  it("a pool drops handles from a node worker (none kept), and its tasks go on", function()
    local worker = js("handle_pool.js", ([[
      const net = require('net');
      const tether = require(%q);
      tether.serve(async (t) => {
        // listening first, so a descriptor really travels with each one
        const srv = net.createServer();
        await new Promise((r) => srv.listen(0, '127.0.0.1', r));
        for (let i = 0; i < 20; i++) process.send({ x: i }, srv);
        setTimeout(() => srv.close(), 2000).unref();
        return t * 2;
      });
    ]]):format(TETHER_JS))
    local pool = assert(tether.pool { cmd = NODE, args = { worker }, serialization = "json", size = 1,
      env = NODE_ENV, timeout = 5000, stderr = "ignore" })
    local r1, r2
    local errors = {}
    pool:on("error", function(e) errors[#errors + 1] = e end)
    tether.go(function()
      r1 = pool:run(4)
      r2 = pool:run(5)
    end)
    H.run_until(function() return r2 end, 15)
    assert.equals(8, r1)
    assert.equals(10, r2)
    assert.same({}, errors) -- 40 handles, none left pending
    local closed = false
    pool:close(function() closed = true end)
    H.run_until(function() return closed and pool.closed end)
  end)

  it("a supervisor takes a handle from a node worker, and its messages go on", function()
    local worker = js("handle_sup.js", [[
      const net = require('net');
      const srv = net.createServer().listen(0, '127.0.0.1', () => {
        // Node holds every later message until the handle is ACKed or NACKed
        process.send({ with: 'handle' }, srv);
        process.send({ after: 'handle' });
        setTimeout(() => srv.close(), 2000).unref();
      });
    ]])
    local sup = assert(tether.supervise { cmd = NODE, args = { worker }, serialization = "json",
      env = NODE_ENV, stderr = "ignore", handle_signals = false, restart = "never" })
    local got, kinds = {}, {}
    sup:on("message", function(_, m, h)
      got[#got + 1] = m
      kinds[#got] = h and h.kind or "none"
      if h then h:close() end
    end)
    H.run_until(function() return #got >= 2 end, 15)
    assert.same({ { with = "handle" }, { after = "handle" } }, got)
    assert.same({ "tcp-server", "none" }, kinds)
    local stopped = false
    sup:stop(function() stopped = true end)
    H.run_until(function() return stopped and sup.closed end)
  end)

  it("a Lua child of a Node parent in \"advanced\" mode is told, not left without a parent", function()
    local out = H.tmpfile("advanced.out")
    local child = H.script(([[
      local tether = require "tether"
      local f = io.open(%q, "w")
      f:write(tostring(tether.parent), " ", tostring(tether.parent_error and tether.parent_error.code))
      f:close()
    ]]):format(out))
    local parent = js("adv.js", ([[
      const { fork } = require('child_process');
      fork(%q, [], { execPath: %q, execArgv: [], serialization: 'advanced', stdio: ['inherit', 'inherit', 'ignore', 'ipc'],
        env: { ...process.env, LUA_PATH: %q, LUA_CPATH: %q, LD_PRELOAD: %q } });
    ]]):format(child, H.LUA, package.path, package.cpath, os.getenv("LD_PRELOAD") or ""))
    local p = assert(tether.spawn(NODE, { parent }, { channel = false, env = NODE_ENV }))
    local code
    p:on("exit", function(cd) code = cd end)
    H.run(15)
    local f = assert(io.open(out))
    assert.equals("nil ENOTSUP", f:read("a"))
    f:close()
    os.remove(out)
  end)

  it("rejects what JSON mode cannot do", function()
    assert.has_error(function()
      tether.supervise { cmd = NODE, serialization = "json", heartbeat = { interval = 100 } }
    end)
    assert.has_error(function() tether.spawn(NODE, {}, { serialization = "advanced" }) end)
  end)
end)
