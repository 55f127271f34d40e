-- Handles between tether and Node.js in JSON mode: Node's NODE_HANDLE
-- wrapper with the descriptor, NODE_HANDLE_ACK, and the stop-and-wait line
-- behind a handle, both directions (ports of the intent of Node's
-- test-child-process-fork-net-server and test-child-process-recv-handle).
local tether = require "tether"
local H = require "helper"

local NODE = os.getenv("TETHER_NODE") or "node"
-- (loaded here, not in a test: luv's default loop opens descriptors once)
local HAS_LUV = pcall(require, "luv")
local NODE_ENV = { LD_PRELOAD = "" } -- node must not run under the sanitizer

local function js(name, src)
  local path = H.tmpfile(name)
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return path
end

local function read_json(path)
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  os.remove(path)
  local ok, v = tether._json.decode(text)
  assert(ok, text)
  return v
end

describe("handles with Node.js (JSON mode)", function()
  H.leak_guard(before_each, after_each)

  it("a Lua parent sends a listening socket to a Node child (net.Server)", function()
    local child = js("server-child.js", [[
      process.on('message', (m, server) => {
        if (!server) return process.send({ plain: m });
        const report = () => {
          process.send({ got: m, type: server.constructor.name, port: server.address().port });
          server.close();
        };
        if (server.listening) report(); else server.on('listening', report);
      });
    ]])
    local c = assert(tether.spawn(NODE, { child }, { serialization = "json", env = NODE_ENV }))
    local s = assert(tether.listen("tcp://127.0.0.1:0"))
    local _, port = s:address()
    local acked, got = "no callback", {}
    assert.is_true(c:send({ n = 1 }, s, function(err) acked = err end))
    assert.is_true(c:send("after")) -- waits for the ACK, as in Node
    s:close() -- ours: a duplicate travels
    c:on("message", function(m)
      got[#got + 1] = m
      if #got == 2 then c:disconnect() end
    end)
    H.run_until(function() return c.exit_code ~= nil end, 15)
    assert.is_nil(acked)
    assert.same({ got = { n = 1 }, type = "Server", port = port }, got[1])
    assert.same({ plain = "after" }, got[2]) -- in order, after the handle
  end)

  it("a Node parent sends a server to a Lua child, which sends one back", function()
    local out = H.tmpfile("node-handles.out")
    local child = H.script [[
      local tether = require "tether"
      tether.parent:on("message", function(m, h)
        if not h then return tether.parent:send({ plain = m }) end
        local _, port = h:address()
        h:close()
        -- and one of our own, the other way
        local mine = assert(tether.listen("tcp://127.0.0.1:0"))
        local _, myport = mine:address()
        tether.parent:send({ kind = "tcp-server", port = port, mine = myport }, mine, function(err)
          assert(err == nil, tostring(err))
          mine:close()
          tether.parent:send("done")
        end)
      end)
      tether.run() -- run by Node's fork: not under tether's runner
    ]]
    local parent = js("handles-parent.js", ([[
      const { fork } = require('child_process');
      const net = require('net');
      const fs = require('fs');
      const seen = [];
      const server = net.createServer();
      server.listen(0, '127.0.0.1', () => {
        const port = server.address().port;
        const c = fork(%q, [], { execPath: %q, execArgv: [], stdio: 'inherit',
          env: { ...process.env, LUA_PATH: %q, LUA_CPATH: %q, LD_PRELOAD: %q } });
        c.on('message', (m, h) => {
          if (h) { m.theirs = h.address().port; m.type = h.constructor.name; h.close(); }
          seen.push(m);
          if (m === 'done') c.send('bye');
          else if (m.plain === 'bye') c.disconnect();
        });
        c.send({ hello: 1 }, server);
        c.on('exit', (code) => {
          server.close();
          fs.writeFileSync(%q, JSON.stringify({ seen, code, port }));
        });
      });
    ]]):format(child, H.LUA, package.path, package.cpath, os.getenv("LD_PRELOAD") or "", out))
    local p = assert(tether.spawn(NODE, { parent }, { channel = false, env = NODE_ENV }))
    local code
    p:on("exit", function(c) code = c end)
    H.run_until(function() return code ~= nil end, 20)
    assert.equals(0, code)
    local res = read_json(out)
    assert.equals(0, res.code)
    local first = res.seen[1]
    assert.equals("tcp-server", first.kind)
    assert.equals(res.port, first.port) -- the Lua child got Node's server
    assert.equals("Server", first.type) -- Node got ours as a net.Server
    assert.equals(first.mine, first.theirs)
    assert.equals("done", res.seen[2])
    assert.same({ plain = "bye" }, res.seen[3])
  end)

  it("a Node parent hands an accepted connection to a Lua child, which answers on it", function()
    if not HAS_LUV then pending("luv is not installed") return end
    local out = H.tmpfile("node-socket.out")
    local child = H.script [[
      local tether = require "tether"
      local uv = require "luv"
      tether.parent:on("message", function(m, h)
        assert(h and h.kind == "tcp", "no connection: " .. tostring(h and h.kind))
        local tcp = uv.new_tcp()
        assert(tcp:open(h:detach()))
        tcp:write("hello " .. m.to .. " from lua", function()
          tcp:shutdown(function() tcp:close() end)
        end)
        uv.run()
        tether.parent:send("answered")
      end)
      tether.run()
    ]]
    local parent = js("socket-parent.js", ([[
      const { fork } = require('child_process');
      const net = require('net');
      const fs = require('fs');
      let reply = '';
      const c = fork(%q, [], { execPath: %q, execArgv: [], stdio: 'inherit',
        env: { ...process.env, LUA_PATH: %q, LUA_CPATH: %q, LD_PRELOAD: %q } });
      const server = net.createServer((sock) => {
        c.send({ to: 'node' }, sock); // the connection goes to the child
      });
      server.listen(0, '127.0.0.1', () => {
        const client = net.connect(server.address().port, '127.0.0.1');
        client.on('data', (d) => { reply += d; });
        client.on('end', () => { server.close(); });
      });
      c.on('message', (m) => { if (m === 'answered') c.disconnect(); });
      c.on('exit', (code) => fs.writeFileSync(%q, JSON.stringify({ reply, code })));
    ]]):format(child, H.LUA, package.path, package.cpath, os.getenv("LD_PRELOAD") or "", out))
    local p = assert(tether.spawn(NODE, { parent }, { channel = false, env = NODE_ENV }))
    local code
    p:on("exit", function(c) code = c end)
    H.run_until(function() return code ~= nil end, 20)
    assert.equals(0, code)
    local res = read_json(out)
    assert.equals(0, res.code)
    assert.equals("hello node from lua", res.reply)
  end)

  it("a Lua parent sends a UDP socket to a Node child (dgram.Socket)", function()
    if not HAS_LUV then pending("luv is not installed") return end
    local uv = require "luv"
    local child = js("dgram-child.js", [[
      process.on('message', (m, sock) => {
        if (!sock) return;
        sock.on('message', (data) => {
          process.send({ datagram: String(data), type: sock.constructor.name });
          sock.close();
        });
        process.send({ port: sock.address().port });
      });
    ]])
    local c = assert(tether.spawn(NODE, { child }, { serialization = "json", env = NODE_ENV }))
    local u = uv.new_udp()
    assert(u:bind("127.0.0.1", 0))
    local port = u:getsockname().port
    local h = assert(tether.handle(uv.fileno(u)))
    assert.equals("udp", h.kind)
    u:close()
    uv.run("nowait")
    local acked = "no callback"
    assert.is_true(c:send({ take = "this" }, h, function(err) acked = err end))
    h:close()
    local got
    c:on("message", function(m)
      if m.port then
        assert.equals(port, m.port) -- the same socket, bound by us
        local s = uv.new_udp()
        s:send("ping", "127.0.0.1", port, function() s:close() end)
        uv.run()
      elseif m.datagram then
        got = m
        c:disconnect()
      end
    end)
    H.run_until(function() return c.exit_code ~= nil end, 15)
    assert.is_nil(acked)
    assert.same({ datagram = "ping", type = "Socket" }, got)
  end)

  -- test-child-process-fork-getconnections: a Node server sends the
  -- connections it accepts to a Lua child; server.getConnections() counts
  -- the ones still open there (NODE_SOCKET_GET_COUNT/COUNT), and
  -- server.close() completes once the child closed them all
  -- (NODE_SOCKET_NOTIFY_CLOSE/ALL_CLOSED).
  it("a Node server's getConnections() and close() count the sockets a Lua child holds", function()
    local out = H.tmpfile("node-getconn.out")
    local child = H.script [[
      local tether = require "tether"
      local held = {}
      tether.parent:on("message", function(m, h)
        if m.cmd == "new" then
          assert(h and h.kind == "tcp", "no connection")
          held[#held + 1] = h
        elseif m.cmd == "close" then
          assert(h == nil)
          held[m.id + 1]:close()
          tether.parent:send({ id = m.id, status = "closed" })
        end
      end)
      tether.run()
    ]]
    local parent = js("getconn-parent.js", ([[
      const { fork } = require('child_process');
      const net = require('net');
      const fs = require('fs');
      setTimeout(() => process.exit(3), 20000).unref(); // never outlive the spec
      const count = 12;
      const counts = [];
      let disconnected = 0, closed = false, killed = false;
      const child = fork(%q, [], { execPath: %q, execArgv: [], stdio: 'inherit',
        env: { ...process.env, LUA_PATH: %q, LUA_CPATH: %q, LD_PRELOAD: %q } });
      child.on('exit', (code, signal) => {
        fs.writeFileSync(%q, JSON.stringify({ counts, disconnected, closed, killed, code, signal }));
      });
      const server = net.createServer();
      const sockets = [];
      server.on('connection', (socket) => {
        child.send({ cmd: 'new' }, socket);
        sockets.push(socket);
        if (sockets.length === count) closeSockets(0);
      });
      server.on('close', () => { closed = true; });
      server.on('listening', () => {
        for (let j = 0; j < count; j++) {
          const client = net.connect(server.address().port, '127.0.0.1');
          client.on('close', () => { disconnected += 1; });
          client.resume();
        }
      });
      function closeSockets(i) {
        if (i === count) {
          server.close(() => {
            setTimeout(() => { killed = true; child.kill(); }, 200);
          });
          return;
        }
        child.once('message', (m) => {
          server.getConnections((err, num) => {
            counts.push(err ? String(err) : num);
            closeSockets(i + 1);
          });
        });
        child.send({ id: i, cmd: 'close' });
      }
      server.listen(0, '127.0.0.1');
    ]]):format(child, H.LUA, package.path, package.cpath, os.getenv("LD_PRELOAD") or "", out))
    local p = assert(tether.spawn(NODE, { parent }, { channel = false, env = NODE_ENV }))
    local code
    p:on("exit", function(c) code = c end)
    finally(function() if code == nil then p:kill("SIGKILL") end end)
    H.run_until(function() return code ~= nil end, 30)
    assert.equals(0, code)
    local res = read_json(out)
    local want = {}
    for i = 1, 12 do want[i] = 12 - i end
    assert.same(want, res.counts)
    assert.is_true(res.closed, "server.close() never completed (NODE_SOCKET_ALL_CLOSED)")
    assert.equals(12, res.disconnected)
    assert.is_true(res.killed)
  end)

  -- test-child-process-send-keep-open: Node sends a connection with
  -- { keepOpen: true } and goes on using it; the Lua child writes on its
  -- copy too; the client reads both.
  it("a Node parent keeps a socket it sent open (keepOpen); both ends write on it", function()
    local out = H.tmpfile("node-keepopen.out")
    if not HAS_LUV then pending("luv is not installed") return end
    local child = H.script [[
      local tether = require "tether"
      local uv = require "luv"
      tether.parent:on("message", function(m, h)
        assert(h and h.kind == "tcp", "no connection")
        local t = uv.new_tcp()
        assert(t:open(h:detach()))
        t:write("child\n", function() t:close() end)
        uv.run()
        tether.parent:send("written")
      end)
      tether.run()
    ]]
    local parent = js("keepopen-parent.js", ([[
      const { fork } = require('child_process');
      const net = require('net');
      const fs = require('fs');
      setTimeout(() => process.exit(3), 15000).unref(); // never outlive the spec
      let data = '', sentOk = null;
      const child = fork(%q, [], { execPath: %q, execArgv: [], stdio: 'inherit',
        env: { ...process.env, LUA_PATH: %q, LUA_CPATH: %q, LD_PRELOAD: %q } });
      const server = net.createServer((socket) => {
        child.send({ cmd: 'socket' }, socket, { keepOpen: true }, (err) => { sentOk = !err; });
        child.once('message', (m) => {
          // the child wrote and closed its copy; ours is still open
          socket.end('parent\n');
        });
      });
      server.listen(0, '127.0.0.1', () => {
        const client = net.connect(server.address().port, '127.0.0.1');
        client.on('data', (d) => { data += d; });
        client.on('end', () => { server.close(); child.disconnect(); });
      });
      child.on('exit', (code) => fs.writeFileSync(%q, JSON.stringify({ data, sentOk, code })));
    ]]):format(child, H.LUA, package.path, package.cpath, os.getenv("LD_PRELOAD") or "", out))
    local p = assert(tether.spawn(NODE, { parent }, { channel = false, env = NODE_ENV }))
    local code
    p:on("exit", function(c) code = c end)
    finally(function() if code == nil then p:kill("SIGKILL") end end)
    H.run_until(function() return code ~= nil end, 20)
    assert.equals(0, code)
    local res = read_json(out)
    assert.equals(0, res.code)
    assert.is_true(res.sentOk)
    assert.equals("child\nparent\n", res.data)
  end)
end)
