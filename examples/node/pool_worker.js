// A Node.js pool worker for examples/node/lua_parent.lua:
// tether.pool{cmd = "node", args = {"pool_worker.js"}, serialization = "json"}
// sends it tasks as {"tether_task":ID,"task":...} lines; ./tether.js's
// serve() answers each with {"tether_reply":ID,"result":...}, or with a
// {"tether_fault":ID,...} when the function throws.
'use strict';
const tether = require('./tether');

tether.serve(async (task) => {
  if (typeof task.n !== 'number') throw new Error('task.n must be a number');
  await new Promise((resolve) => setTimeout(resolve, 10)); // some asynchronous work
  return { n: task.n, square: task.n * task.n, worker: Number(process.env.TETHER_WORKER_ID), pid: process.pid };
});
