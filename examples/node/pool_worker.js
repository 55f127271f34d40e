// A Node.js pool worker for examples/node/lua_parent.lua:
// tether.pool{cmd = "node", args = {"pool_worker.js"}, serialization = "json"}
// sends it tasks as {"cmd":"TETHER_REQUEST","id":ID,"task":...} lines;
// ./tether.js's serve() answers each with {"cmd":"TETHER_REPLY","id":ID,
// "result":...}, or with a {"cmd":"TETHER_FAULT",...} when the function throws.
'use strict';
const tether = require('./tether');

tether.serve(async (task) => {
  if (typeof task.n !== 'number') throw new Error('task.n must be a number');
  await new Promise((resolve) => setTimeout(resolve, 10)); // some asynchronous work
  return { n: task.n, square: task.n * task.n, worker: Number(process.env.TETHER_WORKER_ID), pid: process.pid };
});
