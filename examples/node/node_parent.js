// A Node.js parent forking a Lua script (examples/node/lua_child.lua) with
// Node's own child_process.fork(): the default JSON serialization, the
// script run by lua5.4, and LUA_PATH/LUA_CPATH pointing at this repository
// so that the child finds tether (make first).
//
//   make
//   node examples/node/node_parent.js
'use strict';
const { fork } = require('child_process');
const path = require('path');
const tether = require('./tether');

const root = path.resolve(__dirname, '..', '..');
const child = fork(path.join(__dirname, 'lua_child.lua'), [], {
  execPath: process.env.LUA || 'lua5.4',
  execArgv: [],
  env: {
    ...process.env,
    LUA_PATH: `${root}/lua/?.lua;;`,
    LUA_CPATH: `${root}/build/?.so;;`,
  },
});

const log = (...a) => console.log('[node parent]', ...a);

// the next plain message (tether's envelopes come on the same event: skip them)
const inbox = [];
let waiting = null;
child.on('message', (m) => {
  if (tether.isEnvelope(m)) return;
  if (waiting) { const w = waiting; waiting = null; w(m); } else inbox.push(m);
});
const next = () => inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => { waiting = r; });

// the Lua child's parent:call(req) lands here
tether.serve(async (req) => `Node read ${req.question.length} characters`, child);

child.on('exit', (code, signal) => {
  log(`lua child exited: code ${code}, signal ${signal}`);
  process.exitCode = code === 0 ? 0 : 1;
});

(async () => {
  const hello = await next();
  log('hello:', JSON.stringify(hello));

  child.send({ op: 'sum', numbers: [1, 2, 3, 4.5] });
  log('sum:', JSON.stringify(await next()));

  child.send({ text: 'héllo 😀', nested: { list: [true, null, 'x'] }, empty: [] });
  log('echo:', JSON.stringify(await next()));

  // call the child's tether.parent:handle(fn)
  log('call fib:', JSON.stringify(await tether.call({ op: 'fib', n: 50 }, child)));
  const [slow, fast] = await Promise.all([
    tether.call({ op: 'slow', ms: 50 }, child),
    tether.call({ op: 'fib', n: 10 }, child),
  ]);
  log('calls in parallel:', JSON.stringify(slow), JSON.stringify(fast));
  try {
    await tether.call({ op: 'nope' }, child);
  } catch (e) {
    log(`call nope: ${e.code}: ${e.message}`);
  }

  // and the Lua child calls us (tether.serve above answers)
  child.send({ op: 'ask', question: 'who answers this?' });
  log('the child asked us:', JSON.stringify(await next()));

  child.disconnect(); // the child sees "disconnect" and exits
})().catch((e) => {
  console.error(e);
  child.kill();
  process.exitCode = 1;
});
