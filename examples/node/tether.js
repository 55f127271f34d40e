// tether's request/response envelopes for a Node.js process on a tether
// channel (serialization = "json"), in plain Node: no dependencies.
//
// In a Node process started by tether (spawn, a supervisor or a pool with
// cmd = "node"), the peer is `process`, the default:
//   const tether = require('./tether');
//   tether.serve(async (task) => result);   // answers pool tasks and call()s
//   const reply = await tether.call(msg);   // asks a tether parent's handle()
//
// In a Node parent of a Lua script (child_process.fork(file, args,
// {execPath: 'lua5.4', execArgv: []})), the peer is the ChildProcess:
//   const reply = await tether.call(msg, child);   // the script's tether.parent:handle(fn)
//   tether.serve(async (req) => result, child);    // answers its tether.parent:call(req)
//
// A call whose peer disconnects first is rejected with code
// ERR_IPC_CHANNEL_CLOSED; a fault from the peer rejects with an Error that
// carries its code (ERR_TASK_FAILED, ERR_NO_HANDLER, ...), message and
// traceback.
//
// On the wire (PROTOCOL.md, "JSON mode") these are ordinary messages whose
// first keys are fixed, so JSON.stringify keeps them first; like Node's own
// internal messages they carry a `cmd` marker no user message has by
// accident:
//   {"cmd":"TETHER_REQUEST","id":ID,"task":...}
//   {"cmd":"TETHER_REPLY","id":ID,"result":...}
//   {"cmd":"TETHER_FAULT","id":ID,"error":{"code":...,"message":...,"traceback":...}}
// Your own 'message' listeners see them too: tether.isEnvelope(m) tells.
'use strict';

const peers = new WeakMap(); // peer -> { handler, pending, nextId }

function channelClosed() {
  return Object.assign(new Error('the channel closed before the reply came'), { code: 'ERR_IPC_CHANNEL_CLOSED' });
}

const REQUEST = 'TETHER_REQUEST', REPLY = 'TETHER_REPLY', FAULT = 'TETHER_FAULT';

function isEnvelope(m) {
  return m !== null && typeof m === 'object' && typeof m.id === 'number' &&
    (m.cmd === REQUEST || m.cmd === REPLY || m.cmd === FAULT);
}

// the key order is the wire format: cmd, id, then the value
const fault = (id, error) => ({ cmd: FAULT, id, error });

// a send whose failure (the peer is gone) is not an 'error' event
function quietSend(peer, msg) {
  try {
    peer.send(msg, () => {});
  } catch (e) {
    return e; // JSON.stringify refused the message
  }
  return null;
}

function state(peer) {
  let s = peers.get(peer);
  if (s) return s;
  s = { handler: null, pending: new Map(), nextId: 0 };
  peers.set(peer, s);
  peer.on('message', async (m) => {
    if (!isEnvelope(m)) return;
    if (m.cmd === REQUEST) {
      const id = m.id;
      if (!s.handler) {
        quietSend(peer, fault(id, { code: 'ERR_NO_HANDLER', message: 'no tether.serve() handler' }));
        return;
      }
      let result;
      try {
        result = await s.handler(m.task);
      } catch (e) {
        quietSend(peer, fault(id, { code: 'ERR_TASK_FAILED',
          message: String(e && e.message !== undefined ? e.message : e), traceback: (e && e.stack) || null }));
        return;
      }
      const err = quietSend(peer, { cmd: REPLY, id, result: result === undefined ? null : result });
      if (err) {
        quietSend(peer, fault(id, { code: 'ERR_TASK_FAILED',
          message: 'reply cannot be sent: ' + err.message }));
      }
    } else {
      const reply = m.cmd === REPLY;
      const id = m.id;
      const p = s.pending.get(id);
      if (!p) return;
      s.pending.delete(id);
      if (reply) p.resolve(m.result);
      else p.reject(Object.assign(new Error(m.error && m.error.message), m.error));
    }
  });
  peer.on('disconnect', () => {
    const calls = [...s.pending.values()];
    s.pending.clear();
    for (const p of calls) p.reject(channelClosed());
  });
  return s;
}

exports.isEnvelope = isEnvelope;

exports.serve = (fn, peer = process) => {
  if (typeof fn !== 'function') throw new TypeError('tether.serve: a function is expected');
  state(peer).handler = fn;
};

exports.call = (msg, peer = process) => new Promise((resolve, reject) => {
  if (!peer.connected) return reject(channelClosed());
  const s = state(peer);
  s.nextId = s.nextId % 4294967295 + 1;
  const id = s.nextId;
  s.pending.set(id, { resolve, reject });
  const err = quietSend(peer, { cmd: REQUEST, id, task: msg === undefined ? null : msg });
  if (err) {
    s.pending.delete(id);
    reject(err);
  }
});
