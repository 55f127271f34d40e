'use strict';
// BullMQ side of bench/broker_bench.lua (npm `bullmq` and `ioredis`,
// installed into bench/broker_bullmq/ by `make bench-deps`).  Every Redis
// connection is ioredis over the Unix socket ({path: sock}).
//
//   node bench/broker_bullmq.js worker SOCK QUEUE CONCURRENCY [LOCK_MS STALLED_MS]
//     an "agent": one Node process with one BullMQ Worker of CONCURRENCY
//     (in-process processor: BullMQ's fastest; a sandboxed processor would
//     add a process hop per job).  The job {p} returns p.length (a no-op),
//     the job {ms, n} sleeps ms, then returns {n, pid}.  LOCK_MS and
//     STALLED_MS: lockDuration and stalledInterval ("default": BullMQ's,
//     30000 and 30000).  Prints "READY <pid>" once it is connected; exits
//     when its stdin ends (the bench went away) or on SIGTERM (closing the
//     Worker first).
//
//   node bench/broker_bullmq.js client SOCK
//     the submitting side: one Queue and one QueueEvents per queue name,
//     results read from QueueEvents' 'completed' events (the job's
//     returnvalue; jobs are added with removeOnComplete: true).  Commands
//     on stdin, one line each, one answer line each ("OK ..." / "ERR ..."):
//       tp Q SIZE WARM_S SECS WINDOW   closed loop: WINDOW jobs in flight,
//           a new one added as each completes; completions counted during
//           SECS after WARM_S; then the jobs in flight are drained and every
//           job is checked (one completion each, returnvalue = SIZE)
//       lat Q SIZE RATE WARM_S SECS    open loop: job i is due at
//           t0 + i/RATE (added every 1 ms for what is due); latency = the
//           completion event's arrival minus the job's due time (no
//           coordinated omission), for jobs due after WARM_S
//       mem Q N WINDOW WARMN           INFO memory used_memory and DBSIZE
//           after WARMN jobs (scripts loaded), then after N more
//       hold Q N MS                    adds N jobs of MS ms, answers once
//           the queue has N active
//       await Q N                      once N of the held jobs completed:
//           their completion times (CLOCK_MONOTONIC ns, comparable with the
//           bench's tether.hrtime) and which pids ran them
//       quit
const path = require('path');
const readline = require('readline');
const modules = path.join(__dirname, 'broker_bullmq', 'node_modules');
const { Queue, Worker, QueueEvents } = require(path.join(modules, 'bullmq'));
const IORedis = require(path.join(modules, 'ioredis'));

const now = () => process.hrtime.bigint(); // CLOCK_MONOTONIC, ns
const conn = (sock) => new IORedis({ path: sock, maxRetriesPerRequest: null, enableReadyCheck: true });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const JOB_OPTS = { removeOnComplete: true, removeOnFail: true };

function worker(sock, queue, concurrency, lockMs, stalledMs) {
  const opts = { connection: conn(sock), concurrency: +concurrency };
  if (lockMs && lockMs !== 'default') opts.lockDuration = +lockMs;
  if (stalledMs && stalledMs !== 'default') opts.stalledInterval = +stalledMs;
  const w = new Worker(queue, async (job) => {
    const d = job.data;
    if (d.ms) {
      await sleep(d.ms);
      return { n: d.n, pid: process.pid };
    }
    return d.p.length;
  }, opts);
  let errors = 0;
  w.on('error', (e) => { if (++errors <= 5) console.error('# bullmq worker error: ' + (e && e.message)); });
  w.waitUntilReady().then(() => console.log('READY ' + process.pid));
  const bye = () => { w.close().finally(() => process.exit(0)); setTimeout(() => process.exit(0), 3000).unref(); };
  process.on('SIGTERM', bye);
  process.stdin.on('end', () => process.exit(1));
  process.stdin.resume();
}

function pct(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}

