// Node's side of bench/cluster_bench.lua (issue 14): node:cluster with N
// workers (2) serving the same HTTP/1.1 keep-alive responder as
// examples/cluster_worker.lua, a fixed body "hello from worker N\n".
//
//   node bench/cluster_node.js [--impl net|http] [--workers 2] [--port 0]
//                              [--sched rr|none]
//
//   --impl net   (default) a plain `net` server that parses requests the
//                way the luv responder does: buffer, find "\r\n\r\n", answer
//                every complete head; "connection: close" in a head (or a
//                worker being stopped) gets a Connection: close answer and
//                the socket is ended.  The fair comparison with the luv one.
//   --impl http  http.createServer with the same answer (Node's own parser,
//                headers, keep-alive timers): what a Node user would write.
//   --sched      cluster.schedulingPolicy: "rr" (SCHED_RR, Linux's default:
//                the primary accepts and hands each connection to a worker
//                in turn) or "none" (SCHED_NONE: the workers accept on the
//                shared socket).  Without --sched, NODE_CLUSTER_SCHED_POLICY
//                (Node's own variable) or Node's default decides.
//
// The primary prints on stdout, one line each:
//   PORT <port> <sched>             every worker listening
//   SERVED <id> <pid> <n>           per worker, after a "served" command or at
//   SERVED_END <total>              exit (stop, end of stdin, SIGTERM, SIGINT)
//   RELOADED <ms>                   after a "reload" command: a rolling restart,
//                                   one worker at a time: fork a new one, wait
//                                   for its 'listening', then old.disconnect()
//                                   (told to close keep-alive connections after
//                                   their next answer; killed after 5 s)
// and reads commands from stdin, one a line: "served", "reload", "stop".
'use strict';
const cluster = require('node:cluster');

