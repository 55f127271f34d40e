'use strict';
// The Node.js child of bench/node_bench.lua, for both parents: a tether
// Lua parent (tether.spawn("node", {this}, {serialization = "json"})) and a
// Node parent (bench/node_parent_bench.js, child_process.fork(this)).
// Plain Node IPC, nothing tether-specific: it echoes every message, and
// says {ready: pid} first.  It exits when its parent disconnects.
process.on('message', (m) => process.send(m));
process.send({ ready: process.pid });
