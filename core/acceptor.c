/* Acceptor: see tt_acceptor.h. */
#include "tt_acceptor.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

static void on_readable(uv_poll_t *p, int status, int events);

static void watch(tt_acceptor_t *a) {
  if (a->closing) return;
  if (a->paused || a->stalled)
    uv_poll_stop(&a->poll);
  else
    uv_poll_start(&a->poll, UV_READABLE, on_readable);
}

static void on_retry(uv_timer_t *t) {
  tt_acceptor_t *a = t->data;
  a->stalled = 0;
  watch(a);
}

static void on_readable(uv_poll_t *p, int status, int events) {
  tt_acceptor_t *a = p->data;
  (void)events;
  if (status < 0) return; /* (a listening socket reports no errors here) */
  for (int i = 0; i < TT_ACCEPTOR_BATCH && !a->paused && !a->closing; i++) {
    int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      a->on_connection(a, fd);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    /* out of descriptors or memory: the backlog holds them meanwhile */
    {
      int err = -errno;
      a->stalled = 1;
      watch(a);
      tt__timer_start(&a->retry, on_retry, TT_ACCEPTOR_RETRY_MS, 0);
      if (a->on_error) a->on_error(a, err);
      return;
    }
  }
}

int tt_acceptor_start(uv_loop_t *loop, tt_acceptor_t *a, int fd) {
  int err;
  void *data = a->data;
  void (*on_connection)(tt_acceptor_t *, int) = a->on_connection;
  void (*on_error)(tt_acceptor_t *, int) = a->on_error;
  memset(a, 0, sizeof *a);
  a->data = data;
  a->on_connection = on_connection;
  a->on_error = on_error;
  a->loop = loop;
  a->fd = fd;
  if (on_connection == NULL) return UV_EINVAL;
  if ((err = uv_poll_init(loop, &a->poll, fd)) != 0) return err;
  uv_timer_init(loop, &a->retry);
  a->poll.data = a;
  a->retry.data = a;
  watch(a);
  return 0;
}

void tt_acceptor_pause(tt_acceptor_t *a, int on) {
  a->paused = on != 0;
  watch(a);
}

static void on_closed(uv_handle_t *h) {
  tt_acceptor_t *a = h->data;
  if (--a->pending == 0 && a->close_cb) a->close_cb(a);
}

void tt_acceptor_close(tt_acceptor_t *a, void (*cb)(tt_acceptor_t *a)) {
  if (a->closing) return;
  a->closing = 1;
  a->close_cb = cb;
  a->pending = 2;
  uv_close((uv_handle_t *)&a->poll, on_closed);
  uv_close((uv_handle_t *)&a->retry, on_closed);
}
