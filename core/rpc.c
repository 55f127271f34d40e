/*
 * Request/response: see tt_rpc.h.
 *
 * Invariants:
 * - Every request not ended is on the `live` list; an attempt waiting for
 *   its reply is also in slots[id & mask] (at most half the slots are used,
 *   and ids only grow, so a stale id can never match a newer attempt).
 * - A request ends once: end() unlinks it before its callback runs.  A
 *   call (tt_rpc_call) is a request the rpc owns: its memory goes after its
 *   timer's close callback (or at once without one).
 */
#include "tt_rpc.h"

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tt_error.h"
#include "tt_frame.h"

#define TT_RPC_MIN_SLOTS 64u

struct tt_call_s {
  tt_request_t req;
  unsigned attempt; /* 1 for the first send */
  tt_call_options_t opts;
  tt_rpc_cb cb;
  void *arg;
  char *payload; /* kept for re-sends only */
  size_t len;
  int *fds; /* our duplicates of what every re-send carries (retries) */
  unsigned nfds;
  int has_timer;
  int done; /* ended: nothing may touch the call but its timer close */
  uv_timer_t timer;
  _Alignas(max_align_t) unsigned char extra[]; /* the caller's (call_with) */
};

/* ---- id slots ---------------------------------------------------------- */

static int grow(tt_rpc_t *rpc) {
  uint32_t ncap = rpc->slots ? (rpc->mask + 1) * 2 : TT_RPC_MIN_SLOTS;
  tt_request_t **ns = calloc(ncap, sizeof *ns);
  if (ns == NULL) return UV_ENOMEM;
  if (rpc->slots != NULL) {
    for (uint32_t i = 0; i <= rpc->mask; i++) {
      tt_request_t *r = rpc->slots[i];
      /* Distinct under the old mask means distinct under the new one. */
      if (r != NULL) ns[r->id & (ncap - 1)] = r;
    }
    free(rpc->slots);
  }
  rpc->slots = ns;
  rpc->mask = ncap - 1;
  return 0;
}

static int take_id(tt_rpc_t *rpc, tt_request_t *r) {
  int err;
  if ((rpc->slots == NULL || rpc->stats.in_flight * 2 >= (uint64_t)rpc->mask) &&
      (err = grow(rpc)) != 0)
    return err;
  for (;;) {
    uint32_t id = rpc->next_id++;
    if (id == 0) continue; /* 0 means "no id" on the wire */
    if (rpc->slots[id & rpc->mask] == NULL) {
      rpc->slots[id & rpc->mask] = r;
      r->id = id;
      return 0;
    }
  }
}

static void drop_id(tt_rpc_t *rpc, tt_request_t *r) {
  if (r->id != 0 && rpc->slots[r->id & rpc->mask] == r)
    rpc->slots[r->id & rpc->mask] = NULL;
  r->id = 0;
}

/* ---- requests ------------------------------------------------------------ */

/* One attempt on the wire under a fresh id, carrying duplicates of `fds`. */
static int send_attempt(tt_request_t *r, const void *payload, size_t len,
                        const int *fds, unsigned nfds) {
  tt_rpc_t *rpc = r->rpc;
  int err = take_id(rpc, r);
  if (err != 0) return err;
  err = tt_channel_send_fds(rpc->ch, TT_FRAME_REQUEST, r->id, payload, len,
                            fds, nfds, NULL, NULL);
  if (err < 0) {
    drop_id(rpc, r);
    return err;
  }
  return 0;
}

static void unlink_request(tt_request_t *r) {
  tt_rpc_t *rpc = r->rpc;
  r->live = 0;
  drop_id(rpc, r);
  TAILQ_REMOVE(&rpc->live, r, link);
  rpc->stats.in_flight--;
}

static void end(tt_request_t *r, int status, unsigned kind,
                const char *payload, size_t len) {
  tt_rpc_t *rpc = r->rpc;
  if (!r->live) return;
  unlink_request(r);
  if (status == 0)
    kind == TT_FRAME_REPLY ? rpc->stats.replies++ : rpc->stats.faults++;
  else if (status == TT_ERR_TIMEOUT)
    rpc->stats.timeouts++;
  else
    rpc->stats.closed++;
  r->cb(r, status, kind, payload, len);
}

