--- tether.cluster(spec): a supervisor whose workers serve one listening
-- socket (Node's cluster), and tether.cluster.worker() on the worker side.
--
-- balance = "rr" (default): the parent accepts (core/tt_acceptor.h) and
-- hands each connection, in a control frame with the descriptor, to the
-- ready worker with the fewest open connections (ties in turn).  Workers
-- tell when a connection was closed (they watch the descriptors they were
-- given), so the count is the open ones, not the ones ever given.
-- "shared": every worker gets the parent's listening socket at spawn and
-- accepts on it.  "reuseport": the parent opens one socket per worker slot
-- with SO_REUSEPORT and the kernel spreads connections among them.
--
-- In every mode the parent holds the listening sockets for the cluster's
-- life: a worker that crashes or is reloaded never takes its socket with
-- it, so connections wait in the backlog instead of being refused.  The
-- default shutdown of a worker is a control frame {type="cluster",
-- op="stop"}: the worker's "stop" event, or (rr, no listener) an exit once
-- its connections are closed.
local tether = require "tether"
local supervisor = require "tether.supervisor"
local check = require "tether.check"
local core = tether.core

local M = {}
local KIND_CONTROL = tether._KIND_CONTROL

-- What travels in control frames (PROTOCOL.md, "Clusters")
local CONNECTION = { type = "cluster", op = "connection" }
local STOP = { type = "cluster", op = "stop" }

local Cluster = setmetatable({}, { __index = supervisor.Supervisor })
Cluster.__index = Cluster
M.Cluster = Cluster

local function listen_check(v)
  if type(v) == "string" or tether.is_handle(v) then return true end
  if type(v) == "table" and #v > 0 then
    for _, a in ipairs(v) do
      if type(a) ~= "string" and not tether.is_handle(a) then return false, "addresses or handles" end
    end
    return true
  end
  return false, 'an address ("tcp://127.0.0.1:8080", "unix:/path"), a handle, or a list of them'
end

local OPTIONS = { listen = listen_check, balance = check.oneof("rr", "shared", "reuseport"),
  backlog = "count" }
local SCHEMA = {}
for k, v in pairs(supervisor.SUPERVISE_OPTIONS) do SCHEMA[k] = v end
for k, v in pairs(OPTIONS) do SCHEMA[k] = v end
M.SCHEMA, M.OPTIONS = SCHEMA, OPTIONS -- (the tether command checks a spec before it stops an app)

local function close_all(list)
  for _, h in ipairs(list) do h:close() end
end

-- The listening sockets: {handles}, and per slot the fds its workers get.
local function open_listeners(spec, instances)
  local given = type(spec.listen) == "table" and not tether.is_handle(spec.listen) and spec.listen
    or { spec.listen }
  local mode = spec.balance or "rr"
  local handles, per_slot = {}, {}
  local function fail(err)
    close_all(handles)
    return nil, err
  end
  if mode ~= "reuseport" then
    for _, a in ipairs(given) do
      local h, err
      if type(a) == "string" then
        h, err = tether.listen(a, { backlog = spec.backlog })
      else
        h, err = core.handle(a:fd() or -1) -- ours: the caller keeps theirs
      end
      if not h then return fail(err) end
      if h.kind ~= "tcp-server" and h.kind ~= "unix-server" then
        h:close()
        return fail(tether.error("EINVAL", "listen: not a listening socket (" .. tostring(h.kind) .. ")"))
      end
      handles[#handles + 1] = h
    end
    local fds = {}
    for i, h in ipairs(handles) do fds[i] = h:fd() end
    for id = 1, instances do per_slot[id] = mode == "shared" and fds or {} end
    return handles, per_slot, fds
  end
  -- reuseport: a socket per slot and address, all on the port the first got
  local addrs = {}
  for i, a in ipairs(given) do
    if type(a) ~= "string" then
      return fail(tether.error("EINVAL", "listen: balance \"reuseport\" needs addresses, not handles"))
    end
    addrs[i] = a
  end
  for id = 1, instances do
    local fds = {}
    for i, a in ipairs(addrs) do
      local h, err = tether.listen(a, { backlog = spec.backlog, reuseport = true })
      if not h then return fail(err) end
      handles[#handles + 1] = h
      fds[i] = h:fd()
      if id == 1 and a:match("^tcp://") then
        -- port 0: the others join the port the kernel picked
        local _, port = h:address()
        addrs[i] = a:gsub(":%d+$", ":" .. port)
      end
    end
    per_slot[id] = fds
  end
  return handles, per_slot, addrs
end

local function handshake(mode, fds)
  return "TETHER_CLUSTER=" .. mode .. (#fds > 0 and ":" .. table.concat(fds, ",") or "")
end

--- tether.cluster(spec) -> cluster | nil, err
function M.new(spec)
  if type(spec) ~= "table" then check.argerror("cluster", 1, "table expected, got " .. type(spec), 2) end
  check.options("cluster", 1, spec, SCHEMA, 2)
  if spec.listen == nil then check.argerror("cluster", 1, "option 'listen' is required", 2) end
  if spec.serialization == "json" then
    check.argerror("cluster", 1, "cluster workers are tether workers (serialization \"native\")", 2)
  end
  local mode = spec.balance or "rr"
  local sup_spec = {}
  for k, v in pairs(spec) do if OPTIONS[k] == nil then sup_spec[k] = v end end
  local opened
  local ok, self, err = pcall(supervisor.new, sup_spec, {
    fname = "cluster", schema = SCHEMA, level = 3, class = Cluster, events = M.EVENTS,
    prepare = function(self, o)
      local handles, per_slot, extra = open_listeners(spec, o.instances)
      if not handles then return nil, per_slot end
      opened = handles
      o.slots = {}
      for id = 1, o.instances do
        o.slots[id] = { fds = per_slot[id], handshake = handshake(mode, per_slot[id]) }
      end
      -- what a slot added by scale() gets: the shared sockets, or (reuseport)
      -- the addresses its own sockets are opened at
      self._shared_fds = mode == "shared" and extra or {}
      self._addrs = mode == "reuseport" and extra or nil
      self._backlog = spec.backlog
      if mode == "shared" and not (spec.env and spec.env.UV_TCP_SINGLE_ACCEPT) then
        -- a worker on libuv (luv) accepts until EAGAIN: the first one awake
        -- would take a whole burst; one per wake-up spreads them
        o.env[#o.env + 1] = "UV_TCP_SINGLE_ACCEPT=1"
      end
      if not o.has_shutdown_message then
        o.has_shutdown_message, o.shutdown_message, o.shutdown_kind = true, STOP, KIND_CONTROL
      end
      self.balance = mode
      self._sockets = handles
      -- per slot: given = connections handed to it, ready = per pid of an
      -- incarnation that takes connections, its open count
      self._conns = {}
      for id = 1, o.instances do self._conns[id] = { given = 0, ready = {} } end
      self._per_slot = per_slot
      self._waiting = {} -- accepted while no worker was ready
      self._next = 0
      return true
    end,
  })
  if not ok then -- raised (a bad option the core found): nothing stays open
    if opened then close_all(opened) end
    error(self, 0)
  end
  if not self then
    if opened then close_all(opened) end
    return nil, err
  end
  if mode == "rr" then
    self._acceptors = {}
    for i, h in ipairs(self._sockets) do
      local a, aerr = core.acceptor(h, function(conn, e)
        if conn then return self:_dispatch(conn) end
        self:emit("error", e)
      end)
      if not a then
        self:stop()
        return nil, aerr
      end
      self._acceptors[i] = a
    end
    self:_pause(true) -- until a worker is ready
  end
  return self
end

function Cluster:_pause(on)
  if self._paused == on then return end
  self._paused = on
  for _, a in ipairs(self._acceptors or {}) do a:pause(on) end
end

-- The ready worker with the fewest open connections, in turn among equals.
function Cluster:_pick()
  local n, h, conns, workers = self.instances, self._h, self._conns, self._workers
  local best, least
  for k = 1, n do
    local id = (self._next + k - 1) % n + 1
    local pid = workers[id].pid
    local r = pid and conns[id].ready[pid]
    if r and (least == nil or r.open < least) and h:running(id) then
      best, least = id, r.open
      if least == 0 then break end
    end
  end
  if best then self._next = best % n end
  return best
end

function Cluster:_dispatch(conn)
  if self._stopping then return conn:close() end
  local id = self:_pick()
  if not id then
    -- nobody ready: keep it, and let the backlog hold the next ones
    local w = self._waiting
    w[#w + 1] = conn
    return self:_pause(true)
  end
  local c = self._conns[id]
  local r = c.ready[self._workers[id].pid]
  r.open, c.given = r.open + 1, c.given + 1
  local ok = self._h:send(id, CONNECTION, 0, function(err)
    if not err then return conn:close() end -- the worker has its copy
    -- it never reached that worker (it stopped for good): another one
    r.open, c.given = math.max(0, r.open - 1), c.given - 1
    self:_dispatch(conn)
  end, KIND_CONTROL, nil, conn)
  if not ok then
    r.open, c.given = r.open - 1, c.given - 1
    conn:close() -- queue full or closed: the client sees it closed
  end
end

-- A worker became ready (or the slot's worker changed): what waited goes.
function Cluster:_flush()
  if self._stopping or not self:_pick() then return end
  local waiting = self._waiting
  self._waiting = {}
  for _, conn in ipairs(waiting) do self:_dispatch(conn) end
  if #self._waiting == 0 then self:_pause(false) end
end

-- `pid`: the incarnation that sent it, as the supervisor spawned it (not
-- what the worker says: a wrapper script may stand between)
function Cluster:_control(id, msg, pid)
  local c = self._conns[id]
  if not pid or pid <= 0 then return end
  if msg.op == "ready" then
    c.ready[pid] = c.ready[pid] or { open = 0 }
    self:_flush()
  elseif msg.op == "closed" and math.type(msg.n) == "integer" and msg.n > 0 then
    local r = c.ready[pid]
    if r then r.open = math.max(0, r.open - msg.n) end
  end
end

-- sup:scale()'s hook: per new slot, what the first ones got at the start
-- (reuseport: sockets of its own, opened now; a slot taken back while its
-- old worker is still stopping keeps its sockets).
function Cluster:_scale_slots(n)
  local slots, opened = {}, {}
  for id = self.instances + 1, n do
    local fds = self._per_slot[id]
    if not fds and self._addrs then
      fds = {}
      for i, a in ipairs(self._addrs) do
        local h, err = tether.listen(a, { backlog = self._backlog, reuseport = true })
        if not h then
          close_all(opened)
          return nil, err
        end
        opened[#opened + 1] = h
        fds[i] = h:fd()
      end
    end
    fds = fds or self._shared_fds
    slots[id] = { fds = fds, handshake = handshake(self.balance, fds) }
  end
  for id, slot in pairs(slots) do
    self._per_slot[id] = slot.fds
    self._conns[id] = self._conns[id] or { given = 0, ready = {} }
  end
  for _, h in ipairs(opened) do self._sockets[#self._sockets + 1] = h end
  return slots
end

--- cluster:address() -> host, port (or the path) of the first listener
function Cluster:address()
  local h = self._sockets[1]
  if h then return h:address() end
end

--- cluster:connections() -> per worker id {given = n, open = n} (rr: what
-- the parent handed out; nil in the other modes, where workers accept)
function Cluster:connections()
  if self.balance ~= "rr" then return nil end
  local out = {}
  for id = 1, self.instances do
    local c = self._conns[id]
    local r = c.ready[self._workers[id].pid]
    out[id] = { given = c.given, open = r and r.open or 0 }
  end
  return out
end

function Cluster:stop(cb)
  if cb ~= nil and type(cb) ~= "function" then check.argerror("stop", 1, "function expected, got " .. type(cb), 2) end
  self._stopping = true
  for _, conn in ipairs(self._waiting or {}) do conn:close() end
  self._waiting = {}
  self:_pause(true)
  return supervisor.Supervisor.stop(self, cb)
end

local function teardown(self)
  for _, a in ipairs(self._acceptors or {}) do a:stop() end
  self._acceptors = {}
  for _, conn in ipairs(self._waiting or {}) do conn:close() end
  self._waiting = {}
  close_all(self._sockets or {})
  self._sockets = {}
end

-- "reuseport": a slot that will not run again must leave the kernel's
-- group, or clients hashed to its socket would wait for ever
local function retire_slot(self, id)
  local fds = self._per_slot and self._per_slot[id]
  if self.balance ~= "reuseport" or not fds or self._stopping or not self._h then return end
  local info = self._h:info(id) -- nil: removed by scale() and down
  if info and info.state ~= "down" then return end
  if not info and id <= self.instances then return end
  local keep = {}
  for _, h in ipairs(self._sockets) do
    local mine = false
    for _, fd in ipairs(fds) do if h:fd() == fd then mine = true end end
    if mine then h:close() else keep[#keep + 1] = h end
  end
  self._sockets = keep
  self._per_slot[id] = nil
end

M.EVENTS = setmetatable({
  control = function(self, id, msg, handle, pid)
    if handle then handle:close() end -- workers send none
    if type(msg) == "table" and msg.type == "cluster" then return self:_control(id, msg, pid) end
    return supervisor.EVENTS.control(self, id, msg)
  end,
  start = function(self, id, pid)
    supervisor.EVENTS.start(self, id, pid)
    if self._acceptors then self:_flush() end
  end,
  exit = function(self, id, code, sig, reason, pid)
    self._conns[id].ready[pid] = nil
    supervisor.EVENTS.exit(self, id, code, sig, reason, pid)
    -- (the restart, if any, is decided by now: asked on the next turn)
    tether.defer(function() retire_slot(self, id) end)
  end,
  stopped = function(self)
    self._stopping = true
    teardown(self)
    supervisor.EVENTS.stopped(self)
  end,
}, { __index = supervisor.EVENTS })

---------------------------------------------------------------------------
-- the worker's side

local Worker = setmetatable({}, { __index = tether.Emitter })
Worker.__index = Worker
M.Worker = Worker

local the_worker -- one per process

local POLL_MS = 100

-- Connections handed to the user are watched by descriptor number and
-- identity (inode): once either changes, the user closed it.  No duplicate
-- is kept (it would keep the connection open).
local function watch_closes(self)
  if self._poll then return end
  self._poll = tether.every(POLL_MS, function()
    local open, closed, kept = self._open, 0, {}
    for i = 1, #open do
      local e = open[i]
      if tether._same_fd(e) then kept[#kept + 1] = e else closed = closed + 1 end
    end
    self._open = kept
    if closed > 0 then
      self.open = #kept
      if tether.parent and tether.parent.connected then
        tether.parent:_send_kind({ type = "cluster", op = "closed", pid = core.pid(), n = closed }, KIND_CONTROL)
      end
      if self._draining and #kept == 0 then tether.exit(0) end
    end
    if #kept == 0 then
      self._poll:stop()
      self._poll = nil
    end
  end)
  self._poll:unref()
end

-- A listener for "connection": the parent may start sending them.
function Worker:_listeners_changed(event)
  if event == "connection" and not self._announced and self.balance == "rr" then
    self._announced = true
    if tether.parent and tether.parent.connected then
      tether.parent:_send_kind({ type = "cluster", op = "ready", pid = core.pid() }, KIND_CONTROL)
    end
  end
end

function Worker:_connection(handle)
  local mark = tether._fd_mark(handle)
  if mark then -- watched first: one a listener closes (or raises on) counts
    local open = self._open
    open[#open + 1] = mark
    self.open = #open
    watch_closes(self)
  end
  tether._emit_with_handle(self, handle, "connection", handle)
end

function Worker:_stop()
  if self:emit("stop") then return end
  if self.balance == "rr" and #self._open > 0 then
    self._draining = true -- exit once the last connection is closed
    return
  end
  tether.exit(0)
end

function Worker:__tostring()
  return ("tether.cluster.worker (%s)"):format(self.balance)
end

local function parse(spec)
  local mode, list = spec:match("^(%a+):?([%d,]*)$")
  if mode ~= "rr" and mode ~= "shared" and mode ~= "reuseport" then return nil end
  local fds = {}
  for n in list:gmatch("%d+") do fds[#fds + 1] = tonumber(n) end
  return mode, fds
end

--- tether.cluster.worker() -> listening handle, worker (shared,
-- reuseport) | worker (rr) | nil, err when not started by a cluster.
-- The worker object's events: "connection"(handle) (rr), "stop" (the
-- cluster is stopping or reloading this worker: finish and exit).
function M.worker()
  if the_worker then
    if the_worker.balance == "rr" then return the_worker end
    return the_worker.handles[1], the_worker
  end
  local spec = core.handshake().cluster
  local mode, fds = nil, nil
  if spec then mode, fds = parse(spec) end
  if not mode or not tether.parent then
    return nil, tether.error("ERR_NOT_CLUSTER", "not a cluster worker (started by tether.cluster)")
  end
  local handles = {}
  for i, fd in ipairs(fds) do
    local h, err = core.adopt_fd(fd)
    if not h then
      close_all(handles)
      return nil, err
    end
    handles[i] = h
  end
  the_worker = setmetatable({ balance = mode, handles = handles, open = 0, _open = {} }, Worker)
  -- the parent's control frames (connections, stop) are our work: the
  -- channel keeps the loop alive, listener or not
  tether.parent._cluster = true
  tether.parent:_update_ref()
  if mode == "rr" then return the_worker end
  return handles[1], the_worker
end

-- control frames from the parent (tether.lua routes {type="cluster"} here)
function M.control(msg, handle)
  if msg.op == "connection" and handle then
    if the_worker and the_worker.balance == "rr" then return the_worker:_connection(handle) end
    return handle:close()
  end
  if handle then handle:close() end
  if msg.op == "stop" then
    if the_worker then return the_worker:_stop() end
    tether.exit(0)
  end
end

return M
