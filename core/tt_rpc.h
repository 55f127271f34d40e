/*
 * tether request/response over a channel.
 *
 * A call sends a REQUEST frame whose header carries a fresh correlation id
 * (never in the payload) and ends exactly once: with the REPLY or FAULT
 * frame carrying that id, with TT_ERR_TIMEOUT, or with
 * TT_ERR_IPC_CHANNEL_CLOSED when the channel ends.  A reply that comes
 * after its call ended (a late reply to a timed-out attempt) is dropped and
 * counted, never given to another call: every attempt has its own id, and
 * ids increase monotonically (they wrap only after 2^32 calls).
 *
 * Retries: a call with `retries` > 0 is re-sent, under a new id, after a
 * timeout, waiting the backoff policy's delay first (timers owned here).
 * Only timeouts are retried: the caller declares the request idempotent by
 * asking for retries.  Payloads are opaque bytes.  This is the asking
 * side; requests are answered with tt_peer_answer (tt_peer.h).
 *
 * Two ways to ask: tt_rpc_call (the rpc owns the call: timeouts, retries)
 * and tt_rpc_request (the caller owns a tt_request_t and its clocks, as a
 * pool does, whose tasks' clocks start only when a worker begins them);
 * both share the ids, the matching and the late-reply count.
 */
#ifndef TT_RPC_H
#define TT_RPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#include "tt_backoff.h"
#include "tt_channel.h"

typedef struct tt_rpc_s tt_rpc_t;
typedef struct tt_call_s tt_call_t;
typedef struct tt_request_s tt_request_t;

/* How a request ended: as tt_rpc_cb (below), with the request. */
typedef void (*tt_request_cb)(tt_request_t *req, int status, unsigned kind,
                              const char *payload, size_t len);

/* One request waiting for its answer; the memory is the caller's and must
 * stay until the callback ran or tt_rpc_cancel() returned. */
struct tt_request_s {
  void *data; /* owner's */
  /* private */
  tt_rpc_t *rpc;
  TAILQ_ENTRY(tt_request_s) link; /* on rpc->live while it waits */
  uint32_t id; /* of the attempt waiting; 0: none (a call between tries) */
  int live;
  tt_request_cb cb;
};
TAILQ_HEAD(tt_request_list, tt_request_s);

/* status 0: the peer answered; `kind` is TT_FRAME_REPLY or TT_FRAME_FAULT
 * and the payload is valid during the call.  Otherwise status is
 * TT_ERR_TIMEOUT, TT_ERR_IPC_CHANNEL_CLOSED, or UV_ENOMEM, UV_EMFILE or
 * UV_ENFILE (a re-send could not be made; stats count it as closed),
 * without payload. */
typedef void (*tt_rpc_cb)(void *arg, int status, unsigned kind,
                          const char *payload, size_t len);
typedef void (*tt_rpc_close_cb)(tt_rpc_t *rpc);

typedef struct {
  uint64_t timeout_ms; /* per attempt; 0: no timeout */
  unsigned retries;    /* re-sends after a timeout; needs timeout_ms */
  tt_backoff_t backoff;
} tt_call_options_t;

typedef struct {
  uint64_t calls;        /* calls started */
  uint64_t replies;      /* ended with a REPLY */
  uint64_t faults;       /* ended with a FAULT */
  uint64_t timeouts;     /* ended with TT_ERR_TIMEOUT */
  uint64_t retries;      /* attempts re-sent */
  uint64_t closed;       /* ended by the channel closing */
  uint64_t cancelled;    /* requests the caller withdrew */
  uint64_t late_replies; /* replies for no live attempt, dropped */
  uint64_t in_flight;
} tt_rpc_stats_t;

struct tt_rpc_s {
  void *data; /* owner's */
  /* private */
  uv_loop_t *loop;
  tt_channel_t *ch;
  struct tt_request_list live; /* every request not ended */
  tt_request_t **slots; /* slots[id & mask]: the live attempt with that id */
  uint32_t mask;
  uint32_t next_id;
  uint64_t seed;
  int closing;
  unsigned pending_timers; /* and the closer, once closing */
  uv_timer_t closer;       /* closed at tt_rpc_close: defers the callback */
  tt_rpc_close_cb close_cb;
  tt_rpc_stats_t stats;
};

int tt_rpc_init(uv_loop_t *loop, tt_rpc_t *rpc, tt_channel_t *ch);
/* Starts a call (`opts` NULL: no timeout, no retries).  0 (then `cb` runs
 * exactly once, never from inside this function), or an error
 * (TT_ERR_IPC_CHANNEL_CLOSED, TT_ERR_SERIALIZE for a payload over
 * max_message, UV_EINVAL for bad options, UV_ENOMEM; with descriptors,
 * what duplicating them failed with, e.g. UV_EMFILE) and `cb` is not
 * called. */
int tt_rpc_call(tt_rpc_t *rpc, const void *payload, size_t len,
                const tt_call_options_t *opts, tt_rpc_cb cb, void *arg);
/* As tt_rpc_call, the REQUEST carrying `nfds` descriptors (PROTOCOL.md,
 * "Handles"): every attempt sends duplicates; the caller's stay open, and
 * a call with retries keeps duplicates of its own until it ends. */
int tt_rpc_call_fds(tt_rpc_t *rpc, const void *payload, size_t len,
                    const int *fds, unsigned nfds,
                    const tt_call_options_t *opts, tt_rpc_cb cb, void *arg);
/* As tt_rpc_call_fds, the call holding `extra` bytes for the caller
 * (aligned for any type): when it returns 0, *extra_out points at them,
 * and that pointer is the callback's `arg`.  They live until the callback
 * has returned. */
int tt_rpc_call_with(tt_rpc_t *rpc, const void *payload, size_t len,
                     const int *fds, unsigned nfds,
                     const tt_call_options_t *opts, tt_rpc_cb cb, void *arg,
                     size_t extra, void **extra_out);
/* Sends a REQUEST for `req` (no timeout, no retry: the caller's).  0 (then
 * `cb` runs exactly once, never from inside this function, unless the
 * request is cancelled first), or an error as tt_rpc_call's. */
int tt_rpc_request(tt_rpc_t *rpc, tt_request_t *req, const void *payload,
                   size_t len, tt_request_cb cb);
/* As tt_rpc_request, the REQUEST carrying duplicates of `fds`. */
int tt_rpc_request_fds(tt_rpc_t *rpc, tt_request_t *req, const void *payload,
                       size_t len, const int *fds, unsigned nfds,
                       tt_request_cb cb);
/* Withdraws a waiting request without its callback: an answer that still
 * comes is counted late.  No-op for a request that has ended. */
void tt_rpc_cancel(tt_request_t *req);
/* Feeds an incoming frame: returns 1 when it was a REPLY or FAULT (consumed,
 * delivered or counted late), 0 for any other kind. */
int tt_rpc_dispatch(tt_rpc_t *rpc, const tt_frame_header_t *h,
                    const char *payload);
/* Ends every pending call with `err` (e.g. when the channel ended). */
void tt_rpc_fail_all(tt_rpc_t *rpc, int err);
/* Fails what is pending with TT_ERR_IPC_CHANNEL_CLOSED; `cb` runs from the
 * loop (never from inside this call) once every timer is closed: the
 * memory may be freed then.  Idempotent. */
void tt_rpc_close(tt_rpc_t *rpc, tt_rpc_close_cb cb);
void tt_rpc_stats(const tt_rpc_t *rpc, tt_rpc_stats_t *out);

#endif /* TT_RPC_H */
