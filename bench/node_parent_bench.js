'use strict';
// The Node parent of bench/node_bench.lua (issue 6): child_process.fork()
// of bench/node_echo_child.js (CHILD = node), or of bench/lua_echo_child.lua
// run by lua5.4 (CHILD = lua; $LUA, LUA_PATH and LUA_CPATH come from the
// environment), with the default JSON serialization, and the same
// messages, counts and verification as the tether Lua parent in
// bench/node_bench.lua:
//   pingpong  one message in flight: send {n, s}, wait for its echo
//   stream    all messages sent at once, honouring send()'s backpressure
//             (when send() returns false the next message goes with a
//             callback and sending waits for it, as in
//             ../shared/anchors/node_fork.js); the clock stops at the last echo
// for s = "hello" ("small") and s = a string of BIG bytes ("big").  Every
// echo is checked (n in order, s identical).  A warm-up of WARM messages
// precedes every case; each case runs REPS times.
//
//   node bench/node_parent_bench.js CHILD PP_N PP_BIG_N STREAM_N STREAM_BIG_N BIG REPS WARM_DIV
//
// Output: "RESULT node_node_<CHILD>_<case>_<small|big>_<metric> value" per
// rep (the driver takes medians): per_s (round trips/s or echoed msgs/s),
// parent_cpu_us and child_cpu_us (CPU per message, user + system, all
// threads: process.cpuUsage() here, /proc/<pid>/stat for the child).
const { fork } = require('child_process');
const fs = require('fs');
const path = require('path');
const { performance } = require('perf_hooks');

const CHILD = process.argv[2];
const [PP_N, PP_BIG_N, STREAM_N, STREAM_BIG_N, BIG, REPS, WARM_DIV] =
  process.argv.slice(3).map((v) => parseInt(v, 10));
const TCK = 100; // USER_HZ: clock ticks in /proc/<pid>/stat

function fail(what) { throw new Error('VERIFY FAILED: ' + what); }

function childCpuUs(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) * 1e6 / TCK; // utime, stime
}
function selfCpuUs() { const u = process.cpuUsage(); return u.user + u.system; }

function bigString(n) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let s = alphabet.repeat(Math.ceil(n / alphabet.length)).slice(0, n);
  return s;
}

async function main() {
  const child = CHILD === 'lua'
    ? fork(path.join(__dirname, 'lua_echo_child.lua'), [], { execPath: process.env.LUA || 'lua5.4', execArgv: [] })
    : fork(path.join(__dirname, 'node_echo_child.js'));
  let handler = null;
  child.on('message', (m) => handler(m));
  await new Promise((resolve) => { handler = (m) => { if (!m || m.ready !== child.pid) fail('ready'); resolve(); }; });

  function pingpong(n, s) {
    return new Promise((resolve) => {
      let i = 1;
      const t0 = performance.now();
      handler = (m) => {
        if (m.n !== i || m.s !== s) fail(`pingpong: echo ${m.n} for ${i}`);
        if (i === n) return resolve((performance.now() - t0) / 1000);
        i++;
        child.send({ n: i, s });
      };
      child.send({ n: i, s });
    });
  }

  function stream(n, s) {
    return new Promise((resolve) => {
      let expect = 1, next = 1;
      const t0 = performance.now();
      handler = (m) => {
        if (m.n !== expect || m.s !== s) fail(`stream: echo ${m.n}, expected ${expect}`);
        if (expect === n) return resolve((performance.now() - t0) / 1000);
        expect++;
      };
      const pump = () => {
        while (next <= n) {
          const m = { n: next++, s };
          if (!child.send(m)) { // over Node's threshold: wait for the next one's write
            if (next <= n) child.send({ n: next++, s }, pump);
            return;
          }
        }
      };
      pump();
    });
  }

  const big = bigString(BIG);
  const cases = [
    ['pingpong', 'small', pingpong, PP_N, 'hello'],
    ['pingpong', 'big', pingpong, PP_BIG_N, big],
    ['stream', 'small', stream, STREAM_N, 'hello'],
    ['stream', 'big', stream, STREAM_BIG_N, big],
  ];
  for (const [name, size, fn, n, s] of cases) {
    if (!(n > 0)) continue;
    await fn(Math.max(1, Math.floor(n / WARM_DIV)), s); // warm-up
    for (let r = 0; r < REPS; r++) {
      const p0 = selfCpuUs(), c0 = childCpuUs(child.pid);
      const secs = await fn(n, s);
      const p1 = selfCpuUs(), c1 = childCpuUs(child.pid);
      const key = `node_node_${CHILD}_${name}_${size}`;
      console.log(`RESULT ${key}_per_s ${+(n / secs).toPrecision(6)}`);
      console.log(`RESULT ${key}_parent_cpu_us ${+((p1 - p0) / n).toPrecision(6)}`);
      console.log(`RESULT ${key}_child_cpu_us ${+((c1 - c0) / n).toPrecision(6)}`);
      console.error(`# node parent, ${CHILD} child: ${name} ${size} n=${n} secs=${secs.toFixed(3)} verified`);
    }
  }
  await new Promise((resolve, reject) => {
    child.once('exit', (code, sig) => (code === 0 ? resolve() : reject(new Error(`child exit ${code} ${sig}`))));
    child.disconnect();
  });
}

main().catch((e) => { console.error(e && e.stack || e); process.exit(2); });
