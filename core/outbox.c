/*
 * Outbox: see tt_outbox.h.
 *
 * Invariants:
 * - A frame is on the queue (counted in `queued`), or in a channel (counted
 *   in `in_flight`; the channel calls on_sent exactly once), or done (its
 *   callback ran; its memory goes with its timer's close, if it has one).
 * - `requeue_pos` is a queued frame or NULL (the head): frames coming back
 *   are linked after it, so they keep the order they were sent in.
 */
#include "tt_outbox.h"

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tt_error.h"

struct tt_outbox_msg_s {
  TAILQ_ENTRY(tt_outbox_msg_s) link;
  tt_outbox_t *ob;
  unsigned kind;
  uint32_t frame_id;
  size_t len;
  uint64_t deadline; /* loop time; 0: none */
  tt_channel_send_cb cb;
  void *arg;
  int *fds; /* duplicates, ours until the frame is done */
  unsigned nfds;
  int timer_init;
  uv_timer_t timer;
  char payload[];
};

/* Fresh, not the iteration's start: deadlines count from the moment they
 * are taken. */
static uint64_t now(tt_outbox_t *ob) {
  uv_update_time(ob->loop);
  return uv_now(ob->loop);
}

static void maybe_closed(tt_outbox_t *ob) {
  void (*cb)(tt_outbox_t *);
  if (ob->close_cb == NULL || ob->in_flight > 0 || ob->closing > 0) return;
  cb = ob->close_cb;
  ob->close_cb = NULL;
  cb(ob);
}

static void unlink_msg(tt_outbox_msg_t *m) {
  tt_outbox_t *ob = m->ob;
  if (ob->requeue_pos == m)
    ob->requeue_pos = TAILQ_PREV(m, tt_outbox_queue, link);
  TAILQ_REMOVE(&ob->queue, m, link);
  ob->queued--;
}

/* Links `m` after `after` (NULL: at the head). */
static void link_after(tt_outbox_t *ob, tt_outbox_msg_t *m,
                       tt_outbox_msg_t *after) {
  if (after != NULL)
    TAILQ_INSERT_AFTER(&ob->queue, after, m, link);
  else
    TAILQ_INSERT_HEAD(&ob->queue, m, link);
  ob->queued++;
}

static void on_timer_closed(uv_handle_t *h) {
  tt_outbox_msg_t *m = h->data;
  tt_outbox_t *ob = m->ob;
  free(m);
  ob->closing--;
  maybe_closed(ob);
}

/* Runs the callback once and frees the frame (on no list). */
static void done(tt_outbox_msg_t *m, int status) {
  tt_outbox_t *ob = m->ob;
  tt_channel_send_cb cb = m->cb;
  void *arg = m->arg;
  tt__free_fds(m->fds, m->nfds); /* the peer has its own, or gets none */
  m->fds = NULL;
  m->nfds = 0;
  if (m->timer_init) {
    uv_timer_stop(&m->timer);
    m->timer.data = m;
    ob->closing++;
    uv_close((uv_handle_t *)&m->timer, on_timer_closed);
  } else {
    free(m);
  }
  if (cb) cb(arg, status);
}

static void on_timeout(uv_timer_t *t) {
  tt_outbox_msg_t *m = t->data;
  unlink_msg(m);
  done(m, TT_ERR_TIMEOUT);
}

/* Waits on the queue, its deadline armed. */
static void park(tt_outbox_msg_t *m) {
  tt_outbox_t *ob = m->ob;
  uint64_t t;
  if (m->deadline == 0) return;
  t = now(ob);
  if (!m->timer_init) {
    uv_timer_init(ob->loop, &m->timer);
    m->timer_init = 1;
  }
  m->timer.data = m;
  tt__timer_start(&m->timer, on_timeout, m->deadline > t ? m->deadline - t : 0,
                  0);
}

static void flush(tt_outbox_t *ob);

static void on_sent(void *arg, int status) {
  tt_outbox_msg_t *m = arg;
  tt_outbox_t *ob = m->ob;
  ob->in_flight--;
  if (status != TT_ERR_IPC_CHANNEL_CLOSED) { /* delivered, or UV_ENOMEM */
    done(m, status);
  } else if (ob->shut) {
    done(m, TT_ERR_CLOSED);
  } else if (m->deadline != 0 && m->deadline <= now(ob)) {
    done(m, TT_ERR_TIMEOUT);
  } else {
    /* Back to the queue, in order, for the next target (a target still set
     * is a replaced peer's successor: on to it at once). */
    link_after(ob, m, ob->requeue_pos);
    ob->requeue_pos = m;
    park(m);
    if (ob->target != NULL && tt_channel_is_connected(ob->target)) flush(ob);
  }
  maybe_closed(ob);
}

static int deliver(tt_outbox_t *ob, tt_outbox_msg_t *m) {
  int rc;
  if (ob->target == NULL) return TT_ERR_IPC_CHANNEL_CLOSED;
  rc = tt_channel_send_fds(ob->target, m->kind, m->frame_id, m->payload,
                           m->len, m->fds, m->nfds, on_sent, m);
  if (rc < 0) return rc;
  ob->in_flight++;
  return 0;
}