function client(sock) {
  const queues = new Map();
  const admin = conn(sock);
  function q(name) {
    let e = queues.get(name);
    if (!e) {
      e = { onCompleted: null, onFailed: null, onStalled: null };
      e.ready = (async () => {
        // QueueEvents reads from '$' by default: events written before its
        // first XREAD went out would be missed.  It reads from the stream's
        // current last entry instead.
        const last = await admin.xrevrange(`bull:${name}:events`, '+', '-', 'COUNT', 1);
        const lastEventId = last.length ? last[0][0] : '0-0';
        e.queue = new Queue(name, { connection: conn(sock) });
        e.events = new QueueEvents(name, { connection: conn(sock), lastEventId });
        hook(e);
        await Promise.all([e.queue.waitUntilReady(), e.events.waitUntilReady()]);
      })();
      queues.set(name, e);
    }
    return e;
  }
  function hook(e) {
    e.events.on('completed', (a) => e.onCompleted && e.onCompleted(a.jobId, a.returnvalue));
    e.events.on('failed', (a) => e.onFailed && e.onFailed(a.jobId, a.failedReason));
    e.events.on('stalled', (a) => e.onStalled && e.onStalled(a.jobId));
    e.queue.on('error', (err) => console.error('# bullmq queue error: ' + err.message));
    e.events.on('error', (err) => console.error('# bullmq events error: ' + err.message));
  }

  // closed loop, WINDOW in flight
  async function tp(name, size, warm, secs, window, limitS) {
    const e = q(name);
    await e.ready;
    const payload = 'x'.repeat(size);
    const t0 = now();
    const tStart = t0 + BigInt(Math.round(warm * 1e9)), tEnd = tStart + BigInt(Math.round(secs * 1e9));
    let sent = 0, done = 0, measured = 0, errors = 0, dup = 0, firstErr = '';
    const added = new Set(), seen = new Map();
    return new Promise((resolve) => {
      let finished = false;
      const finish = (why) => {
        if (finished) return;
        finished = true;
        e.onCompleted = e.onFailed = null;
        let lost = 0;
        for (const id of added) if (!seen.has(id)) lost++;
        resolve(`OK tp rate=${(measured / secs).toFixed(1)} measured=${measured} sent=${sent} done=${done} ` +
          `errors=${errors} dup=${dup} lost=${lost}${why ? ' why=' + why : ''}${firstErr ? ' first_error=' + JSON.stringify(firstErr) : ''}`);
      };
      const guard = setTimeout(() => finish('timeout'), (warm + secs + limitS) * 1000);
      const complete = (id, ok, value) => {
        const t = now();
        const c = (seen.get(id) || 0) + 1;
        seen.set(id, c);
        if (c > 1) { dup++; return; }
        done++;
        if (!ok || value !== size) { errors++; firstErr = firstErr || String(ok ? value : 'failed: ' + value); }
        if (t >= tStart && t < tEnd) measured++;
        if (t < tEnd) submit();
        else if (done >= sent) { clearTimeout(guard); finish(); }
      };
      e.onCompleted = (id, v) => complete(id, true, v);
      e.onFailed = (id, why) => complete(id, false, why);
      function submit() {
        sent++;
        e.queue.add('t', { p: payload }, JOB_OPTS).then((job) => added.add(job.id),
          (err) => { errors++; done++; firstErr = firstErr || err.message; });
      }
      for (let i = 0; i < window; i++) submit();
    });
  }

  // open loop at RATE
  async function lat(name, size, rate, warm, secs, limitS) {
    const e = q(name);
    await e.ready;
    const payload = 'x'.repeat(size);
    const total = Math.max(1, Math.round(rate * (warm + secs)));
    const tick = 1e9 / rate;
    const t0 = now() + 2000000n;
    const tStart = t0 + BigInt(Math.round(warm * 1e9));
    const due = new Map(), early = new Map(), lats = [];
    let sent = 0, done = 0, errors = 0, lastDone = 0n;
    return new Promise((resolve) => {
      let finished = false;
      const finish = (why) => {
        if (finished) return;
        finished = true;
        clearInterval(timer);
        e.onCompleted = e.onFailed = null;
        lats.sort((a, b) => a - b);
        const spanS = Number(lastDone - tStart) / 1e9;
        resolve(`OK lat p50=${pct(lats, 0.5).toFixed(3)} p90=${pct(lats, 0.9).toFixed(3)} p99=${pct(lats, 0.99).toFixed(3)} ` +
          `max=${(lats.length ? lats[lats.length - 1] : NaN).toFixed(3)} n=${lats.length} sent=${sent} done=${done} ` +
          `errors=${errors} span=${spanS.toFixed(3)}${why ? ' why=' + why : ''}`);
      };
      const guard = setTimeout(() => finish('timeout'), (warm + secs + limitS) * 1000);
      const record = (sched, t) => { if (sched >= tStart) lats.push(Number(t - sched) / 1e6); };
      const complete = (id, ok, value) => {
        const t = now();
        done++;
        lastDone = t;
        if (!ok || value !== size) errors++;
        const sched = due.get(id);
        if (sched === undefined) early.set(id, t); else { due.delete(id); record(sched, t); }
        if (sent >= total && done >= sent) { clearTimeout(guard); finish(); }
      };
      e.onCompleted = (id, v) => complete(id, true, v);
      e.onFailed = (id, why) => complete(id, false, why);
      const timer = setInterval(() => {
        const n = now();
        if (n < t0) return;
        const want = Math.min(total, Math.floor(Number(n - t0) / tick) + 1);
        while (sent < want) {
          const sched = t0 + BigInt(Math.round(sent * tick));
          sent++;
          e.queue.add('t', { p: payload }, JOB_OPTS).then((job) => {
            const t = early.get(job.id);
            if (t !== undefined) { early.delete(job.id); record(sched, t); } else due.set(job.id, sched);
          }, () => { errors++; done++; });
        }
        if (sent >= total) clearInterval(timer);
      }, 1);
    });
  }

  async function info() {
    const s = await admin.info('memory');
    const f = (k) => { const m = new RegExp('^' + k + ':(\\d+)', 'm').exec(s); return m ? +m[1] : NaN; };
    return { used: f('used_memory'), dataset: f('used_memory_dataset'), clients: f('mem_clients_normal'),
             keys: await admin.dbsize() };
  }

  async function mem(name, n, window, warmN, limitS) {
    // a closed loop of exactly k jobs, WINDOW in flight
    const run = async (k) => {
      const e = q(name);
      await e.ready;
      let sent = 0, done = 0, errors = 0;
      const t0 = now();
      await new Promise((resolve, reject) => {
        const guard = setTimeout(() => reject(new Error('timeout')), limitS * 1000);
        const complete = (ok) => {
          done++;
          if (!ok) errors++;
          if (sent < k) submit();
          else if (done >= k) { clearTimeout(guard); resolve(); }
        };
        e.onCompleted = (id, v) => complete(v === 100);
        e.onFailed = () => complete(false);
        function submit() {
          sent++;
          e.queue.add('t', { p: 'x'.repeat(100) }, JOB_OPTS).catch(() => complete(false));
        }
        for (let i = 0; i < Math.min(window, k); i++) submit();
      });
      e.onCompleted = e.onFailed = null;
      return { errors, secs: Number(now() - t0) / 1e9 };
    };
    const w = await run(warmN);
    await sleep(1000);
    const before = await info();
    const r = await run(n);
    await sleep(1000);
    const after = await info();
    return `OK mem before=${before.used} after=${after.used} dataset_before=${before.dataset} ` +
      `dataset_after=${after.dataset} clients_before=${before.clients} clients_after=${after.clients} ` +
      `keys_before=${before.keys} keys_after=${after.keys} n=${n} rate=${(n / r.secs).toFixed(1)} ` +
      `errors=${w.errors + r.errors}`;
  }

  const held = new Map(); // queue -> {ids, done: Map id -> {t, pid}, stalled}
  async function hold(name, n, ms, limitS) {
    const e = q(name);
    await e.ready;
    const h = { ids: new Set(), done: new Map(), stalled: 0, failed: 0, dup: 0, early: new Map() };
    held.set(name, h);
    e.onCompleted = (id, v) => {
      const t = now();
      if (h.done.has(id)) { h.dup++; return; }
      h.done.set(id, { t, pid: v && v.pid });
      if (h.waiter) h.waiter();
    };
    e.onFailed = () => { h.failed++; if (h.waiter) h.waiter(); };
    e.onStalled = () => { h.stalled++; };
    const jobs = [];
    for (let i = 1; i <= n; i++) jobs.push(e.queue.add('t', { ms, n: i }, JOB_OPTS));
    for (const j of await Promise.all(jobs)) h.ids.add(j.id);
    const deadline = Date.now() + limitS * 1000;
    let active = 0;
    while (Date.now() < deadline) {
      active = await e.queue.getActiveCount();
      if (active >= n) break;
      await sleep(20);
    }
    return `OK hold n=${n} active=${active}`;
  }

  async function awaitHeld(name, n, limitS) {
    const h = held.get(name);
    if (!h) return 'ERR nothing held on ' + name;
    const e = q(name);
    const count = () => { let c = 0; for (const id of h.ids) if (h.done.has(id)) c++; return c; };
    await new Promise((resolve) => {
      const guard = setTimeout(resolve, limitS * 1000);
      h.waiter = () => { if (count() + h.failed >= n) { clearTimeout(guard); resolve(); } };
      h.waiter();
    });
    e.onCompleted = e.onFailed = e.onStalled = null;
    let first = null, last = null;
    const pids = new Map();
    for (const id of h.ids) {
      const d = h.done.get(id);
      if (!d) continue;
      if (first === null || d.t < first) first = d.t;
      if (last === null || d.t > last) last = d.t;
      pids.set(d.pid, (pids.get(d.pid) || 0) + 1);
    }
    const p = [...pids].map(([pid, c]) => `${pid}:${c}`).join(',');
    held.delete(name);
    return `OK await done=${count()} first_ns=${first} last_ns=${last} failed=${h.failed} dup=${h.dup} ` +
      `stalled_events=${h.stalled} pids=${p || '-'}`;
  }

  const LIMIT_S = +(process.env.BROKER_LIMIT_S || 60);
  const rl = readline.createInterface({ input: process.stdin });
  let chain = Promise.resolve();
  rl.on('line', (line) => {
    chain = chain.then(async () => {
      const [cmd, ...a] = line.trim().split(/\s+/);
      let out;
      try {
        if (cmd === 'tp') out = await tp(a[0], +a[1], +a[2], +a[3], +a[4], LIMIT_S);
        else if (cmd === 'lat') out = await lat(a[0], +a[1], +a[2], +a[3], +a[4], LIMIT_S);
        else if (cmd === 'mem') out = await mem(a[0], +a[1], +a[2], +a[3], LIMIT_S * 10);
        else if (cmd === 'hold') out = await hold(a[0], +a[1], +a[2], LIMIT_S);
        else if (cmd === 'await') out = await awaitHeld(a[0], +a[1], +(a[2] || LIMIT_S * 2));
        else if (cmd === 'quit') {
          await Promise.all([...queues.values()].map((e) => Promise.all([e.queue.close(), e.events.close()])));
          await admin.quit();
          console.log('OK quit');
          process.exit(0);
        } else out = 'ERR unknown command ' + cmd;
      } catch (err) {
        out = 'ERR ' + String(err && err.message || err).replace(/\s+/g, ' ');
      }
      console.log(out);
    });
  });
  rl.on('close', () => chain.then(() => process.exit(0)));
  console.log('READY ' + process.pid + ' bullmq=' + require(path.join(modules, 'bullmq', 'package.json')).version +
    ' ioredis=' + require(path.join(modules, 'ioredis', 'package.json')).version + ' node=' + process.version);
}

const [role, sock, ...rest] = process.argv.slice(2);
if (role === 'worker') worker(sock, ...rest);
else if (role === 'client') client(sock);
else {
  console.error('usage: broker_bullmq.js worker SOCK QUEUE CONCURRENCY [LOCK_MS STALLED_MS] | client SOCK');
  process.exit(2);
}
