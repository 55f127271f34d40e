/*
 * tether outbox: frames for a peer whose channel comes and goes (a
 * supervised worker that is restarted or replaced), delivered in order,
 * each callback run exactly once.
 *
 * A frame goes to the target channel at once when there is one and nothing
 * waits before it; otherwise it waits, its deadline armed (TT_ERR_TIMEOUT
 * when it passes).  A frame the channel could not hand to the kernel
 * (TT_ERR_IPC_CHANNEL_CLOSED: that peer went away) comes back, ahead of
 * the frames that never left and in the order it was sent, for the next
 * target.  Once shut, nothing new is taken and frames that come back fail
 * with TT_ERR_CLOSED.
 */
#ifndef TT_OUTBOX_H
#define TT_OUTBOX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#include "tt_channel.h"

typedef struct tt_outbox_s tt_outbox_t;
typedef struct tt_outbox_msg_s tt_outbox_msg_t;
TAILQ_HEAD(tt_outbox_queue, tt_outbox_msg_s);

struct tt_outbox_s {
  void *data; /* owner's */
  /* private */
  uv_loop_t *loop;
  tt_channel_t *target;          /* where frames go now; NULL: they wait */
  struct tt_outbox_queue queue;  /* waiting, in order */
  tt_outbox_msg_t *requeue_pos;  /* the last frame that came back */
  size_t queued, limit;
  unsigned in_flight; /* in a channel: its callback is still to come */
  unsigned closing;   /* message timers being closed */
  int shut;
  int close_called;
  uv_timer_t closer; /* defers the close callback */
  void (*close_cb)(tt_outbox_t *ob);
};

/* `limit`: frames that may wait (0: no limit).  Nothing to close before a
 * frame was sent. */
void tt_outbox_init(uv_loop_t *loop, tt_outbox_t *ob, size_t limit);
/* Queues or sends a frame (the payload is copied).  0 (then `cb`, which
 * may be NULL, runs exactly once: 0 when the kernel took the frame, or the
 * error), or TT_ERR_CLOSED (shut), TT_ERR_QUEUE_FULL, UV_ENOMEM, and `cb`
 * is not called; or the error a target's channel refuses this frame with
 * (e.g. UV_EMFILE): at once when there is a target, else through `cb`.
 * Sizes are the caller's to check. */
int tt_outbox_send(tt_outbox_t *ob, unsigned kind, uint32_t frame_id,
                   const void *payload, size_t len, uint64_t timeout_ms,
                   tt_channel_send_cb cb, void *arg);
/* As tt_outbox_send, with descriptor `fd` (a duplicate is kept, so the
 * caller's stays the caller's, until the frame is done).  UV_EBADF,
 * UV_EMFILE from the dup. */
int tt_outbox_send_fd(tt_outbox_t *ob, unsigned kind, uint32_t frame_id,
                      const void *payload, size_t len, int fd,
                      uint64_t timeout_ms, tt_channel_send_cb cb, void *arg);
/* What a send of `kind` with `nfds` descriptors would be refused with at
 * once (shut, full, a kind that carries none): 0 or that error. */
int tt_outbox_check(const tt_outbox_t *ob, unsigned kind, unsigned nfds);
/* The same with `nfds` descriptors (at most TT_FRAME_MAX_FDS), which the
 * peer takes in this order. */
int tt_outbox_send_fds(tt_outbox_t *ob, unsigned kind, uint32_t frame_id,
                       const void *payload, size_t len, const int *fds,
                       unsigned nfds, uint64_t timeout_ms,
                       tt_channel_send_cb cb, void *arg);
/* Where frames go from now on (NULL: nowhere, they wait); a channel gets
 * what waits at once. */
void tt_outbox_target(tt_outbox_t *ob, tt_channel_t *ch);
/* Fails every waiting frame with `err`; from now on sends are refused
 * (TT_ERR_CLOSED) and frames coming back fail with TT_ERR_CLOSED. */
void tt_outbox_shut(tt_outbox_t *ob, int err);
/* Takes frames again after tt_outbox_shut (a supervisor slot removed by
 * scaling down, then added back); no-op once closing. */
void tt_outbox_reopen(tt_outbox_t *ob);
size_t tt_outbox_queued(const tt_outbox_t *ob);
/* Shuts it (TT_ERR_CLOSED); `cb` runs from the loop once no frame is left
 * in a channel and its timers are closed: the memory may go then.  The
 * channels it gave frames to must end (they call back) for that. */
void tt_outbox_close(tt_outbox_t *ob, void (*cb)(tt_outbox_t *ob));

#endif /* TT_OUTBOX_H */