static void flush(tt_outbox_t *ob) {
  tt_outbox_msg_t *m;
  while ((m = TAILQ_FIRST(&ob->queue)) != NULL) {
    int rc;
    unlink_msg(m);
    if (m->timer_init) uv_timer_stop(&m->timer);
    if ((rc = deliver(ob, m)) == 0) continue;
    if (rc != TT_ERR_IPC_CHANNEL_CLOSED) { /* this frame's own trouble */
      done(m, rc);                          /* (e.g. EMFILE): it alone fails */
      continue;
    }
    link_after(ob, m, NULL); /* no channel now: it waits, first in line */
    park(m);
    return;
  }
}

void tt_outbox_init(uv_loop_t *loop, tt_outbox_t *ob, size_t limit) {
  void *data = ob->data;
  memset(ob, 0, sizeof *ob);
  ob->data = data;
  ob->loop = loop;
  ob->limit = limit;
  TAILQ_INIT(&ob->queue);
}

int tt_outbox_send(tt_outbox_t *ob, unsigned kind, uint32_t frame_id,
                   const void *payload, size_t len, uint64_t timeout_ms,
                   tt_channel_send_cb cb, void *arg) {
  return tt_outbox_send_fds(ob, kind, frame_id, payload, len, NULL, 0,
                            timeout_ms, cb, arg);
}

int tt_outbox_check(const tt_outbox_t *ob, unsigned kind, unsigned nfds) {
  if (ob->shut) return TT_ERR_CLOSED;
  if (ob->limit > 0 && ob->queued >= ob->limit) return TT_ERR_QUEUE_FULL;
  if (nfds > 0 && (!tt_frame_kind_carries_fd(kind) || nfds > TT_FRAME_MAX_FDS))
    return UV_EINVAL;
  return 0;
}

int tt_outbox_send_fd(tt_outbox_t *ob, unsigned kind, uint32_t frame_id,
                      const void *payload, size_t len, int fd,
                      uint64_t timeout_ms, tt_channel_send_cb cb, void *arg) {
  return tt_outbox_send_fds(ob, kind, frame_id, payload, len, &fd,
                            fd >= 0 ? 1 : 0, timeout_ms, cb, arg);
}

int tt_outbox_send_fds(tt_outbox_t *ob, unsigned kind, uint32_t frame_id,
                       const void *payload, size_t len, const int *fds,
                       unsigned nfds, uint64_t timeout_ms,
                       tt_channel_send_cb cb, void *arg) {
  tt_outbox_msg_t *m;
  int *dup = NULL, err;
  if ((err = tt_outbox_check(ob, kind, nfds)) != 0) return err;
  if ((err = tt__dup_fds(fds, nfds, &dup)) != 0) return err;
  m = malloc(sizeof *m + len);
  if (m == NULL) {
    tt__free_fds(dup, nfds);
    return UV_ENOMEM;
  }
  memset(m, 0, sizeof *m);
  m->fds = dup;
  m->nfds = nfds;
  m->ob = ob;
  m->kind = kind;
  m->frame_id = frame_id;
  m->len = len;
  m->cb = cb;
  m->arg = arg;
  m->deadline = timeout_ms ? now(ob) + timeout_ms : 0;
  if (len) memcpy(m->payload, payload, len);
  if (!TAILQ_EMPTY(&ob->queue)) flush(ob); /* what may go, goes first */
  if (TAILQ_EMPTY(&ob->queue)) {
    int rc = deliver(ob, m);
    if (rc == 0) return 0;
    if (rc != TT_ERR_IPC_CHANNEL_CLOSED) { /* refused for itself: say so */
      tt__free_fds(m->fds, m->nfds);
      free(m);
      return rc;
    }
  }
  link_after(ob, m, TAILQ_LAST(&ob->queue, tt_outbox_queue));
  park(m);
  return 0;
}

void tt_outbox_target(tt_outbox_t *ob, tt_channel_t *ch) {
  ob->target = ch;
  ob->requeue_pos = NULL;
  if (ch != NULL) flush(ob);
}

void tt_outbox_shut(tt_outbox_t *ob, int err) {
  tt_outbox_msg_t *m;
  ob->shut = 1;
  ob->target = NULL;
  while ((m = TAILQ_FIRST(&ob->queue)) != NULL) {
    unlink_msg(m);
    done(m, err);
  }
}

void tt_outbox_reopen(tt_outbox_t *ob) {
  if (!ob->close_called) ob->shut = 0;
}

size_t tt_outbox_queued(const tt_outbox_t *ob) { return ob->queued; }

static void on_closer_closed(uv_handle_t *h) {
  tt_outbox_t *ob = h->data;
  ob->closing--;
  maybe_closed(ob);
}

void tt_outbox_close(tt_outbox_t *ob, void (*cb)(tt_outbox_t *ob)) {
  if (ob->close_called) return;
  ob->close_called = 1;
  tt_outbox_shut(ob, TT_ERR_CLOSED);
  ob->close_cb = cb;
  /* one more handle to close, so that `cb` comes from the loop even when
   * nothing is pending */
  uv_timer_init(ob->loop, &ob->closer);
  ob->closer.data = ob;
  ob->closing++;
  uv_close((uv_handle_t *)&ob->closer, on_closer_closed);
}
