// A Node.js worker for examples/node/lua_parent.lua, started by a tether
// parent as `node node_worker.js` with serialization = "json" (plain
// tether.spawn, then under a supervisor).  It uses Node's own IPC API:
// process.send, process.on('message'), 'disconnect'; and ./tether.js for
// tether's request/response envelopes (call and handle).
'use strict';
const tether = require('./tether');

const id = process.env.TETHER_WORKER_ID || '-';

// answers the parent's child:call(request)
tether.serve(async (req) => {
  if (req.op === 'add') return req.a + req.b;
  if (req.op === 'upper') return req.s.toUpperCase();
  throw new Error(`unknown op ${JSON.stringify(req.op)}`);
});

// plain messages (the envelopes above reach this listener too: skip them)
process.on('message', async (m) => {
  if (tether.isEnvelope(m)) return;
  const op = m !== null && typeof m === 'object' ? m.op : undefined;
  if (op === 'crash') {
    console.log(`[node worker ${id}, pid ${process.pid}] crashing on purpose`);
    process.exit(3);
  }
  if (op === 'shutdown') { // a supervisor's shutdown message
    console.log(`[node worker ${id}, pid ${process.pid}] asked to shut down`);
    process.exit(0);
  }
  if (op === 'ask') {
    // a call the other way: the Lua parent's child:handle(fn) answers
    const answer = await tether.call({ question: m.question });
    process.send({ op: 'answered', question: m.question, answer });
    return;
  }
  process.send({ echo: m, from: 'node', pid: process.pid });
});

process.on('disconnect', () => {
  console.log(`[node worker ${id}, pid ${process.pid}] parent disconnected: exiting`);
});

process.send({ hello: 'from node', version: process.version, pid: process.pid, worker: id });