const argv = process.argv.slice(2);
function opt(name, dflt) {
  const i = argv.indexOf('--' + name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
}

if (cluster.isPrimary) primary(); else worker();

function primary() {
  const impl = opt('impl', 'net');
  const n = parseInt(opt('workers', '2'), 10);
  const sched = opt('sched', null);
  if (sched === 'rr') cluster.schedulingPolicy = cluster.SCHED_RR;
  else if (sched === 'none') cluster.schedulingPolicy = cluster.SCHED_NONE;
  const schedName = cluster.schedulingPolicy === cluster.SCHED_RR ? 'rr' : 'none';
  // every worker asks for the port given (0 included): the primary keys
  // its handles by address and port, and a new worker asking for the port
  // the kernel picked would get EADDRINUSE (a second handle) in SCHED_RR
  const port = parseInt(opt('port', '0'), 10);
  const STOP_KILL_MS = 5000;

  // the workers of the current generation, by id
  const current = new Map();
  let served = new Map(); // id -> {pid, n}: the last counts we got
  let stopping = false;

  function spawn() {
    const w = cluster.fork({ CLUSTER_IMPL: impl, CLUSTER_PORT: String(port) });
    w.on('message', (m) => {
      if (m && m.served !== undefined) served.set(w.id, { pid: w.process.pid, n: m.served });
    });
    return w;
  }

  function listening(w) {
    return new Promise((resolve) => w.once('listening', (addr) => resolve(addr)));
  }

  cluster.on('exit', (w, code, signal) => {
    if (current.get(w.id) === w && !stopping) {
      process.stderr.write(`# node worker ${w.id} died (${code}, ${signal}): replaced\n`);
      current.delete(w.id);
      const r = spawn();
      current.set(r.id, r);
    }
  });

  // asks every live worker for its count; resolves after all replied (or 1 s)
  function collect() {
    const ws = [...current.values()].filter((w) => w.isConnected());
    return new Promise((resolve) => {
      let left = ws.length;
      const t = setTimeout(resolve, 1000);
      if (left === 0) { clearTimeout(t); return resolve(); }
      for (const w of ws) {
        w.once('message', (m) => {
          if (m && m.served !== undefined && --left === 0) { clearTimeout(t); resolve(); }
        });
        w.send('served');
      }
    });
  }

  function report() {
    let total = 0;
    for (const [id, s] of served) {
      process.stdout.write(`SERVED ${id} ${s.pid} ${s.n}\n`);
      total += s.n;
    }
    process.stdout.write(`SERVED_END ${total}\n`);
  }

  function stopWorker(w) {
    return new Promise((resolve) => {
      if (w.isDead()) return resolve();
      const t = setTimeout(() => { if (!w.isDead()) w.process.kill('SIGKILL'); }, STOP_KILL_MS);
      w.once('exit', () => { clearTimeout(t); resolve(); });
      try { w.send('stop'); } catch (e) { /* already disconnected */ }
      w.disconnect();
    });
  }

  let reloading = false;
  async function reload() {
    if (reloading) return;
    reloading = true;
    const t0 = process.hrtime.bigint();
    for (const old of [...current.values()]) {
      const w = spawn();
      await listening(w);
      current.set(w.id, w);
      current.delete(old.id);
      await stopWorker(old);
    }
    reloading = false;
    process.stdout.write(`RELOADED ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)}\n`);
  }

  let stopped = false;
  async function stop() {
    if (stopped) return;
    stopped = true;
    await collect();
    stopping = true;
    report();
    await Promise.all([...Object.values(cluster.workers)].map(stopWorker));
    process.exit(0);
  }

  (async () => {
    const ws = [];
    for (let i = 0; i < n; i++) ws.push(spawn());
    const addrs = await Promise.all(ws.map(listening));
    for (const w of ws) current.set(w.id, w);
    process.stdout.write(`PORT ${addrs[0].port} ${schedName}\n`);
  })();

  let buf = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', async (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const cmd = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (cmd === 'served') {
        served = new Map();
        await collect();
        report();
      } else if (cmd === 'reload') {
        reload();
      } else if (cmd === 'stop') {
        stop();
      }
    }
  });
  process.stdin.on('end', stop);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function worker() {
  const impl = process.env.CLUSTER_IMPL || 'net';
  const port = parseInt(process.env.CLUSTER_PORT || '0', 10);
  const BODY = `hello from worker ${cluster.worker.id}\n`;
  const len = Buffer.byteLength(BODY);
  const RESPONSE = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ' +
    len + '\r\n\r\n' + BODY;
  const CLOSE_RESPONSE = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: ' +
    len + '\r\n\r\n' + BODY;
  let served = 0;
  let stopping = false;
  let server;

  process.on('message', (m) => {
    if (m === 'served') process.send({ served, pid: process.pid });
    else if (m === 'stop') {
      stopping = true;
      if (impl === 'http') server.closeIdleConnections();
    }
  });

  if (impl === 'http') {
    const http = require('node:http');
    server = http.createServer((req, res) => {
      served++;
      const headers = { 'Content-Type': 'text/plain', 'Content-Length': len };
      if (stopping) headers.Connection = 'close';
      res.writeHead(200, headers);
      res.end(BODY);
    });
  } else {
    const net = require('node:net');
    server = net.createServer((sock) => {
      // no setNoDelay: the luv responder's tcp handles keep Nagle on too
      let buf = '';
      sock.setEncoding('latin1');
      sock.on('data', (data) => {
        buf += data;
        for (;;) {
          const e = buf.indexOf('\r\n\r\n');
          if (e < 0) break;
          const head = buf.slice(0, e + 1).toLowerCase();
          buf = buf.slice(e + 4);
          served++;
          if (stopping || head.includes('connection: close')) {
            sock.end(CLOSE_RESPONSE);
            sock.pause();
            return;
          }
          sock.write(RESPONSE);
        }
      });
      sock.on('error', () => {});
    });
  }
  server.listen({ host: '127.0.0.1', port });
}
