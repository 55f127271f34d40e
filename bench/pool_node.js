'use strict';
// Node side of bench/pool_bench.lua: a parent with 2 child_process.fork()
// children (this same file, argv[2] === 'child') that echo every message,
// in the style of ../shared/anchors/node_fork.js (default JSON
// serialization, performance.now(), a ready message, reaped at the end).
//
//   node bench/pool_node.js [N] [ROUNDS] [WARM]
//
// A warm-up burst of WARM tasks (N by default: the JIT needs a full
// burst) comes first.  Each measured round sends the N tasks at once, round robin over the two
// children, and stops the clock when the last reply arrived; like the
// anchor's stream case it honours send()'s backpressure (when send()
// returns false, the next message goes with a callback and sending waits
// for it).  The message is the task itself (an integer, or a 16-byte
// string), with no envelope: each child answers in order, so the parent
// checks every reply against a per-child FIFO.  Output:
//   RESULT pool_node_<int|str16>_per_s <tasks/s>  (median of the rounds)
const { fork } = require('child_process');
const { performance } = require('perf_hooks');

if (process.argv[2] === 'child') {
  process.on('message', (m) => process.send(m));
  process.send({ t: 'R', pid: process.pid });
} else {
  main().catch((e) => { console.error(e && e.stack || e); process.exit(2); });
}

function fail(what) { throw new Error('VERIFY FAILED: ' + what); }

async function main() {
  const N = parseInt(process.argv[2] || process.env.POOL_N || '20000', 10);
  const ROUNDS = parseInt(process.argv[3] || process.env.POOL_REPS || '3', 10);
  const WARM = parseInt(process.argv[4] || String(N), 10);
  const WORKERS = 2;

  function spawnKid() {
    const c = fork(__filename, ['child']);
    c.handler = null;
    c.on('message', (m) => c.handler(m));
    return c;
  }
  function waitReady(c) {
    return new Promise((resolve) => {
      c.handler = (m) => {
        if (!m || m.t !== 'R' || m.pid !== c.pid) fail('bad ready message');
        resolve();
      };
    });
  }
  function reap(c) {
    return new Promise((resolve, reject) => {
      c.once('exit', (code, sig) => (code === 0 ? resolve() : reject(new Error(`child exit ${code} ${sig}`))));
      c.disconnect(); // the child has nothing else to wait for: it exits
    });
  }

  // all tasks at once over the children; resolves with the seconds taken
  function burst(kids, tasks) {
    return new Promise((resolve) => {
      const n = tasks.length;
      let got = 0, next = 0;
      const t0 = performance.now();
      kids.forEach((c, k) => {
        let expect = k; // child k gets tasks k, k + WORKERS, ...
        c.handler = (m) => {
          if (m !== tasks[expect]) fail(`child ${k}: got ${m}, expected ${tasks[expect]}`);
          expect += WORKERS;
          if (++got === n) resolve((performance.now() - t0) / 1000);
        };
      });
      const pump = () => {
        while (next < n) {
          const c = kids[next % WORKERS], m = tasks[next++];
          if (!c.send(m)) { // backlog over Node's threshold: wait for this one
            if (next < n) { const c2 = kids[next % WORKERS], m2 = tasks[next++]; c2.send(m2, pump); }
            return;
          }
        }
      };
      pump();
    });
  }

  const kids = [];
  for (let i = 0; i < WORKERS; i++) kids.push(spawnKid());
  await Promise.all(kids.map(waitReady));

  const payloads = {
    int: (n) => Array.from({ length: n }, (_, i) => i + 1),
    str16: (n) => Array.from({ length: n }, (_, i) => String(i + 1).padStart(16, '0')),
  };
  for (const [name, mk] of Object.entries(payloads)) {
    const tasks = mk(N), rates = [];
    await burst(kids, tasks.slice(0, Math.min(WARM, N))); // warm-up
    for (let r = 0; r < ROUNDS; r++) {
      const secs = await burst(kids, tasks);
      rates.push(N / secs);
      console.error(`# node ${name} n=${N} secs=${secs.toFixed(3)} verified`);
    }
    rates.sort((a, b) => a - b);
    console.log(`RESULT pool_node_${name}_per_s ${+rates[ROUNDS >> 1].toPrecision(6)}`);
  }
  await Promise.all(kids.map(reap));
}