static int start(tt_rpc_t *rpc, tt_request_t *r, const void *payload,
                 size_t len, const int *fds, unsigned nfds, tt_request_cb cb) {
  int err;
  if (rpc->closing || !tt_channel_is_connected(rpc->ch))
    return TT_ERR_IPC_CHANNEL_CLOSED;
  r->rpc = rpc;
  r->cb = cb;
  r->id = 0;
  if ((err = send_attempt(r, payload, len, fds, nfds)) != 0) return err;
  r->live = 1;
  TAILQ_INSERT_TAIL(&rpc->live, r, link);
  rpc->stats.calls++;
  rpc->stats.in_flight++;
  return 0;
}

int tt_rpc_request(tt_rpc_t *rpc, tt_request_t *req, const void *payload,
                   size_t len, tt_request_cb cb) {
  return tt_rpc_request_fds(rpc, req, payload, len, NULL, 0, cb);
}

int tt_rpc_request_fds(tt_rpc_t *rpc, tt_request_t *req, const void *payload,
                       size_t len, const int *fds, unsigned nfds,
                       tt_request_cb cb) {
  req->live = 0;
  return start(rpc, req, payload, len, fds, nfds, cb);
}

void tt_rpc_cancel(tt_request_t *req) {
  if (!req->live) return;
  unlink_request(req);
  req->rpc->stats.cancelled++;
}

/* ---- calls: requests with timeouts and retries, owned here -------------- */

static void timer_gone(tt_rpc_t *rpc) {
  if (--rpc->pending_timers == 0 && rpc->closing) {
    tt_rpc_close_cb cb = rpc->close_cb;
    rpc->close_cb = NULL;
    free(rpc->slots);
    rpc->slots = NULL;
    if (cb) cb(rpc);
  }
}

static void call_release(tt_call_t *c) {
  tt__free_fds(c->fds, c->nfds);
  free(c->payload);
  free(c);
}

static void on_timer_closed(uv_handle_t *h) {
  tt_call_t *c = h->data;
  tt_rpc_t *rpc = c->req.rpc;
  call_release(c);
  timer_gone(rpc);
}

static void on_closer_closed(uv_handle_t *h) { timer_gone(h->data); }

static void call_free(tt_call_t *c) {
  if (c->has_timer) {
    c->req.rpc->pending_timers++;
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
  } else {
    call_release(c);
  }
}

static void on_call_ended(tt_request_t *r, int status, unsigned kind,
                          const char *payload, size_t len) {
  tt_call_t *c = r->data;
  c->done = 1;
  if (c->has_timer) uv_timer_stop(&c->timer);
  /* (freed after: `arg` may point into the call, at its extra bytes) */
  c->cb(c->arg, status, kind, payload, len);
  call_free(c);
}

static void on_timer(uv_timer_t *t);

static void on_retry(uv_timer_t *t) {
  tt_call_t *c = t->data;
  int err;
  if (c->done) return;
  if ((err = send_attempt(&c->req, c->payload, c->len, c->fds, c->nfds)) !=
      0) {
    /* (no memory, or no descriptor for the re-sent frame's copies: the
     * channel is fine, say what it was) */
    end(&c->req,
        err == UV_ENOMEM || err == UV_EMFILE || err == UV_ENFILE
            ? err
            : TT_ERR_IPC_CHANNEL_CLOSED,
        0, NULL, 0);
    return;
  }
  c->attempt++;
  tt__timer_start(&c->timer, on_timer, c->opts.timeout_ms, 0);
}

static void on_timer(uv_timer_t *t) {
  tt_call_t *c = t->data;
  tt_rpc_t *rpc = c->req.rpc;
  /* The answer may be waiting in the socket: the process was stopped, or
   * busy, past the deadline, and timers run before the socket is read. */
  tt_channel_read_now(rpc->ch);
  if (c->done) return;
  if (c->attempt > c->opts.retries) {
    end(&c->req, TT_ERR_TIMEOUT, 0, NULL, 0);
    return;
  }
  /* A reply to this attempt from now on is late: it has no slot. */
  drop_id(rpc, &c->req);
  rpc->stats.retries++;
  tt__timer_start(&c->timer, on_retry,
                 tt_backoff_delay(&c->opts.backoff, c->attempt, &rpc->seed), 0);
}

/* ---- public ---------------------------------------------------------------- */

int tt_rpc_init(uv_loop_t *loop, tt_rpc_t *rpc, tt_channel_t *ch) {
  memset(rpc, 0, sizeof *rpc);
  rpc->loop = loop;
  rpc->ch = ch;
  rpc->next_id = 1;
  rpc->seed = uv_hrtime() ^ (uint64_t)(uintptr_t)rpc;
  TAILQ_INIT(&rpc->live);
  return 0;
}

