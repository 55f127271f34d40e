/*
 * tether log sink: appends lines to a log file without ever blocking the
 * loop.
 *
 * The file is opened O_APPEND|O_NONBLOCK|O_CLOEXEC (created 0644).  A FIFO
 * that has no reader yet is opened read-write, so the open neither blocks
 * nor fails and a reader that comes later gets what was written meanwhile.
 * A write that the file cannot take now (a FIFO or a pipe whose reader is
 * slow) leaves the rest in a bounded buffer, written when the fd is
 * writable again; lines that do not fit are dropped whole and counted, and
 * on_dropped tells the owner once per stall.  Regular files are written at
 * once (they never say EAGAIN).
 */
#ifndef TT_LOGSINK_H
#define TT_LOGSINK_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tt_limits.h" /* TT_LOGSINK_BUFFER */

typedef struct tt_logsink_s tt_logsink_t;

struct tt_logsink_s {
  void *data; /* owner's */
  /* A stall began dropping lines (`dropped` counts all so far), or a
   * write failed (err < 0: the file is unusable until reopened). */
  void (*on_trouble)(tt_logsink_t *ls, int err, uint64_t dropped);

  /* private */
  uv_loop_t *loop;
  const char *path; /* the owner's string */
  int fd;
  int polling, closing, stalled;
  uv_poll_t *poll; /* made when the file first says EAGAIN */
  uv_timer_t closer; /* defers the close callback when there is no poll */
  char *buf;
  size_t len, cap;
  uint64_t dropped;
  void (*close_cb)(tt_logsink_t *ls);
};

/* Opens `path` (kept, not copied).  0, or a negative error (nothing to
 * close then). */
int tt_logsink_open(uv_loop_t *loop, tt_logsink_t *ls, const char *path);
/* Appends `len` bytes: one or more whole lines. */
void tt_logsink_write(tt_logsink_t *ls, const char *p, size_t len);
/* Opens the path again (after logrotate moved the file); what waits in the
 * buffer goes to the new file.  0 or the error (the old file is kept). */
int tt_logsink_reopen(tt_logsink_t *ls);
uint64_t tt_logsink_dropped(const tt_logsink_t *ls);
/* Closes a sink that was opened but never written to, at once. */
void tt_logsink_discard(tt_logsink_t *ls);
/* What still waits is given one last non-blocking try, then the file is
 * closed; `cb` runs from the loop (never from inside this call) once the
 * memory may be freed.  Idempotent. */
void tt_logsink_close(tt_logsink_t *ls, void (*cb)(tt_logsink_t *ls));

#endif /* TT_LOGSINK_H */
