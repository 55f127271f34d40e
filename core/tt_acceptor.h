/*
 * tether acceptor: takes connections from a listening socket on the loop
 * and hands each accepted descriptor (non-blocking, close-on-exec) to its
 * owner, e.g. a cluster's parent that passes connections to the least
 * loaded worker ("rr" balancing).
 *
 * Out of descriptors (EMFILE, ENFILE) or memory: accepting pauses, the
 * connections wait in the kernel's backlog, on_error is told once per
 * stall, and accepting resumes after TT_ACCEPTOR_RETRY_MS.  Paused by the
 * owner (no worker ready): the same backlog holds them.
 */
#ifndef TT_ACCEPTOR_H
#define TT_ACCEPTOR_H

#include <uv.h>

#define TT_ACCEPTOR_RETRY_MS 100
/* Connections taken per readable event, so a flood cannot starve the
 * loop. */
#define TT_ACCEPTOR_BATCH 64

typedef struct tt_acceptor_s tt_acceptor_t;

struct tt_acceptor_s {
  void *data; /* owner's */
  /* A connection: `fd` is the owner's (to pass on, or close). */
  void (*on_connection)(tt_acceptor_t *a, int fd);
  /* accept() failed for a reason other than the peer giving up (a stall:
   * EMFILE, ENFILE, ENOMEM, ...); accepting retries by itself. */
  void (*on_error)(tt_acceptor_t *a, int err);

  /* private */
  uv_loop_t *loop;
  int fd; /* borrowed: the listening socket stays its owner's */
  int paused, stalled, closing, pending;
  uv_poll_t poll;
  uv_timer_t retry;
  void (*close_cb)(tt_acceptor_t *a);
};

/* Starts accepting on listening socket `fd` (borrowed: it must outlive
 * the acceptor).  0, or a negative error (nothing to close then). */
int tt_acceptor_start(uv_loop_t *loop, tt_acceptor_t *a, int fd);
/* Stops (on) or resumes (off) taking connections. */
void tt_acceptor_pause(tt_acceptor_t *a, int on);
/* Stops; `cb` runs from the loop when the memory may be freed.  The
 * listening socket is not closed.  Idempotent. */
void tt_acceptor_close(tt_acceptor_t *a, void (*cb)(tt_acceptor_t *a));

#endif /* TT_ACCEPTOR_H */