int tt_rpc_call(tt_rpc_t *rpc, const void *payload, size_t len,
                const tt_call_options_t *opts, tt_rpc_cb cb, void *arg) {
  return tt_rpc_call_fds(rpc, payload, len, NULL, 0, opts, cb, arg);
}

int tt_rpc_call_fds(tt_rpc_t *rpc, const void *payload, size_t len,
                    const int *fds, unsigned nfds,
                    const tt_call_options_t *opts, tt_rpc_cb cb, void *arg) {
  return tt_rpc_call_with(rpc, payload, len, fds, nfds, opts, cb, arg, 0,
                          NULL);
}

int tt_rpc_call_with(tt_rpc_t *rpc, const void *payload, size_t len,
                     const int *fds, unsigned nfds,
                     const tt_call_options_t *opts, tt_rpc_cb cb, void *arg,
                     size_t extra, void **extra_out) {
  static const tt_call_options_t no_options; /* no timeout, no retries */
  tt_call_t *c;
  int err;
  if (opts == NULL) opts = &no_options;
  if (rpc->closing || !tt_channel_is_connected(rpc->ch))
    return TT_ERR_IPC_CHANNEL_CLOSED;
  if (opts->retries > 0 &&
      (opts->timeout_ms == 0 || tt_backoff_check(&opts->backoff) != 0))
    return UV_EINVAL;
  /* (malloc, not calloc: glibc's calloc skips its per-thread cache, and
   * this is once per call) */
  c = malloc(sizeof *c + extra);
  if (c == NULL) return UV_ENOMEM;
  memset(c, 0, offsetof(tt_call_t, timer)); /* (the timer: uv_timer_init) */
  if (extra_out != NULL) arg = c->extra;
  c->req.data = c;
  c->req.rpc = rpc;
  c->opts = *opts;
  c->cb = cb;
  c->arg = arg;
  c->len = len;
  if (opts->retries > 0) {
    c->payload = malloc(len ? len : 1);
    if (c->payload == NULL) {
      free(c);
      return UV_ENOMEM;
    }
    memcpy(c->payload, payload, len);
    /* a re-send carries the descriptor again, even if the caller's copy is
     * closed by then */
    if ((err = tt__dup_fds(fds, nfds, &c->fds)) != 0) {
      call_release(c);
      return err;
    }
    c->nfds = nfds;
  }
  if (opts->timeout_ms > 0) {
    uv_timer_init(rpc->loop, &c->timer);
    c->timer.data = c;
    c->has_timer = 1;
  }
  if ((err = start(rpc, &c->req, payload, len, fds, nfds, on_call_ended)) !=
      0) {
    call_free(c);
    return err;
  }
  c->attempt = 1;
  if (c->has_timer) tt__timer_start(&c->timer, on_timer, c->opts.timeout_ms, 0);
  if (extra_out != NULL) *extra_out = c->extra;
  return 0;
}

int tt_rpc_dispatch(tt_rpc_t *rpc, const tt_frame_header_t *h,
                    const char *payload) {
  tt_request_t *r;
  if (h->kind != TT_FRAME_REPLY && h->kind != TT_FRAME_FAULT) return 0;
  r = rpc->slots ? rpc->slots[h->id & rpc->mask] : NULL;
  if (r == NULL || r->id != h->id || h->id == 0) {
    rpc->stats.late_replies++;
    return 1;
  }
  end(r, 0, h->kind, payload, h->len);
  return 1;
}

void tt_rpc_fail_all(tt_rpc_t *rpc, int err) {
  /* Callbacks may start new requests; those fail at once since the channel
   * is gone, so this loop ends. */
  while (!TAILQ_EMPTY(&rpc->live))
    end(TAILQ_FIRST(&rpc->live), err, 0, NULL, 0);
}

void tt_rpc_close(tt_rpc_t *rpc, tt_rpc_close_cb cb) {
  if (rpc->closing) return;
  rpc->closing = 1;
  tt_rpc_fail_all(rpc, TT_ERR_IPC_CHANNEL_CLOSED);
  rpc->close_cb = cb;
  /* The last timer's close callback finishes (timer_gone); the closer is
   * one more, so that even without calls `cb` comes from the loop, as
   * every tt_X_close's does. */
  uv_timer_init(rpc->loop, &rpc->closer);
  rpc->closer.data = rpc;
  rpc->pending_timers++;
  uv_close((uv_handle_t *)&rpc->closer, on_closer_closed);
}

void tt_rpc_stats(const tt_rpc_t *rpc, tt_rpc_stats_t *out) {
  *out = rpc->stats;
}
